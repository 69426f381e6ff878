"""Distillation finetuning: train the compressed model (student) towards the original (teacher).

``kerascomp.distiller(student, teacher)`` returns a model to ``compile`` and ``fit`` like any other;
the loss is ``(1 - alpha) * your loss(labels, student) + alpha * T^2 * KL(teacher_T || student_T)``
on the outputs softened at temperature ``T`` (Hinton et al. 2015), plus optional feature terms
(mean squared error between named layers both models share). ``fit`` trains the ``student`` object
itself; the teacher is a frozen copy, so your original model is never modified.

* **Keras 3**: built on ``keras.distillation.Distiller`` with ``LogitsDistillation`` (and
  ``FeatureDistillation`` for ``features=``); the student's own regularisation losses (kernel
  regularisers) are added, which the stock ``Distiller`` leaves out.
* **tf_keras** has no distiller: :func:`distiller` returns a small ``Model`` subclass with the same
  loss and the same behaviour.

**Softmax outputs.** ``LogitsDistillation`` softens *logits*: ``softmax(z / T)``. When a model ends in
a softmax (a ``Dense(..., activation="softmax")``, ``Activation("softmax")`` or ``Softmax`` layer, as
every keras.applications classifier and kerascomp's CIFAR models do), its output ``p`` is turned back
into logits as ``log(p)``; that is exact, because the softmax ignores a constant shift
(``softmax(log(p) / T) = p^(1/T) / sum p^(1/T)``). ``outputs="auto"`` (default) detects which the
model gives; pass ``"logits"`` or ``"probabilities"`` to say so.
"""
from __future__ import annotations

from typing import Any

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.flavour import keras_of

OUTPUTS = ("auto", "logits", "probabilities")
EPSILON = 1e-12  # log(p) of a probability output is taken of max(p, EPSILON)


def ends_in_softmax(model: Any) -> bool:
    """Whether ``model``'s (single) output is a softmax: its last layer is a softmax activation."""
    layer = model.layers[-1] if model.layers else None
    config = layer.get_config() if layer is not None else {}
    name = type(layer).__name__
    if name == "Softmax":
        return True
    activation = config.get("activation")
    if isinstance(activation, dict):  # a serialised activation object
        activation = activation.get("config", {}).get("name", activation.get("class_name"))
    return name in ("Dense", "Activation", "Conv2D") and str(activation).lower() == "softmax"


def _check(student: Any, teacher: Any, temperature: Any, alpha: Any, outputs: Any, features: Any) -> tuple:
    keras = keras_of(student)
    if keras_of(teacher) is not keras:
        raise InvalidArgumentError(f"student is a {keras.__name__} model but teacher a {keras_of(teacher).__name__} "
                                   "one; distil within one Keras flavour (kerascomp compresses in the model's own).")
    if student is teacher:
        raise InvalidArgumentError("student and teacher are the same object; pass the compressed model as student "
                                   "and the original as teacher.")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise InvalidArgumentError(f"temperature must be a number > 0 (typically 2-8), got {temperature!r}.")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise InvalidArgumentError(f"alpha (the weight of the distillation loss) must be in [0, 1], got {alpha!r}.")
    if outputs not in OUTPUTS:
        raise InvalidArgumentError(f"outputs must be one of {OUTPUTS}, got {outputs!r}.")
    if len(student.outputs) != 1 or len(teacher.outputs) != 1:
        raise InvalidArgumentError(f"distiller supports models with one output; the student has "
                                   f"{len(student.outputs)} and the teacher {len(teacher.outputs)}.")
    if tuple(student.outputs[0].shape[1:]) != tuple(teacher.outputs[0].shape[1:]):
        raise InvalidArgumentError(f"the student's output shape {tuple(student.outputs[0].shape)} differs from the "
                                   f"teacher's {tuple(teacher.outputs[0].shape)}.")
    names = list(features or [])
    for name in names:
        for role, model in (("student", student), ("teacher", teacher)):
            if name not in {layer.name for layer in model.layers}:
                raise InvalidArgumentError(f"features: layer {name!r} is not in the {role} model; name layers both "
                                           "models have (a compressed model keeps the names of the layers it did "
                                           "not rewrite, e.g. the BatchNormalization or add layers).")
        student_shape = tuple(student.get_layer(name).output.shape[1:])
        teacher_shape = tuple(teacher.get_layer(name).output.shape[1:])
        if student_shape != teacher_shape:
            raise InvalidArgumentError(f"features: layer {name!r} outputs {student_shape} in the student but "
                                       f"{teacher_shape} in the teacher (its channels were pruned); pick a layer "
                                       "whose shape the compression kept.")
    probabilities = {"auto": ends_in_softmax(teacher), "logits": False, "probabilities": True}[outputs]
    if outputs == "auto" and ends_in_softmax(student) != probabilities:
        raise InvalidArgumentError("one of student and teacher ends in a softmax and the other does not; pass "
                                   "outputs='logits' or 'probabilities' to say what both give.")
    return keras, names, probabilities


def frozen_copy(model: Any) -> Any:
    """A copy of ``model`` with the same weights and ``trainable=False`` (the original is left as it is)."""
    keras = keras_of(model)
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    copy.trainable = False
    return copy


def distiller(student: Any, teacher: Any, temperature: float = 4.0, alpha: float = 0.9,
              features: list[str] | None = None, feature_weight: float = 1.0, outputs: str = "auto") -> Any:
    """A model that trains ``student`` (the compressed model) to match ``teacher`` (the original).

    Compile and fit it like any model; after ``fit``, ``student`` itself holds the trained weights
    (save or export it, not the distiller)::

        small = kerascomp.clone_compressed(model, target_flops=0.5, data=x_train[:2000])
        trainer = kerascomp.distiller(small, model, temperature=4.0, alpha=0.9)
        trainer.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy",
                        metrics=["accuracy"])
        trainer.fit(x_train, y_train, epochs=5, batch_size=128)
        kerascomp.export_tflite(small, "small.tflite")

    Args:
        student: the model to train (kept as the same object).
        teacher: the model to imitate; a frozen copy is used, the object you pass is not modified.
        temperature: the softening ``T`` (the distillation term is scaled by ``T^2``).
        alpha: weight of the distillation term; ``1 - alpha`` weighs the loss given to ``compile``.
        features: names of layers both models have with the same output shape; each adds
            ``feature_weight * MSE(teacher layer, student layer)``.
        outputs: ``"auto"``, ``"logits"`` or ``"probabilities"`` (see the module docstring).
    """
    keras, names, probabilities = _check(student, teacher, temperature, alpha, outputs, features)
    if isinstance(feature_weight, bool) or not isinstance(feature_weight, (int, float)) or feature_weight < 0:
        raise InvalidArgumentError(f"feature_weight must be a number >= 0, got {feature_weight!r}.")
    teacher = frozen_copy(teacher)
    if keras.__name__ == "keras":
        return _keras3_distiller(keras, student, teacher, float(temperature), float(alpha), names,
                                 float(feature_weight), probabilities)
    return _legacy_distiller(keras, student, teacher, float(temperature), float(alpha), names, float(feature_weight),
                             probabilities)


def _keras3_distiller(keras, student, teacher, temperature, alpha, names, feature_weight, probabilities):
    class SoftmaxAwareLogits(keras.distillation.LogitsDistillation):
        """``LogitsDistillation`` that turns probability outputs back into logits (``log p``) first."""

        def compute_loss(self, teacher_outputs, student_outputs, **kwargs):
            if probabilities:
                teacher_outputs = keras.ops.log(keras.ops.maximum(teacher_outputs, EPSILON))
                student_outputs = keras.ops.log(keras.ops.maximum(student_outputs, EPSILON))
            return super().compute_loss(teacher_outputs, student_outputs, **kwargs)

    class Distiller(keras.distillation.Distiller):
        """``keras.distillation.Distiller`` plus the student's regularisation losses."""

        def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
            total = super().compute_loss(x, y, y_pred, sample_weight, training)
            if self.student.losses:
                total = total + keras.ops.sum(keras.ops.stack([keras.ops.cast(loss, total.dtype)
                                                               for loss in self.student.losses]))
            return total

    # a KLDivergence *instance*: LogitsDistillation's default loss="kl_divergence" resolves to the plain
    # function, which its softmax branch does not recognise, so it computes KL on the logits themselves
    # (seen in Keras 3.15: negative distillation losses)
    losses = [SoftmaxAwareLogits(temperature=temperature, loss=keras.losses.KLDivergence())]
    weights = [1.0]
    for name in names:
        losses.append(keras.distillation.FeatureDistillation(loss="mse", teacher_layer_name=name,
                                                             student_layer_name=name))
        weights.append(feature_weight)
    return Distiller(teacher=teacher, student=student, distillation_losses=losses, distillation_loss_weights=weights,
                     student_loss_weight=1.0 - alpha, name="kerascomp_distiller")


def _legacy_distiller(keras, student, teacher, temperature, alpha, names, feature_weight, probabilities):
    import tensorflow as tf

    def soften(outputs):
        logits = tf.math.log(tf.maximum(outputs, EPSILON)) if probabilities else outputs
        return tf.nn.softmax(logits / temperature, axis=-1)

    def taps(model):
        if not names:
            return None
        return keras.Model(model.inputs, [model.outputs[0]] + [model.get_layer(name).output for name in names])

    class Distiller(keras.Model):
        """The tf_keras twin of ``keras.distillation.Distiller`` (tf_keras has none): same loss, same use."""

        def __init__(self):
            super().__init__(name="kerascomp_distiller")
            self.student, self.teacher = student, teacher
            self.student_taps, self.teacher_taps = taps(student), taps(teacher)
            self.total_loss_tracker = keras.metrics.Mean(name="loss")
            self.student_loss_tracker = keras.metrics.Mean(name="student_loss")
            self.distillation_loss_tracker = keras.metrics.Mean(name="distillation_loss")
            self.student_loss_fn = None

        def compile(self, optimizer="rmsprop", loss=None, metrics=None, **kwargs):
            if loss is None:
                raise InvalidArgumentError("compile the distiller with the student's loss, e.g. "
                                           "loss='sparse_categorical_crossentropy'.")
            self.student_loss_fn = keras.losses.get(loss)
            super().compile(optimizer=optimizer, metrics=metrics, **kwargs)

        def call(self, inputs, training=None):
            return self.student(inputs, training=training)

        def _forward(self, x, training):
            if self.student_taps is None:
                return self.student(x, training=training), []
            out = self.student_taps(x, training=training)
            return out[0], out[1:]

        def _student_loss(self, y, y_pred, sample_weight):
            function = self.student_loss_fn
            values = function.call(y, y_pred) if isinstance(function, keras.losses.Loss) else function(y, y_pred)
            if sample_weight is not None:
                return tf.reduce_sum(values * tf.cast(sample_weight, values.dtype)) / tf.reduce_sum(
                    tf.cast(sample_weight, values.dtype))
            return tf.reduce_mean(values)

        def _distillation(self, x, y_pred, student_features):
            if self.teacher_taps is None:
                teacher_pred, teacher_features = self.teacher(x, training=False), []
            else:
                out = self.teacher_taps(x, training=False)
                teacher_pred, teacher_features = out[0], out[1:]
            teacher_soft, student_soft = soften(teacher_pred), soften(y_pred)
            kl = tf.reduce_sum(teacher_soft * (tf.math.log(tf.maximum(teacher_soft, EPSILON))
                                               - tf.math.log(tf.maximum(student_soft, EPSILON))), axis=-1)
            loss = tf.reduce_mean(kl) * temperature ** 2
            for mine, theirs in zip(student_features, teacher_features):
                loss += feature_weight * tf.reduce_mean(tf.square(tf.cast(mine, tf.float32) - theirs))
            return loss

        def _all_losses(self, x, y, sample_weight, training):
            y_pred, student_features = self._forward(x, training)
            student_loss = self._student_loss(y, y_pred, sample_weight)
            distillation_loss = self._distillation(x, y_pred, student_features)
            return y_pred, student_loss, distillation_loss, (1.0 - alpha) * student_loss + alpha * distillation_loss

        def train_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            with tf.GradientTape() as tape:
                y_pred, student_loss, distillation_loss, loss = self._all_losses(x, y, sample_weight, True)
                if self.student.losses:
                    loss += tf.add_n(self.student.losses)
                # per-replica means: the replicas' gradients are summed, so divide by their number
                scaled = loss / tf.distribute.get_strategy().num_replicas_in_sync
            variables = self.student.trainable_variables
            self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
            return self._update(y, y_pred, student_loss, distillation_loss, loss, sample_weight)

        def test_step(self, data):
            x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
            return self._update(y, *self._all_losses(x, y, sample_weight, False), sample_weight)

        def _update(self, y, y_pred, student_loss, distillation_loss, loss, sample_weight):
            self.compiled_metrics.update_state(y, y_pred, sample_weight)
            self.total_loss_tracker.update_state(loss)
            self.student_loss_tracker.update_state(student_loss)
            self.distillation_loss_tracker.update_state(distillation_loss)
            return {metric.name: metric.result() for metric in self.metrics}

    return Distiller()

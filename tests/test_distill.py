"""kerascomp.distiller: the student trains towards a frozen teacher in both Keras flavours, the loss is the
softened KL it claims to be (softmax outputs included), bad arguments are refused by name."""
import numpy as np
import pytest
from conftest import weights_hash

import kerascomp
from kerascomp.distill import ends_in_softmax
from kerascomp.errors import InvalidArgumentError
from kerascomp.loading import load_model
from kerascomp.zoo import cifar_resnet


@pytest.fixture(scope="module")
def pair(keras):
    keras.utils.set_random_seed(0)
    teacher = cifar_resnet(depth=8, width=8, input_shape=(16, 16, 3), keras_module=keras)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (128, 16, 16, 3)).astype("float32")
    y = (x[..., 0].mean(axis=(1, 2)) > x[..., 2].mean(axis=(1, 2))).astype("int64")
    teacher.compile(keras.optimizers.SGD(0.05, momentum=0.9), _loss(keras))
    teacher.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return teacher, x, y


def _loss(keras):
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _student(teacher, x, method="l1"):
    return kerascomp.clone_compressed(teacher, method=method, target_flops=0.5, data=x, verbose=0)


def _softened_kl(teacher_out, student_out, temperature, probabilities):
    def soften(out):
        z = (np.log(np.maximum(out, 1e-12)) if probabilities else out) / temperature
        z = np.exp(z - z.max(axis=-1, keepdims=True))
        return z / z.sum(axis=-1, keepdims=True)

    t, s = soften(teacher_out), soften(student_out)
    return float(np.mean(np.sum(t * (np.log(t) - np.log(s)), axis=-1)) * temperature ** 2)


def test_the_distiller_trains_the_student_and_leaves_the_teacher_alone(keras, pair, tmp_path):
    teacher, x, y = pair
    student = _student(teacher, x)
    teacher_before, student_before = weights_hash(teacher), weights_hash(student)
    trainer = kerascomp.distiller(student, teacher, temperature=4.0, alpha=0.9)
    trainer.compile(keras.optimizers.SGD(0.02, momentum=0.9), _loss(keras), metrics=["accuracy"])
    history = trainer.fit(x, y, epochs=4, batch_size=32, verbose=0).history
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]
    assert history["loss"][-1] < history["loss"][0]
    assert all(value >= 0 for value in history["distillation_loss"])  # a KL divergence
    assert weights_hash(student) != student_before
    assert weights_hash(teacher) == teacher_before and teacher.trainable
    # the student object itself is the trained model, and it round-trips through .keras
    path = tmp_path / "student.keras"
    student.save(path)
    np.testing.assert_allclose(load_model(path).predict(x[:8], verbose=0), student.predict(x[:8], verbose=0),
                               atol=1e-5)
    np.testing.assert_allclose(trainer.predict(x[:8], verbose=0), student.predict(x[:8], verbose=0), atol=1e-6)


def _distillation_loss(keras, student, teacher, x, y, **kwargs):
    trainer = kerascomp.distiller(student, teacher, temperature=3.0, alpha=1.0, **kwargs)
    trainer.compile(keras.optimizers.SGD(0.0), "sparse_categorical_crossentropy")
    return trainer.evaluate(x, y, batch_size=len(x), verbose=0, return_dict=True)["distillation_loss"]


def test_the_distillation_loss_is_the_softened_kl_for_logits_and_for_softmax_outputs(keras, pair):
    teacher, x, y = pair
    x, y = x[:64], y[:64]
    student = _student(teacher, x)
    assert not ends_in_softmax(teacher)
    expected = _softened_kl(teacher.predict(x, verbose=0), student.predict(x, verbose=0), 3.0, False)
    assert expected > 1e-4  # the pair differs, so the check can fail
    assert _distillation_loss(keras, student, teacher, x, y) == pytest.approx(expected, rel=1e-3)

    def with_softmax(model):
        return keras.Model(model.inputs, keras.layers.Activation("softmax", name="probs")(model.outputs[0]))

    soft_teacher, soft_student = with_softmax(teacher), with_softmax(student)
    assert ends_in_softmax(soft_teacher) and ends_in_softmax(soft_student)
    on_probabilities = _distillation_loss(keras, soft_student, soft_teacher, x, y)
    assert on_probabilities == pytest.approx(expected, rel=1e-3)  # log(p) are the logits up to a shift
    # read as logits, the same probabilities give another number: the softmax handling matters
    assert abs(_distillation_loss(keras, soft_student, soft_teacher, x, y, outputs="logits") - expected) > 0.1 * expected
    with pytest.raises(InvalidArgumentError, match="softmax"):
        kerascomp.distiller(student, soft_teacher)


def test_feature_distillation_on_a_layer_both_models_kept(keras, pair):
    teacher, x, y = pair
    student = _student(teacher, x, method="svd")
    trainer = kerascomp.distiller(student, teacher, features=["s2b1_add"], feature_weight=0.5)
    trainer.compile(keras.optimizers.SGD(0.02, momentum=0.9), _loss(keras))
    history = trainer.fit(x, y, epochs=3, batch_size=32, verbose=0).history
    assert history["distillation_loss"][-1] < history["distillation_loss"][0]


def test_bad_distiller_arguments_are_refused_by_name(pair):
    teacher, x, _ = pair
    # the residual stream pruned too, so that s2b1_add changes shape (the default spares it at 0.5 MACs)
    student = kerascomp.clone_compressed(teacher, method="l1", target_flops=0.5, data=x, stream="uniform", verbose=0)
    for kwargs, match in ((dict(alpha=1.5), "alpha"), (dict(temperature=0), "temperature"),
                          (dict(outputs="scores"), "outputs"), (dict(features=["nope"]), "nope"),
                          (dict(features=["s2b1_add"]), "pruned"), (dict(feature_weight=-1), "feature_weight")):
        with pytest.raises(InvalidArgumentError, match=match):
            kerascomp.distiller(student, teacher, **kwargs)
    with pytest.raises(InvalidArgumentError, match="same object"):
        kerascomp.distiller(teacher, teacher)

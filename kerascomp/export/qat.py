"""Quantisation-aware training through tfmot, for Keras 3 and tf_keras models.

This is the only module that imports ``tensorflow_model_optimization``, and only when
:func:`quantize_aware` is called. tfmot sets ``TF_USE_LEGACY_KERAS=1`` on import, which
would re-route ``tf.keras`` to tf_keras for the rest of a Keras 3 user's process; so
``tf.keras`` is resolved first under the user's own setting and the variable is restored
right after the import.

tfmot only wraps tf_keras models. A Keras 3 model is first stripped to standard layers and
rebuilt as the same tf_keras layers with identical weights (:mod:`kerascomp.graph.bridge`).
The QAT model that comes back is therefore always a tf_keras model: compile it with string
names (``"adam"``, ``"sparse_categorical_crossentropy"``) or tf_keras objects.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any, Iterable

from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.bridge import to_tf_keras
from kerascomp.graph.keras_io import read_model, write_model
from kerascomp.methods.inputs import check_finite
from kerascomp.methods.strip import strip_graph

_LEGACY_VARIABLE = "TF_USE_LEGACY_KERAS"
_BN_FOLDED_AFTER = {"Conv2D", "DepthwiseConv2D", "Dense"}


def import_tfmot() -> ModuleType:
    """Import tfmot without leaving ``TF_USE_LEGACY_KERAS`` changed in this process."""
    import tensorflow as tf

    previous = os.environ.get(_LEGACY_VARIABLE)
    getattr(tf.keras, "__name__", None)  # resolve tf.keras now, under the user's own setting
    try:
        import tensorflow_model_optimization as tfmot
    except ImportError as error:
        raise ImportError("quantisation-aware training needs tensorflow-model-optimization and tf-keras: "
                          "pip install 'kerascomp[qat]'") from error
    finally:
        if previous is None:
            os.environ.pop(_LEGACY_VARIABLE, None)
        else:
            os.environ[_LEGACY_VARIABLE] = previous
    return tfmot


def is_quantize_aware(model: Any) -> bool:
    """True for a model made by tfmot's ``quantize_apply`` (it holds tfmot wrapper layers)."""
    return any(type(layer).__module__.startswith("tensorflow_model_optimization")
               for layer in getattr(model, "layers", []))


def _output_only_config(tfmot: ModuleType) -> Any:
    """A QuantizeConfig that fake-quantises a layer's output only (for weight-free layers tfmot does not know)."""
    quantization = tfmot.quantization.keras

    class OutputQuantizeConfig(quantization.QuantizeConfig):
        def get_weights_and_quantizers(self, layer):
            return []

        def get_activations_and_quantizers(self, layer):
            return []

        def set_quantize_weights(self, layer, quantize_weights):
            pass

        def set_quantize_activations(self, layer, quantize_activations):
            pass

        def get_output_quantizers(self, layer):
            return [quantization.quantizers.MovingAverageQuantizer(num_bits=8, per_axis=False, symmetric=False,
                                                                   narrow_range=False)]

        def get_config(self):
            return {}

    return OutputQuantizeConfig


def quantize_aware(model: Any, keep_float: Iterable[str] = ()) -> Any:
    """A tfmot quantisation-aware copy of ``model`` (always a tf_keras model) to ``fit`` as usual.

    kerascomp layers are stripped to standard ones first; a Keras 3 model is moved to tf_keras
    with identical weights. Layers tfmot's 8-bit scheme does not know are handled so:
    weight-free ones (``Rescaling``, ``Normalization``...) and a BatchNormalization that does
    not follow a conv get their output fake-quantised; others with trainable weights are
    refused unless named in ``keep_float``, which leaves a layer in float (the converter then
    inserts quantize/dequantize around it).
    ``kerascomp.export_tflite(qat_model, path)`` writes the fitted model as int8.

    Until it is fitted the model's activation ranges are tfmot's initial ones, so its outputs
    are poor; fit at least one epoch, with a small learning rate (a trained model is being
    adjusted, not trained: on the shipped ResNet-20, one epoch with Adam at 1e-5 lost 0.1
    point of top-1, 1e-3 lost 16).

    Example::

        import tf_keras

        qat = kerascomp.quantize_aware(small)
        qat.compile(tf_keras.optimizers.Adam(1e-5), "sparse_categorical_crossentropy", metrics=["accuracy"])
        qat.fit(x, y, epochs=1)
        kerascomp.export_tflite(qat, "small_int8.tflite")
    """
    if isinstance(keep_float, str) or not all(isinstance(name, str) for name in keep_float):
        raise InvalidArgumentError(f"keep_float must be a list of layer names, got {keep_float!r}.")
    keep_float = set(keep_float)
    if is_quantize_aware(model):
        raise InvalidArgumentError(f"model {model.name!r} is already quantisation-aware; fit it and export it.")
    graph = read_model(model)
    check_finite(graph)
    unknown = keep_float - set(graph.layers)
    if unknown:
        raise InvalidArgumentError(f"keep_float names layer(s) {sorted(unknown)} that model {model.name!r} "
                                   "does not have (after strip, kerascomp layers keep their names).")
    float_model = write_model(to_tf_keras(strip_graph(graph)))
    tfmot = import_tfmot()
    return _annotate_and_apply(float_model, keep_float, tfmot)


def _annotate_and_apply(float_model: Any, keep_float: set[str], tfmot: ModuleType) -> Any:
    import tf_keras

    quantization = tfmot.quantization.keras
    registry = quantization.default_8bit.Default8BitQuantizeScheme().get_quantize_registry()
    output_only = _output_only_config(tfmot)
    shared = [layer.name for layer in float_model.layers if len(layer.inbound_nodes) > 1]
    if shared:
        raise UnsupportedModelError(
            f"layer(s) {shared} are called more than once (shared factors, e.g. joint SVD's shared bases); tfmot's "
            "QAT wrapper cannot share one layer across calls. Export with quantize='int8' (post-training) instead.")

    def handled_by_tfmot(layer) -> bool:
        if isinstance(layer, tf_keras.layers.BatchNormalization):  # tfmot folds conv -> BN patterns itself
            producers = [node.inbound_layers for node in layer.inbound_nodes]
            return all(type(p).__name__ in _BN_FOLDED_AFTER for p in producers)
        return registry.supports(layer)

    refused = [f"{layer.name} ({type(layer).__name__})" for layer in float_model.layers
               if not isinstance(layer, tf_keras.layers.InputLayer) and layer.name not in keep_float
               and not handled_by_tfmot(layer) and layer.trainable_weights
               and not isinstance(layer, tf_keras.layers.BatchNormalization)]
    if refused:
        raise UnsupportedModelError(
            f"tfmot's 8-bit scheme cannot quantise layer(s) {refused}. Pass keep_float=[...] with their names to "
            "keep them in float, or replace them with supported layers.")

    def annotate(layer):
        if isinstance(layer, tf_keras.layers.InputLayer) or layer.name in keep_float:
            return layer
        config = None if handled_by_tfmot(layer) else output_only()
        return quantization.quantize_annotate_layer(layer, quantize_config=config)

    annotated = tf_keras.models.clone_model(float_model, clone_function=annotate)
    with quantization.quantize_scope({"OutputQuantizeConfig": output_only}):
        try:
            return quantization.quantize_apply(annotated)
        except Exception as error:  # tfmot's own RuntimeError/ValueError text names the layer
            raise UnsupportedModelError(f"tfmot could not make model {float_model.name!r} quantisation-aware: "
                                        f"{error}") from error

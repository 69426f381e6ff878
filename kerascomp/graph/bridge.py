"""Move a graph of standard Keras 3 layers to tf_keras (Keras 2), weights unchanged.

tfmot's quantisation-aware training only accepts tf_keras models, so a Keras 3 user's
(stripped) model is rebuilt layer by layer as the same tf_keras layer class with a
translated config and the identical weights. Only built-in layers can cross; a custom
layer is refused by name.

What the translation does to each layer config:

* ``dtype``: a Keras 3 ``DTypePolicy`` becomes its name (``"float32"``, ``"mixed_float16"``).
* initializers are dropped (the weights are copied, so they never run) because Keras 3
  adds arguments tf_keras does not know;
* regularizers and constraints keep their class and config (they matter when finetuning);
* arguments tf_keras does not have are dropped when they hold their neutral value
  (``None``/``False``, e.g. ``lora_rank=None``) and refused otherwise.
"""
from __future__ import annotations

import inspect
from typing import Any

from kerascomp.errors import UnsupportedModelError
from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import is_input

_BASE_LAYER_ARGUMENTS = {"name", "trainable", "dtype", "dynamic", "input_dim", "input_shape", "batch_input_shape",
                         "batch_size", "weights", "activity_regularizer", "autocast"}
_SERIALISED_KINDS = {"keras.regularizers": "regularizer", "keras.constraints": "constraint"}


def _tf_keras_class(spec: LayerSpec) -> type:
    import tf_keras

    package = spec.cls.__module__.split(".", 1)[0]
    target = getattr(tf_keras.layers, spec.class_name, None)
    if package != "keras" or target is None:
        raise UnsupportedModelError(
            f"layer {spec.name!r} ({spec.cls.__module__}.{spec.class_name}) has no tf_keras counterpart, so the "
            "Keras 3 model cannot be moved to tf_keras for quantisation-aware training. Use built-in Keras layers "
            "there, or build the model with tf_keras (TF_USE_LEGACY_KERAS=1) and register the layer with tfmot.")
    return target


def _accepted_arguments(cls: type) -> set[str]:
    """Constructor argument names of a tf_keras layer class, including those its base Layer takes."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        parameters = inspect.signature(klass.__init__).parameters
        names |= {name for name, p in parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)}
        if not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
            break
    return names | _BASE_LAYER_ARGUMENTS


def _translate_value(layer: str, key: str, value: Any) -> Any:
    if not isinstance(value, dict) or "class_name" not in value or "module" not in value:
        return value
    if value["class_name"] in ("DTypePolicy", "DTypePolicyMap") or key == "dtype":
        return value["config"]["name"]
    if value["module"] in _SERIALISED_KINDS:
        return {"class_name": value["class_name"], "config": dict(value.get("config") or {})}
    raise UnsupportedModelError(
        f"layer {layer!r}: argument {key}={value['class_name']} ({value['module']}) cannot be carried to tf_keras. "
        "Remove it from the layer before quantisation-aware training.")


def _translate_config(spec: LayerSpec, target: type) -> dict:
    accepted = _accepted_arguments(target)
    config = {}
    for key, value in spec.config.items():
        if key.endswith("_initializer"):
            continue
        if key not in accepted:
            if value in (None, False, 0, "", [], {}):
                continue
            raise UnsupportedModelError(
                f"layer {spec.name!r} ({spec.class_name}): its Keras 3 argument {key}={value!r} does not exist in "
                f"tf_keras.layers.{spec.class_name}, so the layer cannot be moved to tf_keras without changing it.")
        config[key] = _translate_value(spec.name, key, value)
    return config


def to_tf_keras(graph: Graph) -> Graph:
    """A copy of a Keras 3 ``graph`` whose layers are the same tf_keras layers with the same weights."""
    if graph.flavour == "tf_keras":
        return graph.copy()
    moved = graph.copy()
    moved.flavour = "tf_keras"
    for name, spec in moved.layers.items():
        if is_input(spec):
            continue
        target = _tf_keras_class(spec)
        moved.layers[name] = LayerSpec(name, target, _translate_config(spec, target), spec.weights)
    return moved

"""Which Keras a model belongs to: Keras 3 (``keras``) or Keras 2 (``tf_keras``).

kerascomp always writes a model back in the flavour it was read from.
"""
from __future__ import annotations

import os
from types import ModuleType
from typing import Any

from kerascomp.errors import InvalidArgumentError

_FLAVOUR_PACKAGES = ("keras", "tf_keras")


def legacy_requested() -> bool:
    return os.environ.get("TF_USE_LEGACY_KERAS", "").lower() in ("1", "true", "yes")


def default_keras() -> ModuleType:
    """The Keras that ``tf.keras`` resolves to in this process."""
    if legacy_requested():
        import tf_keras

        return tf_keras
    import keras

    return keras


def flavour_name(obj: Any) -> str | None:
    """``"keras"`` or ``"tf_keras"`` for a layer or model (or its class), else ``None``."""
    cls = obj if isinstance(obj, type) else type(obj)
    for base in cls.__mro__:
        package = base.__module__.split(".", 1)[0]
        if package in _FLAVOUR_PACKAGES:
            return package
    return None


def keras_of(model: Any) -> ModuleType:
    """The Keras package a model was built with."""
    name = flavour_name(model)
    if name is None:
        raise InvalidArgumentError(
            f"expected a Keras model, got {type(model).__module__}.{type(model).__name__}. "
            "Pass a keras.Model (Keras 3) or a tf_keras.Model.")
    if name == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras

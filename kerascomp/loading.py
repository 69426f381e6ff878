"""Loading models: a ``.keras`` file with kerascomp's layers, and the shipped CIFAR-10 demo model."""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.flavour import default_keras
from kerascomp.layers import custom_objects
from kerascomp.zoo import cifar_resnet

DEMO_MODEL = "resnet20_cifar10.keras"


def load_model(path: str | Path) -> Any:
    """A ``.keras`` file loaded uncompiled in this process's Keras flavour, kerascomp's layers included."""
    keras = default_keras()
    if not Path(path).is_file():
        raise InvalidArgumentError(f"model file {path} does not exist.")
    return keras.models.load_model(path, custom_objects=custom_objects(keras), compile=False)


def demo_model_path() -> Path:
    return Path(str(resources.files("kerascomp") / "assets" / DEMO_MODEL))


def load_demo_model() -> Any:
    """The shipped CIFAR-10 ResNet-20, in this process's Keras flavour.

    The file is a Keras 3 ``.keras``; under ``TF_USE_LEGACY_KERAS=1`` the same architecture is
    built with tf_keras and given the file's weights (same layer order).
    """
    import keras as keras3  # the file is Keras 3 whatever the process's default flavour

    model = keras3.models.load_model(demo_model_path(), custom_objects=custom_objects(keras3), compile=False)
    flavour = default_keras()
    if flavour is keras3:
        return model
    twin = cifar_resnet(20, 16, keras_module=flavour)
    twin.set_weights(model.get_weights())
    return twin

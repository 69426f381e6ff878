"""Small reference CNNs used by the demo, the tests and the benchmarks.

Models are built with whichever Keras flavour is passed in (``keras`` or
``tf_keras``), so the same definition serves both.
"""
from __future__ import annotations

from typing import Any

from kerascomp.graph.flavour import default_keras


def cifar_resnet(
    depth: int = 20,
    width: int = 16,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    weight_decay: float = 0.0,
    keras_module: Any = None,
):
    """CIFAR ResNet (He et al. 2016, section 4.2): 3 stages of (depth-2)/6 basic blocks.

    The input is raw 0..255 pixels; a ``Rescaling`` layer maps them to [-1, 1]
    so a ``.tflite`` built from the model takes plain images.
    """
    if (depth - 2) % 6 != 0:
        raise ValueError(f"depth must be 6n+2 (20, 32, 44, 56, ...), got {depth}")
    keras = keras_module or _default_keras()
    layers = keras.layers
    reg = keras.regularizers.l2(weight_decay) if weight_decay else None
    blocks_per_stage = (depth - 2) // 6

    def conv(filters, kernel, strides, name):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", kernel_regularizer=reg, name=name)

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = conv(width, 3, 1, "stem_conv")(x)
    x = layers.BatchNormalization(name="stem_bn")(x)
    x = layers.ReLU(name="stem_relu")(x)
    for stage in range(3):
        filters = width * 2**stage
        for block in range(blocks_per_stage):
            strides = 2 if (stage > 0 and block == 0) else 1
            prefix = f"s{stage + 1}b{block + 1}"
            shortcut = x
            y = conv(filters, 3, strides, f"{prefix}_conv1")(x)
            y = layers.BatchNormalization(name=f"{prefix}_bn1")(y)
            y = layers.ReLU(name=f"{prefix}_relu1")(y)
            y = conv(filters, 3, 1, f"{prefix}_conv2")(y)
            y = layers.BatchNormalization(name=f"{prefix}_bn2")(y)
            if strides != 1 or shortcut.shape[-1] != filters:
                shortcut = conv(filters, 1, strides, f"{prefix}_proj")(shortcut)
                shortcut = layers.BatchNormalization(name=f"{prefix}_proj_bn")(shortcut)
            x = layers.Add(name=f"{prefix}_add")([shortcut, y])
            x = layers.ReLU(name=f"{prefix}_relu2")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"resnet{depth}_w{width}")


def _default_keras():
    return default_keras()

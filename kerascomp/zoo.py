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


# (expansion t, output channels c, blocks n, first stride s) of MobileNetV2 (Sandler et al. 2018, table 2),
# with the stem and the second stage at stride 1: the usual variant for 32x32 inputs (final map 4x4).
MOBILENETV2_CIFAR_STAGES = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                            (6, 160, 3, 2), (6, 320, 1, 1))


def cifar_mobilenetv2(
    alpha: float = 1.0,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (32, 32, 3),
    weight_decay: float = 0.0,
    dropout: float = 0.0,
    keras_module: Any = None,
):
    """MobileNetV2 for 32x32 inputs: inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 project,
    ReLU6, identity shortcut when the shape allows), stride 1 in the stem and the second stage.

    Raw 0..255 pixels in, as :func:`cifar_resnet`. ``alpha`` scales every width (rounded to 8).
    """
    keras = keras_module or _default_keras()
    layers = keras.layers
    reg = keras.regularizers.l2(weight_decay) if weight_decay else None

    def width(channels: float) -> int:
        return max(8, int(channels * alpha + 4) // 8 * 8)

    def conv(filters, kernel, strides, name):
        return layers.Conv2D(filters, kernel, strides=strides, padding="same", use_bias=False,
                             kernel_initializer="he_normal", kernel_regularizer=reg, name=name)

    def bn_relu6(x, name, activation=True):
        x = layers.BatchNormalization(name=f"{name}_bn")(x)
        return layers.ReLU(6.0, name=f"{name}_relu")(x) if activation else x

    inputs = keras.Input(shape=input_shape, name="image")
    x = layers.Rescaling(1.0 / 127.5, offset=-1.0, name="rescale")(inputs)
    x = bn_relu6(conv(width(32), 3, 1, "stem_conv")(x), "stem")
    for stage, (expansion, channels, blocks, first_stride) in enumerate(MOBILENETV2_CIFAR_STAGES, start=1):
        for block in range(blocks):
            prefix = f"b{stage}_{block + 1}"
            strides = first_stride if block == 0 else 1
            inputs_channels, outputs_channels = int(x.shape[-1]), width(channels)
            y = x
            if expansion != 1:
                y = bn_relu6(conv(inputs_channels * expansion, 1, 1, f"{prefix}_expand")(y), f"{prefix}_expand")
            y = layers.DepthwiseConv2D(3, strides=strides, padding="same", use_bias=False,
                                       depthwise_regularizer=reg, name=f"{prefix}_dw")(y)
            y = bn_relu6(y, f"{prefix}_dw")
            y = bn_relu6(conv(outputs_channels, 1, 1, f"{prefix}_project")(y), f"{prefix}_project", activation=False)
            if strides == 1 and inputs_channels == outputs_channels:
                y = layers.Add(name=f"{prefix}_add")([x, y])
            x = y
    x = bn_relu6(conv(max(1280, width(1280)), 1, 1, "head_conv")(x), "head")
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    if dropout:
        x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, kernel_regularizer=reg, name="logits")(x)
    return keras.Model(inputs, outputs, name=f"mobilenetv2_cifar_a{alpha:g}")


def _default_keras():
    return default_keras()

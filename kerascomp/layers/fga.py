"""``FilterGroupConv2D``: a grouped kxk conv followed by a 1x1 conv (filter group approximation)."""
from __future__ import annotations

from types import ModuleType


def build_filter_group_conv2d(keras: ModuleType) -> type:
    """Define ``FilterGroupConv2D`` for one Keras package (Keras 3 or tf_keras)."""

    @keras.saving.register_keras_serializable(package="kerascomp", name="FilterGroupConv2D")
    class FilterGroupConv2D(keras.layers.Layer):
        """Replacement for a ``Conv2D(filters, kernel_size)``: ``Conv2D(groups*rank, kernel_size,
        groups=groups)`` then ``Conv2D(filters, 1)``. Stride, dilation and padding stay on the
        grouped conv; bias and activation go on the 1x1 conv.

        Example::

            layer = FilterGroupConv2D(filters=64, kernel_size=3, groups=2, rank=16, padding="same")
            y = layer(keras.Input((32, 32, 64)))      # (None, 32, 32, 64)
        """

        def __init__(self, filters, kernel_size, groups, rank, strides=(1, 1), padding="valid",
                     dilation_rate=(1, 1), use_bias=True, activation=None, **kwargs):
            super().__init__(**kwargs)
            for argument, value in (("filters", filters), ("groups", groups), ("rank", rank)):
                if not isinstance(value, int) or value < 1:
                    raise ValueError(f"FilterGroupConv2D {self.name!r}: {argument} must be a positive int, got {value!r}")
            self.filters = filters
            self.kernel_size = _pair(kernel_size)
            self.groups = groups
            self.rank = rank
            self.strides = _pair(strides)
            self.padding = padding
            self.dilation_rate = _pair(dilation_rate)
            self.use_bias = use_bias
            self.activation = keras.activations.get(activation)
            self.grouped = keras.layers.Conv2D(groups * rank, self.kernel_size, strides=self.strides,
                                               padding=padding, dilation_rate=self.dilation_rate,
                                               groups=groups, use_bias=False, name="grouped")
            self.pointwise = keras.layers.Conv2D(filters, 1, use_bias=use_bias, activation=activation,
                                                 name="pointwise")

        def build(self, input_shape):
            channels = input_shape[-1]
            if channels is None or channels % self.groups:
                raise ValueError(f"FilterGroupConv2D {self.name!r}: {channels} input channels are not "
                                 f"divisible by groups={self.groups}")
            self.grouped.build(input_shape)
            self.pointwise.build(tuple(input_shape[:-1]) + (self.groups * self.rank,))
            self.built = True

        def call(self, inputs):
            if self.groups == 1:
                return self.pointwise(self.grouped(inputs))
            # TF's CPU kernels for grouped convs are slow to train (measured: a step of an FGA
            # ResNet-20 took 4x longer than the dense original), so the grouped conv runs as
            # `groups` dense convs on channel slices; `strip` emits the native grouped CONV_2D
            # that XNNPACK runs fast.
            import tensorflow as tf

            slices = tf.split(inputs, self.groups, axis=-1)
            kernels = tf.split(self.grouped.kernel, self.groups, axis=-1)
            padding = self.padding.upper()
            outputs = [tf.nn.conv2d(x, k, self.strides, padding, dilations=self.dilation_rate)
                       for x, k in zip(slices, kernels)]
            return self.pointwise(tf.concat(outputs, axis=-1))

        def compute_output_shape(self, input_shape):
            return self.pointwise.compute_output_shape(self.grouped.compute_output_shape(input_shape))

        def get_config(self):
            config = super().get_config()
            config.update(filters=self.filters, kernel_size=self.kernel_size, groups=self.groups, rank=self.rank,
                          strides=self.strides, padding=self.padding, dilation_rate=self.dilation_rate,
                          use_bias=self.use_bias, activation=keras.activations.serialize(self.activation))
            return config

    return FilterGroupConv2D


def _pair(value):
    if isinstance(value, int):
        return (value, value)
    return tuple(int(v) for v in value)

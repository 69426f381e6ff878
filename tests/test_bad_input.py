import numpy as np
import pytest

import kerascomp
from kerascomp.errors import (BudgetError, CompressionError, InvalidArgumentError, InvalidWeightsError,
                              UnsupportedModelError)

from conftest import model_fingerprint


def test_non_model_argument():
    with pytest.raises(InvalidArgumentError, match="expected a Keras model.*ndarray"):
        kerascomp.clone_compressed(np.zeros((3, 3)))
    with pytest.raises(InvalidArgumentError, match="strip expects a Keras model"):
        kerascomp.strip("model.keras")


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5, float("nan")])
def test_target_out_of_range(small_resnet, target):
    with pytest.raises(InvalidArgumentError, match=r"target_flops=.* outside \(0, 1\]"):
        kerascomp.clone_compressed(small_resnet, target_flops=target, verbose=0)


@pytest.mark.parametrize("target", ["0.5", True, [0.5]])
def test_target_wrong_type(small_resnet, target):
    with pytest.raises(InvalidArgumentError, match="target_params must be a number"):
        kerascomp.clone_compressed(small_resnet, target_params=target, verbose=0)


def test_unknown_method_and_option(small_resnet):
    with pytest.raises(InvalidArgumentError, match="method='hosvd'"):
        kerascomp.clone_compressed(small_resnet, method="hosvd", verbose=0)
    with pytest.raises(InvalidArgumentError, match="unknown option.*grups"):
        kerascomp.clone_compressed(small_resnet, verbose=0, grups=2)
    with pytest.raises(InvalidArgumentError, match="min_channels_per_group"):
        kerascomp.clone_compressed(small_resnet, verbose=0, min_channels_per_group=0)


def test_nan_weights_name_the_layer(small_resnet):
    layer = small_resnet.get_layer("s2b1_conv2")
    weights = layer.get_weights()
    weights[0][0, 0, 0, 0] = np.nan
    layer.set_weights(weights)
    before = model_fingerprint(small_resnet)
    with pytest.raises(InvalidWeightsError, match="s2b1_conv2.*NaN"):
        kerascomp.clone_compressed(small_resnet, verbose=0)
    assert model_fingerprint(small_resnet) == before


def test_impossible_budget(small_resnet):
    with pytest.raises(BudgetError, match="cannot be met.*Relax the target"):
        kerascomp.clone_compressed(small_resnet, target_flops=0.01, verbose=0)


def test_data_of_wrong_shape(small_resnet):
    with pytest.raises(InvalidArgumentError, match=r"data has shape \(4, 8, 8, 3\).*'image' expects"):
        kerascomp.clone_compressed(small_resnet, data=np.zeros((4, 8, 8, 3), "float32"), verbose=0)
    with pytest.raises(InvalidArgumentError, match="data must be"):
        kerascomp.clone_compressed(small_resnet, data="images.npz", verbose=0)
    bad = np.zeros((4, 16, 16, 3), "float32")
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InvalidArgumentError, match="NaN or inf"):
        kerascomp.clone_compressed(small_resnet, data=bad, verbose=0)


def test_data_as_dataset_and_tuple(small_resnet, images):
    import tensorflow as tf

    labels = np.zeros(len(images), "int32")
    from_dataset = kerascomp.clone_compressed(
        small_resnet, data=tf.data.Dataset.from_tensor_slices((images, labels)).batch(8), verbose=0)
    from_tuple = kerascomp.clone_compressed(small_resnet, data=(images, labels), verbose=0)
    for a, b in zip(from_dataset.get_weights(), from_tuple.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_unknown_custom_layer_is_left_with_warning(keras):
    class Gate(keras.layers.Layer):
        def build(self, input_shape):
            self.kernel = self.add_weight(shape=(input_shape[-1], input_shape[-1]), name="kernel")

        def call(self, x):
            return x * keras.ops.sigmoid(keras.ops.matmul(x, self.kernel)) if hasattr(keras, "ops") else x

    inputs = keras.Input((8, 8, 32))
    x = keras.layers.Conv2D(32, 3, padding="same", name="conv")(inputs)
    x = Gate(name="gate")(x)
    model = keras.Model(inputs, x)
    with pytest.warns(kerascomp.CompressionWarning, match="gate \\(unknown layer class Gate"):
        result = kerascomp.compress(model, target_flops=0.9, verbose=0)
    assert result.report.kept()[0].layer == "gate"


def test_nothing_to_compress_is_refused(keras):
    inputs = keras.Input((16,))
    model = keras.Model(inputs, keras.layers.Dense(4, name="fc")(inputs))
    with pytest.raises(UnsupportedModelError, match="found nothing to compress.*fc: Dense"):
        kerascomp.clone_compressed(model, verbose=0)


def test_channels_first_is_reported(keras):
    inputs = keras.Input((32, 8, 8))
    model = keras.Model(inputs, keras.layers.Conv2D(32, 3, data_format="channels_first", name="cf")(inputs))
    with pytest.raises(UnsupportedModelError, match="cf: channels_first"):
        kerascomp.clone_compressed(model, verbose=0)


def test_errors_share_a_base_class():
    for error in (InvalidArgumentError, UnsupportedModelError, InvalidWeightsError, BudgetError):
        assert issubclass(error, CompressionError)

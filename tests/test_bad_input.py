"""The bad-input catalogue: each case is a test that asserts a kerascomp error type and a message naming
the layer or argument at fault (and, where it helps, what to do)."""
import zipfile

import numpy as np
import pytest
from conftest import model_fingerprint

import kerascomp
from kerascomp.errors import (
    BenchmarkError,
    BudgetError,
    CompressionError,
    ExportError,
    InvalidArgumentError,
    InvalidWeightsError,
    UnsupportedModelError,
)
from kerascomp.graph.flavour import legacy_requested


def test_non_model_argument():
    with pytest.raises(InvalidArgumentError, match="expected a Keras model.*ndarray"):
        kerascomp.clone_compressed(np.zeros((3, 3)))
    with pytest.raises(InvalidArgumentError, match="strip expects a Keras model"):
        kerascomp.strip("model.keras")  # noqa: B005 (kerascomp.strip, not str.strip)


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


def test_a_budget_held_by_separable_convs_is_refused_without_pointwise_naming_the_methods_that_prune_them(keras):
    """Xception and NASNet hold their MACs in SeparableConv2D layers; with pointwise=False a factoring method leaves
    them whole: the refusal names the layer, the option and the pruning methods that take it. With the default
    pointwise='auto' svd splits them and reaches the target (tests/test_separable.py); l1 does too."""
    layers = keras.layers
    inputs = keras.Input((16, 16, 8))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="sep1")(x)
    x = layers.SeparableConv2D(64, 3, padding="same", activation="relu", name="sep2")(x)
    model = keras.Model(inputs, layers.Dense(4, name="fc")(layers.GlobalAveragePooling2D()(x)))
    with pytest.raises(BudgetError, match=r"sep1 \(SeparableConv2D left whole \(fga, svd, joint_svd, tucker and "
                                          r"auto factor its 1x1 part unless pointwise=False; collaborative "
                                          r"prunes and factors it, channels_last only; l1 and correlation prune "
                                          r"its channels\)"):
        kerascomp.compress(model, "svd", target_flops=0.5, pointwise=False, verbose=0)
    for method in ("svd", "l1"):
        result = kerascomp.compress(model, method, target_flops=0.5, verbose=0)
        assert result.report.macs_after <= 0.5 * result.report.macs_before


def test_errors_share_a_base_class():
    for error in (InvalidArgumentError, UnsupportedModelError, InvalidWeightsError, BudgetError):
        assert issubclass(error, CompressionError)


# --- the catalogue: (id, call(ctx), error, message regex); ctx has model, keras, x, labels, tmp ------------


class Ctx:
    def __init__(self, model, keras, tmp_path):
        self.model, self.keras, self.tmp = model, keras, tmp_path
        self.x = np.random.default_rng(0).uniform(0, 1, (4, 16, 16, 3)).astype("float32")
        self.labels = np.arange(4)

    def corrupted(self, value, layer="s1b1_conv1"):
        keras = self.keras
        copy = keras.models.clone_model(self.model)
        copy.set_weights(self.model.get_weights())
        weights = copy.get_layer(layer).get_weights()
        weights[0][0, 0, 0, 0] = value
        copy.get_layer(layer).set_weights(weights)
        return copy

    def functional(self, build, shape=(8, 8, 3)):
        inputs = self.keras.Input(shape)
        return self.keras.Model(inputs, build(inputs, self.keras.layers))

    def tflite(self, name, content):
        path = self.tmp / name
        path.write_bytes(content)
        return path


def _lambda_between_convs(x, layers):
    x = layers.Conv2D(16, 3, padding="same", name="conv1")(x)
    x = layers.Lambda(lambda t: t * 2.0, name="double")(x)
    return layers.Conv2D(16, 3, padding="same", name="conv2")(x)


def _shared_conv(x, layers):
    shared = layers.Conv2D(8, 3, padding="same", name="shared")
    return shared(shared(layers.Conv2D(8, 1, name="stem")(x)))


def _subclassed(ctx):
    class Tiny(ctx.keras.Model):
        def __init__(self):
            super().__init__()
            self.conv = ctx.keras.layers.Conv2D(4, 3)

        def call(self, x):
            return self.conv(x)

    model = Tiny()
    model(np.zeros((1, 8, 8, 3), "float32"))
    return kerascomp.clone_compressed(model, verbose=0)


def _no_config_layer(ctx):
    class NoConfig(ctx.keras.layers.Layer):
        def call(self, x):
            return x * 2.0

        def get_config(self):
            raise NotImplementedError

    model = ctx.functional(lambda x, layers: NoConfig(name="scaler")(layers.Conv2D(8, 3, name="conv")(x)))
    return kerascomp.clone_compressed(model, verbose=0)


def _foreign_file(ctx):
    path = ctx.tmp / "model.tflite"
    with zipfile.ZipFile(path, "w") as archive:  # a .keras archive renamed
        archive.writestr("config.json", "{}")
    return path


def _unwritable(ctx, monkeypatch):
    import kerascomp.export.tflite as tflite

    monkeypatch.setattr(tflite.os, "access", lambda *args: False)  # root ignores chmod, so fake it
    return kerascomp.export_tflite(ctx.model, ctx.tmp / "m.tflite")


def _failing_write(ctx, monkeypatch):
    import kerascomp.export.tflite as tflite

    def full_disk(*args):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tflite.os, "replace", full_disk)
    try:
        kerascomp.export_tflite(ctx.model, ctx.tmp / "m.tflite")
    finally:
        assert list(ctx.tmp.iterdir()) == [], "a partial file was left behind"


CATALOGUE = [
    ("inf-weights", lambda c, mp: kerascomp.clone_compressed(c.corrupted(np.inf), verbose=0),
     InvalidWeightsError, r"'s1b1_conv1' \(Conv2D\) has 1 NaN/inf"),
    ("nan-weights-export", lambda c, mp: kerascomp.export_tflite(c.corrupted(np.nan), c.tmp / "m.tflite"),
     InvalidWeightsError, r"'s1b1_conv1'.*NaN/inf.*Fix or retrain"),
    ("nan-weights-plan", lambda c, mp: kerascomp.plan(c.corrupted(np.nan), target_flops=0.5, data=(c.x, c.labels)),
     InvalidWeightsError, "'s1b1_conv1'"),
    ("unbuilt-model", lambda c, mp: kerascomp.clone_compressed(c.keras.Sequential([c.keras.layers.Dense(2)])),
     UnsupportedModelError, "not built"),
    ("subclassed-model", lambda c, mp: _subclassed(c), UnsupportedModelError, "subclassed model"),
    ("custom-layer-without-config", lambda c, mp: _no_config_layer(c), UnsupportedModelError,
     r"layer\(s\) \['scaler'\] have no get_config"),
    ("lambda-blocks-pruning", lambda c, mp: kerascomp.clone_compressed(c.functional(_lambda_between_convs), "l1",
                                                                       target_flops=0.5, verbose=0),
     BudgetError, r"conv1.*Lambda 'double'"),
    ("shared-layer-tucker", lambda c, mp: kerascomp.clone_compressed(c.functional(_shared_conv), "tucker",
                                                                        pointwise=False, verbose=0),
     UnsupportedModelError, r"shared: shared layer \(called more than once\)"),
    ("no-macs", lambda c, mp: kerascomp.clone_compressed(c.functional(lambda x, l: l.ReLU(name="act")(x)), verbose=0),
     UnsupportedModelError, r"no MACs to compress.*ReLU"),
    ("only-1x1-for-tucker", lambda c, mp: kerascomp.clone_compressed(
        c.functional(lambda x, l: l.Conv2D(8, 1, name="pw")(x)), "tucker", pointwise=False, verbose=0),
     UnsupportedModelError, r"pw: 1x1 conv left dense \(pointwise=False"),
    ("empty-data", lambda c, mp: kerascomp.clone_compressed(c.model, data=c.x[:0], verbose=0),
     InvalidArgumentError, r"data for input 'image' has no rows"),
    ("too-many-input-arrays", lambda c, mp: kerascomp.clone_compressed(c.model, data=[c.x, c.x], verbose=0),
     InvalidArgumentError, r"data holds 2 input array\(s\) but the model has 1 inputs \(\['image'\]\)"),
    ("string-data", lambda c, mp: kerascomp.clone_compressed(c.model, data=np.full((2, 16, 16, 3), "a"), verbose=0),
     InvalidArgumentError, r"data for input 'image' has dtype <U1"),
    ("verbose-not-a-level", lambda c, mp: kerascomp.clone_compressed(c.model, verbose="loud"),
     InvalidArgumentError, "verbose must be 0"),
    ("max-fraction", lambda c, mp: kerascomp.clone_compressed(c.model, "l1", max_fraction=1.5, verbose=0),
     InvalidArgumentError, r"max_fraction must be a number in \(0, 1\), got 1.5"),
    ("allocation", lambda c, mp: kerascomp.clone_compressed(c.model, "l1", allocation="best", verbose=0),
     InvalidArgumentError, "allocation must be one of.*'best'"),
    ("jsvd-variant", lambda c, mp: kerascomp.clone_compressed(c.model, "joint_svd", variant="up", verbose=0),
     InvalidArgumentError, "variant must be one of.*'up'"),
    ("fga-rank-multiple", lambda c, mp: kerascomp.clone_compressed(c.model, "fga", rank_multiple=0, verbose=0),
     InvalidArgumentError, "rank_multiple must be an int >= 1, got 0"),
    ("collaborative-without-data", lambda c, mp: kerascomp.clone_compressed(c.model, "collaborative", verbose=0),
     InvalidArgumentError, r"data=\(x, y\)"),
    ("collaborative-without-labels", lambda c, mp: kerascomp.clone_compressed(c.model, "collaborative", data=c.x,
                                                                              verbose=0),
     InvalidArgumentError, r"data must be \(x, y\).*got ndarray"),
    ("collaborative-label-count", lambda c, mp: kerascomp.clone_compressed(
        c.model, "collaborative", data=(c.x, c.labels[:3]), verbose=0),
     InvalidArgumentError, "data has 4 inputs but 3 labels"),
    ("two-targets", lambda c, mp: kerascomp.compress(c.model, "collaborative", target_flops=0.5, target_latency=0.5,
                                                     data=(c.x, c.labels), verbose=0),
     InvalidArgumentError, "pass one target"),
    ("latency-not-a-table", lambda c, mp: kerascomp.clone_compressed(c.model, "fga", target_latency=0.5,
                                                                     latency="table.json", verbose=0),
     InvalidArgumentError, r"latency must be a kerascomp.LatencyTable or \"host\" .*got 'table.json'"),
    ("latency-not-a-table-for-pruning", lambda c, mp: kerascomp.clone_compressed(c.model, "l1", target_flops=0.5,
                                                                                  latency="table.json", verbose=0),
     InvalidArgumentError, r"latency must be a kerascomp.LatencyTable or \"host\" .*got 'table.json'"),
    ("loss-for-fga", lambda c, mp: kerascomp.clone_compressed(c.model, "fga", loss="mse"),
     InvalidArgumentError, "loss= is used by method='collaborative' only, not 'fga'"),
    ("plan-unknown-method", lambda c, mp: kerascomp.plan(c.model, method="fgaa", target_flops=0.5, data=c.x),
     InvalidArgumentError, "method='fgaa' is not one of"),
    ("plan-file-not-json", lambda c, mp: kerascomp.Plan.load(c.tflite("plan.json", b"\x00garbage")),
     InvalidArgumentError, "not a kerascomp plan"),
    ("rounds-zero", lambda c, mp: kerascomp.prune_in_rounds(c.model, lambda m: None, method="l1", rounds=0),
     InvalidArgumentError, "rounds must be an int >= 1, got 0"),
    ("rounds-method", lambda c, mp: kerascomp.prune_in_rounds(c.model, lambda m: None, method="fga"),
     InvalidArgumentError, r"supports the channel-pruning methods \['correlation', 'l1'\], got 'fga'"),
    ("rounds-train-not-callable", lambda c, mp: kerascomp.prune_in_rounds(c.model, "train"),
     InvalidArgumentError, "train .*must be callables"),
    ("cost-of-a-string", lambda c, mp: kerascomp.cost("model.keras"),
     InvalidArgumentError, "expected a Keras model, got builtins.str"),
    ("latency-table-of-a-string", lambda c, mp: kerascomp.latency_table("model.keras"),
     InvalidArgumentError, "expected a Keras model, got builtins.str"),
    ("export-quantize-mode", lambda c, mp: kerascomp.export_tflite(c.model, c.tmp / "m.tflite", quantize="int4"),
     InvalidArgumentError, "quantize='int4' is not one of"),
    ("export-int8-without-data", lambda c, mp: kerascomp.export_tflite(c.model, c.tmp / "m.tflite", quantize="int8"),
     InvalidArgumentError, "quantize='int8' needs representative_data"),
    ("export-suffix", lambda c, mp: kerascomp.export_tflite(c.model, c.tmp / "model.keras"),
     InvalidArgumentError, r"model.keras should end in .tflite"),
    ("export-into-a-folder", lambda c, mp: kerascomp.export_tflite(c.model, (c.tmp / "m.tflite").mkdir() or
                                                                  c.tmp / "m.tflite"),
     InvalidArgumentError, "m.tflite: it is a folder"),
    ("export-unwritable-folder", _unwritable, InvalidArgumentError, "is not writable"),
    ("export-write-fails", _failing_write, ExportError, r"cannot write .*m.tflite: .*No space left"),
    ("export-check-samples", lambda c, mp: kerascomp.export_tflite(c.model, c.tmp / "m.tflite", check_samples=0),
     InvalidArgumentError, "check_samples must be a positive int, got 0"),
    ("bench-empty-file", lambda c, mp: kerascomp.benchmark_tflite(c.tflite("empty.tflite", b"")),
     BenchmarkError, "empty.tflite is not a valid .tflite"),
    ("bench-foreign-file", lambda c, mp: kerascomp.benchmark_tflite(_foreign_file(c)),
     BenchmarkError, "model.tflite is not a valid .tflite"),
    ("bench-runs", lambda c, mp: kerascomp.benchmark_tflite(c.tflite("m.tflite", b"x"), runs=0),
     InvalidArgumentError, "runs must be a positive int, got 0"),
    ("compare-nothing", lambda c, mp: kerascomp.compare_tflite([]),
     InvalidArgumentError, "compare_tflite needs at least one"),
]
if legacy_requested():  # tfmot runs on tf_keras models
    CATALOGUE.append(("qat-keep-float", lambda c, mp: kerascomp.quantize_aware(c.model, keep_float=["nope"]),
                      InvalidArgumentError, r"keep_float names layer\(s\) \['nope'\]"))


@pytest.mark.parametrize("case", CATALOGUE, ids=[case[0] for case in CATALOGUE])
def test_catalogue(case, small_resnet, keras, tmp_path, monkeypatch):
    _, call, error, message = case
    ctx = Ctx(small_resnet, keras, tmp_path)
    before = model_fingerprint(small_resnet)
    with pytest.raises(error, match=message) as raised:
        call(ctx, monkeypatch)
    assert isinstance(raised.value, CompressionError)
    assert model_fingerprint(small_resnet) == before


import warnings

import numpy as np
import pytest
from conftest import model_fingerprint

import kerascomp
from kerascomp.decompose import fga as fga_math
from kerascomp.graph.keras_io import read_model


@pytest.mark.parametrize("conv_kwargs,groups", [
    (dict(filters=24, kernel_size=3, padding="same", use_bias=True), 1),
    (dict(filters=24, kernel_size=3, padding="same", strides=2, use_bias=False), 2),
    (dict(filters=16, kernel_size=3, padding="valid", dilation_rate=2, use_bias=True), 2),
    (dict(filters=8, kernel_size=(3, 5), padding="valid", strides=(2, 1), use_bias=False, activation="relu"), 4),
])
def test_full_rank_layer_reproduces_conv(keras, conv_kwargs, groups):
    rng = np.random.default_rng(0)
    conv = keras.layers.Conv2D(name="conv", **conv_kwargs)
    inputs = rng.normal(size=(2, 13, 13, 32)).astype("float32")
    expected = np.asarray(conv(inputs))
    weights = conv.get_weights()
    if conv_kwargs["use_bias"]:
        weights[1] = rng.normal(size=weights[1].shape).astype("float32")
        conv.set_weights(weights)
        expected = np.asarray(conv(inputs))
    rank = fga_math.max_rank(weights[0].shape, groups)
    grouped, pointwise = fga_math.fga_factors(weights[0], groups, rank)
    layer = kerascomp.layers_for(keras).FilterGroupConv2D(
        filters=conv_kwargs["filters"], kernel_size=conv_kwargs["kernel_size"], groups=groups, rank=rank,
        strides=conv_kwargs.get("strides", 1), padding=conv_kwargs["padding"],
        dilation_rate=conv_kwargs.get("dilation_rate", 1), use_bias=conv_kwargs["use_bias"],
        activation=conv_kwargs.get("activation"))
    layer(inputs)
    layer.set_weights([grouped, pointwise] + weights[1:])
    produced = np.asarray(layer(inputs))
    assert produced.shape == expected.shape
    assert np.linalg.norm(produced - expected) / np.linalg.norm(expected) < 1e-5


@pytest.mark.parametrize("target", [0.2, 0.5])
def test_budget_met_and_model_untouched(small_resnet, images, target):
    before = model_fingerprint(small_resnet)
    original_macs = kerascomp.cost(small_resnet).macs
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = kerascomp.compress(small_resnet, target_flops=target, verbose=0)
    assert model_fingerprint(small_resnet) == before
    assert kerascomp.cost(result.model).macs <= target * original_macs
    assert result.report.macs_after == kerascomp.cost(result.model).macs
    assert result.report.macs_ratio <= target
    # The budget is spent, not wasted: within a few percent of the target.
    assert result.report.macs_ratio > target - 0.05
    # Layers left alone are reported, with a reason, and warned about.
    kept = {d.layer: d.reason for d in result.report.kept()}
    assert "1x1 conv" in kept["s2b1_proj"]
    assert "Dense" in kept["logits"]
    assert any("left uncompressed" in str(w.message) and "s2b1_proj" in str(w.message) for w in caught)


def test_groups_respect_min_channels_per_group(small_resnet):
    result = kerascomp.compress(small_resnet, target_flops=0.3, verbose=0, min_channels_per_group=32)
    for decision in result.report.layers:
        if decision.action.startswith("fga"):
            channels = small_resnet.get_layer(decision.layer).get_weights()[0].shape[2]
            groups = decision.detail["groups"]
            assert groups == 1 or channels // groups >= 32


def test_target_params(small_resnet):
    result = kerascomp.compress(small_resnet, target_params=0.5, verbose=0)
    assert result.model.count_params() <= 0.5 * small_resnet.count_params()


def test_pointwise_option_reaches_lower_budgets(small_resnet):
    default = kerascomp.compress(small_resnet, target_flops=0.3, verbose=0)
    assert not any(d.action.startswith("fga") for d in default.report.layers if d.layer.endswith("_proj"))
    with_pointwise = kerascomp.compress(small_resnet, target_flops=0.3, verbose=0, pointwise=True,
                                        min_channels_per_group=1)
    assert with_pointwise.report.macs_ratio <= 0.3


def test_data_refinement_reduces_output_error(small_resnet, images):
    plain = kerascomp.compress(small_resnet, target_flops=0.4, verbose=0)
    # FGA's own refit (original-model inputs) runs when the shared reconstruction is off
    refined = kerascomp.compress(small_resnet, target_flops=0.4, data=images, reconstruct=False, verbose=0)
    details = [d.detail for d in refined.report.layers if d.action.startswith("fga")]
    assert details and all("output_error_refined" in d for d in details)
    assert sum(d["output_error_refined"] for d in details) < sum(d["output_error_svd"] for d in details)
    # by default the shared reconstruction replaces it (compressed-model inputs, errors before/after)
    reconstructed = kerascomp.compress(small_resnet, target_flops=0.4, data=images, verbose=0)
    details = [d.detail for d in reconstructed.report.layers if d.action.startswith("fga")]
    assert details and not any("output_error_refined" in d for d in details)
    assert sum(d["output_error_after"] for d in details) < sum(d["output_error_before"] for d in details)
    reference = np.asarray(small_resnet(images))

    def error(model):
        return np.linalg.norm(np.asarray(model(images)) - reference) / np.linalg.norm(reference)

    assert error(refined.model) < error(plain.model)
    assert error(reconstructed.model) < error(plain.model)


def test_train_save_load_and_strip(small_resnet, images, tmp_path, keras):
    small = kerascomp.clone_compressed(small_resnet, target_flops=0.5, verbose=0)
    layer_classes = {type(layer).__name__ for layer in small.layers}
    assert "FilterGroupConv2D" in layer_classes
    small.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    labels = np.arange(len(images)) % 10
    history = small.fit(images, labels, epochs=2, batch_size=16, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))
    path = tmp_path / "small.keras"
    small.save(path)
    loaded = keras.models.load_model(path, custom_objects=kerascomp.custom_objects(keras))
    np.testing.assert_allclose(np.asarray(loaded(images)), np.asarray(small(images)), atol=1e-5)
    stripped = kerascomp.strip(small)
    assert {type(layer).__name__ for layer in stripped.layers} <= {type(layer).__name__ for layer in small_resnet.layers} | {"InputLayer"}
    np.testing.assert_allclose(np.asarray(stripped(images)), np.asarray(small(images)), atol=1e-4)
    assert kerascomp.cost(stripped).macs == kerascomp.cost(small).macs


def test_deterministic(small_resnet, images):
    first = kerascomp.clone_compressed(small_resnet, target_flops=0.4, data=images, verbose=0)
    second = kerascomp.clone_compressed(small_resnet, target_flops=0.4, data=images, verbose=0)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_full_budget_keeps_outputs(small_resnet, images):
    result = kerascomp.compress(small_resnet, target_flops=1.0, verbose=0)
    np.testing.assert_allclose(np.asarray(result.model(images)), np.asarray(small_resnet(images)), atol=1e-5)


def test_shared_conv_stays_shared(keras):
    inputs = keras.Input((8, 8, 32))
    shared = keras.layers.Conv2D(32, 3, padding="same", name="shared")
    x = shared(keras.layers.ReLU()(shared(inputs)))
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x))
    small = kerascomp.clone_compressed(model, target_flops=0.5, verbose=0)
    graph = read_model(small)
    assert graph.layers["shared"].class_name == "FilterGroupConv2D"
    assert len([n for n in graph.nodes if n.layer == "shared"]) == 2
    assert kerascomp.cost(small).macs <= 0.5 * kerascomp.cost(model).macs


def test_nested_backbone_is_compressed(keras, images):
    inputs = keras.Input((16, 16, 3))
    x = keras.layers.Conv2D(32, 3, padding="same", activation="relu", name="c1")(inputs)
    x = keras.layers.Conv2D(64, 3, padding="same", name="c2")(x)
    backbone = keras.Model(inputs, x, name="backbone")
    model = keras.Sequential([keras.Input((16, 16, 3)), backbone, keras.layers.GlobalAveragePooling2D(),
                              keras.layers.Dense(10)])
    result = kerascomp.compress(model, target_flops=0.5, verbose=0)
    assert {d.layer for d in result.report.layers if d.action.startswith("fga")} >= {"c2"}
    assert kerascomp.cost(result.model).macs <= 0.5 * kerascomp.cost(model).macs
    exported = kerascomp.export_tflite(result.model, __import__("tempfile").mkdtemp() + "/nested.tflite")
    assert exported.max_abs_error < 1e-4 * max(1.0, float(np.abs(result.model(images)).max()))


def test_rank_multiple_prefers_tiles_then_falls_back(small_resnet):
    def factored(result):
        return [d for d in result.report.layers if d.action.startswith("fga")]

    half = kerascomp.compress(small_resnet, target_flops=0.5, verbose=0)
    assert factored(half) and all(d.detail["rank_multiple"] == 8 and d.detail["rank"] % 8 == 0 for d in factored(half))
    assert half.report.notes["tile_step"] == 8  # the shared tile-step policy, as for every method
    low = kerascomp.compress(small_resnet, target_flops=0.2, verbose=0)
    assert low.report.macs_ratio <= 0.2
    assert all(d.detail["rank_multiple"] < 8 for d in factored(low))
    with pytest.raises(kerascomp.BudgetError):
        kerascomp.compress(small_resnet, target_flops=0.2, verbose=0, rank_multiple=8)
    named = kerascomp.compress(small_resnet, target_flops=0.5, verbose=0, rank_multiple=1)
    assert named.report.macs_ratio <= 0.5 and "tile_step" not in named.report.notes

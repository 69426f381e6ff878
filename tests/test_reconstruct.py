"""The shared reconstruction step: ridge refits from accumulated moments, the design matrices of each layer
kind, and what reconstruction does to every method's model (never a worse layer, a no-op when nothing was lost)."""
import warnings

import numpy as np
import pytest
from conftest import weights_hash

import kerascomp
from kerascomp.decompose.ridge import Moments
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.keras_io import read_model
from kerascomp.methods.reconstruct import _submodel, design, find_units, linear_map
from kerascomp.zoo import cifar_resnet


def test_moments_match_a_direct_least_squares_fit_and_its_residual():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 7)) + 3.0
    y = x @ rng.normal(size=(7, 4)) + 1.5 + 0.1 * rng.normal(size=(500, 4))
    moments = Moments.zeros(7, 4)
    for start in range(0, 500, 64):  # batches give the same statistics as one pass
        moments.add(x[start:start + 64], y[start:start + 64])
    weights, bias = moments.solve(ridge=0.0, fit_bias=True)
    expected = np.linalg.lstsq(np.hstack([x, np.ones((500, 1))]), y, rcond=None)[0]
    np.testing.assert_allclose(weights, expected[:7], rtol=1e-8, atol=1e-8)
    np.testing.assert_allclose(bias, expected[7], rtol=1e-8, atol=1e-8)
    other = rng.normal(size=(7, 4))
    direct = float(((x @ other + 0.3 - y) ** 2).sum())
    assert moments.residual(other, 0.3) == pytest.approx(direct, rel=1e-9)
    assert moments.residual(weights, bias) < moments.residual(other, 0.3)
    assert moments.spread() == pytest.approx(float(((y - y.mean(0)) ** 2).sum()), rel=1e-9)
    no_bias = moments.solve(ridge=0.0, fit_bias=False)
    assert np.all(no_bias[1] == 0) and moments.residual(*no_bias) > moments.residual(weights, bias)
    with pytest.raises(ValueError, match="does not fit"):
        moments.add(x[:, :3], y)


@pytest.mark.parametrize("kwargs", [dict(kernel_size=3, padding="same"), dict(kernel_size=3, strides=2),
                                    dict(kernel_size=(3, 1), padding="same", dilation_rate=2),
                                    dict(kernel_size=1, strides=2, use_bias=False), dict(kernel_size=(1, 3))])
def test_design_times_the_linear_map_is_the_layers_output(keras, kwargs):
    inputs = keras.Input((9, 9, 5))
    model = keras.Model(inputs, keras.layers.Conv2D(6, name="conv", **kwargs)(inputs))
    rng = np.random.default_rng(1)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    x = rng.normal(size=(3, 9, 9, 5)).astype("float32")
    spec = read_model(model).layers["conv"]
    weights, bias = linear_map(spec)
    expected = model.predict(x, verbose=0)
    np.testing.assert_allclose(design(spec, x) @ weights + bias, expected.reshape(-1, 6), rtol=1e-4, atol=1e-4)


def test_design_of_a_filter_group_conv_and_a_dense(keras):
    inputs = keras.Input((8, 8, 32))
    fga = kerascomp.layers_for(keras).FilterGroupConv2D(16, 3, groups=2, rank=4, padding="same", name="fga")
    hidden = fga(inputs)
    outputs = keras.layers.Dense(5, name="dense")(hidden)
    model = keras.Model(inputs, [hidden, outputs])
    rng = np.random.default_rng(2)
    model.set_weights([rng.normal(size=w.shape).astype("float32") for w in model.get_weights()])
    x = rng.normal(size=(2, 8, 8, 32)).astype("float32")
    graph = read_model(model)
    hidden_value, out_value = model.predict(x, verbose=0)
    for name, inputs_value, expected in (("fga", x, hidden_value), ("dense", hidden_value, out_value)):
        spec = graph.layers[name]
        weights, bias = linear_map(spec)
        np.testing.assert_allclose(design(spec, inputs_value) @ weights + bias, expected.reshape(-1, expected.shape[-1]),
                                   rtol=1e-4, atol=1e-4)


def _compress(model, method, x, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        return kerascomp.compress(model, method, target_flops=0.5, verbose=0, data=x, recalibrate=False, **options)


@pytest.fixture(scope="module")
def trained(keras):
    """A ResNet-8 whose BN statistics match its data (fit briefly), and that data: reconstruction matches the
    original's outputs, so it is judged on a model whose outputs mean something."""
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (192, 16, 16, 3)).astype("float32")
    y = (x[:, :8].mean(axis=(1, 2, 3)) > x[:, 8:].mean(axis=(1, 2, 3))).astype("int64") + 2 * (
        x[..., 0].mean(axis=(1, 2)) > x[..., 2].mean(axis=(1, 2)))
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9), "sparse_categorical_crossentropy")
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    return model, x


@pytest.mark.parametrize("method", ["fga", "svd", "tucker", "l1", "joint_svd"])
def test_reconstruction_never_worsens_a_layer_and_brings_the_outputs_closer(trained, method):
    model, x = trained
    before = weights_hash(model)
    raw = _compress(model, method, x, reconstruct=False)
    fixed = _compress(model, method, x, reconstruct=True, reconstruct_samples=128)
    assert weights_hash(model) == before
    rows = [row.detail for row in fixed.report.layers if "output_error_before" in row.detail]
    assert rows, f"{method}: no layer was reconstructed"
    assert all(row["output_error_after"] <= row["output_error_before"] for row in rows)
    assert any(row["output_error_after"] < 0.95 * row["output_error_before"] for row in rows)
    assert fixed.report.notes["reconstructed_layers"].split("/")[1] == str(len(rows))
    assert not any("output_error_before" in row.detail for row in raw.report.layers)
    # judged end to end on held-out inputs, against the original's logits-free probabilities
    held_out = np.random.default_rng(5).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    reference = model.predict(held_out, verbose=0)
    error_raw = np.abs(raw.model.predict(held_out, verbose=0) - reference).mean()
    error_fixed = np.abs(fixed.model.predict(held_out, verbose=0) - reference).mean()
    assert error_fixed < error_raw


def test_the_walk_and_the_per_unit_passes_give_the_same_refits(trained, monkeypatch):
    """Reconstruction runs the compressed graph once, node by node, refitting each unit on the way (the walk);
    per-unit sub-models (``WALK`` off: the compressed model up to each unit, the original's inputs cached in
    one pass) and, over ``CACHE_BYTES``, both models up to each unit again: the same numbers."""
    from kerascomp.methods import reconstruct as module

    model, x = trained
    calls = []
    monkeypatch.setattr(module, "_submodel", lambda *args: calls.append(args[2]) or _submodel(*args))
    walked = _compress(model, "svd", x, reconstruct=True, reconstruct_samples=96)
    units = [row.detail for row in walked.report.layers if "output_error_before" in row.detail]
    assert units and not calls and any(detail["refit"] for detail in units)
    monkeypatch.setattr(module, "WALK", False)
    cached = _compress(model, "svd", x, reconstruct=True, reconstruct_samples=96)
    assert len(calls) == len(units)  # the compressed model's prefix only
    monkeypatch.setattr(module, "CACHE_BYTES", 0)
    again = _compress(model, "svd", x, reconstruct=True, reconstruct_samples=96)
    assert len(calls) == 3 * len(units)  # then the original's prefix too
    for other in (cached, again):
        details = [row.detail for row in other.report.layers if "output_error_before" in row.detail]
        for ours, theirs in zip(units, details):
            assert ours["refit"] == theirs["refit"]
            for key in ("output_error_before", "output_error_after"):
                assert ours[key] == pytest.approx(theirs[key], abs=2e-5)
        for a, b in zip(walked.model.get_weights(), other.model.get_weights()):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_the_walk_runs_a_recorded_training_argument_in_inference_mode(keras, monkeypatch):
    """Keras 3 records ``training=False`` in a functional Dropout's call; the walk used to pass its own as well
    (TypeError). It runs the layer in inference mode, as the per-unit sub-models do: the same refits."""
    from kerascomp.methods import reconstruct as module

    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(inputs)
    x = layers.Dropout(0.5, name="drop")(x)
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    model = keras.Model(inputs, layers.Dense(4, name="logits")(layers.GlobalAveragePooling2D()(x)))
    x = np.random.default_rng(0).normal(size=(96, 8, 8, 3)).astype("float32")
    walked = _compress(model, "l1", x, reconstruct=True, reconstruct_samples=96)
    monkeypatch.setattr(module, "WALK", False)
    cached = _compress(model, "l1", x, reconstruct=True, reconstruct_samples=96)
    refit = [row.layer for row in walked.report.layers if row.detail.get("refit")]
    assert "c2" in refit  # the consumer of c1's pruned channels, after the Dropout
    for a, b in zip(walked.model.get_weights(), cached.model.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_too_few_rows_are_not_refit_and_the_report_says_why(trained):
    """Four images give the last stage (4x4 pixels, 3x3 convs over 32-64 channels) 64 rows for up to 576
    weights per output: those layers keep their truncated weights; the stem (16x16 pixels) is refit."""
    model, x = trained
    few = _compress(model, "svd", x, reconstruct=True, reconstruct_samples=4)
    rows = {row.layer: row.detail for row in few.report.layers
            if "output_error_before" in row.detail}
    skipped = {name: detail for name, detail in rows.items() if "not_refit" in detail}
    assert skipped and len(skipped) < len(rows)
    assert all(not d["refit"] and d["output_error_after"] == d["output_error_before"] for d in skipped.values())
    assert all("activation rows for" in d["not_refit"] and "reconstruct_samples" in d["not_refit"]
               for d in skipped.values())
    enough = _compress(model, "svd", x, reconstruct=True, reconstruct_samples=192)
    assert not any("not_refit" in row.detail for row in enough.report.layers)


def test_reconstruction_is_a_no_op_when_the_rewrite_is_exact(trained):
    model, x = trained
    plan = kerascomp.plan(model, method="tucker", target_flops=0.7, verbose=0)
    full = {}
    for name in plan.choices["layers"]:
        kernel = model.get_layer(name).get_weights()[0]
        full[name] = [kernel.shape[2], kernel.shape[3]]
    plan.choices["layers"] = full
    exact = kerascomp.clone_compressed(model, plan=plan, data=x, reconstruct=False, recalibrate=False, verbose=0)
    refit = kerascomp.compress(model, plan=plan, data=x, reconstruct=True, recalibrate=False, verbose=0)
    errors = [row.detail["output_error_before"] for row in refit.report.layers if "output_error_before" in row.detail]
    assert errors and max(errors) < 1e-3
    np.testing.assert_allclose(refit.model.predict(x[:16], verbose=0), exact.predict(x[:16], verbose=0), atol=1e-5)
    nothing = kerascomp.compress(model, "l1", target_flops=1.0, data=x, verbose=0)
    assert "reconstructed_layers" not in nothing.report.notes


def test_pruned_outputs_are_matched_to_the_channels_kept(trained):
    model, x = trained
    result = _compress(model, "l1", x, reconstruct=True, reconstruct_samples=64)
    graph = read_model(model)
    units, skipped = find_units(graph, read_model(result.model), result.report.kept_outputs)
    pruned_producers = [unit for unit in units if unit.outputs[0] is not None]
    assert pruned_producers and not skipped
    for unit in pruned_producers:
        assert len(unit.outputs[0]) == result.model.get_layer(unit.layer).get_weights()[0].shape[-1]
    # without the kept channels, a pruned producer cannot be matched: it is reported, not guessed
    units, skipped = find_units(graph, read_model(result.model), {})
    assert skipped and all("did not say which it kept" in reason for reason in skipped.values())


def test_a_shared_last_map_is_refit_on_all_its_calls_and_a_sum_is_reported_as_not_refit(trained):
    model, x = trained
    right = _compress(model, "joint_svd", x, variant="right", allocation="uniform", grouping="shape",
                    reconstruct=True, reconstruct_samples=64)
    shared = [row for row in right.report.layers if row.detail.get("refit_jointly_with")]
    assert len(shared) >= 2 and all(row.layer in row.detail["refit_jointly_with"] for row in shared)
    assert all(row.detail["output_error_after"] <= row.detail["output_error_before"] for row in shared)
    bi = _compress(model, "joint_svd", x, variant="bi", allocation="uniform", grouping="shape", reconstruct=True,
                   reconstruct_samples=64)  # a ResNet-8 has one block per stage: group by shape
    reasons = [row.detail.get("not_reconstructed", "") for row in bi.report.layers]
    assert any("Add" in reason for reason in reasons) and bi.report.notes["not_reconstructed"] >= 2


def test_bad_reconstruct_options_are_refused_by_name(trained, capsys):
    model, x = trained
    with pytest.raises(InvalidArgumentError, match="reconstruct=True needs data"):
        kerascomp.compress(model, "fga", target_flops=0.5, reconstruct=True, verbose=0)
    with pytest.raises(InvalidArgumentError, match="reconstruct"):
        kerascomp.compress(model, "l1", target_flops=0.5, data=x, reconstruct="always", verbose=0)
    with pytest.raises(InvalidArgumentError, match="reconstruct_samples"):
        kerascomp.compress(model, "svd", target_flops=0.5, data=x, reconstruct_samples=0, verbose=0)
    _compress(model, "fga", x, reconstruct=True, reconstruct_samples=32)
    assert "reconstruct" not in capsys.readouterr().err


def test_recalibration_runs_by_default_only_where_nothing_was_refit(trained):
    """recalibrate='auto': after a refit the original's BN statistics fit the refit layers, and statistics
    re-estimated on plain images would replace them (it cost 1.2-6.4 pt on the trained ResNet-20); without
    reconstruction it runs; recalibrate=True forces it after a refit too."""
    model, x = trained

    def run(**options):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", kerascomp.CompressionWarning)
            return kerascomp.compress(model, "svd", target_flops=0.5, verbose=0, data=x, **options)

    refit = run()
    assert refit.report.notes["recalibrated_batchnorms"] == 0 and "skipped" in refit.report.notes["recalibration"]
    bns = [layer.name for layer in model.layers if type(layer).__name__ == "BatchNormalization"]
    for name in bns:  # the variances are the original's (a refit intercept may only move a mean)
        np.testing.assert_array_equal(refit.model.get_layer(name).get_weights()[-1],
                                      model.get_layer(name).get_weights()[-1])
    plain = run(reconstruct=False)
    assert plain.report.notes["recalibrated_batchnorms"] == len(bns) and "recalibration" not in plain.report.notes
    forced = run(recalibrate=True)
    assert forced.report.notes["recalibrated_batchnorms"] == len(bns)
    assert any(not np.array_equal(forced.model.get_layer(name).get_weights()[-1],
                                  model.get_layer(name).get_weights()[-1]) for name in bns)

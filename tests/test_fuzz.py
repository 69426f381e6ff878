"""Property tests on random CNN graphs (kerascomp.testing): IR round trip, lossless rewrites, and compression
at a real target. ``python -m benchmarks.fuzz`` runs the same checks on hundreds of graphs."""
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from kerascomp.api import METHODS
from kerascomp.testing import Recipe, build_model, check_graph, draw_recipe, lossless, round_trip, sample_inputs
from tests.conftest import FUZZ_SEED

# CI runs a few examples; KERASCOMP_FUZZ_EXAMPLES=200 runs more (benchmarks/fuzz.py runs hundreds).
EXAMPLES = int(os.environ.get("KERASCOMP_FUZZ_EXAMPLES", "8"))
# Every run explores from a fresh seed (the pytest header prints it), replays the committed database of
# past failures first, and shrinks what it finds. Commit tests/fuzz_failures/ after a failing run.
DATABASE = DirectoryBasedExampleDatabase(str(Path(__file__).resolve().parent / "fuzz_failures"))
FUZZ = settings(deadline=None, database=DATABASE, derandomize=False, print_blob=True,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=list(HealthCheck))


def _chooser(data):
    return lambda options: data.draw(st.sampled_from(list(options)))


def _assert_no_failure(outcomes, recipe):
    for outcome in outcomes:
        assert outcome.status != "failed", (f"{outcome.method} failed at {outcome.stage} on {recipe} (fuzz seed "
                                            f"{FUZZ_SEED}):\n{outcome.detail}")


@seed(FUZZ_SEED)
@settings(FUZZ, max_examples=EXAMPLES)
@given(data=st.data())
def test_round_trip_and_every_lossless_rewrite_keep_the_outputs(keras, data):
    recipe = draw_recipe(_chooser(data))
    model = build_model(recipe, keras)
    for method in METHODS:
        _assert_no_failure(check_graph(model, method, target=None), recipe)


@seed(FUZZ_SEED)
@settings(FUZZ, max_examples=max(1, EXAMPLES * 3 // 4))
@given(data=st.data())
def test_compressed_graphs_meet_the_budget_fit_and_export(keras, data, tmp_path_factory):
    recipe = draw_recipe(_chooser(data))
    method = data.draw(st.sampled_from(METHODS))
    model = build_model(recipe, keras)
    _assert_no_failure(check_graph(model, method, target=0.5, folder=tmp_path_factory.mktemp("fuzz")), recipe)


MIXED = Recipe(False, (12, 12, 3), [
    ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": False, "activation": None}),
    ("bn", {}), ("relu", {}),
    ("residual", {"projection": False, "filters": 16}),
    ("concat", {"filters": (8, 16)}),
    ("dilated", {"filters": 24, "rate": 2}),
    ("depthwise", {"multiplier": 1, "strides": 2}),
    ("residual", {"projection": True, "filters": 32}),
    ("pool", {"kind": "max"}),
], head="gap", seed=3)


@pytest.mark.parametrize("method", [m for m in METHODS if m != "joint_svd"])
def test_a_mixed_graph_is_compressed_not_refused(keras, method, tmp_path):
    """The properties are not vacuous: on a graph with every block kind, each method really compresses
    (joint SVD needs repeated stages, which this graph lacks)."""
    model = build_model(MIXED, keras)
    outcomes = check_graph(model, method, target=0.5, folder=tmp_path)
    assert [(o.stage, o.status) for o in outcomes] == [("lossless", "ok"), ("target", "ok")], outcomes
    assert outcomes[0].measures["lossless_error"] < 1e-5
    # the lossless check rewrote layers (l1: its dead channels cut; correlation: one of each duplicated pair;
    # collaborative: dead inputs cut and every conv it covers factored at full rank)
    assert outcomes[0].measures["rewritten_layers"] > 0
    assert 0.3 < outcomes[1].measures["macs_ratio"] <= 0.5
    assert outcomes[1].measures["tflite_error"] < 1e-4
    if method in ("l1", "correlation", "collaborative", "auto"):  # against the original, cut channels zeroed
        assert outcomes[1].measures["reference_error"] < 1e-5


EVERY_NEW_KIND = Recipe(False, (12, 8, 4), [
    ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True, "activation": "swish"}),
    ("se", {"reduced": 4, "gate": "hard_sigmoid"}),
    ("hard_swish", {}),
    ("shared", {}),
    ("nested", {"filters": 16}),
    ("dropout", {"rate": 0.5}),
    ("transpose", {"filters": 16, "strides": 1}),
    ("activation", {"name": "relu6"}),
    ("conv", {"filters": 16, "kernel": 3, "strides": 2, "padding": "same", "use_bias": False, "activation": "relu"}),
], head="mlp", seed=5, multi_io=True)


def test_a_conv1d_head_round_trips(keras):
    recipe = Recipe(True, (8, 12, 3), [("conv", {"filters": 8, "kernel": 3, "strides": 2, "padding": "same",
                                                 "use_bias": True, "activation": "relu"})], head="conv1d", seed=1)
    model = build_model(recipe, keras)
    assert any(type(layer).__name__ == "Conv1D" for layer in model.layers)
    x = sample_inputs(model)
    np.testing.assert_allclose(np.asarray(round_trip(model)(x)), np.asarray(model(x)), rtol=1e-6, atol=1e-6)
    _assert_no_failure(check_graph(model, "fga", target=0.5, export=False), recipe)


@pytest.mark.parametrize("method", METHODS)
def test_graphs_with_every_new_block_kind_pass(keras, method, tmp_path):
    """SE gates, hard-swish, shared and nested layers, Dropout, a transposed conv, a non-square input and a
    second input and output: the round trip, the lossless rewrite and the target checks all pass."""
    model = build_model(EVERY_NEW_KIND, keras)
    assert len(model.inputs) == 2 and len(model.outputs) == 2
    _assert_no_failure(check_graph(model, method, target=0.5, folder=tmp_path), EVERY_NEW_KIND)


VIEWS = Recipe(False, (12, 12, 4), [  # no kxk Conv2D: a factoring method must take the 1x1 views
    ("conv", {"filters": 16, "kernel": 1, "strides": 1, "padding": "same", "use_bias": True, "activation": "relu"}),
    ("separable", {"filters": 48}),
    ("pointwise_dense", {"filters": 96, "activation": "swish"}),
    ("pointwise_dense", {"filters": 48, "activation": None}),
    ("bn", {}),
], head="gap", seed=7)


@pytest.mark.parametrize("method", METHODS)
def test_separable_convs_and_dense_layers_on_feature_maps_pass_every_check(keras, method, tmp_path):
    """Xception's separable convs and ConvNeXt's Dense MLP on the feature map (methods/conv_views.py): every
    check passes, and the factoring methods' independent reference compares the factored 1x1 views."""
    model = build_model(VIEWS, keras)
    outcomes = check_graph(model, method, target=0.5, folder=tmp_path)
    _assert_no_failure(outcomes, VIEWS)
    target = outcomes[-1]
    assert target.stage == "target" and target.status == "ok", outcomes
    if method in ("fga", "svd", "tucker", "joint_svd", "auto", "collaborative"):
        assert target.measures["reference_layers"] >= (1 if method == "auto" else 2) and target.measures["reference_error"] < 1e-5


# Graphs on which benchmarks/fuzz.py found a failure, kept as regression cases.
REGRESSIONS = [
    # a grouped FGA form of a dilated conv cannot be trained by TensorFlow's CPU kernels
    ("fga", Recipe(True, (8, 8, 8), [
        ("conv", {"filters": 32, "kernel": 1, "strides": 2, "padding": "same", "use_bias": False,
                  "activation": "relu"}),
        ("dilated", {"filters": 32, "rate": 2}), ("relu", {}), ("grouped", {"filters": 24, "groups": 4})],
        head="none", seed=0)),
    # a model without MACs made the pruning budget error divide by zero
    ("correlation", Recipe(True, (8, 8, 8), [("bn", {}), ("pool", {"kind": "max"})], head="none", seed=205)),
    # a constant channel (hard-sigmoid of 0) folded as a bias into a 'same' Conv1D: wrong at the padded borders
    ("correlation", Recipe(True, (16, 8, 8), [
        ("conv", {"filters": 24, "kernel": 1, "strides": 1, "padding": "same", "use_bias": True,
                  "activation": "relu6"}),
        ("relu", {}), ("activation", {"name": "swish"}), ("bn", {}), ("relu", {}),
        ("activation", {"name": "hard_sigmoid"})], head="conv1d", seed=2)),
    # a 3x3 conv from 3 to 32 channels (CI, 2026-12): auto's Tucker truncation curves were shorter than its ranks
    ("auto", Recipe(False, (8, 8, 3), [
        ("conv", {"filters": 32, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True, "activation": None}),
        ("grouped", {"filters": 8, "groups": 2}), ("dilated", {"filters": 8, "rate": 2}), ("pool", {"kind": "max"}),
        ("pool", {"kind": "max"})], head="gap", seed=0)),
    # a conv shared by two calls (CI, tf_keras, 2026-12): compensation fitted the fold on its first call only
    ("correlation", Recipe(False, (8, 8, 3), [
        ("conv", {"filters": 8, "kernel": 1, "strides": 1, "padding": "same", "use_bias": True, "activation": "relu"}),
        ("shared", {})], head="gap", classes=5, seed=56)),
    # a group through a depthwise conv (README test run, 2026-12-07): fga's pointwise="auto" expansion step cut
    # it, and the factoring reference compared with the uncut original (relative error 0.84)
    ("fga", Recipe(True, (8, 8, 3), [
        ("conv", {"filters": 8, "kernel": 1, "strides": 1, "padding": "same", "use_bias": True, "activation": None}),
        ("depthwise", {"multiplier": 1, "strides": 2}),
        ("conv", {"filters": 8, "kernel": 1, "strides": 2, "padding": "same", "use_bias": True, "activation": None}),
        ("conv", {"filters": 8, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True, "activation": None})],
        head="gap", seed=0)),
    # a squeeze-and-excite block sharing the group a conv prunes (2026-12-07, collaborative now cuts it): the
    # lossless reference must zero the cut channels in the SE reduce conv too (relative error 8e-4 when it did not)
    ("collaborative", Recipe(False, (16, 16, 8), [
        ("conv", {"filters": 8, "kernel": 5, "strides": 2, "padding": "valid", "use_bias": True, "activation": "relu"}),
        ("se", {"reduced": 4, "gate": "hard_sigmoid"}),
        ("conv", {"filters": 16, "kernel": 1, "strides": 1, "padding": "same", "use_bias": False, "activation": "relu"})],
        head="conv1d", classes=5, seed=343)),
]


@pytest.mark.parametrize("method,recipe", REGRESSIONS, ids=[f"{m}-{i}" for i, (m, _) in enumerate(REGRESSIONS)])
def test_regressions_found_by_the_fuzzer(keras, method, recipe, tmp_path):
    _assert_no_failure(check_graph(build_model(recipe, keras), method, target=0.5, folder=tmp_path), recipe)


def test_the_checks_catch_a_broken_rewrite(keras, monkeypatch):
    """A rewrite that changes the function is reported as a failure, not passed."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)

    def broken(model, method, x):
        rebuilt = lossless(model, method, x)
        weights = rebuilt.get_weights()
        rebuilt.set_weights([w * 1.01 for w in weights])
        return rebuilt

    monkeypatch.setattr(fuzz, "lossless", broken)
    (outcome,) = fuzz.check_graph(model, "svd", target=None)
    assert outcome.status == "failed" and outcome.stage == "lossless" and "relative output error" in outcome.detail


def test_the_dead_channel_check_catches_live_channels(keras, monkeypatch):
    """l1's lossless check cuts channels made dead; if they were not dead, it reports the change."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    (honest,) = fuzz.check_graph(model, "l1", target=None)
    assert honest.status == "ok" and honest.measures["rewritten_layers"] > 0
    monkeypatch.setattr(fuzz, "dead_channels", lambda model, kept: model)  # channels left alive
    (outcome,) = fuzz.check_graph(model, "l1", target=None)
    assert outcome.status == "failed" and outcome.stage == "lossless" and "relative output error" in outcome.detail


SIGMOID_BETWEEN = Recipe(True, (8, 8, 3), [
    ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True,
              "activation": "hard_sigmoid"}),
    ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True, "activation": "relu"})],
    head="gap", seed=4)


def test_dead_channels_behind_a_sigmoid_are_cut_exactly_and_the_check_can_fail(keras, monkeypatch):
    """A cut channel of a hard-sigmoid conv is 0.5, not 0, when it reaches the next conv: the dead copy then
    also zeroes the next conv's input slices, and l1's lossless check rewrites this graph. Without that
    (the copy's channels not dead where they are read), the same check fails."""
    import kerascomp.testing as fuzz

    model = build_model(SIGMOID_BETWEEN, keras)
    graph = fuzz.read_model(model)
    assert not fuzz.zero_stays_zero(graph, {"conv0"})
    assert fuzz.zero_stays_zero(graph, {"conv1"})  # its outputs go through a ReLU and the pooling to a Dense
    monkeypatch.setattr(fuzz, "PRUNING_CHECK_TARGETS", (0.5,))  # where l1 cuts both convs
    (honest,) = fuzz.check_graph(model, "l1", target=None)
    assert honest.status == "ok" and honest.measures["rewritten_layers"] > 0, honest
    assert honest.measures["lossless_error"] < fuzz.LOSSLESS_TOLERANCE
    monkeypatch.setattr(fuzz, "_zero_readers", lambda graph, kept: None)
    (outcome,) = fuzz.check_graph(model, "l1", target=None)
    assert outcome.status == "failed" and "relative output error" in outcome.detail, outcome


def test_a_gate_keeps_dead_channels_dead(keras):
    """A squeeze-and-excitation gate (sigmoid of dead channels: 0.5) multiplies a dead channel: the product is
    0, so the cut is exact without touching the readers; the same gate added instead of multiplied is not."""
    import kerascomp.testing as fuzz

    model = build_model(EVERY_NEW_KIND, keras)
    graph = fuzz.read_model(model)
    assert fuzz.zero_stays_zero(graph, {"conv0", "se_expand3"})
    multiply = next(node for node in graph.nodes if graph.spec(node).class_name == "Multiply")
    graph.layers[multiply.layer].cls = keras.layers.Add
    assert not fuzz.zero_stays_zero(graph, {"conv0", "se_expand3"})


def test_correlation_rewrites_a_group_read_by_a_separable_conv(keras):
    """A separable conv's depthwise kernels cannot absorb a partner channel, so in the duplicated copy it reads
    neither channel of a pair; the check still rewrites such graphs, exactly."""
    import kerascomp.testing as fuzz

    recipe = Recipe(True, (8, 8, 3), [
        ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True, "activation": "relu"}),
        ("separable", {"filters": 16})], head="gap", seed=6)
    (outcome,) = fuzz.check_graph(build_model(recipe, keras), "correlation", target=None)
    assert outcome.status == "ok" and outcome.measures["rewritten_layers"] > 0, outcome


@pytest.mark.parametrize("method", ["svd", "tucker"])
def test_a_full_rank_one_by_one_factor_counts_as_a_rewrite(keras, method):
    """An 8 -> 16 1x1 conv factored at full rank (svd; Tucker's low-rank pair) keeps its name and kernel
    shape for the second factor; the first factor it adds is what makes the check a rewrite."""
    import kerascomp.testing as fuzz

    recipe = Recipe(True, (8, 8, 8), [
        ("conv", {"filters": 16, "kernel": 1, "strides": 1, "padding": "same", "use_bias": False,
                  "activation": "relu"})], head="gap", seed=7)
    model = build_model(recipe, keras)
    x = sample_inputs(model)
    rebuilt = fuzz.lossless(model, method, x)
    assert fuzz.relative_error(fuzz.outputs_of(rebuilt, x), fuzz.outputs_of(model, x)) < fuzz.LOSSLESS_TOLERANCE
    assert len(rebuilt.layers) == len(fuzz.round_trip(model).layers) + 1
    assert fuzz.rewritten_layers(fuzz.round_trip(model), rebuilt) == 1


def test_the_target_stage_reference_catches_a_wrong_cut(keras, monkeypatch, tmp_path):
    """Correlation pruning at 0.5 is compared with the original whose cut channels are zeroed; a
    reference with those channels left alive (what a rewrite that cut the wrong ones would match) fails."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    monkeypatch.setattr(fuzz, "dead_channels", lambda model, kept: fuzz.round_trip(model))
    outcomes = fuzz.check_graph(model, "correlation", target=0.5, export=False, folder=tmp_path)
    assert outcomes[-1].status == "failed" and outcomes[-1].stage == "reference", outcomes
    assert "cut channels zeroed" in outcomes[-1].detail


def test_the_duplicate_channel_check_catches_a_cut_of_other_channels(keras, monkeypatch):
    """Correlation's lossless check duplicates channels, which must be the pairs it cuts (one of each,
    folded into its twin); without the duplicates it cuts other channels, and the check says so."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    x = sample_inputs(model)
    twins, pruned = fuzz.correlation_lossless(model, x)
    assert fuzz.relative_error(fuzz.outputs_of(pruned, x), fuzz.outputs_of(twins, x)) < fuzz.LOSSLESS_TOLERANCE
    assert fuzz.relative_error(fuzz.outputs_of(twins, x), fuzz.outputs_of(model, x)) > 0.01  # twins changed it
    assert pruned.count_params() < twins.count_params()
    monkeypatch.setattr(fuzz, "twin_channels", lambda model, pairs, silenced=(): fuzz.round_trip(model))  # no duplicates
    monkeypatch.setattr(fuzz, "_twins_strongest", lambda model, pairs: True)
    (outcome,) = fuzz.check_graph(model, "correlation", target=None)
    assert outcome.status == "failed" and outcome.stage == "lossless", outcome
    assert "not one channel of each duplicate pair" in outcome.detail


def test_the_collaborative_check_runs_its_own_factoring_and_catches_a_wrong_factor(keras, monkeypatch):
    """Collaborative's lossless check realises a plan that cuts dead inputs and factors every conv at full
    rank through collaborative's own code; a factorisation that loses one singular direction is caught."""
    import kerascomp.methods.collaborative as collaborative
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    (honest,) = fuzz.check_graph(model, "collaborative", target=None)
    assert honest.status == "ok" and honest.measures["rewritten_layers"] >= 9, honest
    factor = collaborative.factor_kernel

    def lossy(kernel, kept):
        basis, pointwise = factor(kernel, kept)
        return basis, np.concatenate([pointwise[:, :, :-1], 0 * pointwise[:, :, -1:]], axis=2)
    monkeypatch.setattr(collaborative, "factor_kernel", lossy)
    (outcome,) = fuzz.check_graph(model, "collaborative", target=None)
    assert outcome.status == "failed" and "relative output error" in outcome.detail, outcome


def test_the_collaborative_reference_passes_and_catches_a_live_cut_channel_or_a_miswired_factor(keras, monkeypatch):
    """Collaborative at 0.5 (reconstruction and recalibration off) matches the original with the channels its
    plan cuts zeroed where they are read and each factored kernel replaced by its two factors' numpy product.
    A reference that leaves the cut channels alive, or whose product is flipped in space, differs."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    x = sample_inputs(model)
    error, layers = fuzz.collaborative_against_reference(model, 0.5, x)
    assert layers >= 5 and error < fuzz.LOSSLESS_TOLERANCE  # here: 2 convs lose inputs, 5 are factored
    with monkeypatch.context() as patch:
        patch.setattr(fuzz, "_zero_input_slices", lambda *args: None)
        assert fuzz.collaborative_against_reference(model, 0.5, x)[0] > fuzz.LOSSLESS_TOLERANCE
    product = fuzz._chain_product
    monkeypatch.setattr(fuzz, "_chain_product", lambda factors: product(factors)[::-1, ::-1].copy())
    assert fuzz.collaborative_against_reference(model, 0.5, x)[0] > fuzz.LOSSLESS_TOLERANCE


def test_the_auto_reference_passes_and_catches_a_live_cut_channel_or_a_miswired_factor(keras, monkeypatch):
    """method="auto" at 0.5 (here: two ResNet units pruned, one conv in FGA form) matches the original with the
    cut channels zeroed where read and the factored kernel replaced by its factors' numpy product; a
    reference with the cut channels alive, or with the product flipped in space, differs."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    x = sample_inputs(model)
    error, layers = fuzz.auto_against_reference(model, 0.5, x)
    assert layers >= 2 and error < fuzz.LOSSLESS_TOLERANCE
    with monkeypatch.context() as patch:
        patch.setattr(fuzz, "_zero_input_slices", lambda *args: None)
        assert fuzz.auto_against_reference(model, 0.5, x)[0] > fuzz.LOSSLESS_TOLERANCE
    composite = fuzz._composite

    def flipped(*args):
        found = composite(*args)
        return None if found is None else (found[0][::-1, ::-1].copy(), found[1])
    monkeypatch.setattr(fuzz, "_composite", flipped)
    assert fuzz.auto_against_reference(model, 0.5, x)[0] > fuzz.LOSSLESS_TOLERANCE


@pytest.mark.parametrize("method", ["fga", "svd", "tucker"])
def test_the_factored_reference_passes_and_catches_a_miswired_factor(keras, method, monkeypatch):
    """A factoring method at 0.5 matches the original with each factored kernel replaced by its factors'
    numpy product. If the factors computed something else than that product (here: the product
    flipped in space, as a wrong padding phase or factor order would), the output comparison fails."""
    import kerascomp.testing as fuzz

    model = build_model(MIXED, keras)
    x = sample_inputs(model)
    error, layers = fuzz.factored_against_composite(model, method, 0.5, x)
    assert layers >= 1 and error < fuzz.LOSSLESS_TOLERANCE
    composite = fuzz._composite

    def flipped(*args):
        found = composite(*args)
        return None if found is None else (found[0][::-1, ::-1].copy(), found[1])
    monkeypatch.setattr(fuzz, "_composite", flipped)
    monkeypatch.setattr(fuzz, "_check_best_rank", lambda *args: None)  # flipping keeps svd's rank error
    error, _ = fuzz.factored_against_composite(model, method, 0.5, x)
    assert error > fuzz.LOSSLESS_TOLERANCE


@pytest.mark.parametrize("variant", ["left", "right", "bi"])
def test_the_joint_svd_reference_multiplies_out_shared_factors_and_catches_a_miswired_one(keras, variant,
                                                                                          monkeypatch):
    """Joint SVD at 0.5 matches the original with each member's kernel replaced by the numpy product of the
    shared and own factors (and, for bi, the sum of both branches); a product flipped in space fails."""
    import kerascomp.testing as fuzz
    from kerascomp.zoo import cifar_resnet

    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=14, width=16, input_shape=(16, 16, 3), keras_module=keras)  # 2 blocks per stage
    x = sample_inputs(model)
    error, layers = fuzz.factored_against_composite(model, "joint_svd", 0.5, x, variant=variant)
    assert layers >= 6 and error < fuzz.LOSSLESS_TOLERANCE
    product = fuzz._chain_product
    monkeypatch.setattr(fuzz, "_chain_product", lambda factors: product(factors)[::-1, ::-1].copy())
    error, _ = fuzz.factored_against_composite(model, "joint_svd", 0.5, x, variant=variant)
    assert error > 100 * fuzz.LOSSLESS_TOLERANCE


def test_the_svd_reference_checks_the_best_rank(keras):
    """Eckart-Young: a composite further from the kernel than the best rank-r approximation is refused."""
    import kerascomp.testing as fuzz

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(3, 3, 4, 6)).astype("float32")
    matrix = kernel.transpose(0, 2, 1, 3).reshape(12, 18)
    u, values, vt = np.linalg.svd(matrix, full_matrices=False)
    best = (u[:, :2] * values[:2]) @ vt[:2]
    fuzz._check_best_rank("c", kernel, best.reshape(3, 4, 3, 6).transpose(0, 2, 1, 3))
    worse = (u[:, 1:3] * values[1:3]) @ vt[1:3]  # also rank 2, but not the best one
    with pytest.raises(AssertionError, match="best rank-2 approximation"):
        fuzz._check_best_rank("c", kernel, worse.reshape(3, 4, 3, 6).transpose(0, 2, 1, 3))


def test_round_trip_is_exact_and_recipes_are_reproducible(keras):
    first = build_model(MIXED, keras)
    second = build_model(MIXED, keras)
    for a, b in zip(first.get_weights(), second.get_weights()):
        np.testing.assert_array_equal(a, b)
    x = sample_inputs(first)
    np.testing.assert_array_equal(np.asarray(round_trip(first)(x)), np.asarray(first(x)))


@pytest.mark.parametrize("blocks", [
    [("depthwise", {"multiplier": 2, "strides": 1})],                                  # fuzz graph 55 (seed 1205)
    [("grouped", {"filters": 32, "groups": 2}), ("depthwise", {"multiplier": 2, "strides": 1})],  # graph 194
])
def test_the_duplicate_channel_check_reaches_through_a_depthwise_multiplier(keras, blocks):
    """A depthwise conv with a multiplier repeats each input channel: the duplicate of a channel copies the
    source's kernel slice and each of its repeated bias entries, so the check applies (it used to give up,
    and correlation's check rewrote nothing on such graphs) and pruning cuts one channel of each pair."""
    import kerascomp.testing as fuzz

    conv = ("conv", {"filters": 16, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True,
                     "activation": "relu"})
    model = build_model(Recipe(True, (8, 8, 4), [conv] + blocks, head="gap", seed=3), keras)
    x = sample_inputs(model)
    found = fuzz.correlation_lossless(model, x)
    assert found is not None
    twins, pruned = found
    assert fuzz.relative_error(fuzz.outputs_of(pruned, x), fuzz.outputs_of(twins, x)) < fuzz.LOSSLESS_TOLERANCE
    assert fuzz.relative_error(fuzz.outputs_of(twins, x), fuzz.outputs_of(model, x)) > 0.01
    assert pruned.count_params() < twins.count_params()

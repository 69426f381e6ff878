"""Collaborative compression's numpy core: unit scores, removal curves, curve fit, global rates."""
import itertools

import numpy as np
import pytest
from conftest import flavour_independent

from kerascomp.decompose.collaborative import (
    channel_matrix,
    channel_removal_curve,
    channel_scores,
    factor_kernel,
    fit_exponential,
    global_rates,
    kept_fraction,
    multi_step_curve,
    singular_value_scores,
    thin_svd,
    values_to_keep,
)
from kerascomp.errors import InvalidArgumentError


@pytest.fixture
def layer():
    rng = np.random.default_rng(0)
    return rng.normal(size=(3, 3, 6, 8)), rng.normal(size=(3, 3, 6, 8))


def _taylor(gradient, change):
    return float(np.sum((gradient * change) ** 2))


def test_channel_scores_are_the_taylor_score_of_zeroing_the_channel(layer):
    kernel, gradient = layer
    scores = channel_scores(kernel, gradient)
    for channel in (0, 4):
        change = np.zeros_like(kernel)
        change[:, :, channel, :] = -kernel[:, :, channel, :]
        assert scores[channel] == pytest.approx(_taylor(gradient, change))


def test_singular_value_scores_are_the_taylor_score_of_dropping_the_value(layer):
    kernel, gradient = layer
    values, scores = singular_value_scores(kernel, gradient)
    left, reference_values, right = np.linalg.svd(channel_matrix(kernel), full_matrices=False)
    np.testing.assert_allclose(values, reference_values)
    for index in (0, 5):
        change = -values[index] * np.outer(left[:, index], right[index])
        assert scores[index] == pytest.approx(_taylor(channel_matrix(gradient), change))


def test_channel_curve_is_cumulative_and_cheapest_first(layer):
    kernel, gradient = layer
    curve = channel_removal_curve(kernel, gradient)
    scores = channel_scores(kernel, gradient)
    assert list(curve.units_removed) == [1, 2, 3, 4, 5]  # at most 95% of 6 channels, never all
    np.testing.assert_allclose(curve.macs_removed, np.arange(1, 6) / 6)
    assert np.all(np.diff(scores[curve.order]) >= 0)
    zeroed = kernel.copy()
    zeroed[:, :, curve.order[:3], :] = 0
    assert curve.score[2] == pytest.approx(_taylor(gradient, zeroed - kernel))


def test_rank_only_steps_cut_the_cheapest_values_and_score_the_whole_change(layer):
    kernel, gradient = layer
    curve = multi_step_curve(kernel, gradient, prune=False)
    assert list(curve.channels_removed) == [0] * len(curve.rank) and list(curve.rank) == [7, 6, 5, 4, 3, 2, 1]
    # rank r costs r*(9*6 + 8) MACs per pixel against 9*6*8 dense: only r <= 6 saves
    np.testing.assert_allclose(curve.macs_removed, [0, *(1 - np.arange(6, 0, -1) * 62 / 432)])
    left, values, right = np.linalg.svd(channel_matrix(kernel), full_matrices=False)
    scores = singular_value_scores(kernel, gradient)[1]
    removed = np.argsort(scores)[:4]  # values do not interact: cheapest-first is the rescored order
    change = -sum(values[i] * np.outer(left[:, i], right[i]) for i in removed)
    assert curve.score[3] == pytest.approx(_taylor(channel_matrix(gradient), change))


def test_joint_steps_mix_channels_and_values_until_the_limit(layer):
    kernel, gradient = layer
    curve = multi_step_curve(kernel, gradient, max_fraction=0.9)
    assert curve.macs_removed[-1] >= 0.9 and np.all(curve.macs_removed[:-1] < 0.9)
    assert np.all(np.diff(curve.channels_removed) >= 0) and np.all(np.diff(curve.rank) <= 0)
    assert len(set(curve.channel_order.tolist())) == len(curve.channel_order)
    last = len(curve.rank) - 1
    expected = 1 - kept_fraction(9, 6, 8, 6 - curve.channels_removed[last], int(curve.rank[last]))
    assert curve.macs_removed[last] == pytest.approx(expected)
    assert curve.point(0.3) == int(np.argmax(curve.macs_removed >= 0.3))


def test_factor_kernel_is_exact_at_full_rank_and_keeps_the_chosen_values(layer):
    kernel, gradient = layer
    basis, pointwise = factor_kernel(kernel, np.arange(8))
    assert basis.shape == (3, 3, 6, 8) and pointwise.shape == (1, 1, 8, 8)
    np.testing.assert_allclose(np.einsum("hwcr,rn->hwcn", basis, pointwise[0, 0]), kernel, atol=1e-10)
    assert values_to_keep(kernel, gradient, 3).tolist() == [0, 1, 2]  # the reference: the top of the spectrum
    kept = values_to_keep(kernel, gradient, 3, "taylor")
    scores = singular_value_scores(kernel, gradient)[1]
    assert set(kept.tolist()) == set(np.argsort(-scores)[:3].tolist())
    assert kept.tolist() != [0, 1, 2]  # this kernel's gradient scores do rank differently
    left, values, right = np.linalg.svd(channel_matrix(kernel), full_matrices=False)
    truncated = sum(values[i] * np.outer(left[:, i], right[i]) for i in kept)
    basis, pointwise = factor_kernel(kernel, kept)
    np.testing.assert_allclose(channel_matrix(np.einsum("hwcr,rn->hwcn", basis, pointwise[0, 0])), truncated,
                               atol=1e-10)


def test_decision_drops_the_rank_only_when_the_joint_channels_reach_the_rate(layer):
    kernel, gradient = layer
    curve = multi_step_curve(kernel, gradient, step_fraction=0.1, max_fraction=0.9)
    outcomes = set()
    for rate in np.linspace(0.02, float(curve.macs_removed[-1]), 40):
        j = curve.point(rate)
        removed, rank = curve.decision(rate, 9, 6, 8)
        assert sorted(removed.tolist()) == sorted(curve.channel_order[:curve.channels_removed[j]].tolist())
        alone = curve.channels_removed[j] / 6  # MACs the joint step's channels remove on their own
        expected = None if alone >= rate or curve.rank[j] >= min(9 * (6 - curve.channels_removed[j]), 8) \
            else int(curve.rank[j])
        assert rank == expected
        outcomes.add("pruned" if rank is None else ("mixed" if len(removed) else "rank"))
    assert {"mixed", "pruned"} <= outcomes or {"mixed", "rank"} <= outcomes, outcomes


def test_fit_exponential_recovers_the_curve():
    fractions = np.linspace(0.05, 0.9, 12)
    p1, p2 = fit_exponential(fractions, 0.3 * np.exp(4.0 * fractions))
    assert (p1, p2) == (pytest.approx(0.3), pytest.approx(4.0))
    assert fit_exponential([0.1, 0.2], [0.0, 0.0])[1] > 0  # nothing to fit: cheap, not an error
    free_start = fit_exponential(fractions, np.where(fractions < 0.4, 0.0, 0.3 * np.exp(4.0 * fractions)))
    assert free_start[0] * np.exp(free_start[1] * 0.2) < 1e-3 * 0.3 * np.exp(0.8)


def test_global_rates_meet_the_target_and_match_brute_force():
    macs = np.array([100.0, 300.0, 200.0])
    p1, p2 = np.array([0.01, 0.05, 0.002]), np.array([3.0, 5.0, 8.0])
    target = 0.4 * macs.sum()
    rates = global_rates(macs, p1, p2, target)
    assert float(np.sum(macs * rates)) == pytest.approx(target, rel=1e-9)
    assert np.all((rates >= 0) & (rates <= 0.95))
    objective = float(np.sum(p1 * np.exp(p2 * rates)))
    grid = np.linspace(0, 0.95, 39)
    best = min(float(np.sum(p1 * np.exp(p2 * np.array(r)))) for r in itertools.product(grid, repeat=3)
               if np.sum(macs * np.array(r)) >= target)
    assert objective <= best + 1e-9  # the exact optimum is at least as good as any grid point


def test_flops_weighted_rates_are_the_references_closed_form():
    macs = np.array([100.0, 300.0, 200.0])
    p1, p2 = np.array([0.2, 0.05, 0.1]), np.array([3.0, 5.0, 8.0])
    target = 0.4 * macs.sum()
    rates = global_rates(macs, p1, p2, target, weights=macs)
    assert float(np.sum(macs * rates)) == pytest.approx(target, rel=1e-9)
    # the reference: rate_l = ln(x / (p1 p2)) / p2 with one x for every layer (clipped)
    x = np.exp(p2 * rates + np.log(p1 * p2))
    inside = (rates > 1e-9) & (rates < 0.95 - 1e-9)
    assert inside.sum() >= 2 and np.ptp(x[inside]) < 1e-6 * x[inside].max()
    assert not np.allclose(rates, global_rates(macs, p1, p2, target))  # the weighting changes the answer
    objective = float(np.sum(macs * p1 * np.exp(p2 * rates)))
    grid = np.linspace(0, 0.95, 39)
    best = min(float(np.sum(macs * p1 * np.exp(p2 * np.array(r)))) for r in itertools.product(grid, repeat=3)
               if np.sum(macs * np.array(r)) >= target)
    assert objective <= best + 1e-9


def test_global_rates_edge_cases():
    macs, p1, p2 = np.array([10.0, 10.0]), np.array([1.0, 1.0]), np.array([1.0, 2.0])
    np.testing.assert_array_equal(global_rates(macs, p1, p2, 0.0), [0.0, 0.0])
    np.testing.assert_allclose(global_rates(macs, p1, p2, 19.0), [0.95, 0.95])
    with pytest.raises(ValueError, match="at most 95%"):
        global_rates(macs, p1, p2, 19.5)


def _two_conv_model(keras, duplicated: bool):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 8))
    hidden = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="plain")(inputs)
    outputs = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="redundant")(hidden)
    logits = keras.layers.Dense(4, name="head")(keras.layers.GlobalAveragePooling2D()(outputs))
    model = keras.Model(inputs, logits)
    if duplicated:  # 8 distinct filters, each twice: rank 8 of 16
        kernel, bias = model.get_layer("redundant").get_weights()
        kernel[..., 8:] = kernel[..., :8]
        model.get_layer("redundant").set_weights([kernel, bias])
    return model


def _labelled(count=96):
    rng = np.random.default_rng(0)
    return rng.normal(size=(count, 8, 8, 8)).astype("float32"), rng.integers(0, 4, count)


def test_sensitivity_ranks_the_redundant_layer_cheapest(keras):
    from kerascomp.graph.keras_io import read_model
    from kerascomp.methods.sensitivity import layer_sensitivities

    graph = read_model(_two_conv_model(keras, duplicated=True))
    by_layer = {s.layer: s for s in layer_sensitivities(graph, _labelled(), batch_size=32)}
    assert set(by_layer) == {"plain", "redundant"}
    redundant, plain = by_layer["redundant"], by_layer["plain"]
    # dropping the 8 zero singular values costs nothing and removes 1 - 8*(144+16)/2304 of the MACs
    free = redundant.joint.score < 1e-12
    assert redundant.joint.macs_removed[free].max() >= 4 / 9 - 1e-9
    assert plain.joint.macs_removed[plain.joint.score < 1e-12].max(initial=0) == 0
    at_40_percent = {name: s.p1 * np.exp(s.p2 * 0.4) for name, s in by_layer.items()}
    assert at_40_percent["redundant"] < 0.01 * at_40_percent["plain"]


def test_kernel_gradients_match_a_finite_difference(keras):
    import tensorflow as tf

    from kerascomp.methods.sensitivity import default_loss, kernel_gradients

    model = _two_conv_model(keras, duplicated=False)
    x, y = _labelled(32)
    gradient = kernel_gradients(model, ["plain"], [(x[:16], y[:16]), (x[16:], y[16:])],
                                default_loss(model))["plain"]
    direction = np.random.default_rng(2).normal(size=gradient.shape).astype("float32")
    direction /= np.linalg.norm(direction)
    kernel, bias = model.get_layer("plain").get_weights()
    loss = default_loss(model)

    def loss_at(step):
        model.get_layer("plain").set_weights([kernel + step * direction, bias])
        return float(loss(tf.convert_to_tensor(y), model(x, training=False)))

    numeric = (loss_at(1e-2) - loss_at(-1e-2)) / 2e-2
    assert float(np.sum(gradient * direction)) == pytest.approx(numeric, rel=2e-2)


def test_sensitivity_needs_labelled_data(keras):
    from kerascomp.errors import InvalidArgumentError
    from kerascomp.graph.keras_io import read_model
    from kerascomp.methods.sensitivity import layer_sensitivities

    graph = read_model(_two_conv_model(keras, duplicated=False))
    with pytest.raises(InvalidArgumentError, match=r"labelled data: pass data=\(x, y\)"):
        layer_sensitivities(graph, None)
    x, y = _labelled(8)
    with pytest.raises(InvalidArgumentError, match="8 inputs but 5 labels"):
        layer_sensitivities(graph, (x, y[:5]))
    import tensorflow as tf

    with pytest.raises(InvalidArgumentError, match="inputs only"):
        layer_sensitivities(graph, tf.data.Dataset.from_tensor_slices(x).batch(4))


def test_measured_sensitivity_is_the_loss_change_of_cutting_one_layer(keras):
    import tensorflow as tf

    from kerascomp.graph.keras_io import read_model
    from kerascomp.methods.sensitivity import cut_kernel, default_loss, layer_sensitivities

    model = _two_conv_model(keras, duplicated=True)
    graph = read_model(model)
    x, y = _labelled()
    by_layer = {s.layer: s for s in layer_sensitivities(graph, (x, y), batch_size=32, mode="measured",
                                                        measured_rates=(0.3, 0.6))}
    redundant, plain = by_layer["redundant"], by_layer["plain"]
    assert [round(f, 2) >= r for (f, _), r in zip(redundant.measured, (0.3, 0.6))] == [True, True]
    assert abs(redundant.measured[0][1]) < 1e-5 < abs(plain.measured[0][1])  # the duplicated filters go for free
    # the measured point is the loss with that layer's kernel cut, recomputed here by hand
    fraction, cut = cut_kernel(graph.layers["plain"].weights[0], plain.gradient, plain.pruning, plain.joint, 0.6)
    loss = default_loss(model)
    base = float(loss(tf.constant(y), model(x, training=False)))
    kernel, bias = model.get_layer("plain").get_weights()
    model.get_layer("plain").set_weights([cut, bias])
    assert plain.measured[1] == (pytest.approx(fraction), pytest.approx(float(loss(tf.constant(y), model(x))) - base,
                                                                        rel=1e-3, abs=1e-6))
    with pytest.raises(InvalidArgumentError, match="sensitivity must be one of"):
        layer_sensitivities(graph, (x, y), mode="hessian")


def test_rms_gradient_is_the_root_mean_square_of_batch_gradients(keras):
    from kerascomp.methods.sensitivity import default_loss, kernel_gradients

    model = _two_conv_model(keras, duplicated=False)
    x, y = _labelled(32)
    loss = default_loss(model)
    halves = [kernel_gradients(model, ["plain"], [(x[i:i + 16], y[i:i + 16])], loss)["plain"] for i in (0, 16)]
    rms = kernel_gradients(model, ["plain"], [(x[:16], y[:16]), (x[16:], y[16:])], loss, rms=True)["plain"]
    np.testing.assert_allclose(rms, np.sqrt((halves[0] ** 2 + halves[1] ** 2) / 2), rtol=1e-5, atol=1e-10)


@pytest.mark.parametrize("shape", [(1, 1, 600, 3), (1, 1, 672, 112), (3, 3, 2, 3)])
def test_a_coarse_step_never_removes_the_last_value_or_channel(shape):
    """A step removes up to step_fraction of all units; near the end of a thin layer's trajectory that
    used to overshoot to rank 0 (EfficientNetB0's project convs in benchmarks/zoo.py)."""
    rng = np.random.default_rng(0)
    trajectory = multi_step_curve(rng.normal(size=shape), rng.normal(size=shape), step_fraction=0.2)
    assert trajectory.rank.min() >= 1
    assert trajectory.channels_removed.max(initial=0) <= shape[2] - 1


@pytest.mark.parametrize("options, match", [
    ({"normalize": "none"}, "normalize must be"), ({"normalize": 1}, "normalize must be"),
    ({"objective": "mean"}, "objective must be one of"), ({"mixing": "prune"}, "mixing must be one of"),
    ({"values": "random"}, "values must be one of"),
])
def test_rate_and_mixing_options_are_checked(options, match):
    from kerascomp.methods.collaborative import CollaborativeOptions

    for accepted in ({"normalize": False}, {"normalize": True}, {"normalize": "kernel"},
                     {"mixing": "pruning_first", "values": "taylor", "objective": "sum"}):
        CollaborativeOptions(**accepted).validate()
    with pytest.raises(InvalidArgumentError, match=match):
        CollaborativeOptions(**options).validate()


def test_channels_and_ranks_snap_to_tiles_when_asked(keras, small_resnet, labelled):
    """channel_multiple=None and rank_multiple=None: kept channel counts and ranks are multiples of 8 (the first
    step of 8, 4, 1 that meets the budget), from sensitivities measured once; the step is in the report and
    the plan, which re-applies; the default steps of 1 give counts between tiles."""
    import kerascomp

    tiled = kerascomp.compress(small_resnet, "collaborative", target_flops=0.3, data=labelled, verbose=0,
                               channel_multiple=None, rank_multiple=None)
    assert tiled.report.notes["tile_step"] == 8 and tiled.plan.settings["channel_multiple"] == 8
    assert tiled.report.macs_ratio <= 0.3
    counts = [len(kept) for kept in tiled.report.kept_outputs.values()]
    ranks = [entry.rank for entry in tiled.plan.layers if entry.rank is not None]
    assert counts and ranks and all(count % 8 == 0 for count in counts) and all(rank % 8 == 0 for rank in ranks)
    free = kerascomp.compress(small_resnet, "collaborative", target_flops=0.3, data=labelled, verbose=0)
    assert "tile_step" not in free.report.notes
    assert any(len(kept) % 8 for kept in free.report.kept_outputs.values()) or \
        any(entry.rank % 8 for entry in free.plan.layers if entry.rank is not None)
    again = kerascomp.clone_compressed(small_resnet, plan=tiled.plan, data=labelled, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), tiled.model.get_weights()))
    with pytest.raises(InvalidArgumentError, match="channel_multiple must be an int >= 1"):
        kerascomp.compress(small_resnet, "collaborative", target_flops=0.5, data=labelled, channel_multiple=0,
                           verbose=0)


@pytest.mark.parametrize("shape", [(130, 128), (128, 130), (40, 200), (200, 40), (30, 20)])
def test_thin_svd_matches_lapack_on_tall_square_and_wide_matrices(shape):
    """Through the Gram of the shorter side (the tall case: a square 1x1 conv after its first channel
    removal), the same values, orthonormal vectors and reconstruction as np.linalg.svd."""
    rng = np.random.default_rng(sum(shape))
    matrix = rng.normal(size=shape) * np.linspace(0.1, 3.0, shape[1])
    left, values, right = thin_svd(matrix)
    expected = np.linalg.svd(matrix, compute_uv=False)
    rank = min(shape)
    assert left.shape == (shape[0], rank) and values.shape == (rank,) and right.shape == (rank, shape[1])
    np.testing.assert_allclose(values, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(left.T @ left, np.eye(rank), atol=1e-9)
    np.testing.assert_allclose(right @ right.T, np.eye(rank), atol=1e-9)
    np.testing.assert_allclose((left * values) @ right, matrix, atol=1e-10)
    # the leading count triplets alone: the full result's first columns and rows (the trajectory asks for its
    # current rank only)
    count = max(1, rank // 3)
    few = thin_svd(matrix, count)
    assert few[0].shape == (shape[0], count) and few[2].shape == (count, shape[1])
    for part, whole in zip(few, (left[:, :count], values[:count], right[:count])):
        np.testing.assert_allclose(part, whole, rtol=1e-12, atol=1e-12)


def test_collaborative_prunes_a_squeeze_excite_expansion_through_its_projection(keras, labelled):
    """The projection of an EfficientNet block may lose input channels although the squeeze-and-excite block reads
    and gates them (until 2026-12-07 it was refused: "input channels also feed se_reduce"): the expansion and the
    gate lose those filters and the reduce conv those slices. Channels 0..15 are zeroed in both readers, so the
    Taylor scores cut only those and the outputs stay the original's; cutting channels the readers use changes
    them (the check can fail)."""
    from conftest import squeeze_excite_model, zero_input_slices

    import kerascomp

    model = squeeze_excite_model(keras)
    zero_input_slices(model, {"project": slice(0, 16), "se_reduce": slice(0, 16)})
    x, _ = labelled
    result = kerascomp.compress(model, "collaborative", target_flops=0.8, data=labelled, decompose=False,
                                recalibrate=False, reconstruct=False, verbose=0)
    assert result.report.macs_ratio <= 0.8
    entries = {entry.layer: entry for entry in result.plan.layers}
    cut = entries["project"].removed_inputs
    assert cut and set(cut) <= set(range(16))
    assert result.model.get_layer("expand").get_weights()[0].shape[-1] == 32 - len(cut)
    assert result.model.get_layer("se_expand").get_weights()[0].shape[-1] == 32 - len(cut)
    assert result.model.get_layer("se_reduce").get_weights()[0].shape[-2] == 32 - len(cut)
    assert "pruned through 'project'" in entries["se_reduce"].reason
    expected = model.predict(x, verbose=0)
    assert np.allclose(result.model.predict(x, verbose=0), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    entries["project"].removed_inputs = list(range(16, 16 + len(cut)))
    wrong = kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(result.plan.to_json()), verbose=0)
    assert not np.allclose(wrong.predict(x, verbose=0), expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_the_planned_macs_count_the_inputs_that_another_convs_choice_removes(keras, labelled):
    """The rate solver's MACs estimate (``_realised``) must equal the built model's, or a plan meets its
    target on paper only (MobileNetV3Small at 0.5 realised 0.5016 in tf_keras): here the squeeze-and-excite
    reduce conv, factored to rank 2 on its one pixel, loses the 12 inputs that the projection's choice removes,
    while its own choice removes none (the case that counting a conv's own choice missed)."""
    from conftest import squeeze_excite_model

    import kerascomp
    from kerascomp.graph.channels import analyse_channels
    from kerascomp.graph.keras_io import infer_shapes, read_model
    from kerascomp.methods import collaborative
    from kerascomp.methods.pruning import cost_tables

    model = squeeze_excite_model(keras)
    planned = kerascomp.plan(model, "collaborative", target_flops=0.9, data=labelled, verbose=0)
    plan = kerascomp.Plan.from_json(planned.to_json())
    entries = {entry.layer: entry for entry in plan.layers}
    entries["project"].removed_inputs = list(range(12))
    entries["se_reduce"].removed_inputs, entries["se_reduce"].rank, entries["se_reduce"].kept_values = [], 2, [0, 1]
    built = kerascomp.compress(model, plan=plan, data=labelled, recalibrate=False, reconstruct=False, verbose=0)
    assert built.model.get_layer("se_reduce").get_weights()[0].shape[:3] == (1, 1, 2)  # the 1x1 half of the pair
    assert built.model.get_layer("se_reduce_basis").get_weights()[0].shape == (1, 1, 20, 2)
    graph = read_model(model)
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)
    convs, _ = collaborative._convs(graph, shapes, analysis, collaborative.CollaborativeOptions())
    choices = [collaborative._Choice(np.asarray(entries[conv.spec.name].removed_inputs or [], np.int64),
                                     entries[conv.spec.name].rank, 0.0) for conv in convs]
    estimate = collaborative._realised(cost_tables(graph, shapes, analysis), analysis, convs, choices, 0)
    assert estimate == built.report.macs_after


def _pointwise_model(keras):
    """:func:`conftest.pointwise_net` at 48 channels, its second 1x1 conv of rank 4."""
    from conftest import pointwise_net

    model = pointwise_net(keras, width=48, seed=3)
    mix = model.get_layer("mix")  # rank 4: its singular values beyond the fourth cost nothing to cut
    rng = np.random.default_rng(3)
    mix.set_weights([(rng.normal(size=(48, 4)) @ rng.normal(size=(4, 48)) / 10).reshape(1, 1, 48, 48).astype("float32"),
                     mix.get_weights()[1]])
    return model


def test_pointwise_auto_cuts_1x1_ranks_only_when_pruning_cannot_meet_the_budget(keras, labelled):
    """pointwise="auto" (the default): 1x1 convs lose input channels only while that meets the budget; with
    pruning off, the budget needs their ranks, so the second attempt cuts them (and says so); pointwise=False
    then refuses, naming why the 1x1 convs keep their ranks; pointwise=True cuts them where pruning alone would
    do. Plans re-apply bit for bit."""
    import kerascomp

    model = _pointwise_model(keras)

    def ranks(result):
        return {entry.layer: entry.rank for entry in result.plan.layers if entry.rank is not None}

    pruned = kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, verbose=0)
    assert pruned.report.macs_ratio <= 0.5
    assert not {"wide", "mix"} & set(ranks(pruned))
    assert any(entry.removed_inputs for entry in pruned.plan.layers if entry.layer in ("wide", "mix"))
    assert pruned.plan.settings["pointwise_resolved"] is False
    assert pruned.report.notes["pointwise"].startswith("auto: 1x1 convs lose input channels only")
    factored = kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, prune=False, verbose=0)
    assert factored.report.macs_ratio <= 0.5 and "mix" in ranks(factored)
    assert factored.plan.settings["pointwise_resolved"] is True and "ranks cut too" in factored.report.notes["pointwise"]
    again = kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(factored.plan.to_json()), data=labelled,
                                       verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), factored.model.get_weights()))
    with pytest.raises(kerascomp.BudgetError, match="rank not cut"):
        kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, prune=False, pointwise=False,
                           verbose=0)
    reference = kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, pointwise=True, verbose=0)
    assert "pointwise_resolved" not in reference.plan.settings and "pointwise" not in reference.report.notes
    assert "mix" in ranks(reference)  # the reference's rule cuts the rank-4 conv's rank, although pruning would do
    with pytest.raises(kerascomp.InvalidArgumentError, match="pointwise"):
        kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, pointwise="yes", verbose=0)


def test_pointwise_auto_still_cuts_the_rank_of_a_1x1_conv_on_one_pixel(keras, labelled):
    """A 1x1 conv after the pooling reads its weights once per image, and a low-rank pair reads fewer: with
    pointwise="auto" its rank may be cut while the 1x1 convs on feature maps lose input channels only.
    With pointwise=False only the feature-map convs are held back, so the head's rank is cut there too."""
    import kerascomp

    layers = keras.layers
    keras.utils.set_random_seed(4)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(48, 1, activation="relu", name="wide")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True)(x)
    x = layers.Conv2D(256, 1, activation="relu", name="pooled")(x)
    model = keras.Model(inputs, layers.Flatten()(layers.Conv2D(10, 1, name="logits")(x)))
    pooled = model.get_layer("pooled")  # rank 2: cutting its rank costs nothing
    rng = np.random.default_rng(4)
    pooled.set_weights([(rng.normal(size=(48, 2)) @ rng.normal(size=(2, 256))).reshape(1, 1, 48, 256).astype("float32")
                        / 10, pooled.get_weights()[1]])
    for pointwise in ("auto", False):
        result = kerascomp.compress(model, "collaborative", target_flops=0.5, data=labelled, pointwise=pointwise,
                                    verbose=0)
        ranks = {entry.layer: entry.rank for entry in result.plan.layers if entry.rank is not None}
        assert result.report.macs_ratio <= 0.5 and "wide" not in ranks and "pooled" in ranks, ranks


@pytest.mark.parametrize("stream", ["wide", 0, 1.5, True])
def test_stream_option_is_checked(stream):
    from kerascomp.methods.collaborative import CollaborativeOptions

    for accepted in ("keep", "uniform", "auto", 0.5, 1):
        CollaborativeOptions(stream=accepted).validate()
    with pytest.raises(InvalidArgumentError, match="stream must be one of 'keep', 'uniform', 'auto' or a fraction"):
        CollaborativeOptions(stream=stream).validate()


def test_composed_kept_outputs_index_the_original_channels():
    from kerascomp.methods.collaborative import _composed

    assert _composed({"a": [0, 2, 3, 5], "b": [1]}, {"a": [1, 3], "c": [0, 4]}) == {"a": [2, 5], "b": [1], "c": [0, 4]}


def _stream_widths(model):
    """Output widths of the convs that write a ResNet's residual stream: the stem and each block's second conv."""
    return {layer.name: layer.filters for layer in model.layers
            if type(layer).__name__ == "Conv2D" and (layer.name == "stem_conv" or layer.name.endswith("_conv2"))}


def test_stream_uniform_cuts_the_residual_stream_then_plans_the_rest(keras, small_resnet, labelled):
    """stream="uniform" at a quarter of the MACs: every stream group keeps sqrt(0.25) = half its channels (the stem
    and every block's output conv write 8 of 16 ... 32 of 64), collaborative meets the budget on the rest, the
    report says so in the original model's costs, and the plan re-applies to the same weights. The default
    ("auto") without a latency table, and "keep", leave every stream conv at full width."""
    import kerascomp

    kept = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0)
    cut = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                             stream="uniform")
    original = _stream_widths(small_resnet)
    assert original == {"stem_conv": 16, "s1b1_conv2": 16, "s2b1_conv2": 32, "s3b1_conv2": 64}
    assert kept.plan.settings["stream"] == "auto"  # the default; without a latency table, the reference's scope
    assert kept.report.notes["stream"].startswith("auto: keep (a choice by measured latency needs a host")
    scoped = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                                stream="keep")
    assert "stream" not in scoped.report.notes
    assert all(np.array_equal(a, b) for a, b in zip(scoped.model.get_weights(), kept.model.get_weights()))
    assert all(kept.report.kept_outputs.get(name) is None for name in original)
    assert {name: len(cut.report.kept_outputs[name]) for name in original} == \
        {name: width // 2 for name, width in original.items()}
    assert cut.report.notes["stream"].startswith("kept 56 of 112 stream channels (3 groups)")
    assert cut.report.macs_ratio <= 0.25 and cut.report.macs_before == kept.report.macs_before
    assert cut.plan.macs_before == kept.plan.macs_before and cut.plan.macs_after <= 0.25 * cut.plan.macs_before
    again = kerascomp.clone_compressed(small_resnet, plan=kerascomp.Plan.from_json(cut.plan.to_json()),
                                       data=labelled, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), cut.model.get_weights()))
    assert kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                              stream=1.0).report.notes["stream"].startswith("no stream channels cut")


@flavour_independent
def test_stream_auto_keeps_the_rule_that_measures_faster(small_resnet, labelled):
    """With a host table under a MACs target, both plans are timed and the stream is cut only if that measures
    more than STREAM_MARGIN faster and its loss on data is not more than STREAM_LOSS_MARGIN higher; the note gives
    both measured ratios (and both losses, when they were needed)."""
    import re

    import kerascomp
    from kerascomp.methods.collaborative import STREAM_LOSS_MARGIN, STREAM_MARGIN

    table = kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=3, verbose=0, cache=False)
    result = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                                stream="auto", latency=table)
    note = result.report.notes["stream"]

    def numbers(label: str) -> dict[str, float]:
        return {rule: float(value) for rule, value in re.findall(r"(keep|uniform) ([0-9.]+)",
                                                                 re.split(r"[;)]", note.split(label)[1])[0])}

    found = numbers("measured latency / original:")
    chosen = note.split()[1]
    faster = found["uniform"] < (1 - STREAM_MARGIN) * found["keep"]
    assert set(found) == {"keep", "uniform"}
    if faster:  # then both candidates were scored on data, and the cut taken unless its loss is clearly higher
        losses = numbers("loss on data after reconstruction:")
        assert chosen == ("uniform" if losses["uniform"] <= (1 + STREAM_LOSS_MARGIN) * losses["keep"] else "keep")
    else:
        assert chosen == "keep" and "loss on data" not in note
    narrowed = result.report.kept_outputs.get("stem_conv") is not None
    assert narrowed == (chosen == "uniform") and result.report.macs_ratio <= 0.25


@flavour_independent
@pytest.mark.parametrize("keep_ratio, uniform_ratio, uniform_loss, chosen", [
    (0.50, 0.48, 1.0, "keep"), (0.50, 0.46, 1.015, "uniform"), (0.50, 0.46, 1.025, "keep")])
def test_stream_auto_cuts_the_stream_only_when_it_measures_clearly_faster(small_resnet, labelled, monkeypatch,
                                                                        keep_ratio, uniform_ratio, uniform_loss,
                                                                        chosen):
    """The measured ratios and the finished candidates' losses are faked (one per candidate, told apart by the
    stem's width; the uncut plan's loss is 1.0): 4% faster keeps the reference's scope without scoring either
    candidate; 8% faster cuts the stream when its loss is 1.5% higher, not when it is 2.5% higher."""
    import kerascomp
    import kerascomp.methods.collaborative as collaborative
    import kerascomp.planner as planner
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(small_resnet)
    table = kerascomp.LatencyTable({name: [{"form": "dense", "macs": m, "ms": m * 1e-6}] for name, m in macs.items()},
                                   sum(macs.values()) * 1.2e-6, "host (constructed for a test)", 1, macs)

    def cut(graph) -> bool:
        return graph.layers["stem_conv"].weights[0].shape[-1] < 16

    def fake(num_threads=1):
        return lambda original, compressed: uniform_ratio if cut(compressed) else keep_ratio

    scored = []

    def fake_loss(graph, result, report, data, options, context, keep=None):
        scored.append(cut(result))
        return uniform_loss if cut(result) else 1.0

    monkeypatch.setattr(planner, "measured_latency_ratio", fake)
    monkeypatch.setattr(collaborative, "finished_loss", fake_loss)
    result = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                                latency=table, stream="auto")
    note = result.report.notes["stream"]
    assert note.startswith(f"auto: {chosen} (") and f"keep {keep_ratio:.3f}, uniform {uniform_ratio:.3f}" in note
    assert (result.report.kept_outputs.get("stem_conv") is not None) == (chosen == "uniform")
    faster = uniform_ratio < 0.95 * keep_ratio
    assert sorted(scored) == ([False, True] if faster else [])  # only a clearly faster cut is scored, both then
    assert ("loss on data after reconstruction: keep 1.0000, uniform" in note) == faster
    assert ("the cut's over 2% higher" in note) == (faster and chosen == "keep")


@flavour_independent
def test_stream_auto_returns_the_candidate_it_finished_without_finishing_it_again(small_resnet, labelled,
                                                                                 monkeypatch):
    """When "auto" scores both candidates it has finished (reconstructed, recalibrated) each: compress returns the
    chosen one as it was scored, two finishes in all, and that model equals the plan applied afresh."""
    import kerascomp
    import kerascomp.methods.collaborative as collaborative
    import kerascomp.planner as planner
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(small_resnet)
    table = kerascomp.LatencyTable({name: [{"form": "dense", "macs": m, "ms": m * 1e-6}] for name, m in macs.items()},
                                   sum(macs.values()) * 1.2e-6, "host (constructed for a test)", 1, macs)
    monkeypatch.setattr(planner, "measured_latency_ratio",  # the cut measures 20% faster: both get scored
                        lambda num_threads=1: lambda original, compressed: 0.4 if compressed.layers[
                            "stem_conv"].weights[0].shape[-1] < 16 else 0.5)
    finishes = []
    real_finish = collaborative.finish

    def counted(*args, **kwargs):
        finishes.append(1)
        return real_finish(*args, **kwargs)

    monkeypatch.setattr(collaborative, "finish", counted)
    result = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                                latency=table, stream="auto")
    assert "loss on data after reconstruction" in result.report.notes["stream"]
    assert len(finishes) == 2  # one per candidate; before, apply finished the chosen one a third time
    assert "_finished" not in result.plan.__dict__  # a saved or re-applied plan is finished afresh
    assert any("output_error_before" in d.detail for d in result.report.layers)  # the report says what was refit
    again = kerascomp.compress(small_resnet, plan=result.plan, data=labelled, verbose=0)
    assert len(finishes) == 3
    x = labelled[0][:32]
    np.testing.assert_allclose(result.model.predict(x, verbose=0), again.model.predict(x, verbose=0),
                               rtol=1e-4, atol=1e-4)
    assert [w.shape for w in result.model.get_weights()] == [w.shape for w in again.model.get_weights()]


def test_finished_loss_is_the_loss_of_the_model_apply_returns(small_resnet, labelled):
    """What "auto" compares is the loss on data of exactly the model a compression with that plan returns
    (reconstructed and recalibrated): scored independently with Keras here."""
    import kerascomp
    from kerascomp.graph.keras_io import read_model
    from kerascomp.methods.collaborative import CollaborativeOptions, apply_plan, finished_loss
    from kerascomp.methods.registry import Context

    result = kerascomp.compress(small_resnet, "collaborative", target_flops=0.25, data=labelled, verbose=0,
                                stream="uniform")
    x, y = labelled
    options = CollaborativeOptions(stream="uniform", max_samples=len(y))
    graph = read_model(small_resnet)
    loss = finished_loss(graph, *apply_plan(graph, result.plan), labelled, options, Context(verbose=0))
    logits = result.model.predict(x, verbose=0).astype(np.float64)  # the small ResNet's head has no softmax
    top = logits.max(-1)
    expected = float(np.mean(top + np.log(np.exp(logits - top[:, None]).sum(-1)) - logits[np.arange(len(y)), y]))
    assert loss == pytest.approx(expected, rel=1e-3)
    assert loss > 0.0

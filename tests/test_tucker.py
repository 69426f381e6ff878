"""method='tucker': Tucker-2 factors, budgets and refusals."""
import numpy as np
import pytest
from conftest import model_fingerprint

import kerascomp
from kerascomp.decompose.tucker import compose, truncation_errors, tucker2
from kerascomp.errors import BudgetError, InvalidArgumentError


def test_tucker2_is_exact_at_full_rank_and_within_the_hosvd_bound():
    kernel = np.random.default_rng(0).normal(size=(3, 3, 8, 12))
    np.testing.assert_allclose(compose(*tucker2(kernel, 8, 12)), kernel, atol=1e-10)
    first, core, last = tucker2(kernel, 4, 6)
    assert (first.shape, core.shape, last.shape) == ((1, 1, 8, 4), (3, 3, 4, 6), (1, 1, 6, 12))
    error = np.sum((compose(first, core, last) - kernel) ** 2) / np.sum(kernel ** 2)
    drop_in, drop_out = truncation_errors(kernel)
    assert max(drop_in[4], drop_out[6]) <= error <= drop_in[4] + drop_out[6]
    with pytest.raises(ValueError, match="ranks"):
        tucker2(kernel, 9, 6)


def test_truncation_errors_cover_every_rank_of_a_mode_wider_than_the_rest_of_the_kernel():
    # 3 filters of 3x3 over 32 channels: the channel unfolding has only 27 singular values, yet ranks go to 32
    # (the fuzz case that made method='auto' index past the curve)
    kernel = np.random.default_rng(1).normal(size=(3, 3, 32, 3))
    drop_in, drop_out = truncation_errors(kernel)
    assert (len(drop_in), len(drop_out)) == (33, 4)
    assert drop_in[0] == pytest.approx(1.0) and drop_out[0] == pytest.approx(1.0)
    np.testing.assert_allclose(drop_in[27:], 0.0, atol=1e-12)
    assert drop_in[26] > 1e-6 and np.all(np.diff(drop_in) <= 1e-15)
    np.testing.assert_allclose(compose(*tucker2(kernel, 27, 3)), kernel, atol=1e-9)


def test_gram_paths_match_tensorly_and_the_svd():
    """The truncation curve from the Gram eigenvalues equals the one from the singular values, and HOOI started
    from the Gram's eigenvectors reaches the error of tensorly's own init='svd' run."""
    import tensorly
    from tensorly.decomposition import partial_tucker

    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(3, 3, 24, 40)) * np.linspace(1.0, 0.05, 40) * np.linspace(1.0, 0.2, 24)[:, None]
    drops = truncation_errors(kernel)
    for mode, drop in zip((2, 3), drops):
        energy = np.linalg.svd(np.moveaxis(kernel, mode, 0).reshape(kernel.shape[mode], -1), compute_uv=False) ** 2
        expected = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]]) / np.sum(kernel ** 2)
        np.testing.assert_allclose(drop, expected, atol=1e-12)
    with tensorly.backend_context("numpy"):
        (core, (first, last)), _ = partial_tucker(kernel, rank=[10, 16], modes=[2, 3], n_iter_max=30, init="svd",
                                                  random_state=0)
    reference = np.linalg.norm(np.einsum("hwab,ca,nb->hwcn", core, first, last) - kernel)
    ours = np.linalg.norm(compose(*tucker2(kernel, 10, 16)) - kernel)
    assert ours == pytest.approx(reference, rel=1e-6)


def test_a_tall_unfolding_takes_the_small_gram_and_gives_the_svds_subspace():
    """A 1x1 conv with more inputs than filters (48 over 12) unfolds tall: its curve and leading vectors come from
    the 12 x 12 Gram and match the SVD's; a rank past 12 and a kernel with zero rows still give orthonormal
    vectors; HOOI from them reaches tensorly's own init='svd' error."""
    import tensorly
    from tensorly.decomposition import partial_tucker

    from kerascomp.decompose.tucker import _leading_vectors, _unfolding

    rng = np.random.default_rng(3)
    kernel = rng.normal(size=(1, 1, 48, 12)) * np.linspace(1.0, 0.1, 12)
    unfolded = _unfolding(kernel, 2)
    left, singular, _ = np.linalg.svd(unfolded, full_matrices=False)
    expected = np.concatenate([np.cumsum((singular ** 2)[::-1])[::-1], np.zeros(48 - 11)]) / np.sum(kernel ** 2)
    np.testing.assert_allclose(truncation_errors(kernel)[0], expected, atol=1e-12)
    ours = _leading_vectors(unfolded, 5)
    np.testing.assert_allclose(np.abs(ours.T @ left[:, :5]), np.eye(5), atol=1e-8)  # the same vectors up to sign
    for matrix, rank in ((unfolded, 20), (np.where(np.arange(48)[:, None] < 40, 0.0, unfolded), 12)):
        vectors = _leading_vectors(matrix, rank)
        assert vectors.shape == (48, rank) and np.all(np.isfinite(vectors))
        np.testing.assert_allclose(vectors.T @ vectors, np.eye(rank), atol=1e-8)
    with tensorly.backend_context("numpy"):
        (core, (first, last)), _ = partial_tucker(kernel, rank=[6, 8], modes=[2, 3], n_iter_max=30, init="svd",
                                                  random_state=0)
    reference = np.linalg.norm(np.einsum("hwab,ca,nb->hwcn", core, first, last) - kernel)
    assert np.linalg.norm(compose(*tucker2(kernel, 6, 8)) - kernel) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("allocation, target", [("uniform", {"target_flops": 0.5}), ("global", {"target_params": 0.4})])
def test_tucker_meets_the_budget(small_resnet, images, allocation, target):
    before = model_fingerprint(small_resnet)
    result = kerascomp.compress(small_resnet, method="tucker", data=images, verbose=0, allocation=allocation, **target)
    assert model_fingerprint(small_resnet) == before
    report, original = result.report, kerascomp.cost(small_resnet)
    cost = kerascomp.cost(result.model)
    assert (report.macs_after, report.params_after) == (cost.macs, cost.params)
    if "target_flops" in target:
        assert 0.4 < cost.macs / original.macs <= 0.5
    else:
        assert cost.params / original.params <= 0.4
    decided = {d.layer: d for d in report.layers}
    assert decided["s2b1_proj"].action == "kept" and "1x1" in decided["s2b1_proj"].reason
    tucked = [d for d in report.layers if d.action.startswith("tucker")]
    assert tucked and all(0 <= d.relative_error < 1 for d in tucked)
    for entry in tucked:  # the kxk conv holds the ranks: the core, or the conv itself when its last factor folds
        names = {layer.name for layer in result.model.layers}
        core = f"{entry.layer}_tucker_core" if f"{entry.layer}_tucker_core" in names else entry.layer
        assert result.model.get_layer(core).get_weights()[0].shape[2:] == tuple(entry.detail["ranks"])
    result.model.compile("sgd", "mse")
    result.model.fit(images, np.zeros((len(images), 10)), epochs=1, verbose=0)


def test_tucker_refuses_what_it_cannot_do(small_resnet, keras):
    with pytest.raises(BudgetError, match="method='tucker' cannot reach target_flops.*1x1 conv"):
        kerascomp.compress(small_resnet, method="tucker", target_flops=0.02, pointwise=False, verbose=0)
    with pytest.raises(BudgetError, match="method='tucker' cannot reach target_flops=0.001 even with its 1x1 convs"):
        kerascomp.compress(small_resnet, method="tucker", target_flops=0.001, verbose=0)
    with pytest.raises(InvalidArgumentError, match="allocation must be one of"):
        kerascomp.compress(small_resnet, method="tucker", allocation="greedy", verbose=0)
    dense_only = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    with pytest.raises(kerascomp.UnsupportedModelError, match="found no Conv2D to decompose"):
        kerascomp.compress(dense_only, method="tucker", verbose=0)


def test_tucker_ranks_snap_to_tiles_by_default_and_fall_back(small_resnet, keras):
    """rank_multiple=None (the default) plans ranks in multiples of 8 (or a layer's full channel count), then
    4, then 1 where the budget needs it; the step is in the report and the plan; rank_multiple=1 gives any rank."""
    def ranks(result):
        return [tuple(r) for r in result.report.choices["layers"].values()]

    def full(layer_ranks, name, model):
        _, _, channels, filters = model.get_layer(name).get_weights()[0].shape
        return layer_ranks[0] in (channels, min(channels, filters)) or layer_ranks[1] == filters

    tiled = kerascomp.compress(small_resnet, method="tucker", target_flops=0.5, verbose=0)
    assert tiled.report.notes["tile_step"] == 8 and tiled.plan.settings["rank_multiple"] == 8
    assert tiled.report.macs_ratio <= 0.5 and ranks(tiled)
    assert all(r % 8 == 0 or full(rs, name, small_resnet)
               for name, rs in tiled.report.choices["layers"].items() for r in rs)
    free = kerascomp.compress(small_resnet, method="tucker", target_flops=0.5, verbose=0, rank_multiple=1)
    assert any(r % 8 for rs in ranks(free) for r in rs)  # without the step, ranks fall between tiles
    assert "tile_step" not in free.report.notes
    again = kerascomp.clone_compressed(small_resnet, plan=tiled.plan, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), tiled.model.get_weights()))
    for target, step in ((0.2, 4), (0.1, 1)):  # steps of 8 cannot reach these (1x1 convs left dense)
        with pytest.raises(BudgetError, match="cannot reach"):
            kerascomp.compress(small_resnet, method="tucker", target_flops=target, pointwise=False, rank_multiple=8,
                               verbose=0)
        fallen = kerascomp.compress(small_resnet, method="tucker", target_flops=target, pointwise=False, verbose=0)
        assert fallen.report.notes["tile_step"] == step and fallen.report.macs_ratio <= target
    with pytest.raises(BudgetError, match=r"ranks of 8 \(rank_multiple=8\)"):
        kerascomp.compress(small_resnet, method="tucker", target_flops=0.05, allocation="uniform", rank_multiple=8,
                           verbose=0)
    with pytest.raises(InvalidArgumentError, match="rank_multiple must be an int >= 1"):
        kerascomp.compress(small_resnet, method="tucker", target_flops=0.5, rank_multiple=0, verbose=0)


def test_a_full_rank_mode_folds_into_the_core_exactly(keras):
    """At (C, r) the first factor (C x C, orthogonal) folds into the core: kxk C -> r then 1x1; at (r, N) the last
    folds: 1x1 C -> r then kxk r -> N with the bias; at (C, N) the chain stays whole. Each computes the Tucker-2
    product of its ranks, and costs one op and its MACs less than the chain."""
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.methods.tucker import factor_layer, folds, tucker_cost

    rng = np.random.default_rng(4)
    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, keras.layers.Conv2D(32, 3, padding="same", name="c")(inputs))
    kernel = rng.normal(size=(3, 3, 16, 32)).astype("float32")
    bias = rng.normal(size=32).astype("float32")
    model.get_layer("c").set_weights([kernel, bias])
    x = rng.normal(size=(4, 8, 8, 16)).astype("float32")
    for ranks, layers in (((16, 8), ["c_tucker_core", "c"]), ((8, 32), ["c_tucker_in", "c"]),
                          ((16, 32), ["c_tucker_in", "c_tucker_core", "c"]), ((8, 8), ["c_tucker_in", "c_tucker_core", "c"])):
        graph = read_model(model)
        factor_layer(graph, graph.layers["c"], ranks, 30, keras)
        factored = write_model(graph)
        assert [layer.name for layer in factored.layers[1:]] == layers
        reference = keras.Model(inputs, keras.layers.Conv2D(32, 3, padding="same")(inputs))
        reference.set_weights([compose(*tucker2(kernel, *ranks)), bias])
        np.testing.assert_allclose(factored.predict(x, verbose=0), reference.predict(x, verbose=0), atol=2e-4)
        chain = sum(int(np.prod(w.shape)) for w in tucker2(kernel, *ranks))
        assert kerascomp.cost(factored).params - 32 == tucker_cost(kernel.shape, ranks, 64, 64, "params")  # + bias
        first, last = folds(kernel.shape, ranks)
        assert (len(layers) == 2) == (first or last)
        if first or last:
            assert tucker_cost(kernel.shape, ranks, 64, 64, "params") < chain
            assert kerascomp.cost(factored).macs == tucker_cost(kernel.shape, ranks, 64, 64, "flops")


def test_the_global_allocation_keeps_a_full_mode_and_folds_it(keras):
    """A kernel of rank 8 in its output mode and full rank in its input mode: the chain must truncate the input
    mode (error), the folded kxk(8) + 1x1 loses nothing; with a latency table (here one that follows the MACs)
    the allocation takes it. Without a table it keeps one rho on both modes (the folded forms are offered only
    where they are timed)."""
    from kerascomp.bench.latency import LatencyTable, conv_macs

    rng = np.random.default_rng(5)
    inputs = keras.Input((8, 8, 16))
    hidden = keras.layers.Conv2D(32, 3, padding="same", name="c")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(10, 1, name="head")(hidden))
    low = np.einsum("hwcr,rn->hwcn", rng.normal(size=(3, 3, 16, 8)), rng.normal(size=(8, 32))).astype("float32")
    model.get_layer("c").set_weights([low, np.zeros(32, "float32")])
    macs = conv_macs(model)
    table = LatencyTable({name: [{"form": "dense", "macs": m, "ms": m * 1e-6}] for name, m in macs.items()},
                         sum(macs.values()) * 1.1e-6, "constructed: 1 ns per MAC", 1, macs)
    plain = kerascomp.compress(model, method="tucker", target_flops=0.5, pointwise=False, verbose=0)
    ranks = plain.report.choices["layers"]["c"]
    assert ranks[0] * 2 == ranks[1] and ranks != [16, 32]  # one rho: r_in = rho * 16, r_out = rho * 32
    result = kerascomp.compress(model, method="tucker", target_flops=0.5, pointwise=False, verbose=0, latency=table)
    assert result.report.choices["layers"]["c"] == [16, 8]
    forced = kerascomp.compress(model, method="tucker", target_flops=0.5, pointwise=False, verbose=0, fold=True)
    assert forced.report.choices["layers"]["c"] == [16, 8]
    with pytest.raises(InvalidArgumentError, match="fold"):
        kerascomp.compress(model, method="tucker", target_flops=0.5, verbose=0, fold="always")
    entry = {d.layer: d for d in result.report.layers}["c"]
    assert "first factor folded" in entry.action and entry.relative_error < 1e-5
    assert "c_tucker_in" not in {layer.name for layer in result.model.layers}
    x = rng.normal(size=(4, 8, 8, 16)).astype("float32")
    np.testing.assert_allclose(result.model.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-3, atol=1e-3)

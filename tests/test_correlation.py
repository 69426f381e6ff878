"""Filter-correlation maths (kerascomp.decompose.correlation) and the correlation regulariser."""
import numpy as np
import pytest
from conftest import flavour_independent

import kerascomp
from kerascomp.decompose.correlation import filter_rows, l1_norms, linear_fit, pearson_matrix, removal_order, top_pairs
from kerascomp.graph.channels import analyse_channels
from kerascomp.graph.keras_io import infer_shapes, read_model, write_model
from kerascomp.methods.base import Budget
from kerascomp.methods.correlation import correlation_steps, regularize_graph
from kerascomp.methods.pruning import PruneOptions, plan_pruning
from kerascomp.methods.strip import strip_regularizers


def test_pearson_matches_numpy():
    rows = np.random.default_rng(0).normal(size=(7, 30))
    rows[3] = 2.0 * rows[1] + 0.5
    corr = pearson_matrix(rows)
    np.testing.assert_allclose(corr, np.corrcoef(rows), atol=1e-12)
    assert corr[1, 3] == pytest.approx(1.0)
    constant = pearson_matrix(np.vstack([rows, np.ones(30)]))
    assert np.all(constant[-1, :-1] == 0.0)


def test_filter_rows_and_l1():
    kernel = np.arange(2 * 2 * 3 * 4, dtype=float).reshape(2, 2, 3, 4)
    rows = filter_rows(kernel)
    assert rows.shape == (4, 12)
    np.testing.assert_array_equal(rows[1], kernel[..., 1].ravel())
    np.testing.assert_array_equal(l1_norms(rows), np.abs(kernel).sum(axis=(0, 1, 2)))


def test_top_pairs_are_greedy_and_disjoint():
    strength = np.array([[1, .9, .1, .8], [.9, 1, .7, .2], [.1, .7, 1, .3], [.8, .2, .3, 1]])
    assert top_pairs(strength) == [(0, 1, .9), (2, 3, .3)]
    assert top_pairs(strength, np.array([1, 2, 3])) == [(1, 2, .7)]
    assert top_pairs(strength, np.array([2])) == []


def test_removal_order_drops_the_weaker_member_each_pass():
    rng = np.random.default_rng(1)
    strength = np.abs(pearson_matrix(rng.normal(size=(6, 20))))
    keep = np.arange(6, dtype=float)
    steps = removal_order(strength, keep, np.arange(6))
    dropped = [d for d, _, _ in steps]
    assert len(steps) == 5 and len(set(dropped)) == 5
    assert all(keep[d] < keep[p] for d, p, _ in steps)
    first_pass = [s[2] for s in steps[:3]]
    assert first_pass == sorted(first_pass, reverse=True)


def test_linear_fit_recovers_affine_relation():
    source = np.random.default_rng(2).normal(size=500)
    assert linear_fit(3.0 * source - 1.0, source) == pytest.approx((3.0, -1.0))
    # a constant source: the fit is a scale of it (folded into the partner's weights, exact under zero
    # padding), or, for a zero source, the mean as a bias
    assert linear_fit(source, np.full(500, 2.0)) == pytest.approx((source.mean() / 2.0, 0.0))
    assert linear_fit(np.full(500, 0.5), np.full(500, 0.5)) == pytest.approx((1.0, 0.0))
    assert linear_fit(source, np.zeros(500)) == pytest.approx((0.0, source.mean()))


def _regularised(keras, small_resnet, strength=1.0):
    graph = read_model(small_resnet)
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)
    orders = plan_pruning(graph, shapes, analysis, Budget("flops", 0.5), correlation_steps, "correlation",
                          PruneOptions(), verbose=0)
    regularized, count = regularize_graph(graph, analysis, orders, strength)
    return write_model(regularized), count


def _pair_correlations(model):
    values = []
    for layer in model.layers:
        regularizer = getattr(layer, "kernel_regularizer", None)
        if regularizer is None or not hasattr(regularizer, "pairs"):
            continue
        corr = pearson_matrix(filter_rows(layer.get_weights()[0]))
        values += [abs(corr[a, b]) for a, b in regularizer.pairs]
    return np.array(values)


def test_regularizer_value_is_the_formula(keras, small_resnet):
    model, count = _regularised(keras, small_resnet, strength=2.0)
    assert count > 0
    layers = [layer for layer in model.layers if hasattr(getattr(layer, "kernel_regularizer", None), "pairs")]
    expected = sum(2.0 / len(layers) * np.mean([1 - abs(pearson_matrix(filter_rows(layer.get_weights()[0]))[a, b])
                                                 for a, b in layer.kernel_regularizer.pairs]) for layer in layers)
    assert float(sum(np.asarray(loss) for loss in model.losses)) == pytest.approx(expected, rel=1e-4)


def test_regularizer_survives_save_load_and_is_stripped(keras, small_resnet, tmp_path):
    graph = read_model(small_resnet)
    graph.layers["s1b1_conv1"].config["kernel_regularizer"] = keras.regularizers.serialize(keras.regularizers.L2(1e-4))
    model, _ = _regularised(keras, write_model(graph))
    path = tmp_path / "regularised.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_layer("s1b1_conv1").kernel_regularizer.pairs == model.get_layer("s1b1_conv1").kernel_regularizer.pairs
    stripped = write_model(strip_regularizers(read_model(loaded)))
    assert type(stripped.get_layer("s1b1_conv1").kernel_regularizer).__name__ == "L2"
    assert stripped.get_layer("s1b1_conv2").kernel_regularizer is None


@flavour_independent  # the regulariser's maths is tested in both flavours above; this fit is slow
def test_regularizer_raises_pair_correlation_on_real_data(keras, cifar_path):
    """A short fit of the shipped CIFAR ResNet-20 raises the selected pairs' |corr| with the regulariser,
    and by more than the same fit without it (strength 0)."""
    from kerascomp.loading import load_demo_model

    data = np.load(cifar_path)
    x, y = data["x_train"][:1024].astype("float32"), data["y_train"][:1024].ravel()
    changes = []
    for strength in (0.0, 20.0):
        keras.utils.set_random_seed(0)
        model, _ = _regularised(keras, load_demo_model(), strength=strength)
        before = _pair_correlations(model)
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, epochs=1, batch_size=128, verbose=0, shuffle=False)
        after = _pair_correlations(model)
        changes.append(after - before)
    plain, regularised = changes
    assert regularised.mean() > 0.02
    assert regularised.mean() > 2 * max(plain.mean(), 0.005)
    assert (regularised > 0).mean() > 0.9


def test_regularizer_rejects_bad_arguments(keras):
    regularizer = kerascomp.layers_for(keras).CorrelationRegularizer
    with pytest.raises(ValueError, match="at least one"):
        regularizer([])
    with pytest.raises(ValueError, match="strength"):
        regularizer([(0, 1)], strength=-1.0)

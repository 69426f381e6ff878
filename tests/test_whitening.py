"""The whitening that auto, svd and tucker share (``whiten``, kerascomp/methods/whitening.py): factors of the
kernel whitened by its input covariance on the data, measured against factors of the raw kernel."""
import numpy as np
import pytest

import kerascomp
from kerascomp.decompose.whitening import unwhiten_factor, whiten_kernel, whitener
from kerascomp.errors import InvalidArgumentError
from kerascomp.zoo import cifar_resnet


def test_whitening_maths_round_trips_and_measures_the_output_error():
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(4000, 6)) @ rng.normal(size=(6, 6))  # correlated channels
    covariance = inputs.T @ inputs / len(inputs)
    kernel = rng.normal(size=(3, 3, 6, 4))
    for groups in (1, 2):
        blocks = whitener(covariance, groups, ridge=0.0)
        size = 6 // groups
        for g, block in enumerate(blocks):  # T^T T is the group's covariance block
            part = covariance[g * size:(g + 1) * size, g * size:(g + 1) * size]
            assert np.allclose(block.T @ block, part)
        # a (trivially) factored kernel, one output group per input group: unwhitening inverts whitening
        grouped = np.concatenate([whiten_kernel(kernel, blocks)[:, :, g * size:(g + 1) * size, :]
                                  for g in range(groups)], axis=3)
        back = unwhiten_factor(grouped, blocks)
        assert np.allclose(np.concatenate([back[..., g * 4:(g + 1) * 4] for g in range(groups)], axis=2), kernel)
    # |T dK|^2 is the mean squared output change of a 1x1 conv on these inputs
    change = rng.normal(size=(1, 1, 6, 4))
    [block] = whitener(covariance, 1, ridge=0.0)
    measured = np.mean(np.sum((inputs @ change[0, 0]) ** 2, axis=1))
    assert np.isclose(np.sum(whiten_kernel(change, [block]) ** 2), measured, rtol=1e-6)


@pytest.mark.parametrize("method", ["auto", "svd", "tucker"])
def test_whitened_factors_fit_the_data_better_than_the_raw_kernel_factors(keras, method):
    """The shared whitening (kerascomp/methods/whitening.py): factoring the whitened kernels at the same
    forms and ranks gives a smaller output error on the data than factoring the kernels themselves (no
    refit and no BN recalibration, to see the factors alone)."""
    keras.utils.set_random_seed(4)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    data = np.random.default_rng(6).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    expected = model.predict(data, verbose=0)
    options = {"forms": ["fga", "svd", "tucker"]} if method == "auto" else {}
    whitened = kerascomp.compress(model, method=method, target_flops=0.6, data=data, reconstruct=False,
                                  recalibrate=False, verbose=0, **options)
    # the same forms realised from the raw kernels: the plan re-applied with whitening off
    raw = kerascomp.clone_compressed(model, plan=whitened.plan, data=data, whiten=False, reconstruct=False,
                                     recalibrate=False, verbose=0)
    again = kerascomp.clone_compressed(model, plan=whitened.plan, data=data, reconstruct=False, recalibrate=False,
                                       verbose=0)

    def error(m):
        return float(np.linalg.norm(m.predict(data, verbose=0) - expected) / np.linalg.norm(expected))

    assert whitened.plan.choices.get("layers") or whitened.plan.choices.get("units")
    assert error(whitened.model) < 0.8 * error(raw)
    # re-applied with the same data, the plan rebuilds the same whitened factors
    assert np.allclose(again.predict(data, verbose=0), whitened.model.predict(data, verbose=0), atol=1e-5)


def test_whiten_without_data_or_for_joint_factors_is_refused_by_name(module_resnet):
    for method in ("auto", "svd", "tucker"):
        with pytest.raises(InvalidArgumentError, match="whiten=True needs data"):
            kerascomp.compress(module_resnet, method=method, target_flops=0.6, whiten=True, verbose=0)
    with pytest.raises(InvalidArgumentError, match="whiten=True is an option of method='svd'"):
        kerascomp.compress(module_resnet, method="joint_svd", target_params=0.6, whiten=True, verbose=0)
    with pytest.raises(InvalidArgumentError, match="whiten"):
        kerascomp.compress(module_resnet, method="svd", target_flops=0.6, whiten="yes", verbose=0)


def test_input_moments_are_measured_once_per_model_and_data(keras, monkeypatch):
    """svd runs at several tile steps, with and without its 1x1 convs: each conv's moments are sampled once,
    again only for other data or other weights, and the shared arrays cannot be changed in place."""
    from kerascomp.graph.keras_io import infer_shapes, read_model
    from kerascomp.methods import whitening

    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    x = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    measured = []
    real = whitening._measure_moments
    monkeypatch.setattr(whitening, "_measure_moments", lambda graph, shapes, names, *rest: measured.append(
        list(names)) or real(graph, shapes, names, *rest))
    monkeypatch.setattr(whitening, "_MOMENTS", {})
    kerascomp.compress(model, "svd", target_flops=0.5, data=x, verbose=0, pointwise=True)
    names = [name for call in measured for name in call]
    assert names and len(names) == len(set(names))  # no conv sampled twice
    kerascomp.compress(model, "svd", target_flops=0.5, data=x, verbose=0, pointwise=True)
    assert [name for call in measured for name in call] == names  # the second compression samples nothing
    kerascomp.compress(model, "svd", target_flops=0.5, data=x[::-1].copy(), verbose=0, pointwise=True)
    assert len([name for call in measured for name in call]) == 2 * len(names)  # other data: sampled again
    graph = read_model(model)
    whitening.input_moments(graph, infer_shapes(graph), names[:1], x, 32)
    calls = len(measured)
    again = read_model(model)
    whitening.input_moments(again, infer_shapes(again), names[:1], x, 32)
    assert len(measured) == calls  # the same model read again: known
    again.layers[names[0]].weights[0] = again.layers[names[0]].weights[0] * 2
    moments = whitening.input_moments(again, infer_shapes(again), names[:1], x, 32)
    assert len(measured) == calls + 1  # other weights: sampled again
    with pytest.raises(ValueError, match="read-only"):
        moments[names[0]][1][0, 0] = 1.0


def test_convs_reading_one_tensor_share_one_sample_and_one_whitening(keras, monkeypatch):
    """An Inception block's branch convs read the same tensor: its moments are sampled once and are the
    moments of that tensor (checked against the Keras activations), a conv reading another tensor gets its
    own, and method='auto' factors each shared covariance's whitening blocks once per group count."""
    from kerascomp.graph import keras_io
    from kerascomp.graph.keras_io import infer_shapes, read_model
    from kerascomp.methods import auto, whitening

    keras.utils.set_random_seed(0)
    inputs = keras.Input((12, 12, 3))
    stem = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    left = keras.layers.Conv2D(24, 3, padding="same", activation="relu", name="left")(stem)
    right = keras.layers.Conv2D(24, 1, activation="relu", name="right")(stem)
    merged = keras.layers.Concatenate()([left, right])
    out = keras.layers.Conv2D(32, 3, padding="same", name="after")(merged)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(out))
    x = np.random.default_rng(1).uniform(0, 255, (8, 12, 12, 3)).astype("float32")
    graph = read_model(model)
    sampled = []
    real = keras_io.sample_node_inputs
    monkeypatch.setattr(whitening, "sample_node_inputs",
                        lambda g, nodes, *rest: sampled.append(list(nodes)) or real(g, nodes, *rest))
    monkeypatch.setattr(whitening, "_MOMENTS", {})
    found = whitening.input_moments(graph, infer_shapes(graph), ["left", "right", "after"], x, 8)
    assert len([node for call in sampled for node in call]) == 2  # stem's output once, the concatenation once
    assert found["left"][1] is found["right"][1] and found["left"][1] is not found["after"][1]
    activations = np.asarray(keras.Model(inputs, stem)(x)).reshape(-1, 16).astype(np.float64)
    np.testing.assert_allclose(found["right"][1], activations.T @ activations / len(activations), rtol=1e-5)
    np.testing.assert_allclose(found["left"][0], np.mean(activations ** 2, axis=0), rtol=1e-5)

    factored = []
    real_whitener = auto.whitener
    monkeypatch.setattr(auto, "whitener", lambda covariance, groups=1: factored.append(
        (id(covariance), groups)) or real_whitener(covariance, groups))
    monkeypatch.setattr(whitening, "_MOMENTS", {})
    kerascomp.compress(model, "auto", target_flops=0.6, data=x, verbose=0, pointwise=True)
    assert factored and len(factored) == len(set(factored))  # each (covariance, group count) factored once

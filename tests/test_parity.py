"""The export parity check can fail: it compares the .tflite with the user's model, in range, by name."""
import warnings

import numpy as np
import pytest

import kerascomp
from kerascomp.errors import ExportError
from kerascomp.export import parity
from kerascomp.export import tflite as tflite_module
from kerascomp.export.tflite import run_tflite
from kerascomp.graph.keras_io import read_model
from tests.conftest import flavour_independent


def _corrupt_first_kernel(monkeypatch):
    """Make strip_graph return a copy with one weight changed: a fault the converted file then carries."""
    original = tflite_module.strip_graph

    def corrupted(graph):
        stripped = original(graph)
        for spec in stripped.layers.values():
            if spec.class_name == "Conv2D":
                spec.weights[0] = spec.weights[0].copy()
                spec.weights[0].flat[0] += 1.0
                return stripped
        raise AssertionError("no Conv2D to corrupt")

    monkeypatch.setattr(tflite_module, "strip_graph", corrupted)


def test_a_fault_in_the_stripped_copy_is_caught(small_resnet, tmp_path, monkeypatch):
    clean = kerascomp.export_tflite(small_resnet, tmp_path / "clean.tflite", strict=True)
    assert clean.passed and clean.relative_error < 1e-4
    _corrupt_first_kernel(monkeypatch)
    with pytest.warns(kerascomp.ParityWarning, match="differs from the Keras model"):
        warned = kerascomp.export_tflite(small_resnet, tmp_path / "warned.tflite")
    assert not warned.passed and warned.spread_error > 1e-3 and "PARITY FAILED" in str(warned)
    with pytest.raises(ExportError, match="strict=True: nothing was written"):
        kerascomp.export_tflite(small_resnet, tmp_path / "strict.tflite", strict=True)
    assert not (tmp_path / "strict.tflite").exists()


def test_strict_must_be_a_bool(small_resnet, tmp_path):
    with pytest.raises(kerascomp.InvalidArgumentError, match="strict"):
        kerascomp.export_tflite(small_resnet, tmp_path / "m.tflite", strict="yes")


@flavour_independent  # the parity maths is the same in both flavours; tf_keras exports a MobileNetV2 in test_pruning
def test_random_mobilenet_gives_a_meaningful_nonzero_error(keras, tmp_path):
    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35)
    result = kerascomp.export_tflite(model, tmp_path / "mobilenet.tflite", strict=True)
    # its probabilities are exactly 1/1000 everywhere (activations vanish in a random MobileNetV2), so only
    # the logits tell the file from the model: the error is non-zero, finite and measured against their spread
    probabilities = model.predict(np.random.default_rng(0).uniform(0, 1, (4, 32, 32, 3)), verbose=0)
    assert np.ptp(probabilities) < 1e-6
    assert result.compared == "probabilities and logits"
    assert 0 < result.relative_error < 1e-3 and 0 < result.spread_error < 1e-3


def _input_graph(keras, first_layer):
    inputs = keras.Input((8, 8, 3), name="image")
    x = first_layer(inputs) if first_layer is not None else inputs
    x = keras.layers.Conv2D(4, 3)(x)
    return read_model(keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("scale,offset,expected", [(1 / 255, 0.0, (0, 255)), (1 / 127.5, -1.0, (0, 255)),
                                                   (1.0, 0.0, (0, 1)), (None, None, (0, 1))])
def test_synthetic_inputs_follow_the_leading_rescaling(keras, scale, offset, expected):
    layer = None if scale is None else keras.layers.Rescaling(scale, offset)
    graph = _input_graph(keras, layer)
    arrays, described = parity.synthetic_inputs(graph, graph.input_shapes(), 32, seed=0)
    x = arrays[0]
    assert x.shape == (32, 8, 8, 3) and x.dtype == np.float32
    assert expected[0] - 1e-3 <= x.min() and x.max() <= expected[1] + 1e-3
    assert x.max() - x.min() > 0.5 * (expected[1] - expected[0])  # the range is used, not a sliver of it
    per_image = x.reshape(32, -1).mean(1)
    assert per_image.std() > 0.1 * (expected[1] - expected[0])  # images differ as a whole, not only pixel noise
    assert f"[{expected[0]:g}, {expected[1]:g}]" in described


def test_synthetic_inputs_follow_a_normalization(keras):
    graph = _input_graph(keras, keras.layers.Normalization(mean=[100.0, 50.0, 0.0], variance=[400.0, 100.0, 1.0]))
    x = parity.synthetic_inputs(graph, graph.input_shapes(), 64, seed=0)[0][0]
    means = x.reshape(-1, 3).mean(0)
    np.testing.assert_allclose(means, [100.0, 50.0, 0.0], atol=8.0)
    assert x[..., 0].std() > x[..., 1].std() > x[..., 2].std()


def test_softmax_outputs_compare_as_logits():
    logits = np.array([[10.0, 0.0, -10.0], [9.0, 1.0, -10.0]])
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    shifted = np.exp(logits + [[0, 0, 3.0], [0, 0, 3.0]])
    shifted /= shifted.sum(1, keepdims=True)
    as_probabilities = parity.compare([probabilities], [shifted], [False])
    as_logits = parity.compare([probabilities], [shifted], [True])
    assert as_probabilities.relative_error < 2e-3  # a logit off by 3 hides in probabilities
    assert as_logits.relative_error > 0.1 and as_logits.compared == "logits"


def test_non_finite_outputs_fail_the_comparison():
    nan = np.array([[np.nan, 1.0]])
    for reference, produced in ((nan, nan), (nan, np.ones((1, 2))), (np.ones((1, 2)), nan)):
        comparison = parity.compare([reference], [produced], [False])
        assert comparison.compared == "non-finite outputs" and comparison.spread_error == float("inf")


def test_without_softmax_gives_the_logits(keras):
    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(4, activation="softmax", name="probs")(inputs)
    graph = read_model(keras.Model(inputs, keras.layers.Softmax(name="again")(hidden)))
    logits = parity.without_softmax(graph)
    assert "again" not in logits.layers and "again" in graph.layers  # the original graph is untouched
    assert [ref.node for ref in logits.output_refs()] == [n.name for n in logits.nodes if n.layer == "probs"]
    dense_only = parity.without_softmax(read_model(keras.Model(inputs, hidden)))
    assert dense_only.layers["probs"].config["activation"] == "linear"
    assert graph.layers["probs"].config["activation"] == "softmax"
    assert parity.without_softmax(read_model(keras.Model(inputs, keras.layers.Dense(3)(inputs)))) is None


def _two_in_two_out(keras):
    image, aux = keras.Input((16, 16, 3), name="image"), keras.Input((5,), name="aux")
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c1")(image)
    x = keras.layers.Conv2D(16, 3, padding="same", activation="relu", name="c2")(x)
    segmentation = keras.layers.Conv2D(1, 1, name="seg")(x)
    pooled = keras.layers.Concatenate()([keras.layers.GlobalAveragePooling2D()(x), aux])
    classes = keras.layers.Dense(10, name="cls")(pooled)
    return keras.Model([image, aux], [classes, segmentation])


def test_multi_input_multi_output_export_matches_by_name(keras, tmp_path):
    keras.utils.set_random_seed(0)
    model = _two_in_two_out(keras)
    rng = np.random.default_rng(0)
    x = [rng.uniform(0, 1, (8, 16, 16, 3)).astype("float32"), rng.normal(size=(8, 5)).astype("float32")]
    result = kerascomp.export_tflite(model, tmp_path / "two.tflite", representative_data=x, strict=True)
    assert result.passed and result.relative_error < 1e-4
    produced = run_tflite(result.path, x, input_names=["image", "aux"], output_names=list(model.output_names))
    expected = model.predict(x, verbose=0)
    assert [p.shape for p in produced] == [(8, 10), (8, 16, 16, 1)]
    for p, e in zip(produced, expected):
        np.testing.assert_allclose(p, e, atol=1e-4)
    swapped = run_tflite(result.path, {"aux": x[1], "image": x[0]}, output_names=list(model.output_names))
    np.testing.assert_allclose(swapped[0], produced[0])


@pytest.mark.parametrize("method", ["fga", "svd", "joint_svd", "tucker", "l1", "correlation", "collaborative"])
def test_multi_output_export_after_each_method(keras, tmp_path, method):
    keras.utils.set_random_seed(0)
    model = _two_in_two_out(keras)
    rng = np.random.default_rng(1)
    x = [rng.uniform(0, 1, (32, 16, 16, 3)).astype("float32"), rng.normal(size=(32, 5)).astype("float32")]
    data, loss = x, None
    if method == "collaborative":  # labels for both outputs, and a loss: there is no default for two outputs
        data = (x, [rng.integers(0, 10, 32), rng.normal(size=(32, 16, 16, 1)).astype("float32")])
        with pytest.raises(kerascomp.InvalidArgumentError, match="has 2 outputs and no compiled loss"):
            kerascomp.clone_compressed(model, method=method, target_flops=0.7, data=data, verbose=0)

        def loss(labels, outputs):
            import tensorflow as tf

            classes = keras.losses.sparse_categorical_crossentropy(labels[0], outputs[0], from_logits=True)
            return tf.reduce_mean(classes) + tf.reduce_mean((labels[1] - outputs[1]) ** 2)
    small = kerascomp.clone_compressed(model, method=method, target_flops=0.7, data=data, loss=loss, verbose=0)
    assert kerascomp.cost(small).macs < kerascomp.cost(model).macs
    result = kerascomp.export_tflite(small, tmp_path / f"{method}.tflite", representative_data=x, strict=True)
    assert result.passed


def test_an_unmatched_multi_output_file_is_refused(keras, tmp_path):
    model = _two_in_two_out(keras)
    path = tmp_path / "two.tflite"
    kerascomp.export_tflite(model, path)
    x = [np.zeros((1, 16, 16, 3), "float32"), np.zeros((1, 5), "float32")]
    with pytest.raises(ExportError, match="matches them by name"):
        run_tflite(path, x, input_names=["first", "second"])


def test_parity_warnings_reach_tests():
    """pyproject's filter must silence Keras' own UserWarnings only, not kerascomp's (it once matched both)."""
    with warnings.catch_warnings(record=True) as caught:  # keeps the filters pytest installed from pyproject
        warnings.warn_explicit("from kerascomp", kerascomp.ParityWarning, "cli.py", 1, module="kerascomp.cli")
        warnings.warn_explicit("from keras", UserWarning, "layer.py", 1, module="keras.src.layers")
    messages = [str(w.message) for w in caught]
    assert "from kerascomp" in messages
    assert "from keras" not in messages  # shows the filter is active, so the first assertion can fail


@flavour_independent
def test_int8_agrees_with_fp32_on_the_trained_demo_model(cifar_path, tmp_path):
    """int8 PTQ with the default settings keeps the trained ResNet-20's top-1 on >= 98% of real test images."""
    from kerascomp.data import load_npz
    from kerascomp.loading import load_demo_model

    data = load_npz(cifar_path)
    model = load_demo_model()
    result = kerascomp.export_tflite(model, tmp_path / "int8.tflite", quantize="int8",
                                     representative_data=data["x_train"][:200].astype("float32"), strict=True)
    x_test = data["x_test"][:1000].astype("float32")
    lite = run_tflite(result.path, [x_test])[0].argmax(-1)
    keras_top = model.predict(x_test, batch_size=250, verbose=0).argmax(-1)
    agreement = float(np.mean(lite == keras_top))
    assert agreement >= 0.98, agreement
    assert result.passed and result.top1_agreement >= 0.98

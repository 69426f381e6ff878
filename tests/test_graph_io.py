import numpy as np
import pytest
from conftest import weights_hash

import kerascomp
from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.flavour import legacy_requested
from kerascomp.graph.ir import Ref
from kerascomp.graph.keras_io import infer_shapes, read_model, write_model


def _assert_same(original, rebuilt, inputs):
    assert type(rebuilt).__module__.split(".")[0] == type(original).__module__.split(".")[0]
    assert weights_hash(rebuilt) == weights_hash(original)
    expected, produced = original(inputs), rebuilt(inputs)
    expected = expected if isinstance(expected, (list, tuple)) else [expected]
    produced = produced if isinstance(produced, (list, tuple)) else [produced]
    assert len(expected) == len(produced)
    for e, p in zip(expected, produced):
        np.testing.assert_array_equal(np.asarray(e), np.asarray(p))


def test_functional_resnet_round_trip(small_resnet, images):
    _assert_same(small_resnet, write_model(read_model(small_resnet)), images)


def test_multi_input_multi_output_and_shared_layer(keras):
    image, extra = keras.Input((8, 8, 3), name="image"), keras.Input((4,), name="extra")
    shared = keras.layers.Conv2D(3, 3, padding="same", name="shared")
    first = shared(image)
    second = shared(first)
    merged = keras.layers.Add(name="add")([first, second])
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(merged)
    joined = keras.layers.Concatenate(name="cat")([pooled, extra])
    model = keras.Model([image, extra], [keras.layers.Dense(2, name="head")(joined), pooled])
    graph = read_model(model)
    assert [n.name for n in graph.nodes if n.layer == "shared"] == ["shared", "shared@1"]
    assert graph.outputs == [Ref("head"), Ref("gap")]
    rebuilt = write_model(graph)
    assert len(rebuilt.get_layer("shared").get_weights()) == 2  # still one shared layer object
    rng = np.random.default_rng(0)
    _assert_same(model, rebuilt, [rng.normal(size=(2, 8, 8, 3)), rng.normal(size=(2, 4))])


def test_sequential_stays_sequential(keras):
    model = keras.Sequential([keras.Input((6, 6, 2)), keras.layers.Conv2D(4, 3, activation="relu"),
                              keras.layers.Flatten(), keras.layers.Dense(3)])
    rebuilt = write_model(read_model(model))
    assert isinstance(rebuilt, keras.Sequential)
    _assert_same(model, rebuilt, np.random.default_rng(0).normal(size=(3, 6, 6, 2)).astype("float32"))


def test_nested_models_are_inlined(keras):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    backbone = keras.Model(inputs, keras.layers.Add(name="add")([x, keras.layers.ReLU(name="relu")(x)]), name="backbone")
    outer = keras.Sequential([keras.Input((8, 8, 3)), backbone, keras.layers.GlobalAveragePooling2D(name="gap"),
                              keras.layers.Dense(2, name="conv_2")])
    graph = read_model(outer)
    assert "backbone" not in graph.layers and {"conv", "relu", "add", "gap"} <= set(graph.layers)
    rebuilt = write_model(graph)
    assert rebuilt.count_params() == outer.count_params()
    inputs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_allclose(np.asarray(rebuilt(inputs)), np.asarray(outer(inputs)), atol=1e-6)


def test_nested_sequential_in_a_functional_model_is_inlined(keras):
    """Keras 3 records the nested call with mask=None (as in ConvNeXt's stem); it is still inlined."""
    stem = keras.Sequential([keras.layers.Conv2D(8, 2, strides=2, name="stem_conv"),
                             keras.layers.LayerNormalization(name="stem_norm")], name="stem")
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Conv2D(4, 3, name="head")(stem(inputs)))
    graph = read_model(model)
    assert "stem" not in graph.layers and {"stem_conv", "stem_norm"} <= set(graph.layers)
    _assert_same(model, write_model(graph), np.ones((2, 8, 8, 3), "float32"))


def test_nested_model_called_twice_stays_one_layer(keras):
    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(4)], name="block")
    inputs = keras.Input((4,))
    model = keras.Model(inputs, inner(inner(inputs)))
    graph = read_model(model)
    assert graph.layers["block"].class_name == "Sequential"
    _assert_same(model, write_model(graph), np.ones((2, 4), "float32"))


def test_infer_shapes(small_resnet):
    shapes = infer_shapes(read_model(small_resnet))
    assert shapes["stem_conv"] == [(None, 16, 16, 16)]
    assert shapes["s3b1_conv1"] == [(None, 4, 4, 64)]
    assert shapes["logits"] == [(None, 10)]


def test_subclassed_model_is_refused(keras):
    class Tiny(keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = keras.layers.Dense(2)

        def call(self, x):
            return self.dense(x)

    model = Tiny()
    model(np.zeros((1, 3), "float32"))
    with pytest.raises(UnsupportedModelError, match="subclassed model"):
        read_model(model)


def test_unbuilt_model_is_refused(keras):
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(UnsupportedModelError, match="not built"):
        read_model(model)


def test_non_model_is_refused():
    with pytest.raises(InvalidArgumentError, match="expected a Keras model"):
        read_model(np.zeros(3))


def test_custom_layer_without_get_config_is_refused(keras):
    class NoConfig(keras.layers.Layer):
        def call(self, x):
            return x * 2.0

        def get_config(self):
            raise NotImplementedError

    inputs = keras.Input((4,))
    model = keras.Model(inputs, NoConfig(name="scaler")(inputs))
    with pytest.raises(UnsupportedModelError, match="scaler"):
        read_model(model)


def test_custom_layer_with_config_round_trips(keras):
    class Scale(keras.layers.Layer):
        def __init__(self, factor, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(3)(Scale(3.0, name="scale")(inputs)))
    rebuilt = write_model(read_model(model))
    assert type(rebuilt.get_layer("scale")) is Scale
    _assert_same(model, rebuilt, np.ones((2, 4), "float32"))


@pytest.mark.skipif(legacy_requested(), reason="Keras 3 operations; tf_keras wraps them in TFOpLambda layers")
def test_keras3_operations_in_a_functional_graph(keras):
    """``x + y`` of equal shapes reads as an Add merge (so pruning sees through it, as in ConvNeXt);
    other operations read as ``op:<class>`` and block pruning with a warning naming them."""
    inputs = keras.Input((8, 8, 3))
    a = keras.layers.Conv2D(16, 3, padding="same", name="a")(inputs)
    b = keras.layers.Conv2D(16, 3, padding="same", name="b")(a)
    x = a + b
    x = keras.layers.Conv2D(16, 3, padding="same", name="c")(x)
    y = keras.ops.abs(x)
    model = keras.Model(inputs, keras.layers.Conv2D(8, 3, name="d")(y))
    graph = read_model(model)
    kinds = {spec.class_name for spec in graph.layers.values()}
    assert "Add" in kinds and "op:Absolute" in kinds
    images = np.random.default_rng(0).uniform(size=(2, 8, 8, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(write_model(graph)(images)), np.asarray(model(images)))
    with pytest.warns(kerascomp.CompressionWarning, match="absolute"):
        result = kerascomp.compress(model, "l1", target_flops=0.7, verbose=0)
    pruned = {d.layer for d in result.report.layers if d.action.startswith("pruned")}
    assert {"a", "b"} <= pruned  # coupled through the Add
    assert "c" not in {d.layer for d in result.report.layers if "out" in d.action}  # blocked by the op

"""Channel-dependency analysis and physical channel removal (kerascomp.graph.channels)."""
import numpy as np
import pytest

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.channels import analyse_channels, prune_channels
from kerascomp.graph.keras_io import infer_shapes, read_model, write_model


def _analyse(model):
    graph = read_model(model)
    return graph, analyse_channels(graph, infer_shapes(graph))


def _zero_outgoing(graph, analysis, group, channel):
    """Zero every weight that reads ``channel`` of ``group`` in channel-mixing consumers."""
    for consumer in group.consumers:
        spec = graph.layers[consumer]
        positions = analysis.input_channels(group, consumer) == channel
        if spec.class_name in ("Conv2D", "Dense"):
            spec.weights[0][..., positions, :] = 0.0
        elif spec.class_name == "SeparableConv2D":
            spec.weights[0][..., positions, :] = 0.0


def _random_bn(model, rng):
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


def _branchy_model(keras):
    """Residual add, concat, depthwise, separable, SE-style multiply, Flatten->Dense."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3), name="x")
    a = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    a = layers.BatchNormalization(name="a_bn")(a)
    a = layers.ReLU(name="a_relu")(a)
    b = layers.Conv2D(8, 1, name="b")(a)
    added = layers.Add(name="add")([a, b])
    c = layers.DepthwiseConv2D(3, padding="same", name="dw")(added)
    d = layers.Conv2D(6, 1, name="d")(inputs)
    cat = layers.Concatenate(name="cat")([c, d])
    squeeze = layers.GlobalAveragePooling2D(keepdims=True, name="gap")(cat)
    excite = layers.Conv2D(14, 1, activation="sigmoid", name="excite")(squeeze)
    scaled = layers.Multiply(name="scale")([cat, excite])
    sep = layers.SeparableConv2D(10, 3, padding="same", name="sep")(scaled)
    pooled = layers.MaxPooling2D(2, name="pool")(sep)
    flat = layers.Flatten(name="flat")(pooled)
    outputs = layers.Dense(5, name="out")(flat)
    model = keras.Model(inputs, outputs)
    _random_bn(model, np.random.default_rng(1))
    return model


def test_residual_groups_couple_producers(small_resnet):
    _, analysis = _analyse(small_resnet)
    stage1 = analysis.group_of("stem_conv")
    assert {"stem_conv", "s1b1_conv2"} <= set(stage1.producers)
    assert "s2b1_proj" in stage1.consumers and "s1b1_conv1" in stage1.consumers
    assert analysis.group_of("s1b1_conv1").producers == ["s1b1_conv1"]
    inputs = [g for g in analysis.groups if g.producers == ["input image"]]
    assert inputs and inputs[0].prunable() == [] and "model input" in inputs[0].reason()
    assert "model output" in str(analysis.group_of("logits"))


def test_branchy_graph_groups(keras):
    model = _branchy_model(keras)
    _, analysis = _analyse(model)
    merged = analysis.group_of("a")
    assert set(merged.producers) >= {"a", "b", "d", "excite"}
    assert merged.size == 14
    np.testing.assert_array_equal(analysis.producer_channels(merged, "a"), np.arange(8))
    np.testing.assert_array_equal(analysis.producer_channels(merged, "d"), np.arange(8, 14))
    flat_positions = analysis.input_channels(analysis.group_of("sep"), "out")
    assert len(flat_positions) == 4 * 4 * 10
    np.testing.assert_array_equal(flat_positions[:20], np.tile(np.arange(10), 2))


def test_pruning_nothing_is_identity(keras, small_resnet, images):
    graph, analysis = _analyse(small_resnet)
    rebuilt = write_model(prune_channels(graph, analysis, {}))
    np.testing.assert_array_equal(small_resnet.predict(images, verbose=0), rebuilt.predict(images, verbose=0))


@pytest.mark.parametrize("layer,channel", [("a", 2), ("d", 3), ("sep", 7), ("stem_conv", 5), ("s1b1_conv1", 0)])
def test_removing_a_dead_channel_keeps_outputs(keras, small_resnet, images, layer, channel):
    model = _branchy_model(keras) if layer in ("a", "d", "sep") else small_resnet
    data = images[:, :8, :8] if layer in ("a", "d", "sep") else images
    graph, analysis = _analyse(model)
    group = analysis.group_of(layer)
    channel = int(analysis.producer_channels(group, layer)[channel])
    _zero_outgoing(graph, analysis, group, channel)
    expected = write_model(graph).predict(data, verbose=0)
    pruned = write_model(prune_channels(graph, analysis, {group.index: [channel]}))
    produced = pruned.predict(data, verbose=0)
    assert produced.shape == expected.shape
    assert np.abs(produced - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
    assert pruned.count_params() < model.count_params()


def test_removal_is_physical_across_the_group(keras):
    model = _branchy_model(keras)
    graph, analysis = _analyse(model)
    group = analysis.group_of("a")
    pruned = write_model(prune_channels(graph, analysis, {group.index: [0, 1, 9]}))
    assert pruned.get_layer("a").get_weights()[0].shape[-1] == 6
    assert pruned.get_layer("b").get_weights()[0].shape == (1, 1, 6, 6)
    assert pruned.get_layer("a_bn").get_weights()[0].shape == (6,)
    assert pruned.get_layer("dw").get_weights()[0].shape[-2] == 6
    assert pruned.get_layer("d").get_weights()[0].shape[-1] == 5
    assert pruned.get_layer("excite").get_weights()[0].shape[-1] == 11
    assert pruned.get_layer("sep").get_weights()[0].shape[-2] == 11
    sep_group = analysis.group_of("sep")
    smaller = write_model(prune_channels(graph, analysis, {sep_group.index: [4]}))
    assert smaller.get_layer("out").get_weights()[0].shape == (4 * 4 * 9, 5)


def test_reshape_keeps_channel_count_in_sync(keras):
    inputs = keras.Input((6, 6, 3))
    x = keras.layers.Conv2D(8, 3, name="conv")(inputs)
    x = keras.layers.Reshape((16, 8), name="rows")(x)
    x = keras.layers.Reshape((128,), name="flat")(x)
    outputs = keras.layers.Dense(4, name="head")(x)
    model = keras.Model(inputs, outputs)
    graph, analysis = _analyse(model)
    group = analysis.group_of("conv")
    assert group.prunable() == list(range(8))
    pruned = write_model(prune_channels(graph, analysis, {group.index: [1, 2]}))
    assert pruned.get_layer("rows").output.shape[-1] == 6
    assert pruned.get_layer("head").get_weights()[0].shape == (96, 4)


def test_lambda_blocks_its_group_and_names_it(keras):
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(8, 3, name="conv1")(inputs)
    y = keras.layers.Lambda(lambda t: t * 2.0, name="double")(x)
    z = keras.layers.Conv2D(8, 3, name="conv2")(y)
    outputs = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 1, name="conv3")(z))
    _, analysis = _analyse(keras.Model(inputs, outputs))
    blocked = analysis.group_of("conv1")
    assert blocked.prunable() == []
    assert "Lambda" in blocked.reason() and "double" in blocked.reason()
    assert analysis.group_of("conv2").prunable() == list(range(8))


def test_shared_layer_inputs_are_coupled(keras):
    inputs = keras.Input((8, 8, 3))
    left = keras.layers.Conv2D(4, 3, padding="same", name="left")(inputs)
    right = keras.layers.Conv2D(4, 3, padding="same", name="right")(inputs)
    shared = keras.layers.Conv2D(6, 1, name="shared")
    merged = keras.layers.Concatenate()([shared(left), shared(right)])
    outputs = keras.layers.Conv2D(2, 1, name="head")(merged)
    _, analysis = _analyse(keras.Model(inputs, outputs))
    assert set(analysis.group_of("left").producers) == {"left", "right"}
    assert analysis.group_of("shared").size == 6


def test_removal_is_validated(small_resnet):
    graph, analysis = _analyse(small_resnet)
    group = analysis.group_of("s1b1_conv1")
    with pytest.raises(InvalidArgumentError, match="out of range"):
        prune_channels(graph, analysis, {group.index: [99]})
    with pytest.raises(InvalidArgumentError, match="model output"):
        prune_channels(graph, analysis, {analysis.group_of("logits").index: [0]})
    with pytest.raises(InvalidArgumentError, match="no output channels"):
        prune_channels(graph, analysis, {group.index: list(range(group.size))})
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        prune_channels(graph, analysis, {999: [0]})


def test_group_prints_what_will_be_pruned(small_resnet):
    _, analysis = _analyse(small_resnet)
    text = str(analysis.group_of("s1b1_conv1"))
    assert "producers: s1b1_conv1" in text and "s1b1_bn1" in text and "16/16 prunable" in text

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
        groups = spec.config.get("groups", 1) if spec.class_name == "Conv2D" else 1
        if groups > 1:  # input position p is kernel slot p % width of group p // width's filters
            width, per_out = spec.weights[0].shape[-2], spec.weights[0].shape[-1] // groups
            for p in np.flatnonzero(positions):
                spec.weights[0][..., p % width, (p // width) * per_out:(p // width + 1) * per_out] = 0.0
        elif spec.class_name in ("Conv2D", "Dense"):
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


def _grouped_model(keras, groups=4, residual=False):
    """conv -> BN -> grouped conv (``groups``) -> BN [+ the conv's output] -> 1x1 conv -> pooled Dense."""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3), name="x")
    a = layers.ReLU(name="a_relu")(layers.BatchNormalization(name="a_bn")(layers.Conv2D(16, 3, padding="same",
                                                                                          name="a")(inputs)))
    g = layers.BatchNormalization(name="g_bn")(layers.Conv2D(16, 3, padding="same", groups=groups, name="g")(a))
    if residual:
        g = layers.Add(name="add")([a, g])
    c = layers.Conv2D(8, 1, name="c")(layers.ReLU(name="g_relu")(g))
    outputs = layers.Dense(5, name="out")(layers.GlobalAveragePooling2D(name="gap")(c))
    model = keras.Model(inputs, outputs)
    _random_bn(model, np.random.default_rng(2))
    return model


def test_grouped_conv_splits_its_groups_into_blocks(keras):
    _, analysis = _analyse(_grouped_model(keras))
    into, out = analysis.group_of("a"), analysis.group_of("g")
    assert into.prunable() == list(range(16)) and out.prunable() == list(range(16))
    for group in (into, out):  # 16 channels, 4 per group of the grouped conv
        assert group.split_by == ["g"]
        np.testing.assert_array_equal(group.blocks, np.repeat(np.arange(4), 4))
    assert into.balanced([0, 4, 8, 12]) and into.balanced([0, 1, 4, 5, 8, 9, 12, 13]) and into.balanced([])
    assert not into.balanced([0, 1, 4, 8]) and not into.balanced([0])
    assert "equal numbers from each of the 4 blocks of g" in str(into)
    assert analysis.group_of("c").blocks is None


def test_pruning_through_a_grouped_conv_is_exact(keras, images):
    """Channels removed in equal numbers per group, into the grouped conv (its input) and out of it: the
    pruned model computes what the original computes with those channels' readers zeroed."""
    model = _grouped_model(keras)
    data = images[:, :8, :8]
    graph, analysis = _analyse(model)
    into, out = analysis.group_of("a"), analysis.group_of("g")
    removal = {into.index: [1, 6, 11, 12], out.index: [0, 3, 5, 6, 8, 9, 14, 15]}
    for group_index, channels in removal.items():
        for channel in channels:
            _zero_outgoing(graph, analysis, analysis.groups[group_index], channel)
    expected = write_model(graph).predict(data, verbose=0)
    pruned = write_model(prune_channels(graph, analysis, removal))
    layer = pruned.get_layer("g")
    assert layer.get_config()["groups"] == 4
    assert layer.get_weights()[0].shape == (3, 3, 3, 8) and layer.get_weights()[1].shape == (8,)
    assert pruned.get_layer("a").get_weights()[0].shape[-1] == 12
    assert pruned.get_layer("c").get_weights()[0].shape == (1, 1, 8, 8)
    produced = pruned.predict(data, verbose=0)
    assert np.abs(produced - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())
    # the check can fail: the same removal with the grouped conv's kernel read as if it were dense (its input
    # slot = the channel) gives other outputs
    misread, _ = _analyse(model)
    for channel in removal[into.index]:
        misread.layers["g"].weights[0][:, :, channel % 4, :] = 0.0
    assert np.abs(write_model(misread).predict(data, verbose=0) - expected).max() > 1e-3


def test_unequal_removal_from_a_grouped_conv_is_refused(keras):
    graph, analysis = _analyse(_grouped_model(keras))
    group = analysis.group_of("a")
    with pytest.raises(InvalidArgumentError, match=r"\[2, 1, 1, 1\] channels from the groups of grouped conv 'g'"):
        prune_channels(graph, analysis, {group.index: [0, 1, 4, 8, 12]})


def test_grouped_convs_that_cannot_stay_equal_are_blocked(keras):
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    one = layers.Conv2D(8, 3, padding="same", groups=8, name="one_per_group")(a)   # 1 channel per group
    two = layers.Conv2D(8, 3, padding="same", groups=2, name="two")(one)
    four = layers.Conv2D(8, 3, padding="same", groups=4, name="four")(one)        # splits one's filters otherwise
    outputs = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 1, name="head")(layers.Add()([two, four])))
    _, analysis = _analyse(keras.Model(inputs, outputs))
    assert analysis.group_of("a").prunable() == []
    assert "'one_per_group' has one of its input channels per group" in analysis.group_of("a").reason()
    mixed = analysis.group_of("one_per_group")
    assert mixed.prunable() == [] and "one_per_group" in mixed.reason()
    # the outputs of two (2 groups of 4) and four (4 groups of 2) are added: one removal cannot be equal for both
    added = analysis.group_of("two")
    assert added.prunable() == [] and "split these channels into groups differently" in added.reason()


def test_tensor_operators_couple_channels(keras, images):
    """``b + a`` and an SE gate ``c * d`` (d of shape (1, 1, C)) written on tensors (tf_keras: TFOpLambda layers
    whose second tensor is a keyword argument; Keras 3: operations) read, round-trip exactly, couple their
    operands' channels like Add and Multiply, and l1 prunes through them exactly (against the original with
    the cut channels zeroed)."""
    from kerascomp.testing import pruned_against_dead

    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(8, 3, padding="same", name="a")(inputs)
    b = layers.Conv2D(8, 3, padding="same", name="b")(layers.ReLU()(a))
    c = layers.Conv2D(12, 3, padding="same", name="c")(b + a)
    d = layers.Conv2D(12, 1, activation="sigmoid", name="d")(layers.GlobalAveragePooling2D(keepdims=True)(b))
    outputs = layers.Dense(4, name="head")(layers.GlobalAveragePooling2D()(c * d))
    model = keras.Model(inputs, outputs)
    data = images[:, :8, :8]
    graph, analysis = _analyse(model)
    np.testing.assert_array_equal(write_model(graph).predict(data, verbose=0), model.predict(data, verbose=0))
    assert set(analysis.group_of("a").producers) == {"a", "b"} and analysis.group_of("a").prunable() == list(range(8))
    assert set(analysis.group_of("c").producers) == {"c", "d"} and analysis.group_of("c").prunable() == list(range(12))
    error = pruned_against_dead(model, "l1", 0.5, data)
    assert error is not None and error < 1e-5


def test_operators_with_numbers_pass_channels_through(keras, images):
    """MobileNetV3's hard sigmoid, ``relu6(x + 3.0) * (1 / 6)`` on tensors, gating ``x``: the ``+ 3.0`` and
    ``* (1 / 6)`` (tf_keras: TFOpLambda layers with a number for y; Keras 3: operations of a tensor and a
    number) act per element, so they pass channels through instead of blocking them; pruning through them
    matches the original with the cut channels' readers zeroed. (Keras 3 blocked them until 2026-12-06.)"""
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    a = layers.Conv2D(12, 3, padding="same", name="a")(inputs)
    gate = layers.ReLU(6.0)(a + 3.0) * (1.0 / 6.0)
    b = layers.Conv2D(8, 3, padding="same", name="b")(layers.Multiply()([a, gate]))
    model = keras.Model(inputs, layers.Dense(4, name="head")(layers.GlobalAveragePooling2D()(b)))
    graph, analysis = _analyse(model)
    group = analysis.group_of("a")
    assert group.prunable() == list(range(12)) and "b" in group.consumers
    _zero_outgoing(graph, analysis, group, 5)
    expected = write_model(graph).predict(images[:, :8, :8], verbose=0)
    pruned = write_model(prune_channels(graph, analysis, {group.index: [5]}))
    assert pruned.get_layer("b").get_weights()[0].shape == (3, 3, 11, 8)
    np.testing.assert_allclose(pruned.predict(images[:, :8, :8], verbose=0), expected, rtol=1e-5, atol=1e-5)
    from kerascomp.testing import pruned_against_dead, zero_stays_zero

    error = pruned_against_dead(model, "l1", 0.5, images[:, :8, :8])  # the whole method, independent reference
    assert error is not None and error < 1e-5
    # ``a + 3.0`` turns a cut channel's zeros into threes: read directly by a conv, cutting would not be exact
    leaky = keras.Model(inputs, layers.Conv2D(8, 3, name="b")(a + 3.0))
    assert not zero_stays_zero(read_model(leaky), {"a"})


def test_a_squeeze_excite_block_may_share_a_pruned_input_group_only_given_shapes(keras, small_resnet):
    """Given the shapes, a projection may prune the expansion channels that a squeeze-and-excite block also reads
    pooled and gates (EfficientNet, MobileNetV3); without them, the old rule (sole reader) refuses. The SE reduce
    conv is told which conv prunes its inputs; a conv reading a residual stream that other convs read at full
    resolution stays refused with the shapes too."""
    from conftest import squeeze_excite_model

    from kerascomp.graph.channels import sole_input_group

    graph, analysis = _analyse(squeeze_excite_model(keras))
    shapes = infer_shapes(graph)
    group, positions, why = sole_input_group(graph, analysis, "project", shapes)
    assert why == "" and group.size == 32 and sorted(positions.tolist()) == list(range(32))
    assert {"expand", "se_expand"} <= set(group.producers) and {"se_reduce", "project"} <= set(group.consumers)
    assert sole_input_group(graph, analysis, "project")[0] is None
    refused, _, why = sole_input_group(graph, analysis, "se_reduce", shapes)
    assert refused is None and "pruned through 'project'" in why
    graph, analysis = _analyse(small_resnet)
    refused, _, why = sole_input_group(graph, analysis, "s2b1_conv1", infer_shapes(graph))
    assert refused is None and "at full resolution" in why and sole_input_group(graph, analysis, "s1b1_conv2")[0]

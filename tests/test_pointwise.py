"""``pointwise="auto"`` (the default of fga, svd, joint_svd and tucker): when the kxk convs alone cannot
reach the budget, the channels that pass through depthwise convs are pruned and the kxk convs factored for
the rest; only a model without such channels gets its 1x1 convs factored; the plan records the choice; a
refusal states the best ratio reachable."""
import numpy as np
import pytest
from conftest import model_fingerprint, pointwise_net, rewritten_in, squeeze_excite_model, zero_input_slices

import kerascomp
from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.methods.pointwise import EXPANSIONS, KXK_ONLY, WITH_ONE_BY_ONE
from kerascomp.zoo import cifar_mobilenetv2

FACTORING = ("fga", "svd", "joint_svd", "tucker")


@pytest.fixture(scope="module")
def mobilenet(keras):
    keras.utils.set_random_seed(0)
    return cifar_mobilenetv2(alpha=0.35, input_shape=(16, 16, 3), keras_module=keras)


def _one_by_ones(model) -> set[str]:
    return {layer.name for layer in model.layers
            if type(layer).__name__ == "Conv2D" and tuple(layer.kernel_size) == (1, 1)}



@pytest.mark.parametrize("method", FACTORING)
def test_a_mobile_net_reaches_half_the_macs_by_default(mobilenet, method):
    before = model_fingerprint(mobilenet)
    result = kerascomp.compress(mobilenet, method=method, target_flops=0.5, verbose=0)
    assert model_fingerprint(mobilenet) == before
    assert result.report.macs_ratio <= 0.5
    assert kerascomp.cost(result.model).macs <= 0.5 * kerascomp.cost(mobilenet).macs
    assert result.report.notes["pointwise"] == EXPANSIONS
    actions = {d.layer: d.action for d in result.report.layers}
    expanded = [name for name in actions if name.endswith("_expand")]
    assert any(actions[name].startswith("pruned out") for name in expanded), actions
    factored = {name for name in _one_by_ones(mobilenet) if not actions[name].startswith("pruned")}
    assert not rewritten_in(result.report) & factored, "a 1x1 conv was factored"
    # the plan stores the resolved choice and the pruning, and applying it rebuilds the same model
    assert result.plan.settings["pointwise"] is False and result.plan.choices["expansions"]["pruned"]
    again = kerascomp.clone_compressed(mobilenet, plan=result.plan, verbose=0)
    assert kerascomp.cost(again).macs == kerascomp.cost(result.model).macs
    x = np.random.default_rng(0).uniform(0, 255, (2, 16, 16, 3)).astype("float32")
    np.testing.assert_allclose(again.predict(x, verbose=0), result.model.predict(x, verbose=0), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ("fga", "tucker"))
def test_without_the_1x1_convs_the_same_budget_is_refused_with_the_reachable_ratio(mobilenet, method):
    with pytest.raises(BudgetError, match=r"at best 0\.\d+ of the model's MACs.*pointwise=True") as caught:
        kerascomp.compress(mobilenet, method=method, target_flops=0.5, pointwise=False, verbose=0)
    assert 0.5 < caught.value.reachable < 1.0


def test_a_resnet_keeps_its_1x1_convs_dense_when_the_kxk_convs_suffice(small_resnet):
    for method in FACTORING:
        result = kerascomp.compress(small_resnet, method=method, target_flops=0.5, verbose=0)
        assert result.report.notes["pointwise"] == KXK_ONLY, method
        assert not rewritten_in(result.report) & _one_by_ones(small_resnet), method
        assert result.plan.settings["pointwise"] is False


def test_an_unreachable_budget_names_all_three_attempts_and_the_best_ratio(mobilenet):
    with pytest.raises(BudgetError, match=r"method='svd' cannot reach target_flops=0.05 even with its 1x1 convs "
                                          r"factored \(pointwise='auto' tried all three; with the kxk convs alone, at "
                                          r"best 0\.\d+; with its expansions pruned, at best 0\.\d+\).*at best "
                                          r"0\.\d+ of the model's MACs") as caught:
        kerascomp.compress(mobilenet, method="svd", target_flops=0.05, verbose=0)
    # the depthwise convs stay: the floor is what they and the stem cost, well above 0.05
    assert 0.05 < caught.value.reachable < 0.5


def test_a_wrong_pointwise_value_is_named(small_resnet):
    with pytest.raises(InvalidArgumentError, match=r"pointwise must be True, False or 'auto', got 'yes'"):
        kerascomp.compress(small_resnet, method="tucker", pointwise="yes", verbose=0)


def test_tucker_factors_a_strided_1x1_conv_as_an_exact_pair_at_full_rank(keras):
    keras.utils.set_random_seed(1)
    inputs = keras.Input((8, 8, 4))
    outputs = keras.layers.Conv2D(6, 1, strides=2, activation="relu", name="pw")(inputs)
    model = keras.Model(inputs, outputs)
    plan = kerascomp.plan(model, method="tucker", target_flops=0.9, pointwise=True, verbose=0)
    plan.choices["layers"]["pw"] = [4, 4]  # full rank: min(C, N) = 4, so the pair is exact
    small = kerascomp.clone_compressed(model, plan=plan, verbose=0)
    assert [layer.name for layer in small.layers[1:]] == ["pw_tucker_in", "pw"]
    assert small.get_layer("pw_tucker_in").strides == (2, 2)
    x = np.random.default_rng(0).normal(size=(3, 8, 8, 4)).astype("float32")
    np.testing.assert_allclose(small.predict(x, verbose=0), model.predict(x, verbose=0), rtol=1e-4, atol=1e-5)
    # and a lower rank is a real truncation, not the identity
    plan.choices["layers"]["pw"] = [1, 1]
    low = kerascomp.clone_compressed(model, plan=plan, verbose=0)
    assert not np.allclose(low.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-3)


def test_without_depthwise_convs_the_1x1_convs_are_factored(keras):
    model = pointwise_net(keras)
    result = kerascomp.compress(model, method="svd", target_flops=0.5, verbose=0)
    assert result.report.macs_ratio <= 0.5 and result.report.notes["pointwise"] == WITH_ONE_BY_ONE
    assert rewritten_in(result.report) & {"wide", "mix"} and "expansions" not in result.plan.choices


@pytest.mark.parametrize("method", FACTORING)
def test_expansion_pruning_cuts_the_unread_channels_then_the_method_factors_the_rest(keras, method):
    """A squeeze-and-excite block whose two readers ignore expansion channels 0..15: the pruning cuts exactly
    those (all four convs of the block lose them), the method factors the stem for its share, the report's
    costs are the original's before and the result's after, and the plan redoes both steps bit for bit."""
    model = squeeze_excite_model(keras)
    zero_input_slices(model, {"project": slice(0, 16), "se_reduce": slice(0, 16)})
    before = model_fingerprint(model)
    # 0.54: the pruning's share (in proportion to what it can act on) is met by cutting 16 of the 32 channels
    result = kerascomp.compress(model, method=method, target_flops=0.54, verbose=0)
    assert model_fingerprint(model) == before
    assert result.report.macs_ratio <= 0.54 and result.report.notes["pointwise"] == EXPANSIONS
    saved = result.plan.choices["expansions"]
    assert saved["pruned"] == {"project": list(range(16, 32))}
    actions = {d.layer: d.action for d in result.report.layers}
    assert actions["expand"] == actions["se_expand"] == "pruned out 32->16", actions
    assert actions["project"] == actions["se_reduce"] == "pruned in 32->16"
    assert result.report.macs_before == kerascomp.cost(model).macs
    assert result.report.macs_after == kerascomp.cost(result.model).macs
    assert saved["method"] and actions["stem"] not in ("dense", "kept"), actions["stem"]  # the method's share
    assert f"then {method} on the rest" in result.report.notes["expansions"]
    x = np.random.default_rng(0).uniform(0, 255, (8, 16, 16, 3)).astype("float32")
    again = kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(result.plan.to_json()), verbose=0)
    np.testing.assert_array_equal(again.predict(x, verbose=0), result.model.predict(x, verbose=0))


def test_when_the_method_cannot_take_its_share_the_pruning_takes_the_whole_budget(keras):
    """Tucker at rank steps of 8 has no form for the 3-channel stem, so it cannot take its share of the saving:
    the expansion pruning then meets the whole budget alone, the report says no tucker step ran, and the plan
    redoes the same."""
    model = squeeze_excite_model(keras)
    result = kerascomp.compress(model, method="tucker", target_flops=0.54, rank_multiple=8, verbose=0)
    assert result.report.macs_ratio <= 0.54 and result.report.notes["pointwise"] == EXPANSIONS
    assert result.plan.choices["expansions"]["method"] is False
    assert "no tucker step needed" in result.report.notes["expansions"]
    actions = {d.layer: d.action for d in result.report.layers}
    assert actions["stem"] in ("dense", "kept") and actions["project"].startswith("pruned in")
    again = kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(result.plan.to_json()), verbose=0)
    x = np.random.default_rng(0).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(again.predict(x, verbose=0), result.model.predict(x, verbose=0))


def _pooled_head_net(keras, size: int):
    """MobileNetV3's head: a wide 1x1 conv on the feature map, pooled, read by a 1x1 conv at one pixel."""
    layers = keras.layers
    keras.utils.set_random_seed(5)
    inputs = keras.Input((size, size, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(96, 1, activation="relu", name="last")(x)
    x = layers.GlobalAveragePooling2D(keepdims=True, name="pool")(x)
    x = layers.Conv2D(64, 1, activation="relu", name="head")(x)
    return keras.Model(inputs, layers.Dense(10, name="logits")(layers.Flatten()(x)))


def test_a_group_read_pooled_is_pruned_and_one_that_is_one_pixel_already_is_factored(keras):
    """The channels of a 1x1 conv on a feature map, read pooled by a 1x1 head conv, are pruned (cutting them
    shrinks the head's weights); the same layers on a one-pixel input are plain 1x1 pairs, factored."""
    pooled = kerascomp.compress(_pooled_head_net(keras, 16), method="svd", target_flops=0.5, verbose=0)
    actions = {d.layer: d.action for d in pooled.report.layers}
    assert pooled.report.notes["pointwise"] == EXPANSIONS and pooled.report.macs_ratio <= 0.5
    assert actions["last"].startswith("pruned out") and actions["head"].startswith("pruned in"), actions
    flat = kerascomp.compress(_pooled_head_net(keras, 1), method="svd", target_flops=0.5, verbose=0)
    assert flat.report.notes["pointwise"] == WITH_ONE_BY_ONE and "expansions" not in flat.plan.choices

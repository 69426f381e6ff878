"""``method="auto"``: one allocation over dense, channel pruning, FGA (kxk(r) + 1x1 included) and Tucker-2
forms. The tests construct the cases where the right answer is known: input slices made zero (pruning
them costs nothing, and the rewrite must then be exact), latency tables that make one kind of form
slow, a mobile net whose MACs sit in 1x1 convs."""
import json

import numpy as np
import pytest
from conftest import model_fingerprint, rewritten_in, squeeze_excite_model, zero_input_slices

import kerascomp
from kerascomp.bench.latency import LatencyTable, conv_macs
from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.zoo import cifar_mobilenetv2, cifar_resnet

FACTORED = ("factored", "tucker", "spatial", "fga2", "fga4")


def _actions(report) -> dict[str, str]:
    return {d.layer: d.action for d in report.layers}


def _replanned(model, plan, pruned: dict):
    """``model`` compressed by ``plan`` with its pruned channels replaced by ``pruned`` (an edited plan)."""
    edited = json.loads(plan.to_json())
    edited["choices"]["pruned"] = pruned
    return kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)


def test_auto_meets_the_budget_with_its_reasons_and_leaves_the_model_alone(module_resnet, images):
    before = model_fingerprint(module_resnet)
    result = kerascomp.compress(module_resnet, method="auto", target_flops=0.5, data=images, verbose=0)
    assert model_fingerprint(module_resnet) == before
    assert result.report.macs_ratio <= 0.5 + 1e-9
    assert kerascomp.cost(result.model).macs <= 0.5 * kerascomp.cost(module_resnet).macs + 1
    assert result.model.predict(images[:4], verbose=0).shape == (4, 10)
    decided = [d for d in result.report.layers if d.action != "kept"]
    assert decided and all(d.detail.get("why") for d in decided)  # every unit says why it got its form
    assert "why" in str(result.plan).splitlines()[0]
    assert result.report.notes["forms"] and "options" in result.report.notes
    # the choices a plan holds name only forms auto builds
    for form in result.plan.choices["layers"].values():
        assert form[0] in ("fga", "svd", "tucker")


def test_input_slices_that_are_zero_are_the_channels_pruned_and_the_rewrite_is_exact(keras, images):
    keras.utils.set_random_seed(1)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    conv = model.get_layer("s1b1_conv2")
    kernel = conv.get_weights()[0]
    kernel[:, :, :8, :] = 0.0  # the first 8 of its 16 input channels contribute nothing
    conv.set_weights([kernel] + conv.get_weights()[1:])
    result = kerascomp.compress(model, method="auto", target_flops=0.85, forms=["prune"], verbose=0)
    assert result.plan.choices["pruned"]["s1b1_conv2"] == list(range(8, 16))
    assert result.report.macs_ratio <= 0.85 + 1e-9
    actions = _actions(result.report)
    assert actions["s1b1_conv1"] == "pruned out 16->8" and actions["s1b1_conv2"] == "pruned in 16->8"
    # only a zero-error cut was needed, and without data nothing is refit: the outputs are the original's
    expected = model.predict(images, verbose=0)
    assert np.allclose(result.model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the check can fail: the same cut of a conv whose slices are not zero changes the outputs
    wrong = _replanned(model, result.plan, {"s1b1_conv2": list(range(8))}).predict(images, verbose=0)
    assert not np.allclose(wrong, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def _table(model, pruning_slow: bool, factoring_slow: bool) -> LatencyTable:
    """A constructed table, 1 ns per MAC, except: ``pruning_slow``: a dense conv with fewer MACs takes *longer*
    (a shape the hardware tiles badly); ``factoring_slow``: every factored form takes twice the dense conv's time."""
    macs = conv_macs(model)
    layers = {}
    for name, m in macs.items():
        dense = m * 1e-6
        points = [{"form": "dense", "macs": m, "ms": dense}]
        if pruning_slow:
            points.append({"form": "dense", "macs": 1, "ms": 2 * dense})
        points += [{"form": form, "macs": at, "ms": 2 * dense if factoring_slow else at * 1e-6}
                   for form in FACTORED for at in (1, m)]
        layers[name] = points
    return LatencyTable(layers, sum(macs.values()) * 1e-6 * 1.2, "constructed for a test", 1, macs)


def test_the_latency_table_decides_between_pruning_and_factoring(module_resnet):
    slow_factors = kerascomp.compress(module_resnet, method="auto", target_flops=0.7, verbose=0,
                                      latency=_table(module_resnet, pruning_slow=False, factoring_slow=True))
    actions = _actions(slow_factors.report)
    changed = rewritten_in(slow_factors.report)
    assert changed and all(actions[name].startswith("pruned") for name in changed), actions
    slow_pruning = kerascomp.compress(module_resnet, method="auto", target_flops=0.7, verbose=0,
                                      latency=_table(module_resnet, pruning_slow=True, factoring_slow=False))
    actions = _actions(slow_pruning.report)
    changed = rewritten_in(slow_pruning.report)
    assert changed and not any(actions[name].startswith("pruned") for name in changed), actions
    for result in (slow_factors, slow_pruning):
        assert result.report.macs_ratio <= 0.7 + 1e-9
        assert "run slower by the table" in result.report.notes["options"]


def test_a_mobile_net_has_its_expansion_channels_pruned(keras, images):
    keras.utils.set_random_seed(0)
    model = cifar_mobilenetv2(alpha=0.35, input_shape=(16, 16, 3), keras_module=keras)
    result = kerascomp.compress(model, method="auto", target_flops=0.6, data=images, verbose=0)
    assert result.report.macs_ratio <= 0.6 + 1e-9
    actions = _actions(result.report)
    expanded = [name for name in actions if name.endswith("_expand")]
    assert any(actions[name].startswith("pruned out") for name in expanded), actions
    # a pruned expansion shrinks its depthwise conv too: the project conv reads the kept channels only
    name = next(name for name in expanded if actions[name].startswith("pruned out"))
    project = name.replace("_expand", "_project")
    assert actions[project].startswith("pruned in")
    kept = result.model.get_layer(project).get_weights()[0].shape[2]
    assert result.model.get_layer(name.replace("_expand", "_dw")).get_weights()[0].shape[2] == kept
    assert result.model.predict(images[:2], verbose=0).shape == (2, 10)
    assert actions[name.replace("_expand", "_dw")] == "pruned with its channel group"  # not reported as left alone


@pytest.mark.parametrize("options, match", [
    ({"forms": ["pca"]}, "forms \\['pca'\\] are not offered"),
    ({"forms": "prune"}, "forms must be a non-empty list"),
    ({"channel_multiple": 0}, "channel_multiple must be an int >= 1"),
    ({"pointwise": "auto"}, "pointwise must be True or False"),
])
def test_bad_options_are_refused_by_name(module_resnet, options, match):
    with pytest.raises(InvalidArgumentError, match=match):
        kerascomp.compress(module_resnet, method="auto", target_flops=0.5, verbose=0, **options)


def test_an_impossible_target_is_refused_with_the_best_reachable_ratio(module_resnet):
    with pytest.raises(BudgetError, match=r"method='auto' cannot reach target_flops=0\.01.*at best") as caught:
        kerascomp.compress(module_resnet, method="auto", target_flops=0.01, verbose=0)
    assert 0.01 < caught.value.reachable < 1.0


def test_an_edited_plan_with_a_form_that_does_not_fit_is_refused(module_resnet, images):
    plan = kerascomp.compress(module_resnet, method="auto", target_flops=0.5, forms=["fga", "svd", "tucker"],
                              data=images, verbose=0).plan
    edited = json.loads(plan.to_json())
    layer = next(iter(edited["choices"]["layers"]))
    edited["choices"]["layers"][layer] = ["tucker", 10_000, 8]
    with pytest.raises(InvalidArgumentError, match=f"form \\['tucker', 10000, 8\\] for '{layer}' does not fit"):
        kerascomp.clone_compressed(module_resnet, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)
    edited["choices"]["layers"][layer] = ["svd", 10_000]
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        kerascomp.clone_compressed(module_resnet, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)
    edited["choices"]["layers"][layer] = ["pca", 1, 1]
    with pytest.raises(InvalidArgumentError, match="does not fit"):
        kerascomp.clone_compressed(module_resnet, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)


def test_tile_steps_fall_back_to_4_then_1_on_a_small_model_and_the_plan_records_the_step(keras, images):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=4, input_shape=(16, 16, 3), keras_module=keras)  # 4/8/16 channels
    with pytest.raises(BudgetError, match="cannot reach target_flops=0.5"):
        kerascomp.compress(model, method="auto", target_flops=0.5, channel_multiple=8, rank_multiple=8, verbose=0)
    result = kerascomp.compress(model, method="auto", target_flops=0.5, verbose=0)
    assert result.report.macs_ratio <= 0.5 + 1e-9
    steps = (result.plan.settings["channel_multiple"], result.plan.settings["rank_multiple"])
    assert steps in ((4, 4), (1, 1)) and result.report.notes["tile_step"] == steps[0]
    again = kerascomp.clone_compressed(model, plan=result.plan, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(again.get_weights(), result.model.get_weights()))


def _duplicated_channels_model(keras):
    """A ResNet-8 whose s1b1 group carries channels 0..3 twice (4..7 are copies) and whose consumer reads
    channels 8..11 weakly: a cut that keeps one copy of each pair loses nothing once the consumer is refit,
    while channels 8..11 carry the least energy times weight."""
    keras.utils.set_random_seed(3)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    conv = model.get_layer("s1b1_conv1")
    kernel = conv.get_weights()[0]
    kernel[..., 4:8] = kernel[..., 0:4]
    conv.set_weights([kernel] + conv.get_weights()[1:])
    norm = model.get_layer("s1b1_bn1")
    weights = norm.get_weights()
    for w in weights:
        w[4:8] = w[0:4]
    norm.set_weights(weights)
    consumer = model.get_layer("s1b1_conv2")
    kernel = consumer.get_weights()[0]
    kernel[:, :, 8:12, :] *= 0.15
    consumer.set_weights([kernel] + consumer.get_weights()[1:])
    return model


def test_whitened_pruning_cuts_a_redundant_copy_and_the_diagonal_estimate_does_not(keras, images):
    model = _duplicated_channels_model(keras)
    data = np.random.default_rng(5).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    macs = conv_macs(model)
    saved = 4 / 16 * (macs["s1b1_conv1"] + macs["s1b1_conv2"])  # 4 of the group's 16 channels, both convs
    target = 1.0 - 0.95 * saved / kerascomp.cost(model).macs
    expected = model.predict(data, verbose=0)
    errors, kept = {}, {}
    for whiten in (True, False):
        result = kerascomp.compress(model, method="auto", target_flops=target, forms=["prune"], channel_multiple=4,
                                    data=data, whiten=whiten, recalibrate=False, verbose=0)
        kept[whiten] = set(result.plan.choices["pruned"]["s1b1_conv2"])
        assert len(kept[whiten]) == 12 and set(result.plan.choices["pruned"]) == {"s1b1_conv2"}
        errors[whiten] = float(np.linalg.norm(result.model.predict(data, verbose=0) - expected) /
                               np.linalg.norm(expected))
    # whitened: one copy of each duplicated pair goes, so after the refit the outputs are kept
    assert all(len(kept[True] & {c, c + 4}) == 1 for c in range(4))
    assert errors[True] < 1e-2
    # the diagonal estimate (per-channel energies) cuts the weakly read channels and keeps both copies
    assert {8, 9, 10, 11}.isdisjoint(kept[False]) and errors[False] > 5 * errors[True]


def test_a_squeeze_excite_expansion_is_pruned_through_all_four_of_its_convs(keras, images):
    """The expansion group of an EfficientNet or MobileNetV3 block has two readers and two writers; auto prunes it
    as one unit (until 2026-12-06 it could not: the reduce conv was a second reader). Input slices zeroed in both
    readers make channels 0..15 free to cut, so the cut is exactly those and, without data, the outputs are the
    original's."""
    model = squeeze_excite_model(keras)
    zero_input_slices(model, {"project": slice(0, 16), "se_reduce": slice(0, 16)})
    before = model_fingerprint(model)
    result = kerascomp.compress(model, method="auto", target_flops=0.85, forms=["prune"], verbose=0)
    assert model_fingerprint(model) == before
    assert result.plan.choices["pruned"]["project"] == list(range(16, 32))
    actions = _actions(result.report)
    assert actions["expand"] == actions["se_expand"] == "pruned out 32->16"
    assert actions["project"] == actions["se_reduce"] == "pruned in 32->16"
    assert actions["dw"] == "pruned with its channel group"
    assert result.model.get_layer("se_expand").get_weights()[0].shape == (1, 1, 8, 16)
    expected = model.predict(images, verbose=0)
    assert np.allclose(result.model.predict(images, verbose=0), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    # the check can fail: cutting the channels the readers do read changes the outputs
    wrong = _replanned(model, result.plan, {"project": list(range(16))}).predict(images, verbose=0)
    assert not np.allclose(wrong, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_the_squeeze_excite_cut_counts_both_readers(keras, images):
    """The cut order sums both readers' errors: the projection ignores channels 0..15 and the reduce conv
    channels 8..15 only, so the free cut of 8 channels is 8..15, with data (the joint surgeon greedy over both
    readers' covariances) and without (the readers' shares of their input energy, summed). Ordered by the
    projection alone, 0..15 would tie and 0..7 go first: the check can fail."""
    model = squeeze_excite_model(keras)
    zero_input_slices(model, {"project": slice(0, 16), "se_reduce": slice(8, 16)})
    macs = conv_macs(model)
    saved = 8 / 32 * (macs["expand"] + 16 * 16 * 9 * 32 + macs["project"])  # with the depthwise conv
    target = 1.0 - 0.9 * saved / kerascomp.cost(model).macs
    expected = model.predict(images, verbose=0)
    for data in (images, None):
        result = kerascomp.compress(model, method="auto", target_flops=target, forms=["prune"], channel_multiple=8,
                                    data=data, recalibrate=False, verbose=0)
        assert result.report.macs_ratio <= target + 1e-9
        assert result.plan.choices["pruned"] == {"project": list(range(8)) + list(range(16, 32))}, data is None
        outputs = result.model.predict(images, verbose=0)
        assert np.allclose(outputs, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())

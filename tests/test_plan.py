"""kerascomp.plan and method='collaborative': budgets, the realised model, JSON round trips, bad input."""
import numpy as np
import pytest

import kerascomp
from conftest import _randomise_bn, model_fingerprint, weights_hash
from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.zoo import cifar_resnet


@pytest.fixture(scope="module")
def small_resnet(keras):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    _randomise_bn(model)
    return model


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32"), np.arange(32) % 10


@pytest.fixture(scope="module")
def planned(small_resnet, labelled):
    return kerascomp.plan(small_resnet, target_flops=0.5, data=labelled, verbose=0)


def test_plan_meets_the_flops_budget_and_predicts_the_model(small_resnet, labelled, planned):
    before = model_fingerprint(small_resnet)
    small = kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0)
    assert model_fingerprint(small_resnet) == before
    cost, original = kerascomp.cost(small), kerascomp.cost(small_resnet)
    assert cost.macs <= 0.5 * original.macs and cost.macs >= 0.4 * original.macs  # met, not overshot
    assert (planned.macs_after, planned.params_after) == (cost.macs, cost.params)
    actions = {entry.layer: entry.action for entry in planned.layers}
    assert any("prune" in action for action in actions.values())
    assert actions["logits"] == "kept"  # Dense: reported, never silently skipped
    # a conv on the residual stream may only lose rank: its inputs also feed the next block
    assert "residual stream" in planned.layer("s1b1_conv1").reason
    assert planned.layer("s1b1_conv1").removed_inputs == []
    assert "total" in str(planned) and "collaborative plan" in str(planned)
    # the compressed model trains
    small.compile("sgd", "mse")
    small.fit(labelled[0], np.zeros((len(labelled[0]), 10)), epochs=1, verbose=0)


def test_plan_meets_a_params_budget_with_rank_cuts(small_resnet, labelled):
    planned = kerascomp.plan(small_resnet, target_params=0.3, data=labelled, verbose=0, prune=False)
    small = kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0)
    assert kerascomp.cost(small).params <= 0.3 * kerascomp.cost(small_resnet).params
    factored = [entry for entry in planned.layers if entry.rank is not None]
    assert factored
    entry = factored[0]
    basis, pointwise = small.get_layer(f"{entry.layer}_basis"), small.get_layer(entry.layer)
    assert basis.get_weights()[0].shape[-1] == entry.rank and pointwise.get_weights()[0].shape[:3] == (1, 1, entry.rank)


def test_plan_json_round_trip_reapplies_identically(small_resnet, planned, tmp_path):
    path = tmp_path / "plan.json"
    planned.save(path)
    loaded = kerascomp.Plan.load(path)
    assert loaded == planned
    first = kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0)
    second = kerascomp.clone_compressed(small_resnet, plan=loaded, verbose=0)
    assert weights_hash(first) == weights_hash(second)
    x = np.random.default_rng(1).uniform(0, 255, (4, 16, 16, 3)).astype("float32")
    np.testing.assert_array_equal(np.asarray(first(x)), np.asarray(second(x)))


def test_clone_compressed_plans_internally(small_resnet, labelled, planned):
    small = kerascomp.clone_compressed(small_resnet, method="collaborative", target_flops=0.5, data=labelled,
                                       verbose=0, recalibrate=False)
    assert weights_hash(small) == weights_hash(kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0))


def test_full_rank_plan_is_exact(small_resnet, labelled):
    x = labelled[0][:4]
    planned = kerascomp.plan(small_resnet, target_flops=1.0, data=(x, np.zeros(4, int)), verbose=0)
    assert all(entry.removed_inputs == [] and entry.rank is None for entry in planned.layers)
    same = kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0)
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(small_resnet(x)), atol=1e-5)


def test_uniform_allocation_asks_every_conv_for_the_same_rate(small_resnet, labelled):
    planned = kerascomp.plan(small_resnet, target_flops=0.6, data=labelled, verbose=0, allocation="uniform")
    rates = {round(entry.rate, 9) for entry in planned.layers if entry.action != "kept"}
    assert len(rates) == 1 and 0 < rates.pop() < 1


def test_target_below_the_floor_names_the_binding_layers(small_resnet, labelled):
    with pytest.raises(BudgetError, match=r"target_flops=0.01: .* leaves 0\.\d+ of the MACs\. Binding layers: \w+"):
        kerascomp.plan(small_resnet, target_flops=0.01, data=labelled, verbose=0)
    with pytest.raises(BudgetError, match=r"residual stream|model input"):
        kerascomp.plan(small_resnet, target_flops=0.05, data=labelled, verbose=0, decompose=False)


def test_bad_plan_input(small_resnet, labelled, planned, keras):
    with pytest.raises(InvalidArgumentError, match=r"labelled data: pass data=\(x, y\)"):
        kerascomp.plan(small_resnet, target_flops=0.5, verbose=0)
    with pytest.raises(InvalidArgumentError, match="unknown option for method='collaborative'.*Known"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, ranks=3)
    with pytest.raises(InvalidArgumentError, match="step_fraction"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, step_fraction=0.0)
    with pytest.raises(InvalidArgumentError, match="nothing to remove"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, prune=False, decompose=False)
    with pytest.raises(InvalidArgumentError, match="supports method='collaborative'"):
        kerascomp.plan(small_resnet, method="fga", data=labelled)
    with pytest.raises(InvalidArgumentError, match="loss= is used by method='collaborative' only"):
        kerascomp.clone_compressed(small_resnet, method="fga", loss="mse")
    with pytest.raises(InvalidArgumentError, match="not a kerascomp plan"):
        kerascomp.Plan.from_json('{"layers": []}')
    other = keras.Sequential([keras.Input((16, 16, 3)), keras.layers.Conv2D(4, 3, name="other_conv")])
    with pytest.raises(InvalidArgumentError, match="names layers this model lacks: .*stem_conv"):
        kerascomp.clone_compressed(other, plan=planned, verbose=0)
    retrained = keras.models.clone_model(small_resnet)
    retrained.set_weights([w * 1.01 for w in small_resnet.get_weights()])
    with pytest.warns(UserWarning, match="made for model .* with other weights"):
        kerascomp.clone_compressed(retrained, plan=planned, verbose=0)

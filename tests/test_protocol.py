"""The method protocol: every registered method plans, its plan round-trips through JSON and re-applies to a
bit-identical model; a method added in one class and one registry call works through every entry point."""
import json
import warnings

import numpy as np
import pytest
from conftest import proportional_table, weights_hash

import kerascomp
from kerascomp.api import METHODS
from kerascomp.cli import main
from kerascomp.errors import InvalidArgumentError
from kerascomp.loading import load_model
from kerascomp.methods import registry
from kerascomp.methods.base import CompressionReport, LayerRecord


@pytest.fixture(scope="module")
def model(module_resnet):
    return module_resnet


@pytest.fixture(scope="module")
def data(labelled):
    return labelled


def _compress(model, method, data, **kwargs):
    x, y = data
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        return kerascomp.compress(model, method, target_flops=0.6, verbose=0,
                                  data=(x, y) if method == "collaborative" else x, **kwargs)


def _weights_equal(a, b) -> bool:
    first, second = a.get_weights(), b.get_weights()
    return len(first) == len(second) and all(np.array_equal(u, v) for u, v in zip(first, second))


@pytest.mark.parametrize("method", METHODS)
def test_every_method_plan_round_trips_and_reapplies_bit_identically(model, data, method, tmp_path):
    result = _compress(model, method, data)
    plan = result.plan
    assert plan is not None and plan.method == method
    assert result.report.macs_ratio <= 0.6 + 1e-9
    assert plan.macs_after == result.report.macs_after  # the plan describes the model it made
    assert method in str(plan)
    plan.save(tmp_path / "plan.json")
    loaded = kerascomp.Plan.load(tmp_path / "plan.json")
    assert loaded.to_json() == plan.to_json()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        again = kerascomp.clone_compressed(model, plan=loaded, data=data[0], verbose=0)
    assert _weights_equal(again, result.model)
    assert [layer.name for layer in again.layers] == [layer.name for layer in result.model.layers]
    # the equality can fail: without the data the plan was made with, no refit or BN recalibration runs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        without_data = kerascomp.clone_compressed(model, plan=loaded, verbose=0)
    assert not _weights_equal(without_data, result.model)


@pytest.mark.parametrize("method", ["fga", "tucker", "l1"])
def test_kerascomp_plan_matches_compress(model, data, method):
    plan = kerascomp.plan(model, method, target_flops=0.6, data=data[0], verbose=0)
    assert plan.choices == _compress(model, method, data).plan.choices


def test_an_edited_fga_plan_is_applied_and_a_wrong_one_refused(model, data):
    plan = _compress(model, "fga", data).plan
    layer, (groups, rank) = next(iter(plan.choices["layers"].items()))
    edited = json.loads(plan.to_json())
    edited["choices"]["layers"][layer] = [groups, 1]
    small = kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)
    assert small.get_layer(layer).get_config()["rank"] == 1
    edited["choices"]["layers"][layer] = [groups, 10_000]
    with pytest.raises(InvalidArgumentError, match=f"rank=10000 for '{layer}'"):
        kerascomp.clone_compressed(model, plan=kerascomp.Plan.from_json(json.dumps(edited)), verbose=0)


def test_a_plan_with_a_layer_the_model_lacks_is_refused(model, data):
    plan = _compress(model, "tucker", data).plan
    plan.layers.append(LayerRecord("no_such_layer", "Conv2D", "dense", 0, 0, 0, 0))
    with pytest.raises(InvalidArgumentError, match="no_such_layer"):
        kerascomp.clone_compressed(model, plan=plan, verbose=0)


class _Identity(kerascomp.Method):
    """A toy method: rewrites nothing and reports every conv as dense."""

    name = "identity_toy"

    def run(self, graph, budget, data, options, context, fixed=None):
        report = CompressionReport(self.name, budget, [], 1, 1, 1, 1, choices={"seen": fixed is not None})
        return graph.copy(), report


@pytest.fixture
def toy():
    method = kerascomp.register(_Identity())
    yield method
    registry.unregister(method.name)


def test_a_registered_toy_method_works_through_every_entry_point(model, toy, tmp_path):
    assert toy.name in kerascomp.method_names()
    small = kerascomp.clone_compressed(model, method=toy.name, verbose=0)
    assert weights_hash(small) == weights_hash(model)
    plan = kerascomp.plan(model, method=toy.name, verbose=0)
    assert plan.method == toy.name and plan.choices == {"seen": False}
    applied = kerascomp.compress(model, plan=plan, verbose=0)
    assert applied.report.choices == {"seen": True}  # apply realised the plan's (fixed) choices
    path = tmp_path / "model.keras"
    model.save(path)
    assert main(["compress", str(path), "--method", toy.name, "-o", str(tmp_path / "out.keras"), "-q",
                 "--plan-json", str(tmp_path / "plan.json")]) == 0
    assert kerascomp.Plan.load(tmp_path / "plan.json").method == toy.name
    assert main(["plan", str(path), "--method", toy.name, "-o", str(tmp_path / "plan2.json"), "-q"]) == 0


def test_a_latency_table_is_refused_for_a_method_that_uses_none(model, toy, tmp_path, capsys):
    """Every built-in method reads a table; a registered one that does not is refused one, by name."""
    table = proportional_table(model)
    with pytest.raises(InvalidArgumentError, match=r"latency= \(a latency table\) is used by .*'identity_toy' meets "
                                                   r"target_latency by timing"):
        kerascomp.compress(model, method=toy.name, target_flops=0.5, latency=table, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    table.save(tmp_path / "table.json")
    assert main(["compress", str(path), "--method", toy.name, "-o", str(tmp_path / "x.keras"),
                 "--latency-table", str(tmp_path / "table.json")]) == 2
    assert "method 'identity_toy' uses no latency table (--latency-table)" in capsys.readouterr().err


def test_registering_twice_or_a_non_method_is_refused(toy):
    with pytest.raises(InvalidArgumentError, match="registered already"):
        kerascomp.register(_Identity())
    with pytest.raises(InvalidArgumentError, match="Method instance"):
        kerascomp.register(object())


@pytest.mark.parametrize("method, option, value", [
    ("fga", "ridge", -1.0), ("fga", "seed", "zero"), ("fga", "max_rows", 0), ("fga", "refine", "yes"),
    ("tucker", "iterations", 0), ("l1", "max_fraction", 1.5), ("svd", "rank_multiple", 0),
    ("collaborative", "step_fraction", 0.9),
])
def test_every_options_class_validates_its_fields(method, option, value):
    with pytest.raises(InvalidArgumentError, match=option):
        registry.get(method).make_options({option: value})


def test_unknown_options_name_the_option_and_the_known_ones():
    with pytest.raises(InvalidArgumentError, match=r"unknown option\(s\) bogus for method='tucker'.*iterations"):
        registry.get("tucker").make_options({"bogus": 1})


def test_options_classes_are_frozen_and_exported():
    for cls in (kerascomp.FGAOptions, kerascomp.PruneOptions, kerascomp.SVDOptions, kerascomp.TuckerOptions,
                kerascomp.CollaborativeOptions):
        with pytest.raises(Exception, match="cannot assign"):
            cls().max_samples = 3


def test_one_default_target_everywhere(model):
    import inspect

    assert inspect.signature(kerascomp.clone_compressed).parameters["target_flops"].default == \
        kerascomp.DEFAULT_TARGET_FLOPS == inspect.signature(kerascomp.prune_in_rounds).parameters[
            "target_flops"].default
    plan = kerascomp.plan(model, "l1", verbose=0)
    assert plan.target == kerascomp.DEFAULT_TARGET_FLOPS and plan.metric == "flops"


def test_a_renamed_option_still_works_with_a_deprecation_warning(model, data):
    with pytest.warns(DeprecationWarning, match="max_fraction= is renamed max_macs_fraction="):
        old = kerascomp.plan(model, "collaborative", data=data, verbose=0, max_fraction=0.5)
    new = kerascomp.plan(model, "collaborative", data=data, verbose=0, max_macs_fraction=0.5)
    assert [(e.layer, e.removed_inputs, e.rank) for e in old.layers] == \
        [(e.layer, e.removed_inputs, e.rank) for e in new.layers]
    assert old.settings["max_macs_fraction"] == 0.5
    with pytest.raises(InvalidArgumentError, match="pass max_macs_fraction= only"):
        kerascomp.plan(model, "collaborative", data=data, verbose=0, max_fraction=0.5, max_macs_fraction=0.5)


def test_a_format_1_collaborative_plan_still_applies(model, data):
    """Plans saved before the protocol (format 1: no choices, records without error/detail) load and re-apply."""
    plan = kerascomp.plan(model, "collaborative", target_flops=0.6, data=data, verbose=0)
    payload = json.loads(plan.to_json())
    payload["format"] = 1
    payload.pop("choices")
    for entry in payload["layers"]:
        entry.pop("relative_error"), entry.pop("detail")
    payload["settings"]["max_fraction"] = payload["settings"].pop("max_macs_fraction")
    old = kerascomp.Plan.from_json(json.dumps(payload))
    first = kerascomp.clone_compressed(model, plan=plan, data=data[0], verbose=0)
    second = kerascomp.clone_compressed(model, plan=old, data=data[0], verbose=0)
    assert _weights_equal(first, second)


def test_cli_saves_and_applies_any_methods_plan(model, data, tmp_path):
    path = tmp_path / "model.keras"
    model.save(path)
    np.savez(tmp_path / "calib.npz", x=data[0])
    common = [str(path), "--data", str(tmp_path / "calib.npz"), "-q"]
    assert main(["compress", *common, "--method", "tucker", "--target-flops", "0.6", "-o", str(tmp_path / "a.keras"),
                 "--plan-json", str(tmp_path / "plan.json")]) == 0
    assert main(["compress", *common, "--plan", str(tmp_path / "plan.json"), "-o", str(tmp_path / "b.keras")]) == 0
    first, second = (load_model(tmp_path / name) for name in ("a.keras", "b.keras"))
    assert _weights_equal(first, second)
    assert main(["plan", *common, "--method", "l1", "-o", str(tmp_path / "l1.json")]) == 0
    assert kerascomp.Plan.load(tmp_path / "l1.json").choices["groups"]


def test_options_given_with_a_plan_override_its_settings(model, data):
    plan = _compress(model, "tucker", data).plan
    with pytest.raises(InvalidArgumentError, match=r"unknown option\(s\) bogus for method='tucker'"):
        kerascomp.clone_compressed(model, plan=plan, data=data[0], verbose=0, bogus=1)
    recalibrated = kerascomp.compress(model, plan=plan, data=data[0], verbose=0, reconstruct=False)
    plain = kerascomp.compress(model, plan=plan, data=data[0], verbose=0, reconstruct=False, recalibrate=False)
    assert recalibrated.report.notes["recalibrated_batchnorms"] > 0
    assert plain.report.notes["recalibrated_batchnorms"] == 0
    assert not _weights_equal(recalibrated.model, plain.model)
    assert plan.settings["recalibrate"] == "auto"  # the caller's plan is not modified

"""kerascomp.plan and method='collaborative': budgets, the realised model, JSON round trips, bad input.

Tests of the planner's numerics (rates, tables, refusals) are ``flavour_independent``; those that
build, apply and train models run under both Keras flavours.
"""
import numpy as np
import pytest
from conftest import flavour_independent, model_fingerprint, weights_hash

import kerascomp
from kerascomp.errors import BudgetError, InvalidArgumentError


@pytest.fixture(scope="module")
def small_resnet(module_resnet):
    return module_resnet


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


@flavour_independent
def test_clone_compressed_plans_internally(small_resnet, labelled, planned):
    small = kerascomp.clone_compressed(small_resnet, method="collaborative", target_flops=0.5, data=labelled,
                                       verbose=0, recalibrate=False, reconstruct=False)
    assert weights_hash(small) == weights_hash(kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0))


def test_full_rank_plan_is_exact(small_resnet, labelled):
    x = labelled[0][:4]
    planned = kerascomp.plan(small_resnet, target_flops=1.0, data=(x, np.zeros(4, int)), verbose=0)
    assert all(entry.removed_inputs == [] and entry.rank is None for entry in planned.layers)
    same = kerascomp.clone_compressed(small_resnet, plan=planned, verbose=0)
    np.testing.assert_allclose(np.asarray(same(x)), np.asarray(small_resnet(x)), atol=1e-5)


@flavour_independent
def test_uniform_allocation_asks_every_conv_for_the_same_rate(small_resnet, labelled):
    planned = kerascomp.plan(small_resnet, target_flops=0.6, data=labelled, verbose=0, allocation="uniform")
    rates = {round(entry.rate, 9) for entry in planned.layers if entry.action != "kept"}
    assert len(rates) == 1 and 0 < rates.pop() < 1


@flavour_independent
def test_target_below_the_floor_names_the_binding_layers(small_resnet, labelled):
    with pytest.raises(BudgetError, match=r"target_flops=0.01: .* leaves 0\.\d+ of the MACs\. Binding layers: \w+"):
        kerascomp.plan(small_resnet, target_flops=0.01, data=labelled, verbose=0)
    with pytest.raises(BudgetError, match=r"residual stream|model input"):
        kerascomp.plan(small_resnet, target_flops=0.05, data=labelled, verbose=0, decompose=False)


def test_bad_plan_input(small_resnet, labelled, planned, keras):
    with pytest.raises(InvalidArgumentError, match=r"labelled data: pass data=\(x, y\)"):
        kerascomp.plan(small_resnet, target_flops=0.5, verbose=0)
    with pytest.raises(InvalidArgumentError, match=r"unknown option\(s\) ranks for method='collaborative'.*Known"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, ranks=3)
    with pytest.raises(InvalidArgumentError, match="step_fraction"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, step_fraction=0.0)
    with pytest.raises(InvalidArgumentError, match="nothing to remove"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, prune=False, decompose=False)
    with pytest.raises(InvalidArgumentError, match="method='magic' is not one of"):
        kerascomp.plan(small_resnet, method="magic", data=labelled)
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


def _table(model, factored_cost=3.0):
    """A synthetic table: dense convs take 1 ms per million MACs, factored ones ``factored_cost`` times that."""
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(model)
    layers = {name: [{"form": "dense", "macs": m, "ms": m * 1e-6}, {"form": "dense", "macs": m // 2, "ms": m * 0.5e-6},
                     {"form": "factored", "macs": m // 2, "ms": factored_cost * m * 0.5e-6}]
              for name, m in macs.items()}
    return kerascomp.LatencyTable(layers, 1.2 * sum(macs.values()) * 1e-6, "synthetic", 1, macs)


@flavour_independent
def test_latency_table_interpolates_and_scales():
    table = kerascomp.LatencyTable({"a": [{"form": "dense", "macs": 100, "ms": 1.0}, {"form": "dense", "macs": 50, "ms": 0.6},
                                          {"form": "factored", "macs": 40, "ms": 0.3}],
                                    "b": [{"form": "dense", "macs": 10, "ms": 0.5}]}, 2.0, "hand", 1, {"a": 100, "b": 10})
    assert table.layer_ms("a", "dense", 75) == pytest.approx(0.8)
    assert table.layer_ms("a", "dense", 25) == pytest.approx(0.3)  # below the points: proportional
    assert table.layer_ms("a", "factored", 80) == pytest.approx(0.6)
    assert table.layer_ms("b", "factored", 5) == pytest.approx(0.25)  # unmeasured form: from the dense points
    assert table.fixed_ms == pytest.approx(0.5)
    assert table.estimate({"a": ("dense", 50)}) == pytest.approx(0.5 + 0.6 + 0.5)
    with pytest.raises(InvalidArgumentError, match="no entry for layer 'c'"):
        table.layer_ms("c", "dense", 1)


@flavour_independent
def test_latency_target_is_met_by_the_table_and_avoids_slow_forms(small_resnet, labelled):
    table = _table(small_resnet)
    planned = kerascomp.plan(small_resnet, target_latency=0.7, latency=table, data=labelled, verbose=0,
                             latency_checks=0)
    assert planned.metric == "latency" and 0.6 <= planned.settings["estimated_latency_ratio"] <= 0.7
    # the same target on a phone where factored convs are 10x faster per MAC instead of 3x slower
    slow = kerascomp.plan(small_resnet, target_latency=0.4, latency=table, data=labelled, verbose=0,
                          latency_checks=0)
    fast = kerascomp.plan(small_resnet, target_latency=0.4, latency=_table(small_resnet, 0.1), data=labelled,
                          verbose=0, latency_checks=0)
    assert slow.macs_after < fast.macs_after  # slow factors must be cut deeper for the same time
    with pytest.raises(InvalidArgumentError, match="pass one target"):
        kerascomp.plan(small_resnet, target_flops=0.5, target_latency=0.5, latency=table, data=labelled)
    with pytest.raises(InvalidArgumentError, match="target_latency=2 must be a number in"):
        kerascomp.plan(small_resnet, target_latency=2, latency=table, data=labelled)
    with pytest.raises(InvalidArgumentError, match="latency must be a kerascomp.LatencyTable"):
        kerascomp.plan(small_resnet, target_latency=0.5, latency={"a": 1}, data=labelled)


@flavour_independent
def test_phone_table_from_bench_json(small_resnet, tmp_path):
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(small_resnet)
    record = {"results": [{"path": "/data/local/tmp/original.tflite", "inference_avg_us": 2500.0,
                           "settings": {"num_threads": 4}}],
              "layer_latency_ms": {"original.tflite": {name: 0.1 for name in macs}}}
    path = tmp_path / "phone.json"
    path.write_text(__import__("json").dumps(record))
    table = kerascomp.LatencyTable.from_bench_json(path, small_resnet)
    assert table.total_ms == 2.5 and table.num_threads == 4 and set(table.layers) == set(macs)
    assert table.fixed_ms == pytest.approx(2.5 - 0.1 * len(macs))
    del record["layer_latency_ms"]["original.tflite"]["stem_conv"]
    path.write_text(__import__("json").dumps(record))
    with pytest.raises(InvalidArgumentError, match="lacks layers of this model: stem_conv"):
        kerascomp.LatencyTable.from_bench_json(path, small_resnet)
    path.write_text("{}")
    with pytest.raises(InvalidArgumentError, match="no layer_latency_ms"):
        kerascomp.LatencyTable.from_bench_json(path, small_resnet)


@flavour_independent
def test_host_latency_table_and_measured_check(small_resnet, labelled, tmp_path):
    table = kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=5, verbose=0)
    original = kerascomp.cost(small_resnet).by_name()
    for name, points in table.layers.items():
        dense = [p for p in points if p["form"] == "dense" and p["macs"] == original[name].macs]
        assert dense and all(p["ms"] >= 0 for p in points)
    assert table.total_ms > 0 and table.source.startswith("host")
    table.save(tmp_path / "table.json")
    assert kerascomp.LatencyTable.load(tmp_path / "table.json") == table
    planned = kerascomp.plan(small_resnet, target_latency=0.7, latency=table, data=labelled, verbose=0,
                             latency_checks=1)
    [check] = planned.settings["latency_checks_done"]
    assert 0 < check["measured"] < 1.5 and 0 < check["estimated"] <= 0.7 + 1e-9


@flavour_independent
def test_latency_table_timings_are_cached_by_shape_host_and_threads(small_resnet, tmp_path, monkeypatch):
    import kerascomp.bench.latency as latency

    # the subject is the cache, not the conversion (test_host_latency_table_and_measured_check converts for real):
    # every candidate converts to one tiny real .tflite, so the four tables below time files in seconds
    from kerascomp.graph.flavour import keras_of

    trivial = keras_of(small_resnet)
    empty = trivial.Input((1, 1, 1), batch_size=1)
    tiny = latency.convert(trivial.Model(empty, trivial.layers.Conv2D(1, 1)(empty)), None, None, False)
    monkeypatch.setattr(latency, "convert", lambda *args: tiny)
    calls = []
    real_compare, real_single = latency.compare_tflite, latency.benchmark_tflite
    monkeypatch.setattr(latency, "compare_tflite", lambda paths, **kw: calls.append(len(paths)) or
                        real_compare(paths, **kw))
    monkeypatch.setattr(latency, "benchmark_tflite", lambda path, **kw: calls.append(1) or real_single(path, **kw))
    first = kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=3, verbose=0, cache=tmp_path)
    measured = len(calls)
    assert measured > 0 and "from the cache" not in first.source
    second = kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=3, verbose=0, cache=tmp_path)
    assert len(calls) == measured  # nothing timed again
    assert second.layers == first.layers and second.total_ms == first.total_ms
    assert "from the cache" in second.source
    kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=3, verbose=0, cache=tmp_path, num_threads=2)
    assert len(calls) > measured  # another thread count is another measurement
    calls.clear()
    kerascomp.latency_table(small_resnet, fractions=(0.5,), runs=3, verbose=0, cache=False)
    assert calls  # cache=False measures
    with pytest.raises(InvalidArgumentError, match="cache must be"):
        kerascomp.latency_table(small_resnet, cache=3)


@flavour_independent
def test_measured_sensitivity_plans_to_the_budget(small_resnet, labelled):
    planned = kerascomp.plan(small_resnet, target_flops=0.6, data=labelled, verbose=0, sensitivity="measured")
    assert planned.settings["sensitivity"] == "measured" and planned.macs_ratio <= 0.6
    with pytest.raises(InvalidArgumentError, match="sensitivity must be one of.*'taylor', 'measured'"):
        kerascomp.plan(small_resnet, data=labelled, verbose=0, sensitivity="hessian")


@flavour_independent
def test_fga_picks_groups_by_the_latency_table(small_resnet):
    """With grouped convs slow in the table (as without XNNPACK), FGA takes the ungrouped pair; fast, grouped."""
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(small_resnet)

    def table(grouped_cost):
        layers = {name: [{"form": "dense", "macs": m, "ms": m * 1e-6}, {"form": "factored", "macs": m // 2, "ms": m * 0.5e-6}]
                  + [{"form": f"fga{g}", "macs": m // 2, "ms": grouped_cost * m * 0.5e-6} for g in (2, 4, 8)]
                  for name, m in macs.items()}
        return kerascomp.LatencyTable(layers, 1.2 * sum(macs.values()) * 1e-6, "synthetic", 1, macs)

    chosen = {}
    for grouped_cost in (5.0, 0.2):
        result = kerascomp.compress(small_resnet, method="fga", target_latency=0.6, latency=table(grouped_cost),
                                    verbose=0, min_channels_per_group=8, rank_multiple=1, latency_checks=0)
        assert result.report.notes["estimated_latency_ratio"] <= 0.6
        chosen[grouped_cost] = [d.detail["groups"] for d in result.report.layers if d.action.startswith("fga")]
    assert chosen[5.0] and set(chosen[5.0]) == {1}
    assert set(chosen[0.2]) - {1}

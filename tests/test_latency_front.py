"""With a latency table (``latency=``), fga, svd, joint_svd, tucker and auto offer their allocator only the
forms on each layer's latency front (collaborative keeps its own decision unless the table puts it off that
front), under any target: no form slower than the dense layer, or than
a form at least as accurate. The tables here are constructed (one layer made slow on purpose), so the
tests say exactly which layer must stay dense; one test measures a real table's forms."""
import numpy as np
import pytest
from conftest import model_fingerprint, rewritten_in

import kerascomp
from kerascomp.allocation import Candidates, allocate, latency_front
from kerascomp.bench.latency import LatencyTable, conv_macs
from kerascomp.errors import BudgetError

GUARDED = ("fga", "svd", "joint_svd", "tucker")
FACTORED_FORMS = ("factored", "spatial", "tucker", "tucker_in", "fga2", "fga4")


def test_the_front_drops_forms_slower_than_dense_or_than_a_more_accurate_form():
    # cost (MACs), error, ms: option 1 is slower than the dense option 0; option 2 falls between two
    # measured steps (slower than option 3, which is more accurate); option 4 is cheap, fast and inaccurate
    c = Candidates("conv", np.array([100.0, 40, 50, 60, 20]), np.array([0.0, 3, 2, 1, 5]),
                   np.array([1.0, 1.2, 0.9, 0.8, 0.3]))
    assert latency_front(c).tolist() == [0, 3, 4]
    assert latency_front(Candidates("conv", c.cost, c.error)).tolist() == [0, 1, 2, 3, 4]  # no ms: all stay


def test_allocate_never_picks_a_form_the_table_times_slower_than_dense():
    slow = Candidates("a", np.array([100.0, 50]), np.array([0.0, 1.0]), np.array([1.0, 1.5]))
    fast = Candidates("b", np.array([100.0, 50]), np.array([0.0, 2.0]), np.array([1.0, 0.5]))
    # without times, a's cheaper form is the one taken to meet 150 of 200 MACs (it loses less)
    assert allocate([Candidates("a", slow.cost, slow.error), fast], 0, 150, total=200) == [1, 0]
    # with them, layer a stays dense, and a budget only its slow form could meet is refused with the best ratio
    assert allocate([slow, fast], 0, 150, total=200) == [0, 1]
    with pytest.raises(BudgetError, match=r"at best 0\.750 of the model's MACs.*latency table times slower") as caught:
        allocate([slow, fast], 0, 100, total=200)
    assert caught.value.reachable == pytest.approx(0.75)


def _table(model, slow: str | None) -> LatencyTable:
    """A constructed table: every form costs 1 ns per MAC, except that every factored form of ``slow``
    takes twice the dense layer's time at any rank."""
    macs = conv_macs(model)
    layers = {}
    for name, m in macs.items():
        dense = m * 1e-6
        layers[name] = [{"form": "dense", "macs": m, "ms": dense}]
        if name == slow:
            layers[name] += [{"form": form, "macs": at, "ms": 2 * dense} for form in FACTORED_FORMS for at in (1, m)]
    return LatencyTable(layers, sum(macs.values()) * 1e-6 * 1.2, "constructed for a test", 1, macs)



@pytest.mark.parametrize("method", GUARDED)
def test_a_layer_the_table_times_slow_stays_dense_under_a_flops_target(module_resnet, method):
    before = model_fingerprint(module_resnet)
    # tucker offers its folded forms only with a table unless fold=True: the same options with and without one
    extra = {"fold": True} if method == "tucker" else {}
    plain = kerascomp.compress(module_resnet, method=method, target_flops=0.7, verbose=0, **extra)
    kxk = {layer.name for layer in module_resnet.layers if type(layer).__name__ == "Conv2D"
           and tuple(layer.kernel_size) != (1, 1)}
    biggest = max(rewritten_in(plain.report) & kxk, key=lambda name: conv_macs(module_resnet)[name])
    guarded = kerascomp.compress(module_resnet, method=method, target_flops=0.7, verbose=0,
                                 latency=_table(module_resnet, biggest), **extra)
    assert model_fingerprint(module_resnet) == before
    assert biggest not in rewritten_in(guarded.report)
    assert guarded.report.macs_ratio <= 0.7 + 1e-9  # the other layers take up the slack
    assert rewritten_in(guarded.report) - {biggest}
    assert "left out as slower" in guarded.report.notes["latency_front"]
    # a table whose times follow the MACs leaves out only what the MACs allocation would not pick either
    even = kerascomp.compress(module_resnet, method=method, target_flops=0.7, verbose=0,
                              latency=_table(module_resnet, None), **extra)
    assert rewritten_in(even.report) == rewritten_in(plain.report)
    assert even.report.macs_ratio == pytest.approx(plain.report.macs_ratio)


def test_uniform_allocation_says_the_front_is_not_applied(module_resnet):
    result = kerascomp.compress(module_resnet, method="svd", target_flops=0.7, allocation="uniform", verbose=0,
                                latency=_table(module_resnet, None))
    assert result.report.notes["latency_front"].startswith("not applied: allocation='uniform'")


def _one_sided_table(model, saves: str) -> LatencyTable:
    """A constructed table in which only one side of a pruned conv saves time (1 ns per MAC kept on that
    side): ``saves="inputs"`` times fewer filters as the full conv, ``saves="outputs"`` fewer inputs."""
    macs = conv_macs(model)
    layers = {}
    for name, m in macs.items():
        full = m * 1e-6
        if saves == "inputs":
            layers[name] = [{"form": "dense", "macs": m, "ms": full}, {"form": "pruned_out", "macs": 1, "ms": full},
                            {"form": "pruned_out", "macs": m, "ms": full}]
        else:
            layers[name] = [{"form": "dense", "macs": 1, "ms": full}, {"form": "dense", "macs": m, "ms": full},
                            {"form": "pruned_out", "macs": m, "ms": full}]
    return LatencyTable(layers, sum(macs.values()) * 1e-6 * 1.2, "constructed for a test", 1, macs)


def _kernel_shapes(model) -> dict:
    return {layer.name: tuple(layer.kernel.shape) for layer in model.layers if hasattr(layer, "kernel")}


def test_a_table_picks_the_faster_stream_rule_for_pruning(module_resnet):
    """l1 and correlation cut a ResNet's residual stream last by default; with a table (stream="auto"), they
    take whichever of that rule and the uniform one the table estimates faster. At 0.3 of this ResNet-8's
    MACs the "last" plan keeps fewer input channels and the uniform plan fewer filters (MACs-weighted), so a
    table where only input cuts save time must keep "last", and one where only filter cuts do must switch."""
    before = model_fingerprint(module_resnet)
    rules = {rule: kerascomp.compress(module_resnet, method="l1", target_flops=0.3, stream=rule, verbose=0)
             for rule in ("last", "uniform")}
    assert _kernel_shapes(rules["last"].model) != _kernel_shapes(rules["uniform"].model)
    untimed = kerascomp.compress(module_resnet, method="l1", target_flops=0.3, verbose=0)
    assert _kernel_shapes(untimed.model) == _kernel_shapes(rules["last"].model) and "stream" not in untimed.report.notes
    for saves, expected in (("inputs", "last"), ("outputs", "uniform")):
        table = _one_sided_table(module_resnet, saves)
        result = kerascomp.compress(module_resnet, method="l1", target_flops=0.3, latency=table, verbose=0)
        assert result.report.notes["stream"].startswith(f"{expected} (estimated by the latency table constructed")
        assert _kernel_shapes(result.model) == _kernel_shapes(rules[expected].model)
        assert result.report.macs_ratio <= 0.3
        again = kerascomp.compress(module_resnet, plan=result.plan, verbose=0)  # the plan holds the counts
        assert _kernel_shapes(again.model) == _kernel_shapes(result.model)
    pruned = kerascomp.compress(module_resnet, method="correlation", target_flops=0.3, verbose=0,
                                latency=_one_sided_table(module_resnet, "outputs"))
    assert pruned.report.notes["stream"].startswith("uniform")
    assert model_fingerprint(module_resnet) == before


def test_the_pruned_estimate_multiplies_the_two_sides(module_resnet):
    macs = conv_macs(module_resnet)
    name = max(macs, key=macs.get)
    m = macs[name]
    table = LatencyTable({name: [{"form": "dense", "macs": m / 2, "ms": 0.8}, {"form": "dense", "macs": m, "ms": 1.0},
                                 {"form": "pruned_out", "macs": m / 2, "ms": 0.5}]}, 2.0, "constructed", 1, {name: m})
    assert table.pruned_ms(name, 1.0, 1.0) == pytest.approx(1.0)
    assert table.pruned_ms(name, 0.5, 1.0) == pytest.approx(0.8)
    assert table.pruned_ms(name, 1.0, 0.5) == pytest.approx(0.5)
    assert table.pruned_ms(name, 0.5, 0.5) == pytest.approx(0.4)
    assert table.pruned_ms(name, 0.75, 0.5) == pytest.approx(0.9 * 0.5)


def test_collaborative_keeps_a_conv_the_table_times_slow_dense_under_a_flops_target(module_resnet, labelled):
    """collaborative's per-layer decisions stand unless the table puts them off the layer's latency front:
    its plain plan cuts the RGB stem into a 3x3 conv to a few channels and a 1x1 conv (MACs say so); a table
    that times the stem's factored forms at twice the dense conv keeps it dense, and the others meet the
    budget. Without the slow stem, the same table keeps the stem factored (the check can fail)."""
    before = model_fingerprint(module_resnet)
    plain = kerascomp.plan(module_resnet, method="collaborative", target_flops=0.5, data=labelled, verbose=0)
    stem = {entry.layer: entry for entry in plain.layers}["stem_conv"]
    assert stem.rank is not None  # factored by MACs
    guarded = kerascomp.compress(module_resnet, method="collaborative", target_flops=0.5, data=labelled, verbose=0,
                                 latency=_table(module_resnet, "stem_conv"))
    assert model_fingerprint(module_resnet) == before
    assert "stem_conv" not in rewritten_in(guarded.report)
    assert guarded.report.macs_ratio <= 0.5 + 1e-9 and rewritten_in(guarded.report)
    assert "left out as slower" in guarded.report.notes["latency_front"]
    even = kerascomp.plan(module_resnet, method="collaborative", target_flops=0.5, data=labelled, verbose=0,
                          latency=_table(module_resnet, None))
    assert {entry.layer: entry for entry in even.layers}["stem_conv"].rank is not None
    partial = _table(module_resnet, "stem_conv")  # a phone's table may lack a layer: its decision stands
    del partial.layers["stem_conv"], partial.original_macs["stem_conv"]
    untimed = kerascomp.plan(module_resnet, method="collaborative", target_flops=0.5, data=labelled, verbose=0,
                             latency=partial)
    assert {entry.layer: entry for entry in untimed.layers}["stem_conv"].rank is not None
    again = kerascomp.compress(module_resnet, method="collaborative", plan=guarded.plan, data=labelled, verbose=0)
    assert again.report.notes["latency_front"] == guarded.report.notes["latency_front"]
    assert again.report.macs_ratio == pytest.approx(guarded.report.macs_ratio)


def test_a_measured_table_times_the_tucker_and_spatial_forms(keras, tmp_path):
    inputs = keras.Input((8, 8, 16))
    model = keras.Model(inputs, keras.layers.Conv2D(32, 3, padding="same", name="c")(inputs))
    table = kerascomp.latency_table(model, fractions=(0.5,), runs=3, verbose=0, cache=tmp_path)
    forms = {point["form"]: point for point in table.layers["c"]}
    assert {"dense", "factored", "tucker", "tucker_in", "spatial"} <= set(forms)
    for form in ("tucker", "tucker_in", "spatial"):
        assert 0.3 < forms[form]["macs"] / table.original_macs["c"] <= 0.5
        assert forms[form]["ms"] >= 0.0


def test_latency_host_measures_this_hosts_table_once_and_uses_its_front(keras, tmp_path, monkeypatch):
    monkeypatch.setenv("KERASCOMP_CACHE", str(tmp_path))
    inputs = keras.Input((8, 8, 16))
    hidden = keras.layers.Conv2D(32, 3, padding="same", name="a")(inputs)
    model = keras.Model(inputs, keras.layers.Conv2D(32, 3, padding="same", name="b")(hidden))
    result = kerascomp.compress(model, method="tucker", target_flops=0.6, latency="host", verbose=0)
    assert "latency_front" in result.report.notes and result.report.macs_ratio <= 0.6 + 1e-6
    def cached():
        return {p.name: p.stat().st_mtime_ns for p in (tmp_path / "latency").rglob("*") if p.is_file()}
    first = cached()
    assert first, "the host table was not cached under $KERASCOMP_CACHE"
    again = kerascomp.compress(model, method="tucker", target_flops=0.6, latency="host", verbose=0)
    assert cached() == first  # nothing measured or written again
    assert again.report.macs_ratio == pytest.approx(result.report.macs_ratio)

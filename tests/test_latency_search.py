"""target_latency for the methods that plan by MACs: the measured search (methods/latency_search.py)."""
import dataclasses

import numpy as np
import pytest

import kerascomp
import kerascomp.planner as planner
from kerascomp.cost import graph_cost
from kerascomp.errors import BudgetError, CompressionWarning, InvalidArgumentError
from kerascomp.graph.keras_io import infer_shapes
from kerascomp.methods import latency_search
from kerascomp.methods.base import Budget, CompressionReport


@dataclasses.dataclass(frozen=True)
class Options:
    reconstruct: bool = True
    recalibrate: bool = True


def _fake(floor: float, lowest: float = 0.0, jitter=None):
    """A method whose MACs ratio is what it is asked, and a host whose latency is floor + (1 - floor) * MACs."""
    calls = []

    def run(budget, options):
        if budget.fraction < lowest:
            raise BudgetError(f"cannot go below {lowest}")
        calls.append((budget.fraction, options))
        report = CompressionReport("fake", budget, [], 100, int(round(100 * budget.fraction)), 1, 1)
        return budget.fraction, report, "plan"

    def measure(original, compressed):
        return floor + (1 - floor) * compressed + (jitter(len(calls)) if jitter else 0.0)

    return run, measure, calls


def test_next_fraction_interpolates_between_bracketing_points():
    assert latency_search.next_fraction([(1.0, 1.0), (0.5, 0.7)], 0.6) == pytest.approx(0.5 * 0.6 / 0.7)
    assert latency_search.next_fraction([(1.0, 1.0), (0.5, 0.7), (0.2, 0.4)], 0.6) == pytest.approx(0.2 + 0.2 / 0.3 * 0.3)
    assert latency_search.next_fraction([(1.0, 1.0), (0.1, 0.1)], 0.5) == pytest.approx(0.5)  # all fast enough


@pytest.mark.parametrize("floor", [0.0, 0.3, 0.6])
def test_the_search_meets_the_target_with_the_users_options_last(floor):
    run, measure, calls = _fake(floor)
    options = Options()
    result, report, plan = latency_search.search(run, "graph", Budget("latency", 0.7), options, measure, "fake")
    measured = floor + (1 - floor) * result
    assert abs(measured - 0.7) <= 0.05 * 0.7
    assert report.budget == Budget("latency", 0.7) and report.notes["measured_latency_ratio"] == round(measured, 4)
    assert calls[-1][1] is options  # the model returned is built with reconstruction and recalibration
    assert all(not o.reconstruct and not o.recalibrate for _, o in calls[:-1])  # probes skip them
    if floor == 0.0:
        assert len(calls) == 2  # latency = MACs: the first probe is right, then the real build
    else:
        assert len(calls) >= 3  # the first guess (MACs = target) is too slow: a correction was needed


def test_an_unreachable_target_is_refused_with_the_closest_measured():
    run, measure, _ = _fake(0.6, lowest=0.05)
    with pytest.raises(BudgetError, match=r"cannot reach target_latency=0.5 within 5%.*closest measured was 0.6"
                                          r".*Measured: flops 0.500 \(MACs 0.\d+\) -> 0.\d+; flops"):
        latency_search.search(run, "graph", Budget("latency", 0.5), Options(), measure, "fake")


def test_a_missed_target_warns_and_says_so_in_the_report():
    # a host that measures 0.1 slower on the final, user-options build than on every probe
    run, measure, calls = _fake(0.0, jitter=lambda n: 0.1 if n >= 2 else 0.0)
    with pytest.warns(CompressionWarning, match="target_latency=0.5 missed"):
        _, report, _ = latency_search.search(run, "graph", Budget("latency", 0.5), Options(), measure, "fake",
                                             max_checks=3)
    assert report.notes["measured_latency_ratio"] > 0.55


def test_without_a_measurement_it_is_refused():
    run, _, _ = _fake(0.0)
    with pytest.raises(InvalidArgumentError, match="needs a latency measurement"):
        latency_search.search(run, "graph", Budget("latency", 0.5), Options(), None, "fake")


def _floored_host(floor: float):
    """A ``measured_latency_ratio`` stand-in: latency = floor + (1 - floor) * MACs ratio, deterministic."""
    def measured_latency_ratio(num_threads=1, runs=50, rounds=20):
        def measure(original, compressed):
            macs = [graph_cost(g, infer_shapes(g)).macs for g in (original, compressed)]
            return floor + (1 - floor) * macs[1] / macs[0]
        return measure
    return measured_latency_ratio


@pytest.mark.parametrize("method", ["l1", "correlation", "svd", "joint_svd", "tucker"])
def test_every_macs_method_takes_target_latency(module_resnet, method, monkeypatch):
    """Through kerascomp.compress, with a deterministic host: latency = 0.25 + 0.75 * MACs ratio."""
    monkeypatch.setattr(planner, "measured_latency_ratio", _floored_host(0.25))
    images = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    target = 0.7 if method == "joint_svd" else 0.6  # joint SVD factors 3x3 convs only: not as far
    result = kerascomp.compress(module_resnet, method=method, target_latency=target, data=images, verbose=0)
    measured = 0.25 + 0.75 * result.report.macs_ratio
    assert abs(measured - target) <= 0.05 * target, (method, result.report.notes)
    assert result.report.budget.metric == "latency" and "latency_checks" in result.report.notes
    assert result.report.macs_ratio < target  # the floor makes it cut more MACs than the latency asked
    again = kerascomp.compress(module_resnet, plan=result.plan, data=images, verbose=0)
    assert again.report.macs_after == result.report.macs_after  # the plan re-applies the found model


def test_fga_corrects_its_table_target_by_measurement(module_resnet, monkeypatch):
    """A table that estimates every form at its MACs, on a host with a fixed floor: the table's plan is
    too slow, and the measured checks lower the target given to the table until it is met."""
    monkeypatch.setattr(planner, "measured_latency_ratio", _floored_host(0.3))
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(module_resnet)
    layers = {name: [{"form": form, "macs": m, "ms": m * 1e-6} for form in ("dense", "factored")]
              for name, m in macs.items()}
    table = kerascomp.LatencyTable(layers, sum(macs.values()) * 1e-6, "synthetic", 1, macs)
    estimated = kerascomp.compress(module_resnet, method="fga", target_latency=0.7, latency=table, verbose=0,
                                   latency_checks=0)
    assert 0.3 + 0.7 * estimated.report.macs_ratio > 0.7 * 1.05  # the estimate alone misses on this host
    corrected = kerascomp.compress(module_resnet, method="fga", target_latency=0.7, latency=table, verbose=0)
    assert abs(0.3 + 0.7 * corrected.report.macs_ratio - 0.7) <= 0.05 * 0.7, corrected.report.notes
    assert "latency_checks" in corrected.report.notes
    with pytest.raises(InvalidArgumentError, match="latency_checks"):
        kerascomp.compress(module_resnet, method="fga", target_latency=0.7, latency=table, latency_checks=-1)


def _stepped(shapes, floor: float, jitter=None):
    """A method that can only make the MACs ratios in ``shapes`` (the smallest not below what it is asked,
    as a method that cannot cut exactly that much keeps more; asked below 0.2 it refuses), on a host whose latency is floor + (1 - floor) * MACs, plus
    ``jitter(call)``."""
    calls = []

    def run(budget, options):
        if budget.fraction < 0.2:
            raise BudgetError("cannot go below 0.2")
        shape = min(s for s in shapes if s >= budget.fraction - 1e-9)
        calls.append((budget.fraction, shape))
        report = CompressionReport("fake", budget, [], 100, int(round(100 * shape)), 1, 1)
        return shape, report, "plan"

    def measure(original, compressed):
        return floor + (1 - floor) * compressed + (jitter(len(calls)) if jitter else 0.0)

    return run, measure, calls


def test_a_flat_step_with_noise_does_not_stop_the_search():
    """The second probe returns the same shape as the first and times 0.003 slower: the search used to
    scale the faster measurement again, ask the same knob and stop 5.6% too slow. It must move on."""
    run, measure, calls = _stepped([1.0, 0.5, 0.45, 0.3], 0.056, jitter=lambda n: 0.003 if n == 2 else 0.0)
    result, report, _ = latency_search.search(run, "graph", Budget("latency", 0.5), Options(), measure, "fake")
    assert result == 0.45 and abs(0.056 + 0.944 * 0.45 - 0.5) <= 0.025
    assert calls[1][1] == 0.5  # the flat step the old search stopped on
    assert len(calls) <= latency_search.MAX_CHECKS


def test_steps_too_coarse_for_the_tolerance_give_the_closest_shape_with_a_warning():
    run, measure, calls = _stepped([1.0, 0.5, 0.3], 0.056)  # 0.5 -> 0.528, 0.3 -> 0.339: nothing within 5%
    with pytest.warns(CompressionWarning, match="missed"):
        result, report, _ = latency_search.search(run, "graph", Budget("latency", 0.5), Options(), measure, "fake")
    assert result == 0.5 and calls[-1][0] == pytest.approx(0.5, abs=1e-3)
    assert len(calls) <= latency_search.MAX_CHECKS


def test_next_fraction_stays_inside_a_bracket_and_stops_when_it_is_resolved():
    assert latency_search.next_fraction([(1.0, 1.0), (0.5, 0.53), (0.49, 0.34)], 0.5) == pytest.approx(
        0.49 + 0.16 * 0.01 / 0.19)
    assert latency_search.next_fraction([(1.0, 1.0), (0.5, 0.53), (0.4995, 0.34)], 0.5) is None
    # every point too slow: at least 3% below the most compressed one, even if a faster point says less
    assert latency_search.next_fraction([(1.0, 1.0), (0.5, 0.526), (0.4753, 0.529)], 0.5) < 0.4753 * 0.98


def test_collaborative_corrects_its_table_goal_until_the_measured_ratio_is_within_tolerance(module_resnet,
                                                                                          monkeypatch):
    """A table that estimates every form at its MACs, on a host with a floor of 0.3: the table alone is
    too slow; the measured checks (interpolated as the shared search does) bring it within 5%."""
    monkeypatch.setattr(planner, "measured_latency_ratio", _floored_host(0.3))
    from kerascomp.bench.latency import conv_macs

    macs = conv_macs(module_resnet)
    layers = {name: [{"form": form, "macs": m, "ms": m * 1e-6} for form in ("dense", "factored", "pruned_out")]
              for name, m in macs.items()}
    table = kerascomp.LatencyTable(layers, sum(macs.values()) * 1e-6, "host (synthetic)", 1, macs)
    rng = np.random.default_rng(0)
    labelled = (rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32"), rng.integers(0, 10, 32))
    settings = dict(method="collaborative", target_latency=0.6, latency=table, data=labelled, verbose=0)
    alone = kerascomp.compress(module_resnet, latency_checks=0, **settings)
    assert 0.3 + 0.7 * alone.report.macs_ratio > 0.6 * 1.05
    checked = kerascomp.compress(module_resnet, **settings)
    done = checked.plan.settings["latency_checks_done"]
    assert len(done) >= 2 and abs(done[-1]["measured"] - 0.6) <= 0.05 * 0.6, done
    assert abs(0.3 + 0.7 * checked.report.macs_ratio - 0.6) <= 0.05 * 0.6

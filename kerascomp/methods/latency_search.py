"""``target_latency`` met by measurement, for every method without measured checks of its own.

A method without a latency model (l1, correlation, svd, joint_svd, tucker) meets a latency target
through :func:`search` over its MACs budget; a method that plans against a latency table's estimate
but does not measure (fga) through the same search over the target it gives the table. Collaborative
runs its own measured corrections (``latency_checks``). :meth:`Method.compress` calls it for a
latency budget. The method is run at a fraction, the result is measured against the original (``context.measure``: both
exported and timed interleaved with LiteRT here, by the layer above; methods never time models
themselves) and the fraction is corrected, by interpolating between the measured points (the
original counts as the point (1, 1)), until the measured latency ratio is within ``tolerance``
(relative) of the target; a probe aims within half of it while more than three checks remain, since
timing the same file again can move its ratio by 4% on a small model. A method whose steps give the
same shape for two fractions is moved on in doubling steps; when the bracket closes with no shape
in the band, the closest measured one is returned, with a warning. Probing runs skip reconstruction, FGA's refit and BN recalibration, which
change no shape and so no latency; the final model is compressed with the user's options and measured again,
and the search goes on from there if that measurement misses. The report's notes record every
measured point.
"""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Callable

from kerascomp.errors import BudgetError, CompressionWarning, InvalidArgumentError
from kerascomp.graph.ir import Graph
from kerascomp.methods.base import Budget, CompressionReport

TOLERANCE = 0.05
MAX_CHECKS = 8
SMALLEST_FRACTION = 0.02
STEP = 0.03  # the least relative move of the knob when every point is on one side
RESOLUTION = 2e-3  # knob values closer than this count as one


def _probe_options(options: Any) -> Any:
    """The options with the shape-preserving data steps switched off (they cannot change latency)."""
    if not dataclasses.is_dataclass(options):
        return options
    names = {field.name for field in dataclasses.fields(options)}
    switched = {name: False for name in ("reconstruct", "recalibrate", "refine") if name in names}
    return dataclasses.replace(options, **switched) if switched else options


def next_fraction(points: list[tuple[float, float]], target: float, flat: int = 0) -> float | None:
    """The knob value to try next, from the measured ``(knob, ratio)`` points; ``None`` when the
    points already bracket ``target`` as closely as the search resolves (the method's steps are that coarse).

    Latency is taken to fall with the knob. Between the most compressed point still too slow and the
    least compressed one fast enough: linear interpolation, or the midpoint when that would not land
    strictly inside. Below every measured point (all too slow): the most compressed one scaled by
    target/ratio, at least ``STEP`` lower and at most fourfold; above (all fast enough): the least
    compressed one scaled up likewise. Judging from the most compressed slow point, not the fastest
    measurement, keeps the search moving when a method returns the same shape for two knobs and timing
    noise orders them the wrong way. ``flat``: how many probes in a row gave the shape of the one before
    (a method with coarse steps); each doubles the move, so a wide step is crossed in a few probes."""
    slow = [p for p in points if p[1] > target]
    fast = [p for p in points if p[1] <= target]
    if slow and fast:
        (f1, r1), (f0, r0) = min(slow), max(fast)  # f0 < f1 when the latency falls with the knob
        if f1 - f0 < RESOLUTION:
            return None
        guess = f0 + (target - r0) * (f1 - f0) / (r1 - r0) if r1 != r0 else (f0 + f1) / 2
        inside = f0 + RESOLUTION / 2 < guess < f1 - RESOLUTION / 2
        return guess if inside else (f0 + f1) / 2
    if slow:
        f, r = min(slow)
        power = 2 ** min(flat, 4)
        return max(min(f * (target / r) ** power, f * (1 - STEP) ** power), f / 4, SMALLEST_FRACTION)
    f, r = max(fast)
    if f >= 1.0:
        return None
    return min(1.0, max(f * target / max(r, 1e-9), f * (1 + STEP)))


def search(run: Callable[[Budget, Any], tuple[Graph, CompressionReport, Any]], graph: Graph, budget: Budget,
           options: Any, measure: Callable[[Graph, Graph], float] | None, method: str,
           tolerance: float = TOLERANCE, max_checks: int = MAX_CHECKS,
           knob: str = "flops") -> tuple[Graph, CompressionReport, Any]:
    """``run(Budget(knob, f), options) -> (graph, report, plan)`` at the ``f`` whose measured latency
    ratio is within ``tolerance`` of ``budget.fraction`` (see the module docstring). ``knob``:
    ``"flops"`` for a method that plans by MACs; ``"latency"`` for one that plans against a latency
    table's estimate, whose target is then corrected by measurement."""
    if measure is None:
        raise InvalidArgumentError(f"target_latency for method={method!r} needs a latency measurement; call it "
                                   "through kerascomp.compress / clone_compressed / plan, which time the model here.")
    target = budget.fraction
    probe = _probe_options(options)
    points: list[tuple[float, float]] = [(1.0, 1.0)]  # (knob asked, measured latency ratio)
    tried: list[dict] = []
    fraction, build_final, final, refused, refused_at, flat = target, False, None, None, 0.0, 0
    for check in range(max_checks):
        if check == max_checks - 1 and not build_final and len(points) > 1:  # the last check: the closest so far
            fraction = min(points[1:], key=lambda p: abs(p[1] - target))[0]
        chosen = options if (build_final or check == max_checks - 1) else probe
        try:
            result, report, plan = run(Budget(knob, round(fraction, 4)), chosen)
        except BudgetError as error:  # below what the method can reach: halfway back to the lowest that worked
            refused, refused_at = str(error), max(refused_at, fraction)
            lowest = min(f for f, _ in points)
            if lowest - fraction < RESOLUTION:
                break
            fraction, build_final = (fraction + lowest) / 2, False
            continue
        ratio = float(measure(graph, result))
        points.append((fraction, ratio))
        tried.append({f"{knob}_target": round(fraction, 4), "macs_ratio": round(report.macs_ratio, 4),
                      "latency_ratio": round(ratio, 4), "final_options": chosen is options})
        # a probe aims at the middle of the band while checks remain, since a re-timing of the same file
        # can move 4% (kerascomp.bench.host.latency_ratio); the model returned needs only the band
        aim = tolerance if (chosen is options or check >= max_checks - 3) else tolerance / 2
        close = abs(ratio - target) <= aim * target
        same = len(tried) > 1 and tried[-1]["macs_ratio"] == tried[-2]["macs_ratio"]
        flat = flat + 1 if same and ratio > target else 0
        if chosen is options and (close or check == max_checks - 1):
            final = (result, report, plan, ratio)
            break
        following = next_fraction(points, target, flat)
        if following is not None and following <= refused_at:  # not below what the method refused
            lowest = min(f for f, _ in points)
            following = (refused_at + lowest) / 2 if lowest - refused_at >= RESOLUTION else None
        if close or following is None:  # found, or the method's steps are this coarse: the closest point
            best = fraction if close else min(points[1:], key=lambda p: abs(p[1] - target))[0]
            if chosen is options and best == fraction:
                final = (result, report, plan, ratio)
                break
            fraction, build_final = best, True  # build it again with the user's options (reconstruction, ...)
            continue
        fraction, build_final = following, False
    if final is None or min(r for _, r in points[1:]) > target * (1 + tolerance):  # never fast enough
        best = min(points[1:], key=lambda p: abs(p[1] - target), default=None)
        reach = f"; the closest measured was {best[1]:.3f} (target_{knob} {best[0]:.3f})" if best else ""
        measured = "; ".join(f"{knob} {t[f'{knob}_target']:.3f} (MACs {t['macs_ratio']:.3f}) -> {t['latency_ratio']:.3f}"
                             for t in tried)
        raise BudgetError(f"method={method!r} cannot reach target_latency={target:g} within {tolerance:.0%} "
                          f"after {len(tried)} measured checks{reach}" + (f" ({refused})" if refused else "") +
                          (f". Measured: {measured}" if measured else "") + ". Try another target or method.")
    result, report, plan, ratio = final
    report.budget = budget
    report.notes["measured_latency_ratio"] = round(ratio, 4)
    report.notes["latency_checks"] = ", ".join(f"MACs {t['macs_ratio']:.3f} -> {t['latency_ratio']:.3f}" for t in tried)
    if abs(ratio - target) > tolerance * target:
        warnings.warn(f"method={method!r}: target_latency={target:g} missed: the compressed model measured "
                      f"{ratio:.3f} of the original's latency after {len(tried)} checks (points: {tried}). The "
                      "host may be busy (time alone), or the method's steps are coarse here.",
                      CompressionWarning, stacklevel=4)
    return result, report, plan

"""``target_latency`` met by measurement, for every method without measured checks of its own.

A method without a latency model (l1, correlation, svd, joint_svd, tucker) meets a latency target
through :func:`search` over its MACs budget; a method that plans against a latency table's estimate
but does not measure (fga) through the same search over the target it gives the table. Collaborative
runs its own measured corrections (``latency_checks``). :meth:`Method.compress` calls it for a
latency budget. The method is run at a fraction, the result is measured against the original (``context.measure``: both
exported and timed interleaved with LiteRT here, by the layer above; methods never time models
themselves) and the fraction is corrected, by interpolating between the measured points (the
original counts as the point (1, 1)), until the measured latency ratio is within ``tolerance``
(relative) of the target. Probing runs skip reconstruction, FGA's refit and BN recalibration, which
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


def _probe_options(options: Any) -> Any:
    """The options with the shape-preserving data steps switched off (they cannot change latency)."""
    if not dataclasses.is_dataclass(options):
        return options
    names = {field.name for field in dataclasses.fields(options)}
    switched = {name: False for name in ("reconstruct", "recalibrate", "refine") if name in names}
    return dataclasses.replace(options, **switched) if switched else options


def next_fraction(points: list[tuple[float, float]], target: float) -> float:
    """The MACs fraction to try next: linear between the measured (fraction, ratio) points that bracket
    ``target``; below every measured point, proportional to the smallest one."""
    ordered = sorted(points)
    below = [p for p in ordered if p[1] <= target]
    above = [p for p in ordered if p[1] > target]
    if above and below:
        (f0, r0), (f1, r1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        if r1 != r0:
            return f0 + (target - r0) * (f1 - f0) / (r1 - r0)
        return (f0 + f1) / 2
    if above:  # every point is too slow: scale the fastest one down, at most fourfold in one step
        f, r = min(above, key=lambda p: p[1])
        return max(f * target / r, f / 4, SMALLEST_FRACTION)
    f, r = max(below, key=lambda p: p[1])  # every point is fast enough: move up toward the target
    return min(1.0, f * target / max(r, 1e-9))


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
    fraction, use_final, final, refused = target, False, None, None
    for check in range(max_checks):
        chosen = options if (use_final or check == max_checks - 1) else probe
        try:
            result, report, plan = run(Budget(knob, round(fraction, 4)), chosen)
        except BudgetError as error:  # below what the method can reach: halfway back to the lowest that worked
            refused = str(error)
            floor = min(f for f, _ in points)
            if abs(fraction - floor) < 2e-3:
                break
            fraction, use_final = (fraction + floor) / 2, False
            continue
        ratio = float(measure(graph, result))
        points.append((fraction, ratio))
        tried.append({f"{knob}_target": round(fraction, 4), "macs_ratio": round(report.macs_ratio, 4),
                      "latency_ratio": round(ratio, 4), "final_options": chosen is options})
        close = abs(ratio - target) <= tolerance * target
        if chosen is options and (close or check == max_checks - 1):
            final = (result, report, plan, ratio)
            break
        following = min(1.0, max(next_fraction(points, target), SMALLEST_FRACTION))
        if close or abs(following - fraction) < 2e-3:  # the shape is found (or the method's steps are this coarse)
            if chosen is options:
                final = (result, report, plan, ratio)
                break
            use_final = True  # build it again with the user's options (reconstruction, recalibration)
            continue
        fraction, use_final = following, False
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

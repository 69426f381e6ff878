"""Global budget allocation shared by every method.

Each compressible layer offers candidates ``(cost, error)`` (its original form being the
candidate with error 0). :func:`allocate` picks one candidate per layer minimising the summed
error subject to ``fixed_cost + sum(cost) <= budget``, by Lagrangian relaxation: for a
multiplier ``lam`` every layer independently takes ``argmin(error + lam * cost)``; the total
cost is non-increasing in ``lam``, so a bisection on ``log(lam)`` finds the smallest
multiplier that meets the budget.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, TypeVar

import numpy as np

from kerascomp.errors import BudgetError

T = TypeVar("T")


def bisect(trial: Callable[[float], T], fits: Callable[[T], bool], good: float, bad: float, best: T,
           iterations: int = 40) -> tuple[float, T]:
    """The budget search every method shares: bisect a knob between ``good`` (its trial fits the budget)
    and ``bad`` (it does not), ``iterations`` times; returns the last good knob and its trial (``best`` if no
    tried knob fitted). The knob may run either way: ``good`` above or below ``bad``."""
    for _ in range(iterations):
        middle = 0.5 * (good + bad)
        candidate = trial(middle)
        if fits(candidate):
            good, best = middle, candidate
        else:
            bad = middle
    return good, best


def smallest_index(fits: Callable[[int], bool], low: int, high: int) -> int:
    """The smallest index in ``[low, high]`` that fits, for a fit that only turns on as the index grows
    (``high`` is returned when none below it does)."""
    while low < high:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle + 1
    return low


@dataclass
class Candidates:
    """The options of one layer: parallel arrays of cost and error (index 0 need not be the original).

    ``ms``: optional, each option's latency by a measured table (the original form included). When
    given, :func:`allocate` offers only the options on the layer's latency front (:func:`latency_front`)."""

    layer: str
    cost: np.ndarray
    error: np.ndarray
    ms: np.ndarray | None = None


def latency_front(candidates: Candidates) -> np.ndarray:
    """Indices of the options worth a place in a latency-true allocation: an option is dropped when
    another of the same layer runs faster by the table with at most its error, whatever its cost
    (or matches it on latency and error at a lower cost; of exact ties the first stays). So no kept
    option is slower than the original form (error 0), and none is slower than an option at least
    as accurate: a rank between the steps where the measured time drops goes, and the next rank up,
    faster and more accurate, stays. All indices when ``ms`` is absent."""
    count = len(candidates.cost)
    if candidates.ms is None:
        return np.arange(count)
    ms, error, cost = (np.asarray(a, float) for a in (candidates.ms, candidates.error, candidates.cost))
    tolerance = 1e-9 * max(float(np.max(ms)), 1e-12)
    order = np.arange(count)
    keep = []
    for index in range(count):
        no_worse = (ms <= ms[index] + tolerance) & (error <= error[index]) & (cost <= cost[index])
        strictly = (ms < ms[index] - tolerance) | (error < error[index]) | (cost < cost[index]) | (order < index)
        slower_than_accurate = (ms < ms[index] - tolerance) & (error <= error[index])
        beaten = (no_worse & strictly) | slower_than_accurate
        beaten[index] = False
        if not beaten.any():
            keep.append(index)
    return np.array(keep, int)


def front_note(candidates: list[Candidates], latency: Any, allocation: str = "global",
               from_plan: bool = False) -> str | None:
    """The report's ``latency_front`` line: what :func:`latency_front` left out of a global allocation,
    or that a uniform one does not apply it; ``None`` without a table, for a plan's fixed choices, or
    when no candidate carries measured ``ms``."""
    if latency is None or from_plan:
        return None
    if allocation != "global":
        return f"not applied: allocation={allocation!r} gives every layer the same rate"
    source = latency.source
    timed = [c for c in candidates if c.ms is not None]
    if not timed:
        return None
    dropped = sum(len(c.cost) - len(latency_front(c)) for c in timed)
    return (f"{dropped} of {sum(len(c.cost) for c in timed)} options of {len(timed)} layers left out as slower, by "
            f"the latency table ({source}), than the original form or than an option at least as accurate")


def _choose(candidates: list[Candidates], lam: float) -> list[int]:
    return [int(np.argmin(c.error + lam * c.cost)) for c in candidates]


def _total(candidates: list[Candidates], choice: list[int]) -> float:
    return float(sum(c.cost[i] for c, i in zip(candidates, choice)))


def _amount(value: float) -> str:
    """A cost for a message: MACs and params as integers, milliseconds with their decimals."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def allocate(candidates: list[Candidates], fixed_cost: float, budget: float, what: str = "MACs",
             hint: str = "", total: float | None = None) -> list[int]:
    """Index of the chosen candidate per layer so the total cost stays within ``budget``.

    Raises :class:`BudgetError` when even the cheapest candidate of every layer is over budget; with
    the model's ``total`` cost, the error states (and carries as ``reachable``) the best ratio reachable.
    Layers whose candidates carry measured ``ms`` choose among their latency front only.
    """
    fronts = [latency_front(c) for c in candidates]
    if any(len(front) < len(c.cost) for front, c in zip(fronts, candidates)):
        kept = [Candidates(c.layer, c.cost[front], c.error[front]) for c, front in zip(candidates, fronts)]
        hint = (hint + " Forms that the latency table times slower than a form at least as accurate (the "
                "original included) are left out.").strip()
        choice = allocate(kept, fixed_cost, budget, what, hint, total)
        return [int(front[index]) for front, index in zip(fronts, choice)]
    cheapest = [int(np.argmin(c.cost)) for c in candidates]
    floor = fixed_cost + _total(candidates, cheapest)
    if floor > budget:
        reachable = floor / total if total else None
        best = f" (at best {reachable:.3f} of the model's {what})" if reachable is not None else ""
        raise BudgetError(
            f"the {what} target cannot be met: the cheapest option of every compressible layer still totals "
            f"{_amount(floor)} {what}{best} against a budget of {_amount(budget)} ({_amount(fixed_cost)} of it in "
            "layers this method leaves alone). Relax the target or enable more layers. " + hint, reachable=reachable)
    scale = max(float(sum(np.max(c.cost) for c in candidates)), 1.0)
    low, high = -12.0, 12.0  # log10 of lam * scale
    choice = _choose(candidates, 10.0 ** high / scale)
    if fixed_cost + _total(candidates, choice) > budget:
        return cheapest
    _, choice = bisect(lambda exponent: _choose(candidates, 10.0 ** exponent / scale),
                       lambda trial: fixed_cost + _total(candidates, trial) <= budget, high, low, choice, iterations=80)
    return _fill_slack(candidates, choice, budget - fixed_cost)


def _fill_slack(candidates: list[Candidates], choice: list[int], budget: float) -> list[int]:
    """Greedy upgrades with the unspent budget: best error reduction per extra cost first."""
    choice = list(choice)
    spent = _total(candidates, choice)
    while True:
        best, best_gain = None, 0.0
        for position, c in enumerate(candidates):
            current = choice[position]
            extra = c.cost - c.cost[current]
            gain = c.error[current] - c.error
            feasible = (extra > 0) & (extra <= budget - spent) & (gain > 0)
            if not feasible.any():
                continue
            ratio = np.where(feasible, gain / np.maximum(extra, 1e-12), -np.inf)
            index = int(np.argmax(ratio))
            if ratio[index] > best_gain:
                best, best_gain = (position, index), ratio[index]
        if best is None:
            return choice
        position, index = best
        spent += candidates[position].cost[index] - candidates[position].cost[choice[position]]
        choice[position] = index

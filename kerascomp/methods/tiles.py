"""Tile-aware steps: ``channel_multiple=None`` and ``rank_multiple=None`` take the first of 8, 4 and 1
that meets the budget.

XNNPACK computes output channels in tiles (8 or 16 wide on x86 and Arm), so a conv pruned to 12
channels, or factored to rank 6, runs at about the speed of the next tile. With a step left ``None``,
a method plans with counts and ranks in multiples of 8; if the budget cannot be met that way, with
multiples of 4, then of 1. One mechanism, used by :meth:`kerascomp.methods.registry.Method.weighted_run`
for every method that names its step options in ``Method.tile_options``. The step taken is recorded
in the report (``notes["tile_step"]``) and in the plan's settings; a plan's fixed choices carry their
own counts and ranks, so applying one needs no step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kerascomp.errors import BudgetError

TILE_STEPS = (8, 4, 1)


def unset_steps(options: Any, names: tuple[str, ...]) -> list[str]:
    """The step options among ``names`` that ``options`` leaves to this mechanism (``None``)."""
    if not dataclasses.is_dataclass(options):
        return []
    return [f.name for f in dataclasses.fields(options) if f.name in names and getattr(options, f.name) is None]


def run_with_tile_steps(run: Callable[[Any], tuple], options: Any, names: tuple[str, ...],
                        fixed: dict | None) -> tuple:
    """``run(options) -> (graph, report)`` with every step option of ``names`` that is ``None`` resolved to
    the first of :data:`TILE_STEPS` whose run meets the budget (the last one's refusal is raised)."""
    unset = unset_steps(options, names)
    if not unset:
        return run(options)
    if fixed is not None:
        return run(dataclasses.replace(options, **{name: 1 for name in unset}))
    for step in TILE_STEPS:
        try:
            graph, report = run(dataclasses.replace(options, **{name: step for name in unset}))
        except BudgetError:
            if step == TILE_STEPS[-1]:
                raise
            continue
        report.notes["tile_step"] = step
        report.resolved.update({name: step for name in unset})
        return graph, report
    raise AssertionError("unreachable: TILE_STEPS ends with 1")

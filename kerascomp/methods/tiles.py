"""Tile-aware steps: ``channel_multiple=None`` and ``rank_multiple=None`` take the first of 8, 4 and 1
that meets the budget.

XNNPACK computes output channels in tiles (8 or 16 wide on x86 and Arm), so a conv pruned to 12
channels, or factored to rank 6, runs at about the speed of the next tile. With a step left ``None``,
a method plans with counts and ranks in multiples of 8; if the budget cannot be met that way, with
multiples of 4, then of 1. One mechanism, used by :meth:`kerascomp.methods.registry.Method.weighted_run`
for every method that names its step options in ``Method.tile_options`` (l1, correlation, svd,
joint_svd, tucker); FGA, auto and collaborative call :func:`first_step` and :func:`run_with_tile_steps`
from inside their ``run`` or ``plan``, so that the steps they try reuse what they measured once (FGA's
curves, auto's input moments, collaborative's gradient sensitivities). The step taken is recorded
in the report (``notes["tile_step"]``) and in the plan's settings; a plan's fixed choices carry their
own counts and ranks, so applying one needs no step.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kerascomp.errors import BudgetError, UnsupportedModelError

TILE_STEPS = (8, 4, 1)


def unset_steps(options: Any, names: tuple[str, ...]) -> list[str]:
    """The step options among ``names`` that ``options`` leaves to this mechanism (``None``)."""
    if not dataclasses.is_dataclass(options):
        return []
    return [f.name for f in dataclasses.fields(options) if f.name in names and getattr(options, f.name) is None]


def first_step(attempt: Callable[[Any], Any], options: Any, names: tuple[str, ...]) -> tuple[Any, int | None]:
    """``(attempt(options), step)`` with every step option of ``names`` that is ``None`` set to the first of
    :data:`TILE_STEPS` for which ``attempt`` raises neither :class:`BudgetError` nor
    :class:`UnsupportedModelError` (a layer too small for a rank of 8 may take one of 4; the refusal at
    steps of 1, the most permissive, is raised); ``step`` is None when no option was left to this
    mechanism."""
    unset = unset_steps(options, names)
    if not unset:
        return attempt(options), None
    for step in TILE_STEPS:
        try:
            return attempt(dataclasses.replace(options, **{name: step for name in unset})), step
        except (BudgetError, UnsupportedModelError):
            if step == TILE_STEPS[-1]:
                raise
    raise AssertionError("unreachable: TILE_STEPS ends with 1")


def run_with_tile_steps(run: Callable[[Any], tuple], options: Any, names: tuple[str, ...],
                        fixed: dict | None) -> tuple:
    """``run(options) -> (graph, report)`` through :func:`first_step`, the step recorded in the report; a
    plan's ``fixed`` choices run with steps of 1 (they name their own counts and ranks)."""
    unset = unset_steps(options, names)
    if fixed is not None and unset:
        return run(dataclasses.replace(options, **{name: 1 for name in unset}))
    (graph, report), step = first_step(run, options, names)
    if step is not None:
        report.notes["tile_step"] = step
        report.resolved.update({name: step for name in unset})
    return graph, report

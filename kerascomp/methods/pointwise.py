"""``pointwise="auto"``: reach a mobile net's budget when the kxk convs alone cannot.

Mobile nets (MobileNetV2/V3, EfficientNet, DenseNet) keep most of their MACs in 1x1 and depthwise
convs, so a method that factors only kxk convs cannot reach half their MACs. With the default
``pointwise="auto"``, every factoring method (fga, svd, joint_svd, tucker) first plans without the
1x1 convs; if that budget is out of reach, it prunes the channels that pass through depthwise convs
(inverted-residual expansions) and factors the kxk convs for the rest (:mod:`kerascomp.methods.expansions`:
pruned channels turn into speed where factored 1x1 convs mostly do not); if the model has no such
channels or that cannot reach the budget either, it plans again with the 1x1 convs factored. One
mechanism, used by :meth:`kerascomp.methods.registry.Method.weighted_run` for every method whose
options have a ``pointwise`` field. The choice is recorded in the report (``notes["pointwise"]``) and
in the plan (its settings, and ``choices["expansions"]``), so applying the plan redoes the same. When
every attempt fails, the refusal says the best ratio each reaches.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

from kerascomp.errors import BudgetError, UnsupportedModelError
from kerascomp.graph.ir import Graph
from kerascomp.methods.inputs import check_auto

AUTO = "auto"
# why a factoring method left a 1x1 conv dense: the same words in every method's report
ONE_BY_ONE = "1x1 conv left dense (pointwise=False, or pointwise='auto' met the budget without it)"
KXK_ONLY = "auto: kxk convs only (enough for the budget)"
WITH_ONE_BY_ONE = "auto: 1x1 convs factored too (the kxk convs alone could not reach the budget)"
EXPANSIONS = ("auto: expansion channels pruned first, then kxk convs factored where the budget still needs it (the kxk "
              "convs alone could not reach the budget; the expansions note says whether any was)")


def check_pointwise(value: Any) -> None:
    check_auto("pointwise", value)


def takes_pointwise(options: Any) -> bool:
    return dataclasses.is_dataclass(options) and any(f.name == "pointwise" for f in dataclasses.fields(options))


def run_with_pointwise(run: Callable[[Any, Graph, Any, dict | None], tuple], options: Any, method: str, graph: Graph,
                       budget: Any, fixed: dict | None, expansions: Callable | None = None) -> tuple:
    """``run(options, graph, budget, fixed) -> (graph, report)`` with ``options.pointwise`` resolved: as given
    when True or False; for ``"auto"`` first False, then (on a :class:`BudgetError` or when nothing else is
    compressible) ``expansions(run, options, fixed)``, the expansion pruning
    (:func:`kerascomp.methods.expansions.run_with_expansions`, bound by the registry), then True. A plan's
    ``fixed`` choices made under ``"auto"`` run with True (every layer the plan names may be taken; the rest
    stay dense), or with the plan's expansion pruning first when it has one."""
    if fixed is not None and fixed.get("expansions"):
        if expansions is None:
            raise UnsupportedModelError("the plan prunes expansions, which needs method='auto' registered.")
        options = dataclasses.replace(options, pointwise=False) if takes_pointwise(options) else options
        return expansions(run, options, fixed)
    if not takes_pointwise(options) or options.pointwise != AUTO:
        return run(options, graph, budget, fixed)
    if fixed is not None:
        return run(dataclasses.replace(options, pointwise=True), graph, budget, fixed)
    kxk_only = dataclasses.replace(options, pointwise=False)
    try:
        result, report = run(kxk_only, graph, budget, None)
        resolved, note = False, KXK_ONLY
    except (BudgetError, UnsupportedModelError) as kxk_error:
        try:
            if expansions is None:
                raise UnsupportedModelError("method='auto' is not registered: no expansion pruning")
            result, report = expansions(run, kxk_only, None)
            resolved, note = False, EXPANSIONS
        except (BudgetError, UnsupportedModelError) as expansion_error:
            try:
                result, report = run(dataclasses.replace(options, pointwise=True), graph, budget, None)
            except BudgetError as error:
                alone = getattr(kxk_error, "reachable", None)
                tried = (f"; with the kxk convs alone, at best {alone:.3f}" if alone is not None
                         else "; the kxk convs alone: nothing to factor"
                         if isinstance(kxk_error, UnsupportedModelError) else "")
                pruned = getattr(expansion_error, "reachable", None)
                tried += (f"; with its expansions pruned, at best {pruned:.3f}" if pruned is not None
                          else f"; expansion pruning: {str(expansion_error).strip().rstrip('.')}")
                raise BudgetError(f"method={method!r} cannot reach target_{budget.metric}={budget.fraction:g} even "
                                  "with its 1x1 convs factored "
                                  f"(pointwise='auto' tried all three{tried}): {_reason(error)}",
                                  reachable=_best(error, kxk_error, expansion_error)) from error
            resolved, note = True, WITH_ONE_BY_ONE
    report.notes["pointwise"] = note
    report.resolved["pointwise"] = resolved
    return result, report


def _reason(error: Exception) -> str:
    text = str(error).strip()
    if text.startswith("method=") and ": " in text:  # the method and target are said once, in front
        text = text.split(": ", 1)[1]
    return text if text.endswith(".") else text + "."


def _best(*errors: Exception) -> float | None:
    reachable = [error.reachable for error in errors if getattr(error, "reachable", None) is not None]
    return min(reachable) if reachable else None

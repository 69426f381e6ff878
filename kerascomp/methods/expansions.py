"""``pointwise="auto"`` on a mobile net: prune the expansions, factor the kxk convs.

A MobileNetV2/V3 or EfficientNet keeps most of its MACs in the 1x1 convs around its depthwise convs,
so a method that factors kxk convs only (fga, svd, joint_svd, tucker) cannot reach half its MACs.
Factoring those 1x1 convs too reaches it, but each becomes two thinner 1x1 convs, and LiteRT turns
little of that into speed (EfficientNetB0 at 0.5 MACs: realised 0.70-0.76, against 0.86 for channel
pruning; ``benchmarks/results/latency_realization_mobile_v3_effnet.md``). So when the kxk convs alone
cannot reach the budget, :func:`run_with_expansions` first prunes the channels that pass through a
depthwise conv (an inverted-residual block's expansion, with its squeeze-and-excite convs) and those
that a 1x1 head conv reads pooled (:func:`prunable`), with
``method="auto"``'s pruning units and cut order (:mod:`kerascomp.methods.auto`: the refit-aware
surgeon greedy on the readers' input covariances when data is given), then runs the method on the
pruned model for the rest of the budget. The saving asked is shared between the two in proportion to
the cost each can act on (the layers of the pruned groups; the kxk convs the method factors); when the
method cannot reach its share, the pruning takes the whole budget and the method changes nothing.

Only 1x1 factoring is tried after this (:mod:`kerascomp.methods.pointwise`), for models without such
groups (DenseNet, a ResNet50 at half its MACs). The choice is recorded in the report
(``notes["pointwise"]``, ``notes["expansions"]``) and in the plan (``choices["expansions"]``: the kept
channels of each pruned group, keyed by its first reader, and whether the method ran), so applying the
plan redoes both steps.
"""
from __future__ import annotations

from typing import Any, Callable

from kerascomp.cost import graph_cost
from kerascomp.errors import BudgetError, UnsupportedModelError
from kerascomp.graph.channels import ChannelGroup, mixing_consumers, pixels, through_depthwise
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import infer_shapes
from kerascomp.methods.base import Budget, CompressionReport, LayerRecord
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.pointwise import ONE_BY_ONE

Run = Callable[[Any, Graph, Budget, dict | None], tuple[Graph, CompressionReport]]


def _total(costs: dict, metric: str, names: list[str] | None = None) -> float:
    """The summed MACs (``metric="flops"``) or params of ``names`` (default all) in ``graph_cost(...).by_name()``."""
    names = list(costs) if names is None else names
    return float(sum(costs[n].macs if metric == "flops" else costs[n].params for n in names if n in costs))


def prunable(graph: Graph) -> Callable[[Graph, ChannelGroup], bool]:
    """Which channel groups of ``graph`` the pruning step takes: those that pass through a depthwise conv (the
    expansions), and those written on a feature map and read pooled to one pixel (MobileNetV3's last 1x1
    conv, whose 576 channels at 7x7 its 1x1 head conv reads pooled: cutting them shrinks that conv's
    weights, which a batch-1 run reads from memory at a cost its MACs do not show). Not a group that is
    one pixel already where it is written (the last stage of a 32x32 ConvNeXt: its 3072-channel hidden
    layers are plain 1x1 pairs, which the method factors)."""
    shapes, original = infer_shapes(graph), graph

    def only(graph: Graph, group: ChannelGroup) -> bool:
        if through_depthwise(graph, group):
            return True
        readers = mixing_consumers(graph, group)
        writers = [p for p in group.producers if p in graph.layers]
        if not readers or not writers or any(len(graph.nodes_of(n)) != 1 for n in readers + writers):
            return False
        return all(pixels(original, shapes, r, False) == 1 for r in readers) \
            and all(pixels(original, shapes, w, True) > 1 for w in writers)

    return only


def run_with_expansions(run: Run, options: Any, method: str, graph: Graph, budget: Budget, data: Any,
                        context: Any, fixed: dict | None, pruner: Any) -> tuple[Graph, CompressionReport]:
    """Prune the expansions, then ``run(options, pruned graph, budget, fixed)`` for the rest (see the module
    docstring); ``options.pointwise`` is False for the method. ``pruner``: ``method="auto"``'s registered
    method, whose ``prune_pass`` and ``pruned_layers`` do the pruning. Raises :class:`UnsupportedModelError`
    when the model has no such group, :class:`BudgetError` when even pruning them cannot reach the budget."""

    only = prunable(graph)

    def _prune(fraction: float, metric: str, moments: dict, fixed: dict | None = None) -> tuple:
        return pruner.prune_pass(graph, Budget(metric, fraction), data, context,
                                 None if fixed is None else {"layers": {}, "pruned": fixed}, only, moments)

    if fixed is not None:
        saved = fixed["expansions"]
        pruned, pruning = _prune(budget.fraction, budget.metric, {}, saved["pruned"])
        if not saved.get("method", True):
            return pruned, _merged(method, budget, graph, pruned, pruning, None, saved)
        own = {key: value for key, value in fixed.items() if key != "expansions"}
        result, report = run(options, pruned, budget, own)
        return result, _merged(method, budget, graph, result, pruning, report, saved)
    if budget.metric not in ("flops", "params"):  # fga's target_latency plans against its table: 1x1 factoring
        raise UnsupportedModelError(f"expansion pruning plans under a MACs or params budget, not {budget.metric}")
    shapes = infer_shapes(graph)
    costs = graph_cost(graph, shapes).by_name()
    metric, total = budget.metric, _total(costs, budget.metric)
    layers = pruner.pruned_layers(graph, only)
    if not layers:
        raise UnsupportedModelError("no prunable channel group passes through a depthwise conv or feeds a 1x1 "
                                    "head conv through a global pooling (no inverted-residual expansion whose "
                                    "writers and readers are plain convs called once)")
    kxk = [name for name in eligible_convs(graph, shapes, ONE_BY_ONE)[0] if name not in layers]
    pool, other = _total(costs, metric, layers), _total(costs, metric, kxk)
    needed = (1.0 - budget.fraction) * total
    share = needed * pool / max(pool + other, 1e-30)
    moments: dict = {}  # the input moments, measured once for both pruning attempts
    pruned, pruning = _prune(max(1.0 - share / total, budget.fraction), metric, moments)
    rest = budget.fraction * total / max(pruning.macs_after if metric == "flops" else pruning.params_after, 1)
    if rest < 1.0 - 1e-9:
        try:
            result, report = run(options, pruned, Budget(metric, rest), None)
            return result, _merged(method, budget, graph, result, pruning, report,
                                   {"pruned": pruning.choices["pruned"], "method": True})
        except (BudgetError, UnsupportedModelError):
            pruned, pruning = _prune(budget.fraction, metric, moments)  # the pruning takes it all
    return pruned, _merged(method, budget, graph, pruned, pruning, None,
                           {"pruned": pruning.choices["pruned"], "method": False})


def _merged(method: str, budget: Budget, graph: Graph, result: Graph, pruning: CompressionReport,
            report: CompressionReport | None, saved: dict) -> CompressionReport:
    """One report for both steps: costs before from the original, after from the result; a layer both pruned
    and factored shows both actions."""
    before = graph_cost(graph, infer_shapes(graph)).by_name()
    pruned_rows = {row.layer: row for row in pruning.layers}
    rows = report.layers if report is not None else pruning.layers
    records = []
    for row in rows:
        first = pruned_rows.get(row.layer)
        action, reason = row.action, row.reason
        if report is not None and first is not None and first.action not in ("dense", "kept"):
            action = first.action if row.action in ("dense", "kept") else f"{first.action}, then {row.action}"
            reason = "" if action != "kept" else reason
        cost = before[row.layer]
        records.append(LayerRecord(row.layer, row.class_name, action, cost.macs, row.macs_after, cost.params,
                                   row.params_after, row.relative_error, dict(row.detail), reason))
    notes = dict(report.notes) if report is not None else {}
    cut = sum(1 for row in pruning.layers if row.action.startswith("pruned in"))
    notes["expansions"] = (f"{len(saved['pruned'])} expansion groups pruned ({cut} readers), then "
                           + (f"{method} on the rest" if saved.get("method", True) else f"no {method} step needed"))
    choices = dict(report.choices) if report is not None else {}
    choices["expansions"] = saved
    kept = dict(pruning.kept_outputs)
    if report is not None:
        kept.update(report.kept_outputs)
    costs_after = graph_cost(result, infer_shapes(result))
    return CompressionReport(method, budget, records, int(sum(c.macs for c in before.values())), int(costs_after.macs),
                             int(sum(c.params for c in before.values())), int(costs_after.params), notes=notes,
                             choices=choices, kept_outputs=kept,
                             resolved=dict(report.resolved) if report is not None else {})

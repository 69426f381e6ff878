"""``method="correlation"``: filter-correlation pruning (Singh et al., WACV 2020).

Scoring: in each coupled group, the Pearson correlation of every pair of filters (averaged over
the group's producers); greedy non-overlapping pairs, strongest first; of each pair the filter
with the smaller L1 norm goes and its partner stays (:func:`correlation_steps`). Around the
user's training, :func:`regularize_graph` adds a :class:`CorrelationRegularizer` on the chosen
pairs so they become maximally correlated before they are dropped (see :mod:`kerascomp.rounds`).
"""
from __future__ import annotations

import numpy as np

from kerascomp.decompose.correlation import pearson_matrix, removal_order
from kerascomp.graph.channels import SEPARABLE, TRANSPOSED, ChannelAnalysis, ChannelGroup
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import module_for
from kerascomp.layers import layers_for
from kerascomp.methods.pruning import GroupOrder, PruningMethod, Step, group_l1, group_rows


def group_correlation(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> np.ndarray:
    """``|corr|`` between the group's channels, averaged over the producers that hold both filters."""
    strength = np.zeros((group.size, group.size))
    count = np.zeros((group.size, group.size))
    for channels, rows in group_rows(graph, analysis, group):
        block = np.ix_(channels, channels)
        strength[block] += np.abs(pearson_matrix(rows))
        count[block] += 1.0
    return np.where(count > 0, strength / np.maximum(count, 1.0), 0.0)


def correlation_steps(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Step]:
    """Removal order by pairing; the score ``1 - |corr|`` is made non-decreasing along the order."""
    steps, floor = [], 0.0
    order = removal_order(group_correlation(graph, analysis, group), group_l1(graph, analysis, group),
                          np.array(group.prunable(), dtype=np.int64))
    for dropped, partner, strength in order:
        floor = max(floor, 1.0 - strength)
        steps.append(Step(dropped, floor, partner))
    return steps


def _regularizer_slot(class_name: str) -> tuple[str, int]:
    if class_name in SEPARABLE:
        return "pointwise_regularizer", -1
    return "kernel_regularizer", (-2 if class_name in TRANSPOSED else -1)


def regularize_graph(graph: Graph, analysis: ChannelAnalysis, orders: list[GroupOrder],
                     strength: float) -> tuple[Graph, int]:
    """A copy of ``graph`` whose producers carry a correlation regulariser on the chosen (dropped, partner)
    pairs. ``strength`` is the weight of the mean over regularised layers, so the added loss starts
    near ``strength * (1 - mean |corr|)`` whatever the depth. Returns the graph and the number of pairs."""
    keras = module_for(graph)
    regularizer = layers_for(keras).CorrelationRegularizer
    pairs_of: dict[str, list[list[int]]] = {}
    for order in orders:
        for step in order.steps[:order.chosen]:
            if step.partner is None:
                continue
            for producer in order.group.producers:
                if producer not in graph.layers:
                    continue
                rows = analysis.producer_channels(order.group, producer)
                first, second = np.flatnonzero(rows == step.channel), np.flatnonzero(rows == step.partner)
                if len(first) and len(second):
                    pairs_of.setdefault(producer, []).append([int(first[0]), int(second[0])])
    result = graph.copy()
    for layer, pairs in pairs_of.items():
        spec = result.layers[layer]
        slot, out_axis = _regularizer_slot(spec.class_name)
        instance = regularizer(pairs, strength / len(pairs_of), out_axis, base=spec.config.get(slot))
        spec.config = {**spec.config, slot: keras.regularizers.serialize(instance)}
    return result, sum(len(p) for p in pairs_of.values())


class CorrelationMethod(PruningMethod):
    """``method="correlation"``: drop one filter of each most-correlated pair, folded into its partner
    when ``data`` is given (Singh et al.); the regularised rounds are :func:`kerascomp.prune_in_rounds`."""

    name = "correlation"
    pairs = True

    def steps(self, graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Step]:
        return correlation_steps(graph, analysis, group)

"""The channel-pruning pass shared by ``method="l1"`` and ``method="correlation"``.

A method supplies, per channel group, a *removal order*: the channels to drop first, each with
a score (lower goes first) and optionally the partner channel that takes over its role. This
module turns the orders into a physically smaller graph under a MACs or params budget:

1. allocate how many channels each group loses (``"uniform"``: one fraction for every group,
   as Li et al. 2017 prune a fixed share per layer; ``"global"``: one score threshold);
2. optionally compensate each dropped channel in its consumers (``W[partner] += alpha * W[dropped]``
   and ``bias += beta * sum(W[dropped])``, with ``alpha, beta`` fitted on the consumers' inputs);
3. slice the weights through :func:`kerascomp.graph.channels.prune_channels`.

A group split by a grouped conv (``ChannelGroup.blocks``) loses channels in *rounds*, one from each
block (:func:`balanced_steps`), so the grouped conv keeps equal groups; its counts are whole rounds.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from kerascomp.allocation import smallest_index
from kerascomp.cost import graph_cost, layer_macs
from kerascomp.decompose.correlation import filter_rows, l1_norms, linear_fit
from kerascomp.decompose.ridge import Moments
from kerascomp.decompose.selection import contribution_gram, greedy_removal, group_gram
from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.graph.channels import (
    CONV,
    DEPTHWISE,
    PER_CHANNEL,
    PRUNE_RULES,
    TRANSPOSED,
    ChannelAnalysis,
    ChannelGroup,
    analyse_channels,
    conv_groups,
    kept_outputs,
    prune_channels,
)
from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import infer_shapes, sample_node_inputs
from kerascomp.methods.base import Budget, CompressionReport, build_report
from kerascomp.methods.inputs import check_auto, check_bool, check_choice, check_int, check_number
from kerascomp.methods.reconstruct import design, linear_map
from kerascomp.methods.registry import Context, Method
from kerascomp.methods.tiles import first_step

ALLOCATIONS = ("uniform", "global")
STREAMS = ("auto", "last", "uniform")
SELECTIONS = ("score", "reconstruction")
IO_REASONS = ("model input", "model output")


@dataclass(frozen=True)
class PruneOptions:
    """Options of the pruning methods (``clone_compressed(..., method="l1" | "correlation", **options)``).

    Attributes:
        allocation: ``"uniform"`` removes the same fraction of every group; ``"global"`` ranks
            channels of all groups by score and removes the lowest.
        max_fraction: at most this fraction of a group's prunable channels is removed.
        stream: with ``allocation="uniform"``, how the *stream* groups (channels that several
            producers write through a merge such as ``Add``: a ResNet's residual stream) are cut.
            ``"last"``: the other groups first, up to ``max_fraction``, and the stream only for
            what the budget still needs (Li et al. 2017 prune only the first conv of each residual
            block; measured in ``benchmarks/results/start_point_resnet20_cifar10.md``).
            ``"uniform"``: the same fraction as every other group (the rule until 2026-12). On a
            bottleneck network at 224x224 it is the faster shape: ResNet50 at a quarter of the MACs
            ran at 0.27 of the original's latency with it, 0.34 with ``"last"`` (benchmarks/RESULTS.md).
            ``"auto"`` (default): with a latency table (``latency=``), whichever of the two the table
            estimates faster (:meth:`kerascomp.bench.latency.LatencyTable.pruned_ms`; the report's
            ``stream`` note gives both estimates); without one, ``"last"``.
        selection: which channels of a group go, once the allocation has said how many.
            ``"score"``: the method's own order (L1 norm, correlation). ``"reconstruction"``: the
            set whose removal changes the consumers' outputs least, on ``data`` (ThiNet's greedy
            on the centred contributions; needs ``data``); the method's score still drives a
            ``"global"`` allocation. Measured in ``benchmarks/results/start_point_resnet20_cifar10.md``.
        channel_multiple: a pruned group keeps a multiple of this many channels (XNNPACK computes
            output channels in tiles of 4 to 16, so odd widths waste part of a tile); ``None``: the
            first of 8, 4, 1 that meets the budget (:mod:`kerascomp.methods.tiles`).
        compensate: fold each dropped channel into its partner in the consumers (``"auto"``: when
            ``data`` is given and the method pairs channels).
        max_samples: images of ``data`` used to fit the compensation.
        max_rows: activation rows (pixels x images) per consumer used for each fit.
        recalibrate: re-estimate BatchNormalization statistics on ``data`` after pruning
            (``"auto"``: when ``data`` is given).
        seed: seed for the row subsampling.
    """

    allocation: str = "uniform"
    max_fraction: float = 0.8
    stream: str = "auto"
    selection: str = "score"
    channel_multiple: int | None = None
    compensate: bool | str = "auto"
    max_samples: int = 128
    max_rows: int = 20000
    recalibrate: bool | str = "auto"
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512
    bn_weighting: bool = False
    seed: int = 0

    def validate(self) -> None:
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("stream", self.stream, STREAMS)
        check_choice("selection", self.selection, SELECTIONS)
        check_number("max_fraction", self.max_fraction, 0.0, 1.0, "()")
        check_auto("compensate", self.compensate)
        check_auto("recalibrate", self.recalibrate)
        check_bool("bn_weighting", self.bn_weighting)
        for name in ("max_samples", "max_rows"):
            check_int(name, getattr(self, name))
        if self.channel_multiple is not None:
            check_int("channel_multiple", self.channel_multiple)
        check_int("seed", self.seed, least=0)


@dataclass
class Step:
    """Drop ``channel``; ``partner`` (if any) is the kept channel that most resembles it."""

    channel: int
    score: float
    partner: int | None = None


@dataclass
class GroupOrder:
    group: ChannelGroup
    steps: list[Step]
    limit: int = 0
    chosen: int = 0
    allowed: list[int] = field(default_factory=list)


Scorer = Callable[[Graph, ChannelAnalysis, ChannelGroup], list[Step]]


def balanced_steps(group: ChannelGroup, steps: list[Step]) -> tuple[list[Step], set[int] | None]:
    """``steps`` reordered for a group a grouped conv splits into blocks: in rounds, each the next channel of
    every block (in the method's order within the block), interleaved by score with the channels no
    grouped conv splits; each step of a round takes the round's highest score, so scores stay
    non-decreasing. Returns the steps and the counts that end a round (``None`` for an unsplit group: any
    count). A partner that goes before its channel is dropped."""
    if group.blocks is None:
        return steps, None
    per_block = [[step for step in steps if group.blocks[step.channel] == block]
                 for block in range(int(group.blocks.max()) + 1)]
    rounds = min(len(listed) for listed in per_block)
    units = [[listed[r] for listed in per_block] for r in range(rounds)]
    units += [[step] for step in steps if group.blocks[step.channel] < 0]
    units.sort(key=lambda unit: max(step.score for step in unit))
    ordered, seen, ends = [], set(), {0}
    for unit in units:
        score = max(step.score for step in unit)
        for step in unit:
            ordered.append(Step(step.channel, score, None if step.partner in seen else step.partner))
            seen.add(step.channel)
        ends.add(len(ordered))
    return ordered, ends


def producer_rows(spec: LayerSpec) -> np.ndarray | None:
    """The filters of a producer as rows (``None`` if the layer holds no kernel)."""
    if spec.class_name not in PRUNE_RULES or spec.class_name in PER_CHANNEL:
        return None
    axes = PRUNE_RULES[spec.class_name](spec)
    for weight, roles in zip(spec.weights, axes):
        out_axes = [axis for axis, role in roles.items() if role == "out"]
        if out_axes and weight.ndim >= 2:
            return filter_rows(weight, out_axes[0])
    return None


def group_rows(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[tuple[np.ndarray, np.ndarray]]:
    """For each producer of ``group`` with a kernel: (channel index of each row, rows)."""
    found = []
    for producer in group.producers:
        spec = graph.layers.get(producer)
        rows = producer_rows(spec) if spec is not None else None
        if rows is None:
            continue
        channels = analysis.producer_channels(group, producer)
        found.append((channels[channels >= 0], rows[channels >= 0]))
    return found


def group_l1(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> np.ndarray:
    """Per channel, the mean over the group's producers of ``L1(filter) / mean L1 of that producer``."""
    total, count = np.zeros(group.size), np.zeros(group.size)
    for channels, rows in group_rows(graph, analysis, group):
        norms = l1_norms(rows)
        np.add.at(total, channels, norms / max(float(norms.mean()), 1e-12))
        np.add.at(count, channels, 1.0)
    return np.where(count > 0, total / np.maximum(count, 1), np.inf)


def cost_tables(graph: Graph, shapes: dict, analysis: ChannelAnalysis) -> list[tuple]:
    """Per layer: what is needed to recompute its MACs and params for any set of removed atoms."""
    tables = []
    for name, spec in graph.layers.items():
        nodes = [(node.input_refs()[0], node.name) for node in graph.nodes_of(name) if node.input_refs()]
        shape_pairs = [(shapes[ref.node][ref.index], shapes[node][0]) for ref, node in nodes]
        ruled = spec.class_name in PRUNE_RULES
        in_atoms = analysis.in_atoms.get(name) if ruled else None
        out_atoms = analysis.out_atoms.get(name) if ruled else None
        if in_atoms is None and out_atoms is None:
            macs = sum(layer_macs(spec, i, o) or 0 for i, o in shape_pairs)
            tables.append((spec, None, None, shape_pairs, macs, int(sum(np.size(w) for w in spec.weights))))
            continue
        tables.append((spec, in_atoms, out_atoms, shape_pairs, None, None))
    return tables


def pruned_cost(tables: list[tuple], removed: np.ndarray) -> tuple[int, int]:
    """(MACs, params) of the graph with the atoms ``removed``; called hundreds of times by the allocation,
    so the removed atoms are a boolean mask, not a set search per layer."""
    gone = np.zeros(int(removed.max()) + 1 if removed.size else 0, dtype=bool)
    gone[removed] = True

    def kept(atoms: np.ndarray | None) -> int | None:
        if atoms is None:
            return None
        inside = atoms[(atoms >= 0) & (atoms < len(gone))]
        return int(len(atoms) - np.count_nonzero(gone[inside]))

    macs = params = 0
    for spec, in_atoms, out_atoms, shape_pairs, fixed_macs, fixed_params in tables:
        if in_atoms is None and out_atoms is None:
            macs += fixed_macs
            params += fixed_params
            continue
        n_in, n_out = kept(in_atoms), kept(out_atoms)
        for in_shape, out_shape in shape_pairs:
            in_new = in_shape[:-1] + ((n_in if n_in is not None else in_shape[-1]),)
            out_new = out_shape[:-1] + ((n_out if n_out is not None else out_shape[-1]),)
            macs += layer_macs(spec, in_new, out_new) or 0
        multiplier = int(spec.config.get("depth_multiplier", 1))
        n_in_kernel = None if n_in is None else n_in // conv_groups(spec)  # a grouped kernel holds one group's
        counts = {"in": n_in_kernel, "out": n_out, "mid": None if n_in is None else n_in * multiplier}
        for weight, roles in zip(spec.weights, PRUNE_RULES[spec.class_name](spec)):
            shape = list(weight.shape)
            for axis, role in roles.items():
                if counts[role] is not None:
                    shape[axis] = counts[role]
            params += int(np.prod(shape, dtype=np.int64))
    return macs, params


def _removed(orders: list[GroupOrder], counts: list[int]) -> np.ndarray:
    atoms = [order.group.channels[step.channel] for order, count in zip(orders, counts)
             for step in order.steps[:count]]
    return np.concatenate(atoms) if atoms else np.zeros(0, dtype=np.int64)


def _snap(order: GroupOrder, count: int) -> int:
    """The smallest allowed count >= ``count`` (the largest allowed one if none is)."""
    index = int(np.searchsorted(order.allowed, count))
    return order.allowed[min(index, len(order.allowed) - 1)]


def is_stream(group: ChannelGroup) -> bool:
    """Whether several producers write the group's channels (through an Add or another merge)."""
    return len(group.producers) > 1


def _counts_uniform(orders: list[GroupOrder], fraction: float) -> list[int]:
    return [_snap(order, int(np.floor(fraction * len(order.group.prunable()) + 1e-9))) for order in orders]


def _counts_stream_last(orders: list[GroupOrder], knob: float) -> list[int]:
    """``knob`` in [0, 2]: the non-stream groups lose ``min(knob, 1)`` of their channels (capped at
    their limit), the stream groups ``max(knob - 1, 0)``."""
    return [_snap(order, int(np.floor((max(knob - 1.0, 0.0) if is_stream(order.group) else min(knob, 1.0))
                                      * len(order.group.prunable()) + 1e-9))) for order in orders]


def _counts_global(orders: list[GroupOrder], threshold: float) -> list[int]:
    return [_snap(order, sum(1 for step in order.steps if step.score <= threshold)) for order in orders]


def allocate_counts(orders: list[GroupOrder], tables: list[tuple], budget: Budget, total: float,
                    allocation: str, stream: str = "uniform") -> list[int]:
    """How many channels each group loses: the least pruning whose cost meets the budget."""
    metric = 0 if budget.metric == "flops" else 1
    target = budget.fraction * total
    if allocation == "uniform" and stream in ("last", "auto") and any(is_stream(o.group) for o in orders):
        knobs = np.linspace(0.0, 2.0, 2001)
        count_for = _counts_stream_last
    elif allocation == "uniform":
        knobs = np.linspace(0.0, 1.0, 1001)
        count_for = _counts_uniform
    else:
        knobs = np.unique(np.concatenate([[-np.inf]] + [[s.score for s in o.steps] for o in orders]))
        count_for = _counts_global

    def cost(knob) -> float:
        return pruned_cost(tables, _removed(orders, count_for(orders, knob)))[metric]

    if cost(knobs[-1]) > target:
        return []
    lo = smallest_index(lambda index: cost(knobs[index]) <= target, 0, len(knobs) - 1)
    return _give_back(orders, tables, count_for(orders, knobs[lo]), target, metric)


def _give_back(orders: list[GroupOrder], tables: list[tuple], counts: list[int], target: float,
               metric: int) -> list[int]:
    """Spend the slack a coarse allocation leaves, evenly: one allowed step at a time, to the group that has
    lost the largest share of its channels, while the budget holds. A group whose next step does not fit
    is done (restoring channels elsewhere only adds cost). Restoring in steps keeps a uniform allocation
    near uniform: at a quarter of a ResNet's MACs, where halving every width overshoots the budget by a
    hair, one group keeps a step less, instead of one group getting all its channels back and the rest
    (the residual stream included) a step less than half (benchmarks/RESULTS.md, 2026-12-07)."""
    counts = list(counts)
    sizes = [max(len(order.group.prunable()), 1) for order in orders]
    open_groups = {index for index, count in enumerate(counts) if count > 0}
    while open_groups:
        index = max(open_groups, key=lambda i: (counts[i] / sizes[i], -i))
        smaller = [c for c in orders[index].allowed if c < counts[index]]
        trial = counts[:index] + smaller[-1:] + counts[index + 1:]
        if smaller and pruned_cost(tables, _removed(orders, trial))[metric] <= target:
            counts = trial
        else:
            open_groups.discard(index)
    return counts


def _consumer_weight(spec: LayerSpec) -> tuple[int, int] | None:
    """(weight index, input axis) of a consumer that mixes channels (Conv, Dense, transposed conv)."""
    if spec.class_name in CONV | {"Dense"} and conv_groups(spec) == 1:
        return 0, -2
    if spec.class_name in TRANSPOSED:
        return 0, -1
    return None


def compensate(graph: Graph, analysis: ChannelAnalysis, orders: list[GroupOrder], data, options: PruneOptions,
               verbose: int) -> dict[str, int]:
    """Fold each dropped channel into its partner in every channel-mixing consumer (in place on ``graph``).

    For consumer input ``x``, fit ``x_dropped ~ alpha * x_partner + beta`` on ``data``; then
    ``W[partner] += alpha * W[dropped]`` and ``bias += beta * sum(W[dropped])``, so the consumer
    sees (approximately) the same pre-activation without the dropped channel. Returns the number
    of folds per consumer.
    """
    work: dict[str, list[tuple[ChannelGroup, Step]]] = {}
    for order in orders:
        for step in order.steps[:order.chosen]:
            if step.partner is None:
                continue
            for consumer in order.group.consumers:
                if _consumer_weight(graph.layers[consumer]) is not None:
                    work.setdefault(consumer, []).append((order.group, step))
    if not work:
        return {}
    calls = _inputs_of_every_call(graph, list(work), data, options.max_samples)
    rng = np.random.default_rng(options.seed)
    folds = {}
    for layer, steps in tqdm(work.items(), desc="compensate", disable=not verbose):
        spec = graph.layers[layer]
        index, axis = _consumer_weight(spec)
        flat = np.concatenate([inputs.reshape(-1, inputs.shape[-1]) for inputs in calls[layer]])
        if len(flat) > options.max_rows:
            flat = flat[rng.choice(len(flat), options.max_rows, replace=False)]
        kernel = np.moveaxis(spec.weights[index].astype(np.float64), axis, 0).copy()
        bias = spec.weights[1].astype(np.float64).copy() if len(spec.weights) > 1 else None
        for group, step in steps:
            positions = analysis.input_channels(group, layer)
            dropped = np.flatnonzero(positions == step.channel)
            partner = np.flatnonzero(positions == step.partner)
            if len(dropped) == 0 or len(dropped) != len(partner):
                continue
            alpha, beta = linear_fit(flat[:, dropped], flat[:, partner])
            kernel[partner] += alpha * kernel[dropped]
            if bias is not None:
                bias += beta * kernel[dropped].reshape(-1, kernel.shape[-1]).sum(axis=0)
            kernel[dropped] = 0.0
        spec.weights[index] = np.moveaxis(kernel, 0, axis).astype(spec.weights[index].dtype)
        if bias is not None:
            spec.weights[1] = bias.astype(spec.weights[1].dtype)
        folds[layer] = len(steps)
    return folds


def _inputs_of_every_call(graph: Graph, layers: list[str], data, max_samples: int) -> dict[str, list[np.ndarray]]:
    """Per layer, its input on ``data`` at each of its calls: a shared layer's weights serve every call,
    so a fit of them pools all of them."""
    names = {layer: [node.name for node in graph.nodes_of(layer)] for layer in layers}
    samples = sample_node_inputs(graph, [name for listed in names.values() for name in listed], data, max_samples)
    return {layer: [samples[name] for name in listed] for layer, listed in names.items()}


def _selection_consumer(spec: LayerSpec) -> bool:
    """Consumers whose output is ``design(inputs) @ kernel`` (:mod:`kerascomp.methods.reconstruct`)."""
    return spec.class_name == "Dense" or (spec.class_name == "Conv2D" and int(spec.config.get("groups", 1)) == 1)


def _consumer_gram(spec: LayerSpec, inputs: np.ndarray, max_rows: int, rng) -> np.ndarray:
    """The contribution Gram over ``spec``'s input positions, from design rows of ``inputs``
    accumulated a few images at a time (about ``max_rows`` rows in all, subsampled evenly)."""
    kernel = linear_map(spec)[0].astype(np.float64)
    moments, keep = Moments.zeros(kernel.shape[0], 0), None
    for start in range(0, len(inputs), 8):
        rows = design(spec, inputs[start:start + 8])
        if keep is None:  # the share of rows kept, from the rows one image gives
            keep = min(1.0, max_rows * min(8, len(inputs)) / max(len(rows) * len(inputs), 1))
        if keep < 1.0:
            rows = rows[rng.random(len(rows)) < keep]
        moments.add(rows, rows[:, :0])
    return contribution_gram(moments.centred_gram(), kernel, kernel.shape[0] // inputs.shape[-1])


def select_by_reconstruction(graph: Graph, analysis: ChannelAnalysis, orders: list[GroupOrder], data,
                             options: PruneOptions, verbose: int) -> dict[int, str]:
    """Re-choose, per group, *which* ``order.chosen`` channels go (``selection="reconstruction"``):
    the set ThiNet's greedy finds on the consumers' contributions, each consumer weighted by its
    output variance. Reorders ``order.steps`` in place (partners that would go too are dropped);
    returns, per group left in the method's order, why."""
    rng = np.random.default_rng(options.seed)
    left = {}
    for order in tqdm([o for o in orders if o.chosen], desc="select channels", disable=not verbose):
        group = order.group
        consumers = [c for c in group.consumers if _selection_consumer(graph.layers[c])]
        if not consumers:
            left[group.index] = "no Dense or ungrouped Conv2D reads it"
            continue
        if group.blocks is not None:
            left[group.index] = f"grouped conv {group.split_by[0]!r} needs equal removals per group"
            continue
        calls = _inputs_of_every_call(graph, consumers, data, options.max_samples)
        total = np.zeros((group.size, group.size))
        for layer in consumers:
            position_gram = sum(_consumer_gram(graph.layers[layer], inputs, options.max_rows, rng)
                                for inputs in calls[layer])
            gram = group_gram(position_gram, analysis.input_channels(group, layer), group.size)
            total += gram / max(float(position_gram.sum()), 1e-12)
        picked = greedy_removal(total, order.chosen, np.array(group.prunable(), dtype=np.int64))
        gone, by_channel = set(picked), {step.channel: step for step in order.steps}
        order.steps = ([Step(c, by_channel[c].score, None if by_channel[c].partner in gone else by_channel[c].partner)
                        for c in picked] + [step for step in order.steps if step.channel not in gone])
    return left


def _budget_error(analysis: ChannelAnalysis, orders: list[GroupOrder], tables, budget: Budget,
                  total: float, options: PruneOptions, method: str) -> BudgetError:
    metric = 0 if budget.metric == "flops" else 1
    best = pruned_cost(tables, _removed(orders, [order.limit for order in orders]))[metric] / total
    limits = []
    for group in analysis.groups:
        reasons = [r for r in dict.fromkeys(group.blocked.values()) if not r.startswith(IO_REASONS)]
        if reasons and len(group.prunable()) < group.size:
            limits.append(f"group {group.index} ({', '.join(group.producers[:3])}): {reasons[0]}")
    what = "MACs" if budget.metric == "flops" else "params"
    listed = "; ".join(limits[:5]) or "only the model's input and output channels are fixed"
    return BudgetError(
        f"method={method!r} cannot reach target_{budget.metric}={budget.fraction}: removing the most it may "
        f"(max_fraction={options.max_fraction} of each group's channels) leaves {best:.3f} of the {what}. "
        f"Blocked channel groups: {listed}. Raise the target, raise max_fraction, or remove what blocks pruning.")


def plan_pruning(graph: Graph, shapes: dict, analysis: ChannelAnalysis, budget: Budget, scorer: Scorer,
                 method: str, options: PruneOptions, verbose: int = 1, latency=None,
                 notes: dict | None = None) -> list[GroupOrder]:
    """Score every prunable group and decide how many channels each loses (``GroupOrder.chosen``); a
    ``channel_multiple`` of ``None`` takes the first of 8, 4, 1 that meets the budget. With ``stream="auto"``
    and a ``latency`` table, the stream rule the table estimates faster (said in ``notes["stream"]``)."""
    options.validate()
    if options.channel_multiple is None:
        return first_step(partial(plan_pruning, graph, shapes, analysis, budget, scorer, method, verbose=verbose,
                                  latency=latency, notes=notes), options, ("channel_multiple",))[0]
    before = graph_cost(graph, shapes)
    total = before.macs if budget.metric == "flops" else before.params
    orders = []
    for group in tqdm(analysis.groups, desc=f"{method} scores", disable=not verbose):
        prunable = group.prunable()
        limit = min(int(np.floor(options.max_fraction * len(prunable))), group.size - 1)
        steps, ends = balanced_steps(group, scorer(graph, analysis, group))
        allowed = [c for c in range(limit + 1) if c == 0 or ((group.size - c) % options.channel_multiple == 0
                                                             and (ends is None or c in ends))]
        if len(allowed) > 1:
            orders.append(GroupOrder(group, steps, allowed[-1], allowed=allowed))
    tables = cost_tables(graph, shapes, analysis)
    counts = allocate_counts(orders, tables, budget, total, options.allocation, options.stream) if orders else []
    if budget.fraction < 1.0 and not counts:
        raise _budget_error(analysis, orders, tables, budget, total, options, method)
    if counts and options.stream == "auto" and latency is not None and options.allocation == "uniform" \
            and any(is_stream(o.group) for o in orders):
        counts = _faster_stream_rule(graph, analysis, orders, counts, tables, budget, total, latency, notes)
    for order, count in zip(orders, counts):
        order.chosen = count
    return orders


def _faster_stream_rule(graph: Graph, analysis: ChannelAnalysis, orders: list[GroupOrder], last: list[int],
                        tables: list[tuple], budget: Budget, total: float, latency, notes: dict | None) -> list[int]:
    """``last`` (the counts of ``stream="last"``) or those of ``stream="uniform"``, whichever the table
    estimates faster; both meet the budget."""
    uniform = allocate_counts(orders, tables, budget, total, "uniform", "uniform")
    estimates = {rule: estimated_pruned_ms(graph, analysis, orders, counts, latency)
                 for rule, counts in (("last", last), ("uniform", uniform)) if counts}
    chosen = min(estimates, key=lambda rule: (estimates[rule], rule != "last"))  # a tie keeps "last"
    if notes is not None:
        notes["stream"] = (f"{chosen} (estimated by the latency table {latency.source}: "
                           + ", ".join(f"{rule} {ms:.3f} ms" for rule, ms in estimates.items()) + ")")
    return last if chosen == "last" else uniform


def estimated_pruned_ms(graph: Graph, analysis: ChannelAnalysis, orders: list[GroupOrder], counts: list[int],
                  latency) -> float:
    """The table's estimate of the model with ``counts`` channels removed from the groups of ``orders``."""
    removal = {order.group.index: [s.channel for s in order.steps[:count]] for order, count in zip(orders, counts)
               if count}
    result = prune_channels(graph, analysis, removal)  # a pruned copy; graph stays as it is
    total = latency.fixed_ms
    for name in latency.layers:
        if name not in graph.layers or name not in result.layers:
            continue
        before, after = graph.layers[name], result.layers[name]
        shares = [(_channel_count(after, role) or 1) / (_channel_count(before, role) or 1) for role in ("in", "out")]
        total += latency.pruned_ms(name, *shares)
    return total


def apply_pruning(graph: Graph, shapes: dict, analysis: ChannelAnalysis, orders: list[GroupOrder], budget: Budget,
                  method: str, options: PruneOptions, data=None, pairs: bool = False,
                  verbose: int = 1) -> tuple[Graph, CompressionReport]:
    """Remove the chosen channels of ``orders`` (compensating if asked); returns the new graph and report."""
    if options.compensate is True and (data is None or not pairs):
        raise InvalidArgumentError("compensate=True needs data= (inputs to fit the compensation on) and a method "
                                   "that pairs channels (method='correlation').")
    working = graph.copy()
    use_compensation = options.compensate is True or (options.compensate == "auto" and data is not None and pairs)
    folds = compensate(working, analysis, orders, data, options, verbose) if use_compensation else {}
    removal = {order.group.index: [s.channel for s in order.steps[:order.chosen]] for order in orders if order.chosen}
    result = prune_channels(working, analysis, removal)
    report = _report(graph, shapes, result, analysis, budget, method, folds)
    report.notes = {"compensated_consumers": len(folds)}
    report.kept_outputs = kept_outputs(analysis, removal)
    return result, report


def pruning_choices(orders: list[GroupOrder]) -> dict:
    """The plan form of ``orders``: per pruned group, its producers and the ``[channel, partner]`` removed."""
    return {"groups": {str(order.group.index): {"producers": list(order.group.producers),
                                                "removed": [[step.channel, step.partner]
                                                            for step in order.steps[:order.chosen]]}
                       for order in orders if order.chosen}}


def orders_from_choices(analysis: ChannelAnalysis, choices: dict) -> list[GroupOrder]:
    """The :class:`GroupOrder` list a plan's :func:`pruning_choices` describe, checked against ``analysis``."""
    orders = []
    for key, entry in dict(choices.get("groups", {})).items():
        index = int(key)
        if not 0 <= index < len(analysis.groups):
            raise InvalidArgumentError(f"the plan prunes channel group {key}, but this model has "
                                       f"{len(analysis.groups)} groups; re-plan for this model.")
        group = analysis.groups[index]
        if list(entry.get("producers", [])) != list(group.producers):
            raise InvalidArgumentError(f"the plan's channel group {key} is produced by {entry.get('producers')}, "
                                       f"but in this model by {group.producers}; re-plan for this model.")
        prunable = set(group.prunable())
        steps = []
        for channel, partner in entry.get("removed", []):
            if channel not in prunable or (partner is not None and not 0 <= partner < group.size):
                raise InvalidArgumentError(f"the plan removes channel {channel} (partner {partner}) of group {key} "
                                           f"({', '.join(group.producers[:3])}), which may not be removed there.")
            steps.append(Step(int(channel), 0.0, None if partner is None else int(partner)))
        if len(steps) >= group.size:
            raise InvalidArgumentError(f"the plan removes every channel of group {key}; keep at least one.")
        orders.append(GroupOrder(group, steps, len(steps), len(steps)))
    return orders


def prune_pass(graph: Graph, shapes: dict, analysis: ChannelAnalysis, budget: Budget, scorer: Scorer, method: str,
               options: PruneOptions, data=None, pairs: bool = False,
               verbose: int = 1, fixed: dict | None = None, latency=None) -> tuple[Graph, CompressionReport]:
    """Plan and apply pruning to ``budget`` in one go (or realise the ``fixed`` choices of a plan); ``latency``:
    a table for ``stream="auto"``."""
    options.validate()
    left = None  # per group left in score order, why (only with selection="reconstruction")
    notes = {}
    if fixed is not None:
        orders = orders_from_choices(analysis, fixed)
    else:
        if options.selection == "reconstruction" and data is None:
            raise InvalidArgumentError(f"method={method!r} with selection='reconstruction' chooses the channels "
                                       "on data: pass data= (a few hundred training inputs), or use "
                                       "selection='score'.")
        orders = plan_pruning(graph, shapes, analysis, budget, scorer, method, options, verbose, latency, notes)
        if options.selection == "reconstruction":
            left = select_by_reconstruction(graph, analysis, orders, data, options, verbose)
    result, report = apply_pruning(graph, shapes, analysis, orders, budget, method, options, data, pairs, verbose)
    report.choices = pruning_choices(orders)
    report.notes.update(notes)
    if left is not None:
        report.notes["selection"] = "reconstruction"
        if left:
            report.notes["selection_left_to_score"] = {str(k): v for k, v in left.items()}
    return result, report


def _report(graph: Graph, shapes: dict, result: Graph, analysis: ChannelAnalysis, budget: Budget, method: str,
            folds: dict[str, int]) -> CompressionReport:
    blocked_out = {}
    for group in analysis.groups:
        for reason in group.blocked.values():
            if not reason.startswith(IO_REASONS):
                for producer in group.producers:
                    blocked_out.setdefault(producer, reason)
    costs = graph_cost(graph, shapes).by_name()
    rewritten = {}
    for name, spec in graph.layers.items():
        if costs[name].macs == 0 and name not in blocked_out:
            continue  # BN, activations and pooling follow their producer's channels: no row of their own
        changes = []
        for role, atoms in (("in", analysis.in_atoms.get(name)), ("out", analysis.out_atoms.get(name))):
            if atoms is None or (role == "out" and spec.class_name in PER_CHANNEL | DEPTHWISE):
                continue
            kept = _channel_count(result.layers[name], role)
            if kept is not None and kept != len(atoms):
                changes.append(f"{role} {len(atoms)}->{kept}")
        if changes:
            rewritten[name] = ("pruned " + ", ".join(changes), None,
                               {"compensated": folds[name]} if name in folds else {})
    return build_report(method, budget, graph, result, shapes, rewritten, blocked_out)


def _channel_count(spec: LayerSpec, role: str) -> int | None:
    for weight, roles in zip(spec.weights, PRUNE_RULES[spec.class_name](spec)):
        for axis, weight_role in roles.items():
            if weight_role == role:
                return int(weight.shape[axis]) * (conv_groups(spec) if role == "in" else 1)
    return None


class PruningMethod(Method):
    """The shared shape of the channel-pruning methods: a subclass only scores a group's channels
    (``steps``: the order in which they go); coupling, allocation and removal are common."""

    options_class = PruneOptions
    cli_options = ("allocation", "max_fraction", "channel_multiple", "stream")
    tile_options = ("channel_multiple",)
    latency_front = True  # a table (latency=) picks the faster stream rule (PruneOptions.stream="auto")
    pairs = False  # whether steps pair each dropped channel with a kept partner (compensation)

    def steps(self, graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup) -> list[Step]:
        raise NotImplementedError

    def run(self, graph: Graph, budget: Budget, data, options: PruneOptions, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        shapes = infer_shapes(graph)
        return prune_pass(graph, shapes, analyse_channels(graph, shapes), budget, self.steps, self.name, options,
                          data, self.pairs, context.verbose, fixed, context.latency)

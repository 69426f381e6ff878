"""``method="auto"``: per layer, the best form under one global budget.

Every dense Conv2D may keep its dense form or take one of these, and one Lagrange multiplier
(:func:`kerascomp.allocation.allocate`) picks, across the whole model, the forms with the least
estimated error per unit of budget saved:

* **prune channels**: a channel group whose only channel-mixing consumer is one conv (inside a
  residual block, between a MobileNet's expansion and projection), or whose other readers and
  writers are a squeeze-and-excite block's one-pixel convs (EfficientNet, MobileNetV3), is cut to a
  multiple of ``channel_multiple`` channels; its producer convs lose those filters and its consumers
  those input slices (per-channel layers between them, BatchNormalization or a depthwise conv, follow);
* **kxk(r) + 1x1** and **FGA groups**: FGA's grouped kxk conv to a low rank plus a 1x1 conv (one
  group: the plain low-rank pair), ranks in multiples of ``rank_multiple``;
* **spatial SVD**: a kx1 conv to rank r, then a 1xk conv (the ``svd`` method's form);
* **Tucker-2**: 1x1(r_in) -> kxk(r_in, r_out) -> 1x1, ranks in multiples of ``rank_multiple``.

A group's producers and consumers form one *unit* of the allocation (:func:`_group_unit`): either
the group is pruned (the convs stay dense, thinner), or each conv takes a dense or factored form of
its own; so pruning and factoring never meet in one conv and every combination is costed exactly.

**The error** of every option is on one scale: the conv's estimated relative squared output error on
``data``. With data (``whiten``, on by default), each conv's input-channel covariance is measured
(:mod:`kerascomp.methods.whitening`): a factored form factors the whitened kernel (FGA's group-wise
SVD, spatial SVD, Tucker-2) and gets its input factor unwhitened, so its truncation error is the
output error; a pruned group is cut by Optimal-Brain-Surgeon steps on the consumer's input covariance
(:func:`removal_order`), which count the error left after the consumer's refit. Without data, or with
``whiten=False``, input channels are weighted by their energies only (1 without data): the diagonal
approximation, with factors of the raw kernel. A unit's error is the sum over its convs.

**The cost** is the budgeted quantity: MACs, params, or, with a latency table (``latency=``: a
measured host table, ``"host"``, or a phone's), milliseconds. With a table, only the forms on each
layer's *latency front* are offered (none slower than the dense conv, none slower than a form at
least as accurate), whatever the target, so a form the table times slower than its MACs promise is
never picked. ``target_latency`` is met by measured checks (``latency_checks``), as FGA's.

After the rewrite the shared steps run: reconstruction (the consumer of a pruned group and the last
1x1 of every factored form are refit on ``data``), then BatchNormalization recalibration. The
report's ``why`` detail says, for each unit, the form chosen, its estimated error and cost, and the
best option of each other kind at no more cost.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from kerascomp.allocation import Candidates, allocate, latency_front
from kerascomp.cost import graph_cost
from kerascomp.decompose import fga as fga_math
from kerascomp.decompose import jsvd
from kerascomp.decompose.selection import joint_surgeon_order
from kerascomp.decompose.tucker import truncation_errors
from kerascomp.decompose.whitening import whiten_kernel, whitener
from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.channels import (
    ChannelAnalysis,
    ChannelGroup,
    analyse_channels,
    input_group,
    kept_outputs,
    mixing_consumers,
    prune_channels,
    removed_atoms,
    through_depthwise,
)
from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import infer_shapes, module_for
from kerascomp.methods.base import Budget, CompressionReport, build_report
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.fga import allowed_groups, fga_form, fga_spec
from kerascomp.methods.inputs import check_auto, check_bool, check_int
from kerascomp.methods.joint_svd import SVDOptions, factor_unit, svd_units
from kerascomp.methods.pointwise import ONE_BY_ONE
from kerascomp.methods.pruning import cost_tables, pruned_cost
from kerascomp.methods.reconstruct import RIDGE
from kerascomp.methods.registry import Context, Method
from kerascomp.methods.sensitivity import conv_layers
from kerascomp.methods.tiles import run_with_tile_steps
from kerascomp.methods.tucker import factor_layer, input_factor, tucker_cost
from kerascomp.methods.tucker import table_form as tucker_table_form
from kerascomp.methods.whitening import input_moments, unwhiten_layer, whitened_spec, whitening_on

FORMS = ("prune", "fga", "svd", "tucker")
KINDS = ("dense",) + FORMS


@dataclass(frozen=True)
class AutoOptions:
    """Options of ``method="auto"``.

    Attributes:
        forms: the kinds of form offered besides dense: any of ``"prune"``, ``"fga"`` (which
            includes the one-group kxk(r) + 1x1 pair), ``"svd"`` (spatial kx1 + 1xk) and ``"tucker"``.
        channel_multiple: a pruned group keeps a multiple of this many channels (8 is the tile
            XNNPACK computes channels in; 1: any count). ``None`` (default) tries 8, then 4, then 1,
            keeping the first that meets the budget (a small model's convs may have fewer than 16
            channels); the plan records the value taken.
        rank_multiple: ranks of factored forms are multiples of this (``None``: as above).
        min_channels_per_group: FGA groups thinner than this are not offered (as FGA's option).
        pointwise: also factor 1x1 convs (as a low-rank pair). Pruning takes 1x1 convs either way.
        max_samples: images of ``data`` the input-channel energies are measured on.
        iterations: HOOI iterations of a Tucker-2 form.
        latency_checks: with ``target_latency``, at most this many measured checks correct the target
            given to the latency table (``methods/latency_search.py``); 0: the table's estimate alone.
        whiten: with ``data``, measure each conv's input-channel covariance and use it twice: every
            factored form factors the kernel *whitened* by it (the factors that minimise the conv's
            output error on the data, not the kernel error), and a pruned group drops the channels its
            consumer's refit can best do without (Optimal-Brain-Surgeon steps on the covariance, the
            error counted after the refit). ``False``: per-channel energies only (the diagonal of the
            covariance: channels weighted, factors of the raw kernel). ``"auto"`` (default): on
            whenever ``data`` is given.
        recalibrate / reconstruct / reconstruct_samples: the shared steps after the rewrite.
    """

    forms: tuple = FORMS
    channel_multiple: int | None = None
    rank_multiple: int | None = None
    min_channels_per_group: int = 16
    pointwise: bool = True
    max_samples: int = 128
    iterations: int = 30
    latency_checks: int = 8
    whiten: bool | str = "auto"
    recalibrate: bool | str = "auto"
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512

    def validate(self) -> None:
        if isinstance(self.forms, str) or not isinstance(self.forms, (tuple, list)) or not self.forms:
            raise InvalidArgumentError(f"forms must be a non-empty list drawn from {FORMS}, got {self.forms!r}.")
        unknown = [form for form in self.forms if form not in FORMS]
        if unknown:
            raise InvalidArgumentError(f"forms {unknown} are not offered by method='auto'; choose from {FORMS}.")
        for name in ("channel_multiple", "rank_multiple"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        for name in ("min_channels_per_group", "max_samples", "iterations"):
            check_int(name, getattr(self, name))
        check_int("latency_checks", self.latency_checks, least=0)
        check_bool("pointwise", self.pointwise)
        check_auto("whiten", self.whiten)
        check_auto("recalibrate", self.recalibrate)


@dataclass
class _Conv:
    spec: LayerSpec
    in_pixels: int
    out_pixels: int
    vertical_pixels: int  # outputs of a spatial SVD's kx1 conv: output rows x input columns
    decomposable: bool
    energy: np.ndarray | None = None  # mean squared activation of each input channel (None: all 1)
    covariance: np.ndarray | None = None  # input-channel second moments, when whitening (None: diagonal only)
    whiteners: dict = field(default_factory=dict, repr=False)  # groups -> whitening blocks of ``covariance``

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.spec.weights[0].shape

    def whitener(self, groups: int = 1) -> list[np.ndarray] | None:
        """The whitening blocks of its input covariance (:mod:`kerascomp.decompose.whitening`), one per input
        group; ``None`` without a covariance."""
        if self.covariance is None:
            return None
        if groups not in self.whiteners:
            self.whiteners[groups] = whitener(self.covariance, groups)
        return self.whiteners[groups]

    def weighted(self, groups: int = 1) -> np.ndarray:
        """The kernel whose relative squared error is the option's estimated output error."""
        kernel = self.spec.weights[0].astype(np.float64)
        blocks = self.whitener(groups)
        if blocks is not None:
            return whiten_kernel(kernel, blocks)
        if self.energy is None:
            return kernel
        return kernel * np.sqrt(np.maximum(self.energy, 0.0))[None, None, :, None]

    def dense(self, metric: str, channels: float | None = None, filters: float | None = None) -> float:
        height, width, cin, cout = self.shape
        weights = height * width * (cin if channels is None else channels) * (cout if filters is None else filters)
        bias = (cout if filters is None else filters) if len(self.spec.weights) > 1 else 0
        return float(weights * self.out_pixels if metric == "flops" else weights + bias)


@dataclass
class _Option:
    """One way to realise a unit: ``forms[conv]`` is ``("fga", groups, rank)``, ``("tucker", r_in, r_out)``
    or absent (dense); ``kept``: the pruned group's kept channels (``None``: not pruned)."""

    kind: str
    cost: float
    error: float
    ms: float | None
    forms: dict = field(default_factory=dict)
    kept: np.ndarray | None = None


@dataclass
class _Unit:
    """One conv, or the convs around a prunable channel group: its ``producers`` first (the convs whose filters
    write the group), then its consumers (the convs that read it; the first is the one a plan keys the cut by)."""

    convs: list[_Conv]
    group: ChannelGroup | None = None
    producers: int = 0
    options: list[_Option] = field(default_factory=list)
    dense_cost: float = 0.0  # the budgeted cost of its convs as they are (the front may drop the dense option)

    @property
    def name(self) -> str:
        return " + ".join(conv.name for conv in self.convs)

    @property
    def consumers(self) -> list[_Conv]:
        return self.convs[self.producers:]


def _label(form: tuple) -> str:
    if form[0] == "fga":
        return f"fga g={form[1]} r={form[2]}" if form[1] > 1 else f"kxk(r={form[2]}) + 1x1"
    if form[0] == "svd":
        return f"spatial svd r={form[1]}"
    return f"tucker r_in={form[1]} r_out={form[2]}"


def _form_ms(latency, conv: _Conv, form: tuple | None, macs: float) -> float | None:
    if latency is None or conv.name not in latency.layers:
        return None
    if form is None:
        return latency.layer_ms(conv.name, "dense", macs)
    return latency.layer_ms(conv.name, _table_form(conv, form), macs)


def _conv_options(conv: _Conv, metric: str, options: AutoOptions, latency) -> list[_Option]:
    """The dense form and every factored form cheaper than it, on the layer's front."""
    original_macs = conv.dense("flops")
    dense = _Option("dense", _metric_cost(conv.dense(metric), original_macs, conv, None, metric, latency), 0.0,
                    _form_ms(latency, conv, None, original_macs))
    found = [dense]
    if not conv.decomposable:
        return found
    kernel, step = conv.weighted(), options.rank_multiple
    use_bias = len(conv.spec.weights) > 1
    if "fga" in options.forms:
        for groups in allowed_groups(conv.spec, options.min_channels_per_group):
            curve = fga_math.relative_error_curve(kernel if groups == 1 else conv.weighted(groups), groups)
            for rank in range(step, fga_math.max_rank(conv.shape, groups) + 1, step):
                macs = fga_math.fga_macs(conv.shape, groups, rank, conv.out_pixels)
                own = macs if metric == "flops" else fga_math.fga_params(conv.shape, groups, rank, use_bias)
                form = ("fga", groups, rank)
                found.append(_Option("fga", _metric_cost(own, macs, conv, form, metric, latency), float(curve[rank]),
                                     _form_ms(latency, conv, form, macs), {conv.name: form}))
    if "svd" in options.forms and conv.shape[:2] != (1, 1):
        curve = jsvd.error_curve([jsvd.spatial_matrix(kernel)], "svd")
        for rank in range(step, jsvd.full_rank(conv.shape) + 1, step):
            macs = jsvd.macs(conv.shape, rank, conv.vertical_pixels, conv.out_pixels)
            own = macs if metric == "flops" else jsvd.params(conv.shape, rank) + (conv.shape[-1] if use_bias else 0)
            form = ("svd", rank)
            found.append(_Option("svd", _metric_cost(own, macs, conv, form, metric, latency), float(curve[rank]),
                                 _form_ms(latency, conv, form, macs), {conv.name: form}))
    if "tucker" in options.forms and conv.shape[:2] != (1, 1):
        in_drop, out_drop = truncation_errors(kernel)
        _, _, channels, filters = conv.shape
        for r_in in range(step, channels + 1, step):
            for r_out in range(step, filters + 1, step):
                macs = tucker_cost(conv.shape, (r_in, r_out), conv.in_pixels, conv.out_pixels, "flops")
                own = macs if metric == "flops" else tucker_cost(conv.shape, (r_in, r_out), 0, 0, "params")
                form = ("tucker", r_in, r_out)
                found.append(_Option("tucker", _metric_cost(own, macs, conv, form, metric, latency),
                                     float(in_drop[r_in] + out_drop[r_out]), _form_ms(latency, conv, form, macs),
                                     {conv.name: form}))
    return [found[0]] + [o for o in found[1:] if o.cost < found[0].cost]


def _metric_cost(own: float, macs: float, conv: _Conv, form: tuple | None, metric: str, latency) -> float:
    if metric != "latency":
        return float(own)
    ms = _form_ms(latency, conv, form, macs)
    return float(ms) if ms is not None else 0.0


def _front(found: list[_Option]) -> list[_Option]:
    """The options no other option beats on cost, error and (when timed) milliseconds."""
    timed = all(o.ms is not None for o in found)
    candidates = Candidates("", np.array([o.cost for o in found]), np.array([o.error for o in found]),
                            np.array([o.ms for o in found]) if timed else None)
    if timed:
        return [found[i] for i in latency_front(candidates)]
    order = np.lexsort((candidates.error, candidates.cost))
    kept, best = [], np.inf
    for index in order:
        if found[index].error < best - 1e-15:
            kept.append(found[index])
            best = found[index].error
    return kept


def _pruning_options(unit: _Unit, analysis: ChannelAnalysis, positions: dict[str, np.ndarray], tables: list,
                     metric: str, options: AutoOptions, latency) -> list[_Option]:
    """Cuts of the unit's group to multiples of ``channel_multiple`` channels, in the order of
    :func:`removal_order`."""
    group = unit.group
    removed_first, errors = removal_order(unit.consumers, [positions[c.name] for c in unit.consumers])
    order = removed_first[::-1]  # the channel kept longest first
    atoms = {int(a) for channel in group.channels for a in channel}
    touching = [t for t in tables if any(x is not None and atoms.intersection(int(a) for a in x) for x in t[1:3])]
    base = pruned_cost(touching, np.zeros(0, int))
    timed = latency is not None and all(conv.name in latency.layers for conv in unit.convs)
    removed_atoms(analysis, {group.index: order.tolist()})  # checked once; each cut is a suffix of the order
    ordered = [np.asarray(group.channels[c], dtype=np.int64) for c in order]
    starts = np.concatenate([[0], np.cumsum([len(a) for a in ordered])]).astype(np.int64)
    flat = np.concatenate(ordered)  # the atoms in cut order, read as slices: a 3072-channel group took minutes
    found = []
    for count in range(options.channel_multiple, group.size, options.channel_multiple):
        kept = np.sort(order[:count])
        removed = np.sort(flat[starts[count]:])
        after = pruned_cost(touching, removed)
        share = count / group.size
        ms = None
        if timed:
            ms = sum(latency.layer_ms(conv.name, "pruned_out" if i < unit.producers else "dense",
                                      conv.dense("flops") * share) for i, conv in enumerate(unit.convs))
        dense = sum(conv.dense(metric) for conv in unit.convs)
        if metric == "latency":
            cost = ms if ms is not None else dense
        else:
            index = 0 if metric == "flops" else 1
            cost = dense - (base[index] - after[index])
        found.append(_Option("prune", float(cost), float(errors[group.size - count]), ms, {}, kept))
    return found


def removal_order(consumers: list[_Conv], positions: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """The group's channels in the order they are cut, and the consumers' estimated output error after each
    number of cuts (``errors[i]``: the first ``i`` cut; ``errors[0] = 0``): the sum over the consumers of
    each one's relative squared output error (``positions[k]``: consumer ``k``'s input position of each group
    channel).

    With a covariance, each step cuts the channel whose loss the refits of the consumers on the kept channels
    (the shared reconstruction step) make good best, and counts the error left after those refits: the
    Optimal-Brain-Surgeon greedy (:func:`kerascomp.decompose.selection.joint_surgeon_order`) on each
    consumer's covariance with the refit's ridge. Taps are taken as uncorrelated (one ``S`` for all). Without
    one, channels go by the energy of their weighted input slices (each consumer's share of its own total,
    summed), least first, with no credit for the refit."""
    size = len(positions[0])
    problems, scores = [], np.zeros(size)
    for consumer, places in zip(consumers, positions):
        kernel = consumer.spec.weights[0].astype(np.float64)
        rows = np.stack([kernel[:, :, place, :].ravel() for place in places])  # (group channels, taps x filters)
        if consumer.covariance is None:
            energy = np.ones(size) if consumer.energy is None else np.maximum(consumer.energy[places], 0.0)
            own = (rows ** 2).sum(axis=1) * energy
            scores += own / max(float(own.sum()), 1e-30)
            continue
        moments = consumer.covariance[np.ix_(places, places)]
        moments = moments + RIDGE * max(float(np.trace(moments)) / size, 1e-30) * np.eye(size)  # the refit's ridge
        problems.append((moments, rows, 1.0 / max(float(np.sum((moments @ rows) * rows)), 1e-30)))
    if len(problems) < len(consumers):  # without data: the diagonal estimate for every consumer
        order = np.argsort(scores, kind="stable")
        return order, np.minimum(np.concatenate([[0.0], np.cumsum(scores[order])]), float(len(consumers)))
    order, costs = joint_surgeon_order(problems)
    errors = np.concatenate([[0.0], np.cumsum(costs[:-1]), [len(consumers)]])  # all cut: every output lost
    return order, np.minimum(errors, float(len(consumers)))


def _combined_options(own: list[list[_Option]]) -> list[_Option]:
    """Each conv of a unit in a form of its own (all dense included): the front of the combinations, built one
    conv at a time (a combination off the front stays off it when another conv's options are added)."""
    found = own[0]
    for others in own[1:]:
        combined = []
        for first in found:
            for second in others:
                kinds = sorted((set(first.kind.split("+")) | set(second.kind.split("+"))) - {"dense"})
                ms = None if first.ms is None or second.ms is None else first.ms + second.ms
                combined.append(_Option("+".join(kinds) or "dense", first.cost + second.cost,
                                        first.error + second.error, ms, {**first.forms, **second.forms}))
        found = _front(combined)
    return found


def _energies(graph: Graph, shapes: dict, convs: list[_Conv], data, max_samples: int, whiten: bool,
              verbose: int) -> None:
    """Each conv's input-channel energies and, with ``whiten``, covariance (the shared sampler)."""
    found = input_moments(graph, shapes, [conv.name for conv in convs], data, max_samples, whiten, verbose)
    shared: dict[int, dict] = {}  # convs that read one tensor share its covariance, and so its whitening blocks
    for conv in convs:
        conv.energy, conv.covariance = found[conv.name]
        if conv.covariance is not None:
            conv.whiteners = shared.setdefault(id(conv.covariance), {})


def _units(graph: Graph, shapes: dict, analysis: ChannelAnalysis, options: AutoOptions, only=None
           ) -> tuple[list[_Unit], dict[str, np.ndarray], dict[str, str]]:
    """The allocation's units: producer/consumer pairs of a prunable group, then single convs; the
    consumer's input position of each group channel; why other layers with MACs stay dense. ``only(graph,
    group)``: prune only the groups it accepts, and offer no single conv (the expansion pass)."""
    decomposable, reasons = eligible_convs(graph, shapes, None if options.pointwise else ONE_BY_ONE)
    candidates = [name for name in conv_layers(graph) if len(graph.nodes_of(name)) == 1]
    convs = {}
    for name in dict.fromkeys(candidates + decomposable):
        node = graph.nodes_of(name)[0]
        source = node.input_refs()[0]
        in_shape, out_shape = shapes[source.node][source.index], shapes[node.name][0]
        convs[name] = _Conv(graph.layers[name], int(np.prod(in_shape[1:-1])), int(np.prod(out_shape[1:-1])),
                            int(out_shape[1] * in_shape[2]), name in decomposable)
    units, used, positions = [], set(), {}
    if "prune" in options.forms:
        # a conv takes part in one unit only: the groups that pass through a depthwise conv (a mobile net's
        # expansions, where the MACs are) are taken before the narrow groups between blocks, then graph order
        readers = [(name, input_group(analysis, name)[0]) for name in candidates]
        readers.sort(key=lambda found: found[1] is None or not through_depthwise(graph, found[1]))
        for consumer, group in readers:
            if consumer in used or group is None or group.size <= options.channel_multiple \
                    or (only is not None and not only(graph, group)):
                continue
            found = _group_unit(graph, analysis, group, convs, used)
            if found is None:
                continue
            unit, places = found
            used.update(conv.name for conv in unit.convs)
            units.append(unit)
            positions.update(places)
    for name in decomposable if only is None else ():
        if name not in used:
            units.append(_Unit([convs[name]]))
    reasons = {name: reason for name, reason in reasons.items() if name not in used}
    return units, positions, reasons


def _group_unit(graph: Graph, analysis: ChannelAnalysis, group: ChannelGroup, convs: dict[str, _Conv], used: set
                ) -> tuple[_Unit, dict[str, np.ndarray]] | None:
    """The unit that prunes ``group``, with each consumer's input position of each group channel, or ``None``.

    Its producers are the convs that write the group (each all of it) and its consumers the convs that read it
    (each all of it, once), none already in a unit, none both. Besides one producer and one consumer at full
    resolution, only convs on one pixel may take part: a squeeze-and-excite block's convs, whose reduce conv
    reads the pooled group and whose expand conv writes the gate the group is multiplied by (EfficientNet,
    MobileNetV3). A group that several full-resolution convs read or write (a residual stream) is left to the
    pairs inside its blocks."""
    readers = mixing_consumers(graph, group)
    kernels = [p for p in group.producers if p in graph.layers and graph.layers[p].class_name not in
               ("BatchNormalization", "LayerNormalization", "PReLU", "DepthwiseConv2D")]
    if not readers or not kernels or any(name not in convs or name in used for name in readers + kernels) \
            or set(readers) & set(kernels):
        return None
    if sum(convs[name].in_pixels > 1 for name in readers) > 1 or sum(convs[name].out_pixels > 1 for name in kernels) > 1:
        return None
    if any(sorted(analysis.producer_channels(group, p).tolist()) != list(range(group.size)) for p in kernels):
        return None
    places = {}
    for reader in readers:
        found, positions, _ = input_group(analysis, reader)
        if found is not group:
            return None
        places[reader] = np.empty(group.size, int)
        places[reader][positions] = np.arange(len(positions))
    kernels.sort(key=lambda name: -convs[name].out_pixels)  # the full-resolution ones first (stable)
    readers.sort(key=lambda name: -convs[name].in_pixels)
    return _Unit([convs[name] for name in kernels + readers], group, len(kernels)), places


def pruned_layers(graph: Graph, only) -> list[str]:
    """The layers whose cost scales with the channels of the groups :func:`_units` would prune under ``only``
    (each group's writers and readers: convs, depthwise convs, normalisations)."""
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)
    units = _units(graph, shapes, analysis, AutoOptions(forms=("prune",), channel_multiple=1), only)[0]
    return list(dict.fromkeys(name for unit in units for name in unit.group.producers + unit.group.consumers
                              if name in graph.layers))


def _why(unit: _Unit, chosen: _Option, what: str) -> str:
    text = f"{_option_label(chosen)}: estimated error {chosen.error:.3g} at {chosen.cost:.4g} {what}"
    others = []
    for kind in FORMS:
        if kind == "dense" or kind in chosen.kind.split("+"):
            continue
        rivals = [o for o in unit.options if kind in o.kind.split("+") and o.cost <= chosen.cost * (1 + 1e-9)]
        if not rivals:
            continue
        best = min(rivals, key=lambda o: o.error)
        others.append(f"best {kind} at no more cost: {_option_label(best)}, error {best.error:.3g}")
    if not others:
        others.append(f"no other kind of form of {unit.name} is as cheap")
    return text + "; " + "; ".join(others)


def _option_label(option: _Option) -> str:
    if option.kept is not None:
        return f"prune to {len(option.kept)} channels"
    if not option.forms:
        return "dense"
    return ", ".join(f"{name} {_label(form)}" for name, form in option.forms.items())


def _fixed_option(unit: _Unit, fixed: dict) -> _Option:
    """A plan's decision for ``unit`` as an option (checked)."""
    layers, pruned = fixed.get("layers", {}), fixed.get("pruned", {})
    consumer = unit.consumers[0].name if unit.group is not None else None
    if unit.group is not None and consumer in pruned:
        kept = np.array(sorted(int(c) for c in pruned[consumer]), int)
        if not len(kept) or kept[0] < 0 or kept[-1] >= unit.group.size or len(set(kept.tolist())) != len(kept):
            raise InvalidArgumentError(f"the plan keeps channels {pruned[consumer]!r} of {consumer!r}'s input group "
                                       f"({unit.group.size} channels); re-plan.")
        return _Option("prune", 0.0, 0.0, None, {}, kept)
    forms = {}
    for conv in unit.convs:
        form = layers.get(conv.name)
        if form is None:
            continue
        if not conv.decomposable:
            raise InvalidArgumentError(f"the plan factors {conv.name!r}, which method='auto' cannot factor here.")
        forms[conv.name] = _checked_form(conv, form)
    return _Option("fixed", 0.0, 0.0, None, forms)


def _checked_form(conv: _Conv, form) -> tuple:
    if isinstance(form, (list, tuple)) and len(form) == 2 and form[0] == "svd":
        rank = form[1]
        if isinstance(rank, int) and conv.shape[:2] != (1, 1) and 1 <= rank <= jsvd.full_rank(conv.shape):
            return ("svd", rank)
        raise InvalidArgumentError(f"the plan's form {form!r} for {conv.name!r} does not fit its kernel {conv.shape}.")
    try:
        kind, first, second = form[0], int(form[1]), int(form[2])
    except (TypeError, ValueError, IndexError):
        raise InvalidArgumentError(f"the plan's form for {conv.name!r} must be ['fga', groups, rank], ['svd', rank] "
                                   f"or ['tucker', r_in, r_out], got {form!r}.") from None
    _, _, channels, filters = conv.shape
    if kind == "fga" and first in allowed_groups(conv.spec, 1) and 1 <= second <= fga_math.max_rank(conv.shape, first):
        return ("fga", first, second)
    if kind == "tucker" and 1 <= first <= channels and 1 <= second <= filters:
        return ("tucker", first, second)
    raise InvalidArgumentError(f"the plan's form {form!r} for {conv.name!r} does not fit its kernel {conv.shape}.")


def auto_pass(graph: Graph, budget: Budget, data, options: AutoOptions, context: Context,
              fixed: dict | None = None, only=None, moments: dict | None = None) -> tuple[Graph, CompressionReport]:
    """Choose every conv's form under ``budget`` (or realise a plan's ``fixed`` choices) and rewrite. A
    ``channel_multiple`` or ``rank_multiple`` of ``None`` takes the first of 8, 4, 1 that meets the budget.
    ``only``: see :func:`_units`; ``moments``: the input moments measured so far (conv name -> (energy,
    covariance)), kept between calls on the same graph and data."""
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)
    whiten = whitening_on(options.whiten, data, "auto")
    moments = {} if moments is None else moments  # conv name -> (energy, covariance), measured once per step tried
    return run_with_tile_steps(lambda stepped: _auto_pass(graph, shapes, analysis, budget, data, stepped, context,
                                                          fixed, moments, whiten, only),
                               options, ("channel_multiple", "rank_multiple"), fixed)


def _auto_pass(graph: Graph, shapes: dict, analysis: ChannelAnalysis, budget: Budget, data, options: AutoOptions,
               context: Context, fixed: dict | None, moments: dict, whiten: bool, only=None
               ) -> tuple[Graph, CompressionReport]:
    verbose, latency = context.verbose, context.latency
    units, positions, reasons = _units(graph, shapes, analysis, options, only)
    if not units:
        raise UnsupportedModelError(f"method='auto' found no conv to prune or factor in {graph.name!r} ("
                                    + ("; ".join(f"{n}: {r}" for n, r in reasons.items()) or "no conv layers") + ").")
    metric = budget.metric
    what = {"flops": "MACs", "params": "params", "latency": "estimated ms"}[metric]
    if metric == "latency" and latency is None:
        raise InvalidArgumentError("target_latency needs latency=kerascomp.latency_table(model), 'host' or a phone "
                                   "table (LatencyTable.from_bench_json).")
    chosen: list[_Option]
    if fixed is not None:
        known = {conv.name for unit in units for conv in unit.convs}
        unknown = sorted((set(fixed.get("layers", {})) | set(fixed.get("pruned", {}))) - known)
        if unknown:
            raise InvalidArgumentError(f"the plan names {', '.join(unknown[:5])}, which method='auto' cannot compress "
                                       "in this model; re-plan for it.")
        chosen = [_fixed_option(unit, fixed) for unit in units]
        if whiten:  # the plan's factored forms are realised from the same whitened kernels
            factored = [conv for unit, option in zip(units, chosen) for conv in unit.convs if conv.name in option.forms]
            _energies(graph, shapes, factored, data, options.max_samples, True, verbose)
    else:
        if data is not None:
            convs = [conv for unit in units for conv in unit.convs]
            _energies(graph, shapes, [conv for conv in convs if conv.name not in moments], data, options.max_samples,
                      whiten, verbose)
            for conv in convs:
                conv.energy, conv.covariance = moments.setdefault(conv.name, (conv.energy, conv.covariance))
        tables = cost_tables(graph, shapes, analysis)
        generated = 0
        for unit in tqdm(units, desc="auto options", disable=not verbose):
            own = [_conv_options(conv, metric, options, latency) for conv in unit.convs]
            unit.dense_cost = sum(o[0].cost for o in own)
            if unit.group is None:
                generated += len(own[0])
                unit.options = _front(own[0])
            else:
                cuts = _pruning_options(unit, analysis, positions, tables, metric, options, latency)
                generated += len(cuts) + int(np.prod([len(o) for o in own]))
                unit.options = _front(_combined_options([_front(o) for o in own]) + cuts)
        total = graph_cost(graph, shapes)
        metric_total = {"flops": total.macs, "params": total.params}.get(metric) or latency.estimate({})
        dense_costs = [unit.dense_cost for unit in units]
        offered = [Candidates(unit.name, np.array([o.cost for o in unit.options]),
                              np.array([o.error for o in unit.options]),
                              np.array([o.ms for o in unit.options]) if all(o.ms is not None for o in unit.options)
                              else None) for unit in units]
        listed = ", ".join(f"{name} ({reason})" for name, reason in list(reasons.items())[:6])
        picks = allocate(offered, metric_total - sum(dense_costs), budget.fraction * metric_total, what=what,
                         hint=(f"Left alone: {listed}." if listed else "") + " forms=, channel_multiple= and "
                         "rank_multiple= widen the choice.", total=metric_total)
        chosen = [unit.options[index] for unit, index in zip(units, picks)]
    result, report = _realise(graph, shapes, analysis, units, chosen, budget, reasons, options, context, what,
                              fixed is not None)
    if fixed is None:
        kept = sum(len(unit.options) for unit in units)
        report.notes["options"] = (f"{kept} of {generated} options of {len(units)} units offered: the others cost "
                                   "more than an option with no more error" +
                                   (" or run slower by the table than one at least as accurate" if latency is not None
                                    else ""))
    return result, report


def _realise(graph: Graph, shapes: dict, analysis: ChannelAnalysis, units: list[_Unit], chosen: list[_Option],
             budget: Budget, reasons: dict, options: AutoOptions, context: Context, what: str,
             from_plan: bool) -> tuple[Graph, CompressionReport]:
    removal = {}
    for unit, option in zip(units, chosen):
        if option.kept is not None:
            keep = set(option.kept.tolist())
            removal[unit.group.index] = [c for c in range(unit.group.size) if c not in keep]
    result = prune_channels(graph, analysis, removal)  # decomposed convs are never in a pruned unit
    keras = module_for(graph)
    rewritten, parts, choices = {}, {}, {"layers": {}, "pruned": {}}
    svd_found = None
    kinds = dict.fromkeys(KINDS, 0)
    for unit, option in tqdm(list(zip(units, chosen)), desc="auto", disable=not context.verbose):
        why = {} if from_plan else {"why": _why(unit, option, what)}
        if option.kept is not None:
            size, count = unit.group.size, len(option.kept)
            choices["pruned"][unit.consumers[0].name] = option.kept.tolist()
            for index, conv in enumerate(unit.convs):
                if index < unit.producers:
                    rewritten[conv.name] = (f"pruned out {size}->{count}", None, dict(why))
                else:  # the unit's estimated error (summed over its consumers) is shown once, on the first
                    error = float(np.sqrt(option.error)) if not from_plan and index == unit.producers else None
                    rewritten[conv.name] = (f"pruned in {size}->{count}", error, dict(why))
            kinds["prune"] += 1
            continue
        for conv in unit.convs:
            form = option.forms.get(conv.name)
            if form is None:
                if why:
                    rewritten[conv.name] = ("dense", 0.0, dict(why))
                kinds["dense"] += 1
                continue
            spec = result.layers[conv.name]
            choices["layers"][conv.name] = list(form)
            kinds[form[0]] += 1
            # with a covariance the whitened kernel is factored and its input factor unwhitened (the error is
            # then the estimated output error; without one, the kernel's own)
            blocks = conv.whitener(form[1] if form[0] == "fga" else 1)
            source = whitened_spec(spec, blocks)
            before = set(result.layers)
            if form[0] == "fga":
                error = float(np.sqrt(fga_math.relative_error_curve(source.weights[0], form[1])[form[2]]))
                result.layers[conv.name] = fga_spec(source, form[1], form[2], keras)
                first = conv.name  # the grouped conv reads the input (its 1x1 is the same layer's second kernel)
            elif form[0] == "svd":
                error = float(np.sqrt(jsvd.error_curve([jsvd.spatial_matrix(source.weights[0])], "svd")[form[1]]))
                if svd_found is None:  # built once, on the pruned graph: factored convs keep their shapes
                    svd_found = {u.name: u for u in svd_units(result, infer_shapes(result), "svd", SVDOptions())[0]}
                unit = svd_found[conv.name]
                unit.members[0] = replace(unit.members[0], spec=source)
                factor_unit(result, unit, form[1], SVDOptions(), keras)
                first = next(iter(sorted(set(result.layers) - before)))  # the kx1 conv, which reads the input
            else:
                error = factor_layer(result, source, (form[1], form[2]), options.iterations, keras)
                first = input_factor(set(result.layers) - before, conv.name)
            unwhiten_layer(result, first, blocks)
            if form[0] != "fga":
                parts[conv.name] = [conv.name] + sorted(set(result.layers) - before)
            rewritten[conv.name] = (_label(form), error, {"form": list(form), **why})
    for name in list(reasons):  # a depthwise conv between a pruned producer and its consumer loses channels too
        if name in result.layers and [w.shape for w in result.layers[name].weights] != \
                [w.shape for w in graph.layers[name].weights]:
            del reasons[name]
            rewritten[name] = ("pruned with its channel group", None, {})
    notes = {"forms": ", ".join(f"{kind} {count}" for kind, count in kinds.items() if count), "cost": what}
    if context.latency is not None:
        notes["cost"] += f" (forms on the latency front of the table {context.latency.source})"
    elif not from_plan:
        notes["cost"] += " (no latency table: pass latency='host' or a phone table for latency-true forms)"
    if context.latency is not None and not from_plan:
        planned = {}
        for unit, option in zip(units, chosen):
            for conv in unit.convs:
                form = option.forms.get(conv.name)
                share = 1.0 if option.kept is None else len(option.kept) / unit.group.size
                if conv.name in context.latency.layers and (form is not None or share < 1.0):
                    macs = _form_macs(conv, form) * (share if form is None else 1.0)
                    pruned = "pruned_out" if unit.convs.index(conv) < unit.producers else "dense"
                    planned[conv.name] = (pruned if form is None else _table_form(conv, form), macs)
        notes["estimated_latency_ratio"] = round(context.latency.estimate(planned) / context.latency.estimate({}), 4)
    report = build_report("auto", budget, graph, result, shapes, rewritten, reasons, parts, notes=notes,
                          choices=choices)
    report.kept_outputs = kept_outputs(analysis, removal)
    return result, report


def _form_macs(conv: _Conv, form: tuple | None) -> float:
    if form is None:
        return conv.dense("flops")
    if form[0] == "fga":
        return float(fga_math.fga_macs(conv.shape, form[1], form[2], conv.out_pixels))
    if form[0] == "svd":
        return float(jsvd.macs(conv.shape, form[1], conv.vertical_pixels, conv.out_pixels))
    return float(tucker_cost(conv.shape, (form[1], form[2]), conv.in_pixels, conv.out_pixels, "flops"))


def _table_form(conv: _Conv, form: tuple) -> str:
    if form[0] == "fga":
        return fga_form(form[1])
    if form[0] == "svd":
        return "spatial"
    return tucker_table_form(conv.shape, (form[1], form[2]))


class AutoMethod(Method):
    """``method="auto"``: per layer, dense, channel pruning, kxk(r) + 1x1, FGA groups, spatial SVD or Tucker-2, chosen
    under one global budget by estimated error per MACs, params or measured milliseconds saved."""

    name = "auto"
    options_class = AutoOptions
    uses_latency = True
    latency_front = True
    cli_options = ("min_channels_per_group", "pointwise", "channel_multiple", "rank_multiple")

    def run(self, graph: Graph, budget: Budget, data, options: AutoOptions, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        return auto_pass(graph, budget, data, options, context, fixed)

    def prune_pass(self, graph: Graph, budget: Budget, data, context: Context, fixed: dict | None, only,
                   moments: dict) -> tuple[Graph, CompressionReport]:
        """Channel pruning alone, of the groups ``only`` accepts, with no finishing step: the expansion step of
        the factoring methods' ``pointwise="auto"`` (:mod:`kerascomp.methods.expansions`)."""
        options = AutoOptions(forms=("prune",), recalibrate=False, reconstruct=False)
        return auto_pass(graph, budget, data, options, context, fixed, only=only, moments=moments)

    def pruned_layers(self, graph: Graph, only) -> list[str]:
        return pruned_layers(graph, only)

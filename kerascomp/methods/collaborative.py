"""``method="collaborative"``: joint channel pruning and low-rank decomposition (Li et al., CVPR 2021).

1. **Sensitivity** (:mod:`kerascomp.methods.sensitivity`): per dense Conv2D, the mean loss
   gradient on the user's labelled data, the multi-step removal trajectory of its units (input
   channels and singular values, rescored each step) and the exponential fitted to it.
2. **Global rates** (:func:`kerascomp.decompose.collaborative.global_rates`): one Lagrange
   multiplier, solved exactly, gives each layer the fraction of its MACs to remove. Pruning a
   conv's input channels also shrinks the filters of their producer, which the per-layer curves
   do not see, so an outer bisection on the requested total makes the *realised* model meet the
   budget.
3. **Per layer**: the joint trajectory's first step that reaches the layer's rate, channels and
   rank together; the rank part is dropped only when the channels alone already reach it (the
   reference's rule; ``mixing="pruning_first"`` is the older rule, pruning alone whenever it
   can). Channels are removed physically through the channel graph; a cut rank turns the conv into
   a kxk conv to ``r`` filters plus a 1x1 conv (the reference's output form), both plain ``Conv2D``
   layers.

Input channels of a conv can go only when it is their sole channel-mixing consumer (inside a
residual block, not on the residual stream), or when the others are a squeeze-and-excite block's
one-pixel convs (EfficientNet, MobileNetV3: the projection's input channels go, and with them the SE
convs' slices; :func:`kerascomp.graph.channels.sole_input_group`); other convs get ranks only. The plan is a
:class:`kerascomp.planner.Plan`; :func:`apply_plan` realises it without data.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np

from kerascomp.allocation import Candidates, bisect, front_note, latency_front
from kerascomp.cost import graph_cost
from kerascomp.decompose.collaborative import factor_kernel, global_rates, kept_fraction, values_to_keep
from kerascomp.errors import BudgetError, InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.channels import (
    ChannelAnalysis,
    ChannelGroup,
    analyse_channels,
    kept_outputs,
    kept_positions,
    prune_channels,
    removed_atoms,
    sole_input_group,
)
from kerascomp.graph.ir import Graph, LayerSpec, conv_spec
from kerascomp.graph.keras_io import infer_shapes, module_for, write_model
from kerascomp.methods import latency_search
from kerascomp.methods.base import Budget, CompressionReport, LayerDecision, LayerRecord, Plan, fingerprint
from kerascomp.methods.conv_views import restore_views, with_views
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.inputs import check_auto, check_bool, check_choice, check_int, check_number
from kerascomp.methods.l1 import l1_steps
from kerascomp.methods.pointwise import check_pointwise
from kerascomp.methods.pruning import (
    GroupOrder,
    cost_tables,
    estimated_pruned_ms,
    is_stream,
    orders_from_choices,
    pruned_cost,
    pruning_choices,
)
from kerascomp.methods.registry import (
    Context,
    Method,
    build_options,
    check_finishing,
    check_plan,
    finish,
    method_inputs,
)
from kerascomp.methods.sensitivity import (
    LayerSensitivity,
    default_loss,
    labelled_batches,
    layer_sensitivities,
    loss_on,
)
from kerascomp.methods.tiles import first_step

ALLOCATIONS = ("global", "uniform")
MIXING = ("joint", "pruning_first")
OBJECTIVES = ("flops", "sum")
VALUES = ("largest", "taylor")
STREAMS = ("keep", "uniform", "auto")
# stream="auto" cuts the stream only when that measures this much faster: the cut costs accuracy at milder targets
# (trained ResNet-20 at half the MACs, before finetuning: 81.2% kept, 75.0% cut; at a quarter 52.0% both, 8% faster)
STREAM_MARGIN = 0.05
# ... and only when, reconstructed and recalibrated as apply() will, its loss on data is at most this much (relative)
# above the uncut plan's. At a quarter of the MACs with the host table the cut measured 5.5% / 18% faster on the trained
# ResNet-20 / ResNet-56, with losses 2.9% / 47% higher (ResNet-20: 5.0 pt less test top-1 before finetuning; RESULTS.md)
STREAM_LOSS_MARGIN = 0.02


@dataclass(frozen=True)
class CollaborativeOptions:
    """Options of ``method="collaborative"`` (``kerascomp.plan`` / ``clone_compressed`` keywords).

    Attributes:
        prune / decompose: which unit kinds may be removed (both by default, as in the reference).
        allocation: ``"global"`` (fitted curves and one Lagrange multiplier) or ``"uniform"`` (the
            same fraction of every conv's MACs: the baseline the global rates should beat).
        step_fraction: share of a layer's units removed per step before rescoring (reference: 1%).
        max_macs_fraction: at most this share of a layer's MACs goes (reference: 0.95). Called
            ``max_fraction`` before 0.2 (still accepted, with a ``DeprecationWarning``): pruning's
            ``max_fraction`` is a share of a group's *channels*.
        batch_size / max_samples: batches of the gradient pass and how many labelled rows it reads.
        recalibrate: re-estimate BatchNormalization statistics on ``data`` after compressing
            (``"auto"``: when data is given).
        sensitivity: ``"taylor"`` (the reference's first-order scores) or ``"measured"`` (the loss
            increase on ``data`` when each conv alone is cut to 25/50/75/90% of its MACs; slower).
        gradient: ``"mean"`` scores with the mean gradient over ``data``; ``"rms"`` with the root mean
            square of per-batch gradients (the Taylor score summed over batches, a diagonal Fisher).
        normalize: before the curve fit, divide each conv's scores by the largest score on its
            curve (``"max"``, the reference's ``metrics / max(metrics)``), by the score of removing
            its whole kernel (``"kernel"``; ``True`` is accepted for it), or not at all (``False``,
            the default until 2026-12). Normalised, the global rates follow the curves' shapes
            rather than their scale.
        objective: what the global rates minimise. ``"flops"`` (the reference's): the sum over
            convs of each conv's MACs (or params, or milliseconds: the budgeted quantity) times its
            fitted score, so that with normalised curves a big layer's relative damage weighs in
            proportion to its size; ``"sum"``: the plain sum of fitted scores (until 2026-12).
        mixing: ``"joint"`` (the reference): each conv takes the joint trajectory's point at its rate,
            and its curve is fitted to that trajectory. ``"pruning_first"``: pruning alone whenever
            the pruning curve reaches the rate, fitted to the cheaper of the two curves (kerascomp
            until 2026-12; on ResNets it factors no layer).
        values: which singular values a cut rank keeps: ``"largest"`` of the channel-pruned kernel
            (the reference; smallest weight error) or ``"taylor"`` (highest gradient score).
        latency_checks: with ``target_latency`` and a host table, how many times the planned model is
            exported and timed against the original to correct the table's estimate (0: trust the table).
        channel_multiple / rank_multiple: each conv keeps a multiple of this many input channels (its
            group's producers as many outputs) and a rank that is a multiple of this (the nearest, at
            least one step; all of a layer's channels where it has no more than a step). ``None``: the
            first of 8, 4 and 1 that meets the budget (:mod:`kerascomp.methods.tiles`; the sensitivities
            are measured once for every step). The default is 1 (any count): unlike the other methods,
            collaborative lost accuracy to the steps on the trained ResNet-20 (top-1 before finetuning
            77.2% against 79.0% at half the MACs, 26.2% against 45.8% at a quarter; one run each), since
            the rounding comes after its rates are allocated.
        pointwise: whether 1x1 convs on feature maps may have their rank cut (their input channels may be
            pruned either way). ``"auto"`` (the default since 2026-12-07): first plan with them losing input
            channels only, and cut their ranks too only when that cannot meet the budget. A 1x1 conv cut into
            two thinner 1x1 convs runs at a fraction of its MACs' worth on LiteRT (MobileNetV2 at half the MACs:
            latency 0.725 of the original with their ranks cut, against 0.53 for channel pruning;
            ``benchmarks/results/latency_realization_mobile_collaborative.md``). A 1x1 conv on one pixel (a
            head after the pooling, a squeeze-and-excite conv) may always take a rank: it reads its weights once
            per image, and the pair reads fewer (MobileNetV3Small's ``logits``: 0.053 ms pruned to 484 inputs,
            0.010 ms as auto's 1024->72->1000 pair). ``True``: the reference's rule (every conv's rank may be
            cut); ``False``: never a 1x1 conv's on a feature map.
        stream: the *stream* channels (those several producers write through an ``Add``: a ResNet's residual
            stream), which the joint units cannot reach (a conv's input channels go only where it is their sole
            consumer). ``"keep"`` (the reference's scope): untouched. ``"uniform"``: first cut every stream
            group to ``sqrt(target)`` of its channels (smallest L1 first, in steps of 8 where the group has
            them), then allocate the rest of the budget over channels and ranks as usual, on the cut model; so
            at a quarter of the MACs the model is about half as wide everywhere, as a dense model built thin
            is. A number in (0, 1]: keep that fraction of each stream group. ``"auto"`` (the default since
            2026-12-07, the fourteenth session; ``"keep"`` before): with a host latency table under a MACs or
            params target, plan both ``"keep"`` and ``"uniform"``, time both, and when the cut measures more
            than 5% faster (``STREAM_MARGIN``) finish both (reconstruction, recalibration) and score their loss
            on ``data``: the stream is cut only if its loss is at most 2% higher (``STREAM_LOSS_MARGIN``). The
            report's ``stream`` note gives the ratios and losses; planning then takes about twice as long.
            Without a host table, or under ``target_latency`` (the cut's share of the latency would be the
            table's estimate), ``"keep"``. At a quarter of the MACs with this host's table the cut measured 5.5%
            faster on the trained CIFAR ResNet-20 and 18% on ResNet-56, but its loss was 2.9% and 47% higher
            (ResNet-20: 49.1% test top-1 before finetuning against 54.2% uncut, same table; ResNet-56 without a
            table: 44.9% against 56.8%), so ``"auto"`` keeps both streams there (benchmarks/RESULTS.md).
    """

    prune: bool = True
    decompose: bool = True
    allocation: str = "global"
    step_fraction: float = 0.01
    max_macs_fraction: float = 0.95
    batch_size: int = 64
    max_samples: int = 512
    recalibrate: bool | str = "auto"
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512
    latency_checks: int = 6
    sensitivity: str = "taylor"
    gradient: str = "mean"
    normalize: bool | str = "max"
    objective: str = "flops"
    mixing: str = "joint"
    values: str = "largest"
    channel_multiple: int | None = 1
    rank_multiple: int | None = 1
    pointwise: bool | str = "auto"
    stream: str | float = "auto"

    def validate(self) -> None:
        for name in ("prune", "decompose"):
            check_bool(name, getattr(self, name))
        if not (self.prune or self.decompose):
            raise InvalidArgumentError("prune=False and decompose=False leave nothing to remove; enable one.")
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_number("step_fraction", self.step_fraction, 0.0, 0.5, "(]")
        check_number("max_macs_fraction", self.max_macs_fraction, 0.0, 0.99, "(]")
        for name, least in (("batch_size", 1), ("max_samples", 1), ("latency_checks", 0)):
            check_int(name, getattr(self, name), least)
        check_choice("gradient", self.gradient, ("mean", "rms"))
        check_choice("sensitivity", self.sensitivity, ("taylor", "measured"))
        check_choice("mixing", self.mixing, MIXING)
        if not (isinstance(self.normalize, bool) or self.normalize in ("max", "kernel")):
            raise InvalidArgumentError(f"normalize must be 'max', 'kernel', True (= 'kernel') or False, got "
                                       f"{self.normalize!r}.")
        check_choice("objective", self.objective, OBJECTIVES)
        check_choice("values", self.values, VALUES)
        check_auto("recalibrate", self.recalibrate)
        for name in ("channel_multiple", "rank_multiple"):
            if getattr(self, name) is not None:
                check_int(name, getattr(self, name))
        check_pointwise(self.pointwise)
        if isinstance(self.stream, bool) or not (self.stream in STREAMS or (
                isinstance(self.stream, (int, float)) and 0.0 < float(self.stream) <= 1.0)):
            raise InvalidArgumentError(f"stream must be one of {', '.join(map(repr, STREAMS))} or a fraction of the "
                                       f"stream channels to keep in (0, 1], got {self.stream!r}.")


def collaborative_options(options: dict) -> CollaborativeOptions:
    return build_options(CollaborativeOptions, options, "collaborative")


@dataclass
class _Conv:
    """A dense conv the method may compress, with what its decisions need."""

    spec: LayerSpec
    pixels: int
    group: ChannelGroup | None
    positions: np.ndarray | None
    fixed_reason: str
    sensitivity: LayerSensitivity | None = None
    points: list | None = None  # (estimated ms, score, choice, MACs removed) per curve point, with a table

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return self.spec.weights[0].shape

    @property
    def macs(self) -> int:
        height, width, channels, filters = self.shape
        return height * width * channels * filters * self.pixels

    @property
    def weights(self) -> int:
        return int(np.prod(self.shape))


def _convs(graph: Graph, shapes: dict, analysis: ChannelAnalysis, options: CollaborativeOptions) -> tuple[list[_Conv], dict[str, str]]:
    eligible, reasons = eligible_convs(graph, shapes)
    convs = []
    for name in eligible:
        spec = graph.layers[name]
        pixels = int(np.prod(shapes[graph.nodes_of(name)[0].name][0][1:-1]))
        group, positions, why = sole_input_group(graph, analysis, name, shapes) if options.prune \
            else (None, None, "prune=False")
        convs.append(_Conv(spec, pixels, group, positions, why))
    return convs, reasons


@dataclass
class _Choice:
    removed: np.ndarray
    rank: int | None
    score: float


def _pruning_choice(conv: _Conv, index: int) -> _Choice:
    pruning = conv.sensitivity.pruning
    return _Choice(np.sort(pruning.order[:pruning.units_removed[index]]), None, float(pruning.score[index]))


def _joint_choice(conv: _Conv, index: int) -> _Choice:
    """The joint trajectory's step ``index`` as it stands (channels and rank)."""
    joint = conv.sensitivity.joint
    height, width, channels, filters = conv.shape
    rank = int(joint.rank[index])
    removed = np.sort(joint.channel_order[:joint.channels_removed[index]])
    low_rank = rank < min(height * width * (channels - len(removed)), filters)
    return _Choice(removed, rank if low_rank else None, float(joint.score[index]))


def _choose(conv: _Conv, rate: float, latency=None, mixing: str = "joint", guard=None) -> _Choice:
    """The layer's decision at a requested reduction ``rate`` of its MACs: the joint trajectory's
    step at that rate, without its rank part when its channels alone get there (``mixing="joint"``,
    the reference's rule), or pruning alone whenever the pruning curve gets there
    (``"pruning_first"``). With a ``latency`` table the rate is of
    the layer's estimated milliseconds instead, and the cheapest-scoring point of either curve whose
    estimate gets there wins: a rank cut that saves MACs but not time does not count. With a ``guard``
    table (``latency=`` under a MACs or params target) the decision stands unless the table times it off
    the layer's latency front (:func:`_guarded`)."""
    if rate <= 0:
        return _Choice(np.zeros(0, int), None, 0.0)
    if latency is not None:
        return _choose_by_latency(conv, rate, latency)
    choice = _choose_by_macs(conv, rate, mixing)
    return choice if guard is None else _guarded(conv, choice, rate, guard)


def _choose_by_macs(conv: _Conv, rate: float, mixing: str) -> _Choice:
    pruning, joint = conv.sensitivity.pruning, conv.sensitivity.joint
    has_pruning, has_joint = pruning is not None and len(pruning.macs_removed) > 0, len(joint.macs_removed) > 0
    if mixing == "joint" and has_joint:
        height, width, channels, filters = conv.shape
        removed, rank = joint.decision(rate, height * width, channels, filters)
        return _Choice(removed, rank, float(joint.score[joint.point(rate)]))
    reach = pruning.macs_removed[-1] if has_pruning else 0.0
    if reach > 0 and (reach >= rate - 1e-12 or not has_joint or joint.macs_removed[-1] <= reach):
        return _pruning_choice(conv, min(int(np.searchsorted(pruning.macs_removed, rate - 1e-12)),
                                         len(pruning.macs_removed) - 1))
    if not has_joint:
        return _Choice(np.zeros(0, int), None, 0.0)
    return _joint_choice(conv, joint.point(rate))


def _snapped(conv: _Conv, choice: _Choice, channel_step: int, rank_step: int) -> _Choice:
    """``choice`` with its kept input channels and its rank rounded to the nearest multiples of the steps (at
    least one step; the channels the curve removes first go first). A conv with no more channels than a step
    keeps them all; a rank that reaches the kernel's full rank is dropped (the conv stays unfactored). The
    rate solver's bisection then meets the budget with the rounded counts. (Rounding down instead cut a
    16-channel conv asked to lose one channel to 8: 21% top-1 before finetuning at a quarter of the MACs on
    the trained ResNet-20, against 45% with any count.)"""
    height, width, channels, filters = conv.shape
    removed, rank = choice.removed, choice.rank
    if channel_step > 1 and len(removed):
        kept = channels - len(removed)
        target = channels if channels <= channel_step else \
            min(channels, max(channel_step, int(np.floor(kept / channel_step + 0.5)) * channel_step))
        joint, pruning = conv.sensitivity.joint, conv.sensitivity.pruning
        order = joint.channel_order
        if pruning is not None and set(removed.tolist()) == set(pruning.order[:len(removed)].tolist()):
            order = pruning.order
        # a trajectory stops at max_macs_fraction: the channels past its end follow, cheapest first
        rest = pruning.order if pruning is not None else np.arange(channels)
        order = list(dict.fromkeys([int(c) for c in order] + [int(c) for c in rest]))
        removed = np.sort(np.asarray(order[:channels - target], dtype=np.int64))
    if rank is not None and rank_step > 1:
        rank = max(rank_step, int(np.floor(rank / rank_step + 0.5)) * rank_step)
        if rank >= min(height * width * (channels - len(removed)), filters):
            rank = None
    return _Choice(removed, rank, choice.score)


def _point_ms(conv: _Conv, latency) -> list[tuple[float, float, _Choice, float]]:
    """(estimated ms, score, choice, fraction of the MACs removed) of every point of the layer's curves
    (cached on the conv)."""
    if conv.points is None:
        name, points = conv.spec.name, []
        pruning, joint = conv.sensitivity.pruning, conv.sensitivity.joint
        for index in range(len(pruning.macs_removed) if pruning is not None else 0):
            choice, removed = _pruning_choice(conv, index), float(pruning.macs_removed[index])
            points.append((latency.layer_ms(name, "dense", conv.macs * (1 - removed)), choice.score, choice, removed))
        for index in range(len(joint.macs_removed)):
            choice, removed = _joint_choice(conv, index), float(joint.macs_removed[index])
            form = "dense" if choice.rank is None else "factored"
            points.append((latency.layer_ms(name, form, conv.macs * (1 - removed)), choice.score, choice, removed))
        conv.points = points
    return conv.points


def _choice_macs(conv: _Conv, choice: _Choice) -> tuple[str, float]:
    """The form (``"dense"`` or ``"factored"``) and MACs of the conv under ``choice`` alone (its own input
    channels and rank; outputs that a consumer prunes are that consumer's decision)."""
    height, width, channels, filters = conv.shape
    kept, area = channels - len(choice.removed), height * width
    dense = area * kept * filters
    if choice.rank is not None and choice.rank * (area * kept + filters) < dense:
        return "factored", float(choice.rank * (area * kept + filters) * conv.pixels)
    return "dense", float(dense * conv.pixels)


def _front_candidates(conv: _Conv, guard, extra: list[tuple[float, float, float]] = ()) -> Candidates:
    """The layer's options for :func:`kerascomp.allocation.latency_front`: the dense conv first, every
    curve point, then ``extra`` (ms, score, MACs) rows."""
    rows = [(guard.original_ms(conv.spec.name), 0.0, float(conv.macs))]
    rows += [(ms, score, conv.macs * (1 - removed)) for ms, score, _, removed in _point_ms(conv, guard)]
    rows += list(extra)
    ms, score, macs = (np.array(column, float) for column in zip(*rows))
    return Candidates(conv.spec.name, macs, score, ms)


def _guarded(conv: _Conv, choice: _Choice, rate: float, guard) -> _Choice:
    """``choice`` when the ``guard`` table keeps it on the layer's latency front (none of the dense conv or
    the curves' points runs faster at a score no worse); otherwise the lowest-scoring front point that
    removes at least ``rate`` of the layer's MACs, or, if none does, the front point that removes most (the
    dense conv itself where every other form is timed slower: an RGB stem cut into a 3x3 conv to a few
    channels and a 1x1 conv, say). The rate solver then finds the MACs elsewhere. A conv the table does not
    time (a phone's table that lacks it) keeps its decision."""
    if conv.spec.name not in guard.layers:
        return choice
    form, macs = _choice_macs(conv, choice)
    candidates = _front_candidates(conv, guard, [(guard.layer_ms(conv.spec.name, form, macs), choice.score, macs)])
    front = latency_front(candidates)
    if len(candidates.cost) - 1 in front:
        return choice
    points = [(0.0, 0.0, _Choice(np.zeros(0, int), None, 0.0))]
    points += [(removed, score, point) for _, score, point, removed in _point_ms(conv, guard)]
    on_front = [points[i] for i in front if i < len(points)]
    meeting = [point for point in on_front if point[0] >= rate - 1e-12]
    if meeting:
        return min(meeting, key=lambda point: (point[1], -point[0]))[2]
    return max(on_front, key=lambda point: (point[0], -point[1]))[2]


def _choose_by_latency(conv: _Conv, rate: float, latency) -> _Choice:
    points = _point_ms(conv, latency)
    if not points:
        return _Choice(np.zeros(0, int), None, 0.0)
    goal = (1 - rate) * latency.original_ms(conv.spec.name)
    meeting = [point for point in points if point[0] <= goal + 1e-12]
    if meeting:
        return min(meeting, key=lambda point: point[1])[2]
    return min(points, key=lambda point: (point[0], point[1]))[2]


def _atoms(convs: list[_Conv], choices: list[_Choice]) -> np.ndarray:
    found = [np.concatenate([conv.group.channels[conv.positions[i]] for i in choice.removed])
             for conv, choice in zip(convs, choices) if len(choice.removed)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _configs(analysis: ChannelAnalysis, convs: list[_Conv], choices: list[_Choice],
             removed: set[int]) -> dict[str, tuple[str, int, int]]:
    """Per conv: its form (``"dense"`` or ``"factored"``), its kernel weights after the choices and
    those of its channel-pruned dense conv."""
    configs = {}
    for conv, choice in zip(convs, choices):
        height, width, channels, filters = conv.shape
        area = height * width
        # inputs that another conv's choice removes count too (a squeeze-and-excite conv reading the expansion
        # that its block's projection prunes): counting its own choice only under-estimated the MACs of a
        # factored one (MobileNetV3Small at 0.5: 0.5016 realised, tf_keras)
        kept_in = channels - max(len(choice.removed),
                                 sum(int(a) in removed for a in analysis.in_atoms.get(conv.spec.name, ())))
        kept_out = filters - sum(int(a) in removed for a in analysis.out_atoms[conv.spec.name])
        dense = area * kept_in * kept_out
        # the factors are used only where they are cheaper than the (pruned) dense conv
        if choice.rank is not None and choice.rank * (area * kept_in + kept_out) < dense:
            configs[conv.spec.name] = ("factored", choice.rank * (area * kept_in + kept_out), dense)
        else:
            configs[conv.spec.name] = ("dense", dense, dense)
    return configs


def _realised(tables, analysis: ChannelAnalysis, convs: list[_Conv], choices: list[_Choice], metric: int,
              latency=None) -> float:
    """MACs (metric 0), params (1) or estimated milliseconds (2, from ``latency``) of the model these
    choices give, without building it."""
    removed = _atoms(convs, choices)
    configs = _configs(analysis, convs, choices, set(removed.tolist()))
    if metric == 2:
        return latency.estimate({conv.spec.name: (configs[conv.spec.name][0], configs[conv.spec.name][1] * conv.pixels)
                                 for conv in convs})
    total = float(pruned_cost(tables, removed)[metric])
    for conv in convs:  # the channel-pruned cost counts each conv dense: swap in the factored form
        _, weights, dense = configs[conv.spec.name]
        total += (weights - dense) * (conv.pixels if metric == 0 else 1)
    return total


def _sizes(convs: list[_Conv], metric: int, latency=None) -> np.ndarray:
    """Each conv's share of the budgeted quantity: MACs, weights or estimated milliseconds."""
    if metric == 2:
        return np.array([latency.original_ms(conv.spec.name) for conv in convs], float)
    return np.array([conv.macs if metric == 0 else conv.weights for conv in convs], float)


def _rates(convs: list[_Conv], requested: float, sizes: np.ndarray, options: CollaborativeOptions) -> np.ndarray:
    if options.allocation == "uniform":
        return np.full(len(convs), min(requested / sizes.sum(), options.max_macs_fraction))
    p1 = np.array([conv.sensitivity.p1 for conv in convs])
    p2 = np.array([conv.sensitivity.p2 for conv in convs])
    return global_rates(sizes, p1, p2, min(requested, options.max_macs_fraction * sizes.sum()), options.max_macs_fraction,
                        weights=sizes if options.objective == "flops" else None)


def _binding(convs: list[_Conv], choices: list[_Choice], reasons: dict[str, str], graph: Graph, shapes: dict) -> str:
    """The layers whose floor keeps the model above the target, largest remaining cost first."""
    costs = graph_cost(graph, shapes).by_name()
    rows = []
    for conv, choice in zip(convs, choices):
        height, width, channels, filters = conv.shape
        left = kept_fraction(height * width, channels, filters, channels - len(choice.removed), choice.rank)
        why = "at max_macs_fraction" + ("" if conv.group is not None else f"; {conv.fixed_reason}")
        rows.append((left * conv.macs, f"{conv.spec.name} ({left:.0%} of its MACs left: {why})"))
    rows += [(costs[name].macs, f"{name} ({reason})") for name, reason in reasons.items()]
    rows.sort(key=lambda row: -row[0])
    return "; ".join(text for _, text in rows[:5])


def plan_collaborative(graph: Graph, shapes: dict, budget: Budget, data, loss, options: CollaborativeOptions,
                       verbose: int = 1, latency=None, measure=None) -> Plan:
    """Score, allocate and decide every conv; returns the :class:`Plan` (the graph is not modified).

    ``measure(original, compressed) -> float``: the measured latency ratio of two graphs; with a
    ``target_latency`` and a host table, the planned model is measured and the goal corrected
    (``options.latency_checks`` times)."""
    started = time.perf_counter()
    analysis = analyse_channels(graph, shapes)
    convs, reasons = _convs(graph, shapes, analysis, options)
    if not convs:
        listed = "; ".join(f"{name}: {why}" for name, why in reasons.items()) or "the model has no conv layers"
        raise UnsupportedModelError(f"method='collaborative' found no dense Conv2D to compress in {graph.name!r} "
                                    f"({listed}).")
    metric = {"flops": 0, "params": 1, "latency": 2}[budget.metric]
    if metric == 2 and latency is None:
        raise InvalidArgumentError("target_latency needs a latency table: pass latency=kerascomp.latency_table(model) "
                                   "or LatencyTable.from_bench_json(...) for a phone.")
    tables = cost_tables(graph, shapes, analysis)
    prunable = {conv.spec.name: conv.group is not None for conv in convs}
    # on one pixel (a head after the pooling, a squeeze-and-excite conv) a 1x1 conv reads its weights once per
    # image and a low-rank pair reads fewer: those may always take a rank
    one_by_one = [conv.spec.name for conv in convs if conv.shape[:2] == (1, 1) and conv.pixels > 1]
    gradients: dict = {}  # read from the data once, for every attempt

    def scored(factor_one_by_one: bool, layers: list[str] | None) -> dict[str, LayerSensitivity]:
        found = layer_sensitivities(graph, data, loss, options.batch_size, options.max_samples, prunable,
                                    options.step_fraction, options.max_macs_fraction, options.decompose, verbose,
                                    options.sensitivity, rms=options.gradient == "rms", normalize=options.normalize,
                                    mixing=options.mixing, values=options.values,
                                    decomposable={name: factor_one_by_one for name in one_by_one}, layers=layers,
                                    gradients=gradients)
        return {s.layer: s for s in found}

    # pointwise="auto": 1x1 convs first lose input channels only (a 1x1 conv cut into two thinner ones runs at a
    # fraction of its MACs' worth on LiteRT); their ranks are cut only when the budget cannot be met without
    attempts = [True] if options.pointwise is True or not one_by_one or not options.decompose else \
        [False] if options.pointwise is False else [False, True]
    by_name: dict[str, LayerSensitivity] = {}
    for index, factor_one_by_one in enumerate(attempts):
        if index:
            by_name = {name: found for name, found in by_name.items() if name not in one_by_one}
        by_name.update(scored(factor_one_by_one, None if index == 0 else one_by_one))
        try:
            result = _plan_scored(graph, shapes, analysis, convs, dict(reasons), by_name, budget, options, tables,
                                  metric, latency, measure, factor_one_by_one, one_by_one)
            break
        except BudgetError:
            if index == len(attempts) - 1:
                raise
    if options.pointwise == "auto" and len(attempts) == 2:
        result.settings["pointwise_resolved"] = factor_one_by_one
    if metric == 2:
        result.settings["latency_source"] = latency.source
    result.seconds = time.perf_counter() - started
    return result


# why a 1x1 conv keeps its rank: the same words in the plan and the report
ONE_BY_ONE_RANK = ("1x1 conv on a feature map, rank not cut (pointwise=False, or pointwise='auto' met the budget "
                   "without it)")
POINTWISE_NOTES = {False: "auto: 1x1 convs lose input channels only (enough for the budget)",
                   True: "auto: 1x1 convs' ranks cut too (the budget could not be met without)"}


def _plan_scored(graph: Graph, shapes: dict, analysis: ChannelAnalysis, convs: list[_Conv], reasons: dict[str, str],
                 by_name: dict[str, LayerSensitivity], budget: Budget, options: CollaborativeOptions, tables,
                 metric: int, latency, measure, factor_one_by_one: bool, one_by_one: list[str]) -> Plan:
    """The plan on the sensitivities ``by_name``, in the first tile step that meets the budget (a BudgetError
    where none does)."""
    for conv in convs:
        if conv.spec.name not in by_name:
            why = conv.fixed_reason if not options.decompose else "no unit saves MACs"
            if conv.spec.name in one_by_one and options.decompose and not factor_one_by_one:
                why = f"{conv.fixed_reason}; {ONE_BY_ONE_RANK}" if conv.fixed_reason else ONE_BY_ONE_RANK
            reasons[conv.spec.name] = why
    convs = [replace(conv, sensitivity=by_name[conv.spec.name], points=None) for conv in convs
             if conv.spec.name in by_name]
    if not convs:
        raise BudgetError(f"method='collaborative' can remove nothing from {graph.name!r}: "
                          + "; ".join(f"{name}: {why}" for name, why in reasons.items()))
    sizes = _sizes(convs, metric, latency)

    def plan_at(stepped: CollaborativeOptions) -> Plan:
        """The plan with channels and ranks in multiples of ``stepped``'s steps (a BudgetError where they
        cannot meet the budget), on the sensitivities measured above."""
        return _plan_at_steps(graph, shapes, analysis, convs, reasons, budget, stepped, tables, metric, sizes,
                              latency, measure)

    result, step = first_step(plan_at, options, ("channel_multiple", "rank_multiple"))
    if step is not None:
        result.settings["tile_step"] = step
    return result


def _plan_at_steps(graph: Graph, shapes: dict, analysis: ChannelAnalysis, convs: list[_Conv], reasons: dict[str, str],
                   budget: Budget, options: CollaborativeOptions, tables, metric: int, sizes: np.ndarray, latency,
                   measure) -> Plan:
    channel_step, rank_step = options.channel_multiple or 1, options.rank_multiple or 1

    def realised(chosen: list[_Choice]) -> float:
        return _realised(tables, analysis, convs, chosen, metric, latency)

    planning, guard = (latency, None) if metric == 2 else (None, latency)  # a table under a MACs/params target

    def decide(requested: float) -> tuple[np.ndarray, list[_Choice]]:
        rates = _rates(convs, requested, sizes, options)
        return rates, [_snapped(conv, _choose(conv, rate, planning, options.mixing, guard), channel_step, rank_step)
                       for conv, rate in zip(convs, rates)]

    untouched = decide(0.0)
    before = realised(untouched[1])
    target = budget.fraction * before
    rates, choices = decide(options.max_macs_fraction * sizes.sum())
    floor = realised(choices)
    what = {0: "MACs", 1: "params", 2: f"estimated latency ({latency.source if latency else ''})"}[metric]
    if floor > target:
        raise BudgetError(
            f"method='collaborative' cannot reach target_{budget.metric}={budget.fraction}: compressing every conv "
            f"as far as it may leaves {floor / before:.3f} of the {what}. Binding layers: "
            f"{_binding(convs, choices, reasons, graph, shapes)}. Raise the target or max_macs_fraction"
            + (f" (channels and ranks in multiples of {channel_step} and {rank_step}: channel_multiple=1, "
               f"rank_multiple=1 allow any count)." if max(channel_step, rank_step) > 1 else "."))

    def solve(goal: float) -> tuple[np.ndarray, list[_Choice]]:
        """The least requested removal whose realised cost meets ``goal`` (bisection)."""
        if before <= goal:
            return untouched
        return bisect(decide, lambda trial: realised(trial[1]) <= goal, options.max_macs_fraction * sizes.sum(), 0.0,
                      (rates, choices))[1]

    rates, choices = solve(target)
    checks = []
    if metric == 2 and latency.source.startswith("host") and measure is not None:
        # the table adds up one-layer files: time the real model and correct the goal given to the table,
        # by the shared interpolation over the measured points (methods/latency_search.py); keep the closest
        points, best = [(1.0, 1.0)], None
        goal = budget.fraction
        for _ in range(options.latency_checks):
            measured = measure(graph, _plan(graph, shapes, analysis, convs, choices, rates, reasons, budget, options)[1])
            checks.append({"goal": round(goal, 4), "estimated": round(realised(choices) / before, 4),
                           "measured": round(measured, 4)})
            if best is None or abs(measured - budget.fraction) < best[0]:
                best = (abs(measured - budget.fraction), rates, choices)
            if abs(measured - budget.fraction) <= latency_search.TOLERANCE * budget.fraction:
                break
            points.append((goal, measured))
            following = latency_search.next_fraction(points, budget.fraction)
            if following is None:
                break
            following = max(following, floor / before)
            if abs(following - goal) < latency_search.RESOLUTION:  # already at the floor, still too slow
                break
            goal = following
            rates, choices = solve(goal * before)
        if best is not None:
            rates, choices = best[1], best[2]
    result = _plan(graph, shapes, analysis, convs, choices, rates, reasons, budget, options)[0]
    if metric == 2:
        result.settings.update(estimated_latency_ratio=realised(choices) / before, latency_checks_done=checks)
    if guard is not None:
        result.settings["latency_front"] = front_note([_front_candidates(conv, guard) for conv in convs
                                                       if conv.sensitivity is not None
                                                       and conv.spec.name in guard.layers], guard)
    return result


def _plan(graph: Graph, shapes: dict, analysis: ChannelAnalysis, convs: list[_Conv], choices: list[_Choice],
          rates: np.ndarray, reasons: dict[str, str], budget: Budget,
          options: CollaborativeOptions) -> tuple[Plan, Graph]:
    entries = [LayerRecord(conv.spec.name, "Conv2D", "dense", 0, 0, 0, 0,
                           reason=conv.fixed_reason if conv.group is None else "",
                           removed_inputs=[int(i) for i in choice.removed], rank=choice.rank, kept_values=None,
                           rate=float(rate), score=choice.score)
               for conv, choice, rate in zip(convs, choices, rates)]
    entries += [LayerRecord(name, graph.layers[name].class_name, "kept", 0, 0, 0, 0, reason=reason)
                for name, reason in reasons.items()]
    draft = Plan("collaborative", graph.name, fingerprint(graph), budget.metric, budget.fraction, entries, 0, 0, 0, 0,
                 settings={k: getattr(options, k) for k in CollaborativeOptions.__dataclass_fields__})
    gradients = {conv.spec.name: conv.sensitivity.gradient for conv in convs}
    realised = _realise(graph, analysis, draft, gradients)  # fills kept_values, actions and costs
    return draft, realised


def _removal(graph: Graph, analysis: ChannelAnalysis, plan: Plan) -> dict[int, list[int]]:
    removal: dict[int, list[int]] = {}
    shapes = infer_shapes(graph) if any(entry.removed_inputs for entry in plan.layers) else {}
    for entry in plan.layers:
        if not entry.removed_inputs:
            continue
        group, positions, why = sole_input_group(graph, analysis, entry.layer, shapes)
        if group is None:
            raise InvalidArgumentError(f"the plan removes input channels of {entry.layer!r}, but {why}.")
        if max(entry.removed_inputs) >= len(positions) or min(entry.removed_inputs) < 0:
            raise InvalidArgumentError(f"the plan removes input position {max(entry.removed_inputs)} of "
                                       f"{entry.layer!r}, which has {len(positions)} inputs.")
        removal.setdefault(group.index, []).extend(int(positions[i]) for i in entry.removed_inputs)
    return removal


def _kept_indices(analysis: ChannelAnalysis, removal: dict[int, list[int]], layer: str, role: str) -> np.ndarray:
    atoms = analysis.in_atoms[layer] if role == "in" else analysis.out_atoms[layer]
    return kept_positions(atoms, removed_atoms(analysis, removal))


def _factored(spec: LayerSpec, kernel: np.ndarray, kept: list[int], basis_name: str, keras) -> list[LayerSpec]:
    """The kxk conv to ``len(kept)`` filters and the 1x1 conv (with the bias and activation) replacing ``spec``."""
    basis, pointwise = factor_kernel(kernel, np.asarray(kept, dtype=np.int64))
    config, trainable = spec.config, spec.config.get("trainable", True)
    bias = spec.weights[1] if len(spec.weights) > 1 else None
    return [conv_spec(basis_name, basis, config.get("strides", (1, 1)), config.get("padding", "valid"),
                      config.get("dilation_rate", (1, 1)), None, None, trainable, keras),
            conv_spec(spec.name, pointwise, (1, 1), "valid", (1, 1), bias, config.get("activation"), trainable, keras)]


def _realise(graph: Graph, analysis: ChannelAnalysis, plan: Plan, gradients: dict[str, np.ndarray] | None,
             original: Graph | None = None) -> Graph:
    """Build the compressed graph of ``plan``; with ``gradients`` (planning) choose the kept singular
    values, without (re-applying) use the plan's. Fills in each entry's action and costs (the costs before
    from ``original``, where ``graph`` is the stream-cut copy of it)."""
    keras = module_for(graph)
    removal = _removal(graph, analysis, plan)
    result = prune_channels(graph, analysis, removal)
    for entry in plan.layers:
        if entry.rank is None or entry.action == "kept":
            continue
        spec = result.layers[entry.layer]
        kernel = spec.weights[0]
        height, width, channels, filters = kernel.shape
        if gradients is not None:
            kept_in = _kept_indices(analysis, removal, entry.layer, "in")
            kept_out = _kept_indices(analysis, removal, entry.layer, "out")
            gradient = gradients[entry.layer][:, :, kept_in, :][..., kept_out]
            if entry.rank * (height * width * channels + filters) >= height * width * channels * filters:
                entry.rank = None  # its outputs were pruned too: the factors no longer save
                continue
            entry.kept_values = values_to_keep(kernel, gradient, entry.rank, plan.settings.get("values", "taylor")).tolist()
        if entry.kept_values is None or len(entry.kept_values) != entry.rank or \
                max(entry.kept_values) >= min(kernel.shape[-1], height * width * channels):
            raise InvalidArgumentError(f"the plan's kept singular values of {entry.layer!r} do not fit its kernel "
                                       f"{kernel.shape}; re-plan for this model.")
        chain = _factored(spec, kernel, entry.kept_values, result.unique_name(f"{entry.layer}_basis"), keras)
        result.replace_layer(entry.layer, chain)
    original = original if original is not None else graph
    total_before, total_after = graph_cost(original, infer_shapes(original)), graph_cost(result, infer_shapes(result))
    before, after = total_before.by_name(), total_after.by_name()
    for entry in plan.layers:
        entry.macs_before, entry.params_before = before[entry.layer].macs, before[entry.layer].params
        basis = f"{entry.layer}_basis"
        extra = after[basis] if entry.rank is not None and basis in after else None
        entry.macs_after = after[entry.layer].macs + (extra.macs if extra else 0)
        entry.params_after = after[entry.layer].params + (extra.params if extra else 0)
        if entry.action != "kept":
            parts = ([f"prune {len(entry.removed_inputs)} inputs"] if entry.removed_inputs else []) + \
                    ([f"rank {entry.rank}"] if entry.rank is not None else [])
            pruned_out = entry.macs_after < entry.macs_before and not parts
            entry.action = " + ".join(parts) or ("outputs pruned" if pruned_out else "dense")
    plan.macs_before, plan.params_before = total_before.macs, total_before.params
    plan.macs_after, plan.params_after = total_after.macs, total_after.params
    return result


def _stream_orders(graph: Graph, analysis: ChannelAnalysis, keep: float) -> list[GroupOrder]:
    """Every stream group cut to ``keep`` of its channels (rounded up, in steps of 8 where the group has
    them), smallest group L1 first (``method="l1"``'s order)."""
    orders = []
    for group in analysis.groups:
        if not is_stream(group):
            continue
        steps = l1_steps(graph, analysis, group)
        step = 8 if group.size % 8 == 0 and group.size >= 16 else 1
        kept = min(group.size, max(step, int(np.ceil(keep * group.size / step - 1e-9)) * step))
        count = min(group.size - kept, len(steps))
        if count > 0:
            orders.append(GroupOrder(group, steps, count, count))
    return orders


def _order_removal(orders: list[GroupOrder]) -> dict[int, list[int]]:
    return {order.group.index: [step.channel for step in order.steps[:order.chosen]] for order in orders}


def _stream_cut(graph: Graph, plan: Plan) -> tuple[Graph, ChannelAnalysis, dict[str, list[int]]]:
    """The graph a plan's collaborative part applies to (``graph`` with the plan's stream cut, if any), its
    channel analysis, and the outputs that cut keeps of each layer it narrows (original indices)."""
    analysis = analyse_channels(graph, infer_shapes(graph))
    choices = plan.settings.get("stream_cut")
    if not choices:
        return graph, analysis, {}
    removal = _order_removal(orders_from_choices(analysis, choices))
    cut = prune_channels(graph, analysis, removal)
    return cut, analyse_channels(cut, infer_shapes(cut)), kept_outputs(analysis, removal)


def _composed(first: dict[str, list[int]], then: dict[str, list[int]]) -> dict[str, list[int]]:
    """Kept output indices of two removals in sequence, in the original layers' indices."""
    merged = dict(first)
    for layer, kept in then.items():
        merged[layer] = [first[layer][i] for i in kept] if layer in first else kept
    return merged


def apply_plan(graph: Graph, plan: Plan) -> tuple[Graph, CompressionReport]:
    """Realise ``plan`` on ``graph`` (which must be the model it was made for), without data: reconstruction
    and BN recalibration are the shared steps :meth:`CollaborativeMethod.apply` runs afterwards."""
    check_plan(graph, plan)
    base, analysis, stream_kept = _stream_cut(graph, plan)
    applied = Plan.from_json(plan.to_json())
    result = _realise(base, analysis, applied, None, original=graph)
    decisions = [LayerDecision(e.layer, e.class_name, e.action, e.macs_before, e.macs_after, e.params_before,
                               e.params_after, detail={"rank": e.rank, "inputs_removed": len(e.removed_inputs),
                                                       "rate": round(e.rate, 4), "score": e.score}, reason=e.reason)
                 for e in applied.layers]
    report = CompressionReport("collaborative", Budget(plan.metric, plan.target), decisions, applied.macs_before,
                               applied.macs_after, applied.params_before, applied.params_after,
                               notes=_plan_notes(plan),
                               kept_outputs=_composed(stream_kept, kept_outputs(analysis, _removal(base, analysis,
                                                                                                   applied))))
    return result, report


def _plan_notes(plan: Plan) -> dict:
    """What the report of ``plan``'s compression says about how it was planned."""
    settings = plan.settings
    return {"planned_in_s": round(plan.seconds, 1),
            **({"tile_step": settings["tile_step"]} if "tile_step" in settings else {}),
            **({"pointwise": POINTWISE_NOTES[settings["pointwise_resolved"]]} if "pointwise_resolved" in settings
               else {}),
            **({"latency_front": settings["latency_front"]} if settings.get("latency_front") else {}),
            **({"stream": settings["stream_note"]} if "stream_note" in settings else {})}


def _inner_budget(graph: Graph, shapes: dict, cut: Graph, cut_shapes: dict, analysis: ChannelAnalysis,
                  orders: list[GroupOrder], budget: Budget, latency) -> Budget:
    """What is left of ``budget`` once ``orders`` have cut ``graph`` to ``cut``, as a fraction of ``cut``."""
    if budget.metric == "latency":  # the table's estimate of the cut (measured corrections follow, on the cut)
        share = estimated_pruned_ms(graph, analysis, orders, [o.chosen for o in orders], latency) / latency.total_ms
    else:
        before, after = graph_cost(graph, shapes), graph_cost(cut, cut_shapes)
        share = after.macs / before.macs if budget.metric == "flops" else after.params / before.params
    if budget.fraction >= share:
        raise BudgetError(f"stream cut alone keeps {share:.3f} of the {budget.metric}, within target_{budget.metric}="
                          f"{budget.fraction}: keep more of the stream (a larger stream= fraction, or 'keep').")
    return Budget(budget.metric, budget.fraction / share)


def _plan_stream(graph: Graph, budget: Budget, data, options: CollaborativeOptions, context: Context,
                 keep: float) -> tuple[Plan | None, str]:
    """The collaborative plan on ``graph`` with its stream groups first cut to ``keep`` of their channels, and
    its note; ``None`` (and why) where that cuts nothing."""
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)
    orders = _stream_orders(graph, analysis, keep)
    if not orders:
        return None, (f"no stream channels cut (keeping {keep:.3f} of each stream group removes none)"
                      if any(is_stream(g) for g in analysis.groups)
                      else "no stream channels cut (no Add joins conv outputs)")
    cut = prune_channels(graph, analysis, _order_removal(orders))
    cut_shapes = infer_shapes(cut)
    inner = _inner_budget(graph, shapes, cut, cut_shapes, analysis, orders, budget, context.latency)
    plan = plan_collaborative(cut, cut_shapes, inner, data, context.loss, options, context.verbose,
                              context.latency, context.measure)
    plan.settings["stream_cut"] = pruning_choices(orders)
    plan.target, plan.fingerprint = budget.fraction, fingerprint(graph)
    _realise(cut, analyse_channels(cut, cut_shapes), plan, None, original=graph)  # costs against graph
    kept = sum(o.group.size - o.chosen for o in orders), sum(o.group.size for o in orders)
    return plan, f"kept {kept[0]} of {kept[1]} stream channels ({len(orders)} groups)"


def plan_with_stream(graph: Graph, budget: Budget, data, options: CollaborativeOptions, context: Context) -> Plan:
    """:func:`plan_collaborative` under ``options.stream`` (see :class:`CollaborativeOptions`)."""
    started = time.perf_counter()
    plan = _stream_rule(graph, budget, data, options, context)
    plan.seconds = time.perf_counter() - started  # both candidates' planning, with "auto"
    return plan


def _stream_rule(graph: Graph, budget: Budget, data, options: CollaborativeOptions, context: Context) -> Plan:
    def keep_plan(note: str | None = None) -> Plan:
        plan = plan_collaborative(graph, infer_shapes(graph), budget, data, context.loss, options, context.verbose,
                                  context.latency, context.measure)
        return plan if note is None else _noted(plan, note)

    uniform = float(np.sqrt(budget.fraction))
    if options.stream == "keep":
        return keep_plan()
    if options.stream != "auto":
        plan, note = _plan_stream(graph, budget, data, options, context,
                                  uniform if options.stream == "uniform" else float(options.stream))
        note = f"{note} (stream={options.stream!r})"
        return keep_plan(note) if plan is None else _noted(plan, note)
    latency = context.latency
    if latency is None or budget.metric == "latency" or context.measure is None \
            or not latency.source.startswith("host"):
        return keep_plan("auto: keep (a choice by measured latency needs a host latency table and a MACs or params "
                         "target)")
    try:
        cut, note = _plan_stream(graph, budget, data, options, context, uniform)
    except BudgetError as error:
        return keep_plan(f"auto: keep (uniform cannot: {error})")
    if cut is None:
        return keep_plan(f"auto: keep ({note})")
    candidates = {"keep": keep_plan(), "uniform": cut}
    applied = {rule: apply_plan(graph, plan) for rule, plan in candidates.items()}  # (graph, report) each
    measured = {rule: context.measure(graph, result) for rule, (result, _) in applied.items()}
    ratios = "measured latency / original: " + ", ".join(f"{rule} {ratio:.3f}" for rule, ratio in measured.items())
    if not measured["uniform"] < (1.0 - STREAM_MARGIN) * measured["keep"]:
        return _noted(candidates["keep"], f"auto: keep (stream untouched; {ratios}, the cut is not "
                                          f"{STREAM_MARGIN:.0%} faster)")
    finished = {rule: {} for rule in candidates}
    losses = {rule: finished_loss(graph, *applied[rule], data, options, context, keep=finished[rule])
              for rule in candidates}
    accurate = losses["uniform"] - losses["keep"] <= STREAM_LOSS_MARGIN * abs(losses["keep"])
    chosen = "uniform" if accurate else "keep"
    if "graph" in finished[chosen]:  # compress() returns this one rather than finishing the same rewrite again
        candidates[chosen]._finished = (finished[chosen]["graph"], applied[chosen][1])
    detail = note if accurate else "stream untouched"
    scored = "loss on data after reconstruction: " + ", ".join(f"{rule} {value:.4f}" for rule, value in losses.items())
    refused = "" if accurate else f", the cut's over {STREAM_LOSS_MARGIN:.0%} higher"
    return _noted(candidates[chosen], f"auto: {chosen} ({detail}; {ratios}; {scored}{refused})")


def _noted(plan: Plan, note: str) -> Plan:
    plan.settings["stream_note"] = note
    return plan


def finished_loss(graph: Graph, result: Graph, report: CompressionReport, data, options: CollaborativeOptions,
                  context: Context, keep: dict | None = None) -> float:
    """The loss on ``data`` (its first ``max_samples`` labelled rows) of a plan's rewrite of ``graph``
    (``result, report = apply_plan(graph, plan)``) finished as :meth:`CollaborativeMethod.apply` finishes it
    (reconstruction, BN recalibration): what the user's model would start its finetuning from. The finished
    graph goes into ``keep["graph"]`` when ``keep`` is given."""
    result = finish(graph, result, report, method_inputs(graph, data, options), options, verbose=0)
    if keep is not None:
        keep["graph"] = result
    model = write_model(result)
    return loss_on(model, labelled_batches(data, options.batch_size, options.max_samples),
                   context.loss or default_loss(model))()


class CollaborativeMethod(Method):
    """``method="collaborative"``: joint channel pruning and low-rank decomposition with per-layer rates
    from gradient sensitivity (Li et al. 2021); needs labelled ``data=(x, y)``."""

    name = "collaborative"
    options_class = CollaborativeOptions
    needs_labels = True
    uses_loss = True
    uses_latency = True
    checks_latency = True  # latency_checks: its own measured corrections
    latency_front = True  # latency= under a MACs or params target: no form the table times off the front
    cli_options = ("sensitivity", "allocation", "channel_multiple", "rank_multiple", "pointwise", "stream")
    renamed = {"max_fraction": "max_macs_fraction"}

    def plan(self, graph: Graph, budget: Budget, data, options: CollaborativeOptions, context: Context) -> Plan:
        graph = with_views(graph)[0]  # SeparableConv2D split, Dense on feature maps as 1x1 convs (conv_views.py)
        return plan_with_stream(graph, budget, data, options, context)

    def apply(self, graph: Graph, plan: Plan, data, context: Context) -> tuple[Graph, CompressionReport]:
        options = self.plan_options(plan)
        data = method_inputs(graph, data, options)
        check_finishing(options, data)
        graph, views = with_views(graph)  # as plan() saw it, so the plan's layer names exist
        result, report = apply_plan(graph, plan)
        return restore_views(finish(graph, result, report, data, options, context.verbose), views), report

    def compress(self, graph: Graph, budget: Budget, data, options: CollaborativeOptions,
                 context: Context) -> tuple[Graph, CompressionReport, Plan]:
        plan = self.plan(graph, budget, data, options, context)
        finished = plan.__dict__.pop("_finished", None)  # stream="auto" finished its choice already, on these data
        if finished is not None:
            result, report = finished
            report.notes.update(_plan_notes(plan))  # (the note on the stream was written after it was scored)
            return restore_views(result, with_views(graph)[1]), report, plan
        return (*self.apply(graph, plan, data, context), plan)

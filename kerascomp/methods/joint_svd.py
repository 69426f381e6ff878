"""Spatial SVD (``method="svd"``) and joint SVD across repeated convs (``method="joint_svd"``) as one IR pass.

Every eligible Conv2D ``W[H, W, I, O]`` becomes a (H x 1) conv I -> r followed by a (1 x W) conv
r -> O. Convs of one *group* (same kernel shape, strides, padding, dilation and input shape,
i.e. the repeated convs of one stage) are factored jointly and share one factor conv: a single
Keras layer object called at every member's place, so the sharing reaches ``.keras`` files and
the ``.tflite`` (see ``strip`` for how BatchNormalization after a shared conv is kept from being
folded into it). Layers in no group get plain per-layer SVD.

Ranks: ``allocation="uniform"`` is the paper's rule, one rate for every layer, where a joint
group gets the largest rank whose params match per-layer SVD at that rate
(:func:`kerascomp.decompose.jsvd.matched_rank`, ``2n/(n+1)`` times for square 3x3 convs); the rate
is bisected to meet the budget. ``allocation="global"`` hands every unit's error curve to the
Lagrangian allocation FGA uses.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np
from tqdm.auto import tqdm

from kerascomp.allocation import Candidates, allocate, bisect, front_note
from kerascomp.cost import graph_cost
from kerascomp.decompose import jsvd
from kerascomp.errors import BudgetError, InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.ir import Graph, LayerSpec, Node, Ref, conv_spec
from kerascomp.graph.keras_io import infer_shapes, module_for
from kerascomp.methods.base import Budget, CompressionReport, LayerDecision
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.inputs import check_auto, check_bool, check_choice, check_int, check_number
from kerascomp.methods.pointwise import ONE_BY_ONE, check_pointwise
from kerascomp.methods.registry import Context, Method, build_options
from kerascomp.methods.strip import is_channel_batchnorm
from kerascomp.methods.whitening import conv_whitener, input_moments, unwhiten_layer, whitened_spec, whitening_on

JOINT_VARIANTS = ("left", "right", "bi")
ALLOCATIONS = ("uniform", "global")
GROUPINGS = ("position", "shape")
# layers that count as a step of a block for block_position (they mix or filter the channels)
MIXING = {"Conv1D", "Conv2D", "Conv3D", "DepthwiseConv2D", "SeparableConv2D", "Conv2DTranspose", "Dense",
          "FilterGroupConv2D"}


@dataclass(frozen=True)
class SVDOptions:
    """Knobs of ``method="svd"`` and ``method="joint_svd"``.

    * ``variant``: ``"left"`` (LJSVD, the first (H x 1) conv is shared), ``"right"`` (RJSVD, the
      (1 x W) conv is shared) or ``"bi"`` (Bi-JSVD, both, on two added branches). ``method="svd"``
      ignores it.
    * ``groups``: explicit joint groups, as lists of layer names or as regular expressions
      (each matched with ``re.fullmatch`` against layer names). ``None`` groups automatically.
    * ``grouping``: how automatic groups form. ``"position"`` (the authors' code): convs of the
      same shape *and the same position in their block*, i.e. all first convs of a stage in one
      group and all second convs in another, since they read different input spaces.
      ``"shape"``: every conv of the same kernel, strides and input shape (the rule until 2026-12,
      which put a stage's first and second convs in one group).
    * ``exclude``: a regular expression (or list of layer names) of convs to leave dense.
    * ``allocation``: ``"global"`` (the Lagrangian allocation FGA uses; default since 2026-12, it kept
      more accuracy on a trained ResNet-20) or ``"uniform"`` (one rate everywhere, the paper's rule).
    * ``pointwise``: also factor 1x1 convs (a low-rank pair of 1x1 convs): ``True``, ``False``, or
      ``"auto"`` (default): only when the kxk convs alone cannot reach the budget (mobile nets,
      :mod:`kerascomp.methods.pointwise`).
    * ``min_saving``: leave a layer (or group) dense when factoring it could save less than this
      fraction of the model's params or MACs (default 0.5%): tiny layers such as a 3-channel stem
      cost accuracy and save nothing. Where the budget is out of reach without them (a net of hundreds
      of small layers, NASNet's), the largest of them are taken back, as few as the budget needs.
    * ``rank_multiple``: round ranks down to multiples of this (at least one multiple); ``None``: the
      first of 8, 4, 1 that meets the budget (:mod:`kerascomp.methods.tiles`).
    * ``iterations``: Bi-JSVD alternations (it stops early once the error stops falling).
    * ``recalibrate``: re-estimate BatchNormalization statistics on ``data`` after factoring
      (``"auto"``: when ``data`` is given).
    * ``whiten`` (``method="svd"``): factor each kernel whitened by its input channels' covariance on
      ``data`` (``max_samples`` images), so that the factors and the allocation's errors are those of
      the conv's output, not its kernel (:mod:`kerascomp.methods.whitening`). ``"auto"`` (default):
      whenever ``data`` is given; ``False``: the raw kernels, as before 2026-12-03. joint_svd does not
      whiten (its shared factors read inputs of several convs).
    """

    variant: str = "left"
    groups: list | None = None
    grouping: str = "position"
    exclude: str | list | None = None
    allocation: str = "global"
    pointwise: bool | str = "auto"
    rank_multiple: int | None = None
    min_saving: float = 0.005
    iterations: int = 10
    recalibrate: bool | str = "auto"
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512
    bn_weighting: bool = False
    max_samples: int = 256
    whiten: bool | str = "auto"

    def validate(self, method: str) -> None:
        if method == "joint_svd":
            check_choice("variant", self.variant, JOINT_VARIANTS)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        check_choice("grouping", self.grouping, GROUPINGS)
        check_number("min_saving", self.min_saving, 0.0, 1.0, "[)")
        check_auto("recalibrate", self.recalibrate)
        check_auto("whiten", self.whiten)
        if method == "joint_svd" and self.whiten is True:
            raise InvalidArgumentError("whiten=True is an option of method='svd': a joint factor is shared by convs "
                                       "whose inputs differ, so no one whitening fits it. Drop whiten (joint_svd "
                                       "leaves it off), or use method='svd'.")
        check_bool("bn_weighting", self.bn_weighting)
        check_pointwise(self.pointwise)
        for option in ("iterations", "max_samples"):
            check_int(option, getattr(self, option))
        if self.rank_multiple is not None:
            check_int("rank_multiple", self.rank_multiple)
        if self.groups is not None and (isinstance(self.groups, str) or not isinstance(self.groups, (list, tuple))):
            raise InvalidArgumentError("groups must be a list whose items are lists of layer names or regex strings, "
                                       f"got {type(self.groups).__name__}.")
        if method == "svd" and self.groups:
            raise InvalidArgumentError("groups= is an option of method='joint_svd'; method='svd' factors every layer "
                                       "on its own.")


@dataclass
class _Member:
    """One conv to factor: its spec, its single call and what its factors cost."""

    spec: LayerSpec
    node: Node
    vertical_pixels: int
    output_pixels: int
    macs: int
    params: int
    bias_into: str | None = None   # a following BatchNormalization that absorbs the bias (RJSVD)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.spec.weights[0].shape)

    @property
    def use_bias(self) -> bool:
        return len(self.spec.weights) > 1

    @property
    def activation(self) -> str | None:
        value = self.spec.config.get("activation")
        return None if value in (None, "linear") else value


@dataclass
class _Unit:
    """A joint group (``variant`` left/right/bi) or a single layer (``variant="svd"``)."""

    name: str
    variant: str
    members: list[_Member]
    curve: np.ndarray = field(default_factory=lambda: np.zeros(1))
    ranks: list[int] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, ...]:
        return self.members[0].shape

    def original(self, metric: str) -> int:
        return sum(m.macs if metric == "flops" else m.params for m in self.members)

    def extra(self, member: _Member, metric: str) -> int:
        """Cost of a member's bias and tail layer around its factors."""
        if not member.use_bias:
            return 0
        filters = self.shape[-1]
        if self.variant != "right":
            return filters if metric == "params" else 0
        if member.bias_into:
            return 0
        return 2 * filters if metric == "params" else filters * member.output_pixels  # 1x1 depthwise tail

    def cost(self, rank: int, metric: str) -> int:
        extra = sum(self.extra(m, metric) for m in self.members)
        if metric == "params":
            return jsvd.params(self.shape, rank, len(self.members), self.variant) + extra
        return sum(jsvd.macs(self.shape, rank, m.vertical_pixels, m.output_pixels) for m in self.members) + extra


def _conv_key(member: _Member, shapes: dict) -> tuple:
    config = member.spec.config
    ref = member.node.input_refs()[0]
    return (member.shape, tuple(config.get("strides", (1, 1))), config.get("padding", "valid"),
            tuple(config.get("dilation_rate", (1, 1))), tuple(shapes[ref.node][ref.index][1:]))


def block_position(graph: Graph, node: Node) -> int | None:
    """How many channel-mixing layers separate ``node``'s input from the last *stream* tensor:
    0 for a conv reading a tensor that branches (feeds several calls) or a merge (``Add``,
    ``Concatenate``...), 1 for the conv after it (through BN, activations and other single-input
    layers), and so on. In a residual block, conv1 is at 0 and conv2 at 1. ``None`` when the chain
    goes back to the model input without a branch or merge (a plain VGG-like stack has no blocks:
    its convs then group by shape alone)."""
    position, ref = 0, node.input_refs()[0]
    for _ in range(len(graph.nodes)):
        if ref.node in graph.inputs:
            return None
        if len(graph.consumers(ref.node)) > 1:
            return position
        producer = graph.node(ref.node)
        spec = graph.spec(producer)
        inputs = producer.input_refs()
        if len(inputs) != 1:
            return position  # a merge
        if spec.class_name in MIXING:
            position += 1
        ref = inputs[0]
    return position


def _excluded(name: str, exclude) -> bool:
    if exclude is None:
        return False
    if isinstance(exclude, str):
        return re.fullmatch(exclude, name) is not None
    return name in exclude


def _explicit_groups(members: dict[str, _Member], reasons: dict[str, str], groups: list, shapes: dict) -> list[list[str]]:
    result, seen = [], {}
    for position, entry in enumerate(groups):
        if isinstance(entry, str):
            names = [name for name in members if re.fullmatch(entry, name)]
            matched_elsewhere = [name for name in reasons if re.fullmatch(entry, name)]
            if not names:
                raise InvalidArgumentError(f"groups[{position}]={entry!r} matches no eligible conv layer"
                                           + (f" (it matches {matched_elsewhere}, which cannot be factored: "
                                              f"{'; '.join(reasons[n] for n in matched_elsewhere[:3])})"
                                              if matched_elsewhere else "") + ".")
        elif isinstance(entry, (list, tuple)) and all(isinstance(name, str) for name in entry):
            names = list(entry)
            for name in names:
                if name not in members:
                    why = reasons.get(name, "no such layer in the model")
                    raise InvalidArgumentError(f"groups[{position}] names layer {name!r}, which cannot be grouped: "
                                               f"{why}.")
        else:
            raise InvalidArgumentError(f"groups[{position}] must be a list of layer names or a regex string, "
                                       f"got {entry!r}.")
        if len(names) < 2:
            raise InvalidArgumentError(f"groups[{position}] holds {names}: a joint group needs at least 2 convs.")
        keys = {name: _conv_key(members[name], shapes) for name in names}
        first = names[0]
        for name in names[1:]:
            if keys[name] != keys[first]:
                raise InvalidArgumentError(
                    f"groups[{position}]: layers {first!r} and {name!r} cannot share factors: kernel, strides, "
                    f"padding, dilation and input shape must match, got {keys[first]} and {keys[name]}.")
        for name in names:
            if name in seen:
                raise InvalidArgumentError(f"layer {name!r} is in groups[{seen[name]}] and groups[{position}]; "
                                           "a layer can be in one group only.")
            seen[name] = position
        result.append(names)
    return result


def _bias_target(graph: Graph, member: _Member) -> str | None:
    """A BatchNormalization that alone consumes the conv and can absorb its bias (``mean -= bias``)."""
    if member.activation or not member.use_bias:
        return None
    consumers = graph.consumers(member.node.name)
    if len(consumers) != 1 or not is_channel_batchnorm(graph.spec(consumers[0])):
        return None
    bn = graph.spec(consumers[0])
    return bn.name if len(graph.nodes_of(bn.name)) == 1 else None


def svd_units(graph: Graph, shapes: dict, method: str, options: SVDOptions) -> tuple[list[_Unit], dict[str, str]]:
    before = graph_cost(graph, shapes).by_name()
    eligible, reasons = eligible_convs(graph, shapes, None if options.pointwise else ONE_BY_ONE)
    members: dict[str, _Member] = {}
    for name in eligible:
        spec = graph.layers[name]
        if _excluded(name, options.exclude):
            reasons[name] = "excluded by the exclude= option"
            continue
        node = graph.nodes_of(name)[0]
        ref = node.input_refs()[0]
        in_shape, out_shape = shapes[ref.node][ref.index], shapes[node.name][0]
        members[name] = _Member(spec, node, int(out_shape[1] * in_shape[2]), int(np.prod(out_shape[1:3])),
                                before[name].macs, before[name].params)
    variant = options.variant if method == "joint_svd" else "svd"
    if method != "joint_svd":
        grouped = []
    elif options.groups is not None:
        grouped = _explicit_groups(members, reasons, options.groups, shapes)
    else:
        by_key: dict[tuple, list[str]] = {}
        for name, member in members.items():
            key = _conv_key(member, shapes)
            if options.grouping == "position":
                key += (block_position(graph, member.node),)
            by_key.setdefault(key, []).append(name)
        grouped = [names for names in by_key.values() if len(names) > 1]
    units, in_group = [], set()
    for index, names in enumerate(grouped):
        unit_members = [members[name] for name in names]
        if variant == "right":
            for member in unit_members:
                member.bias_into = _bias_target(graph, member)
        units.append(_Unit(f"jsvd{index}", variant, unit_members))
        in_group.update(names)
    units += [_Unit(name, "svd", [member]) for name, member in members.items() if name not in in_group]
    return units, reasons


def _admitted(units: list[_Unit], small: list[tuple[int, _Unit]], metric: str, total: int, goal: float,
              named: set[str]) -> list[_Unit]:
    """The units ``min_saving`` would leave dense that are factored after all: those a plan names, then, largest
    saving first, as many as the budget needs to be reachable at the lowest ranks (a net of hundreds of small
    layers, NASNet's split separable convs, holds most of its MACs in them)."""
    admitted = [unit for _, unit in small if unit.name in named]
    rest = [(saving, unit) for saving, unit in sorted(small, key=lambda pair: -pair[0])
            if all(unit is not chosen for chosen in admitted)]

    def cheapest(chosen: list[_Unit]) -> float:
        return total - sum(u.original(metric) - u.cost(u.ranks[0], metric) for u in chosen)

    while rest and cheapest(units + admitted) > goal:
        admitted.append(rest.pop(0)[1])
    return admitted


def _allowed_ranks(unit: _Unit, metric: str, multiple: int) -> list[int]:
    """Ranks at which the unit is cheaper than its dense convs, multiples of ``multiple`` (none below it: a
    rank-1 escape would let a step of 8 meet any budget with layers cut to rank 1)."""
    top = jsvd.full_rank(unit.shape, len(unit.members), unit.variant)
    lowest = 2 if unit.variant == "bi" else 1
    original = unit.original(metric)
    ranks = [r for r in range(lowest, top + 1) if r % multiple == 0 and unit.cost(r, metric) < original]
    return ranks


def _uniform_ranks(unit: _Unit, rate: float) -> int:
    """The paper's rule: per-layer SVD rank ``rate * full rank``; a joint group matches its params."""
    svd_rank = max(1, int(rate * jsvd.full_rank(unit.shape)))
    rank = svd_rank if unit.variant == "svd" else jsvd.matched_rank(unit.shape, len(unit.members), svd_rank, unit.variant)
    return rank


def _pick_rank(unit: _Unit, rank: int) -> int:
    """The largest allowed rank <= ``rank``, else the lowest allowed rank."""
    allowed = [r for r in unit.ranks if r <= rank]
    return allowed[-1] if allowed else unit.ranks[0]


def _allocate_uniform(units: list[_Unit], metric: str, fixed: float, budget: float, hint: str,
                      model_total: float) -> tuple[list[int], float]:
    def ranks_at(rate: float) -> list[int]:
        return [_pick_rank(u, _uniform_ranks(u, rate)) for u in units]

    def total(ranks: list[int]) -> float:
        return fixed + sum(u.cost(r, metric) if r else u.original(metric) for u, r in zip(units, ranks))

    if total([0] * len(units)) <= budget:
        return [0] * len(units), 1.0  # already within budget: nothing to factor
    floor = [u.ranks[0] if u.ranks else 0 for u in units]
    if total(floor) > budget:
        what = "MACs" if metric == "flops" else "params"
        reachable = total(floor) / model_total
        raise BudgetError(f"the {what} target cannot be met: at the lowest rank of every factored layer "
                          f"the model still has {total(floor):,.0f} {what} (at best {reachable:.3f} of the model's "
                          f"{what}) against a budget of {budget:,.0f} ({fixed:,.0f} of it in layers this method leaves "
                          "alone). Relax the target or enable more layers. " + hint, reachable=reachable)
    rate, best = bisect(ranks_at, lambda ranks: total(ranks) <= budget, 0.0, 1.0, floor)
    return _raise_ranks(units, best, lambda ranks: total(ranks) <= budget), rate


def _raise_ranks(units: list[_Unit], ranks: list[int], fits) -> list[int]:
    """Spend what integer ranks left of the budget: raise the unit with the lowest relative rank
    to its next allowed rank while the budget holds (keeps the allocation near uniform)."""
    ranks = list(ranks)
    blocked: set[int] = set()
    while True:
        open_units = [i for i, (u, r) in enumerate(zip(units, ranks)) if r and i not in blocked and r < u.ranks[-1]]
        if not open_units:
            return ranks
        index = min(open_units, key=lambda i: ranks[i] / jsvd.full_rank(units[i].shape, len(units[i].members),
                                                                       units[i].variant))
        trial = list(ranks)
        trial[index] = next(r for r in units[index].ranks if r > ranks[index])
        if fits(trial):
            ranks = trial
        else:
            blocked.add(index)


def _unit_ms(unit: _Unit, ranks: list[int], latency) -> np.ndarray | None:
    """Each option's estimated milliseconds by the table (dense first, then ``ranks``), or ``None`` when
    the table lacks a member: a kxk conv's factors are the spatial (kx1 + 1xk) pair, others the low-rank pair."""
    if latency is None or any(m.spec.name not in latency.layers for m in unit.members):
        return None
    times = [sum(latency.original_ms(m.spec.name) for m in unit.members)]
    for rank in ranks:
        times.append(sum(latency.layer_ms(m.spec.name, "spatial" if min(m.shape[:2]) > 1 else "factored",
                                          jsvd.macs(m.shape, rank, m.vertical_pixels, m.output_pixels)
                                          + unit.extra(m, "flops"))
                         for m in unit.members))
    return np.array(times, float)


def _allocate_global(units: list[_Unit], metric: str, fixed: float, budget: float, hint: str,
                     model_total: float, latency=None) -> tuple[list[int], list[Candidates]]:
    candidates = []
    for unit in units:
        ranks = unit.ranks
        costs = [float(unit.original(metric))] + [float(unit.cost(r, metric)) for r in ranks]
        weight = len(unit.members)  # the curve is relative to the whole group's energy
        errors = [0.0] + [weight * float(unit.curve[min(r, len(unit.curve) - 1)]) for r in ranks]
        candidates.append(Candidates(unit.name, np.array(costs), np.array(errors), _unit_ms(unit, ranks, latency)))
    what = "MACs" if metric == "flops" else "params"
    choice = allocate(candidates, fixed, budget, what=what, hint=hint, total=model_total)
    return [0 if index == 0 else unit.ranks[index - 1] for unit, index in zip(units, choice)], candidates


class _Splicer:
    """Builds the calls that replace one member's conv call."""

    def __init__(self, graph: Graph, member: _Member, keras):
        self.graph, self.member, self.keras = graph, member, keras
        self.nodes: list[Node] = []
        self.specs: list[LayerSpec] = []
        config = member.spec.config
        strides = tuple(config.get("strides", (1, 1)))
        dilation = tuple(config.get("dilation_rate", (1, 1)))
        self.padding = config.get("padding", "valid")
        self.trainable = config.get("trainable", True)
        self.vertical_args = dict(strides=(strides[0], 1), dilation=(dilation[0], 1))
        self.horizontal_args = dict(strides=(1, strides[1]), dilation=(1, dilation[1]))

    def call(self, spec: LayerSpec, inputs: list[Ref] | None, final: bool = False) -> Ref:
        node = self.member.node
        name = node.name if final else self.graph.unique_name(f"{node.name}__{spec.name}")
        if inputs is None:
            args, kwargs = node.args, node.kwargs
        else:
            args, kwargs = ([inputs] if len(inputs) > 1 else inputs), {}
        self.nodes.append(Node(name, spec.name, list(args), dict(kwargs)))
        self.specs.append(spec)
        return Ref(name, 0)

    def vertical(self, name: str, kernel: np.ndarray) -> LayerSpec:
        return conv_spec(name, kernel, padding=self.padding, bias=None, activation=None, trainable=self.trainable,
                     keras=self.keras, **self.vertical_args)

    def horizontal(self, name: str, kernel: np.ndarray, bias=None, activation=None) -> LayerSpec:
        return conv_spec(name, kernel, padding=self.padding, bias=bias, activation=activation, trainable=self.trainable,
                     keras=self.keras, **self.horizontal_args)

    def finish(self) -> None:
        self.graph.splice(self.member.node.name, self.nodes, self.specs)


def _tail(splicer: _Splicer, member: _Member, shared: LayerSpec, head: Ref, graph: Graph) -> None:
    """Call the shared (1 x W) conv of an RJSVD member, then its own bias and activation.

    The bias goes into a following BatchNormalization when that alone consumes the conv
    (``moving_mean -= bias``, exact in training and inference); otherwise into a 1x1 depthwise
    conv with unit kernel, which also carries the activation.
    """
    if member.use_bias and member.bias_into:
        bn = graph.layers[member.bias_into]
        offset = int(bool(bn.config.get("scale", True))) + int(bool(bn.config.get("center", True)))
        bn.weights[offset] = (bn.weights[offset] - member.spec.weights[1]).astype(bn.weights[offset].dtype)
    needs_bias = member.use_bias and not member.bias_into
    head = splicer.call(shared, [head], final=not (needs_bias or member.activation))
    name = member.spec.name
    if needs_bias:
        config = {"name": name, "kernel_size": [1, 1], "use_bias": True, "activation": member.activation or "linear",
                  "trainable": splicer.trainable}
        weights = [np.ones((1, 1, member.shape[-1], 1), np.float32), member.spec.weights[1].astype(np.float32)]
        splicer.call(LayerSpec(name, splicer.keras.layers.DepthwiseConv2D, config, weights), [head], final=True)
    elif member.activation:
        splicer.call(LayerSpec(name, splicer.keras.layers.Activation, {"name": name, "activation": member.activation}),
                     [head], final=True)


def factor_unit(graph: Graph, unit: _Unit, rank: int, options: SVDOptions, keras) -> dict:
    matrices = [jsvd.spatial_matrix(m.spec.weights[0]).astype(np.float64) for m in unit.members]
    result = jsvd.decompose(matrices, rank, unit.variant, options.iterations)
    shape = unit.shape
    first = unit.members[0].spec.name
    if unit.variant == "svd":
        approximations = [a @ b for a, b in result]
    elif unit.variant == "left":
        approximations = [result[0] @ b for b in result[1]]
    elif unit.variant == "right":
        approximations = [a @ result[1] for a in result[0]]
    else:
        approximations = result.approximations()
    detail: dict = {"variant": unit.variant, "rank": rank, "errors": {
        m.spec.name: float(np.linalg.norm(a - w) / max(np.linalg.norm(w), 1e-30))
        for m, a, w in zip(unit.members, approximations, matrices)}}
    if unit.variant == "svd":
        [(left, right)] = result
        member = unit.members[0]
        splicer = _Splicer(graph, member, keras)
        vertical, horizontal = jsvd.factor_kernels(left, right, shape)
        head = splicer.call(splicer.vertical(graph.unique_name(f"{member.spec.name}_v"), vertical), None)
        splicer.call(splicer.horizontal(member.spec.name, horizontal, member.spec.weights[1] if member.use_bias else None,
                                        member.activation), [head], final=True)
        splicer.finish()
        return detail
    shared_left = shared_right = None
    if unit.variant == "left":
        shared_left, lefts = result
    elif unit.variant == "right":
        rights, shared_right = result
    else:
        shared_left, lefts, rights, shared_right = result.shared_left, result.lefts, result.rights, result.shared_right
        detail["rank_left"], detail["rank_right"] = shared_left.shape[1], shared_right.shape[0]
        detail["bi_error_history"] = [round(e, 6) for e in result.errors]
    splicer0 = _Splicer(graph, unit.members[0], keras)
    shared_v = shared_h = None
    if shared_left is not None:
        vertical, _ = jsvd.factor_kernels(shared_left, np.zeros((shared_left.shape[1], shape[1] * shape[3])), shape)
        shared_v = splicer0.vertical(graph.unique_name(f"{first}_jsvd_shared_v"), vertical)
        graph.layers[shared_v.name] = shared_v
    if shared_right is not None:
        _, horizontal = jsvd.factor_kernels(np.zeros((shape[0] * shape[2], shared_right.shape[0])), shared_right, shape)
        shared_h = splicer0.horizontal(graph.unique_name(f"{first}_jsvd_shared_h"), horizontal)
        graph.layers[shared_h.name] = shared_h
    for position, member in enumerate(unit.members):
        splicer = _Splicer(graph, member, keras)
        name = member.spec.name
        bias = member.spec.weights[1] if member.use_bias else None
        if unit.variant == "left":
            _, horizontal = jsvd.factor_kernels(shared_left, lefts[position], shape)
            head = splicer.call(shared_v, None)
            splicer.call(splicer.horizontal(name, horizontal, bias, member.activation), [head], final=True)
        elif unit.variant == "right":
            vertical, _ = jsvd.factor_kernels(rights[position], shared_right, shape)
            head = splicer.call(splicer.vertical(graph.unique_name(f"{name}_v"), vertical), None)
            _tail(splicer, member, shared_h, head, graph)
        else:
            _, horizontal = jsvd.factor_kernels(shared_left, lefts[position], shape)
            vertical, _ = jsvd.factor_kernels(rights[position], shared_right, shape)
            left_branch = splicer.call(shared_v, None)
            left_branch = splicer.call(splicer.horizontal(graph.unique_name(f"{name}_h"), horizontal, bias), [left_branch])
            right_branch = splicer.call(splicer.vertical(graph.unique_name(f"{name}_v"), vertical), None)
            right_branch = splicer.call(shared_h, [right_branch])
            add_name = name if not member.activation else graph.unique_name(f"{name}_add")
            joined = splicer.call(LayerSpec(add_name, keras.layers.Add, {"name": add_name}),
                                  [left_branch, right_branch], final=not member.activation)
            if member.activation:
                splicer.call(LayerSpec(name, keras.layers.Activation, {"name": name, "activation": member.activation}),
                             [joined], final=True)
        splicer.finish()
    detail["group"] = [m.spec.name for m in unit.members]
    detail["shared"] = [spec.name for spec in (shared_v, shared_h) if spec is not None]
    return detail


def _fixed_ranks(units: list[_Unit], fixed: dict, reasons: dict, method: str) -> list[int]:
    """A plan's ``{"units": {unit: rank}}`` (0 or absent: dense), checked against each unit's allowed ranks."""
    planned = dict(fixed.get("units", {}))
    unknown = sorted(set(planned) - {unit.name for unit in units})
    if unknown:
        raise InvalidArgumentError(f"the plan factors {', '.join(unknown[:5])}, which method={method!r} cannot "
                                   f"factor in this model ({'; '.join(reasons.get(n, 'not a unit') for n in unknown[:5])}).")
    ranks = []
    for unit in units:
        rank = planned.get(unit.name, 0)
        if rank and rank not in unit.ranks:
            raise InvalidArgumentError(f"the plan's rank {rank!r} for {unit.name!r} is not one method={method!r} "
                                       f"may use there (allowed: {min(unit.ranks)}..{max(unit.ranks)} in its steps).")
        ranks.append(rank)
    return ranks


def svd_pass(graph: Graph, shapes: dict, budget: Budget, method: str, options: SVDOptions = SVDOptions(),
             data=None, verbose: int = 1, fixed: dict | None = None, latency=None) -> tuple[Graph, CompressionReport]:
    """Return a new graph with (joint) spatial SVD applied under ``budget`` (or the ranks of a plan's
    ``fixed`` choices), and the per-layer report. With a :class:`LatencyTable` ``latency``, the global
    allocation offers only the ranks on each layer's latency front."""
    fixed_choices = fixed
    keras = module_for(graph)
    before = graph_cost(graph, shapes)
    costs = before.by_name()
    metric = budget.metric
    what = "MACs" if metric == "flops" else "params"
    result = graph.copy()
    units, reasons = svd_units(result, shapes, method, options)
    blocks: dict[str, list | None] = {}
    if method == "svd" and whitening_on(options.whiten, data, method) and units:
        moments = input_moments(graph, shapes, [unit.members[0].spec.name for unit in units], data,
                                options.max_samples, True, verbose)
        for unit in units:
            member = unit.members[0]
            blocks[member.spec.name] = conv_whitener(moments, member.spec.name)
            unit.members[0] = replace(member, spec=whitened_spec(member.spec, blocks[member.spec.name]))
    for unit in tqdm(units, desc=f"{method} spectra", disable=not verbose):
        unit.ranks = _allowed_ranks(unit, metric, options.rank_multiple)
        if options.allocation == "global":
            unit.curve = jsvd.error_curve([jsvd.spatial_matrix(m.spec.weights[0]) for m in unit.members], unit.variant)
    total = before.macs if metric == "flops" else before.params
    small = []  # (saving, unit): left dense by min_saving alone, unless the budget needs them (_admitted)
    for unit in units:
        if unit.ranks:
            saving = unit.original(metric) - unit.cost(unit.ranks[0], metric)
            if saving < options.min_saving * total:
                small.append((saving, unit))
            continue
        for member in unit.members:
            reasons[member.spec.name] = (
                "too small: no rank is cheaper than the dense conv" if options.rank_multiple == 1 else
                f"too small: no rank in multiples of {options.rank_multiple} is cheaper than the dense conv")
    named = {name for name, rank in (fixed_choices or {}).get("units", {}).items() if rank}
    admitted = _admitted([u for u in units if u.ranks and all(s is not u for _, s in small)], small, metric,
                         total, budget.fraction * total, named)
    for saving, unit in small:
        if any(unit is chosen for chosen in admitted):
            continue
        unit.ranks = []
        for member in unit.members:
            reasons[member.spec.name] = (f"too small: factoring saves at most {saving / total:.2%} of the model's "
                                         f"{what} (min_saving={options.min_saving})")
    units = [unit for unit in units if unit.ranks]
    if not units and budget.fraction < 1.0:
        listed = "; ".join(f"{name}: {reason}" for name, reason in reasons.items())
        raise UnsupportedModelError(f"method={method!r} found nothing to factor in model {graph.name!r} "
                                    f"({listed or 'the model has no conv layers'}).")
    fixed = total - sum(unit.original(metric) for unit in units)
    kept_summary = ", ".join(f"{name} ({reason})" for name, reason in list(reasons.items())[:6])
    hint = f"Left alone: {kept_summary}." if kept_summary else ""
    if not options.pointwise:
        hint += " pointwise=True also factors the 1x1 convs."
    offered: list[Candidates] = []
    if fixed_choices is not None:
        ranks, rate = _fixed_ranks(units, fixed_choices, reasons, method), None
    elif options.allocation == "global":
        (ranks, offered), rate = _allocate_global(units, metric, fixed, budget.fraction * total, hint, total,
                                                  latency), None
    else:
        ranks, rate = _allocate_uniform(units, metric, fixed, budget.fraction * total, hint, total)

    planned = {"macs": before.macs, "params": before.params}
    decisions: dict[str, LayerDecision] = {}
    groups: dict[str, list[str]] = {}
    for unit, rank in zip(units, ranks):
        if not rank:
            continue
        made = set(result.layers)
        detail = factor_unit(result, unit, rank, options, keras)
        if blocks.get(unit.name) is not None:  # the kx1 conv reads the input: undo the whitening on it
            [vertical] = sorted(set(result.layers) - made)
            unwhiten_layer(result, vertical, blocks[unit.name])
            detail["whitened"] = True
        if unit.variant != "svd":
            groups[unit.name] = detail["group"]
        n = len(unit.members)
        unit_params = unit.cost(rank, "params")
        for member in unit.members:
            node_macs = jsvd.macs(unit.shape, rank, member.vertical_pixels, member.output_pixels) + unit.extra(member, "flops")
            node_params = unit_params / n  # shared factors are split evenly between the members in this table
            planned["macs"] += node_macs - member.macs
            name = member.spec.name
            label = f"svd r={rank}" if unit.variant == "svd" else f"joint-{unit.variant} {unit.name} r={rank}"
            member_detail = {k: v for k, v in detail.items() if k != "errors"}
            decisions[name] = LayerDecision(name, member.spec.class_name, label, member.macs, int(node_macs),
                                            member.params, int(round(node_params)), detail["errors"][name],
                                            member_detail)
        planned["params"] += unit_params - unit.original("params")
    report_rows = []
    for name, spec in graph.layers.items():
        if name in decisions:
            report_rows.append(decisions[name])
        elif costs[name].macs or name in reasons:
            action = "kept" if name in reasons else "dense"
            report_rows.append(LayerDecision(name, spec.class_name, action, costs[name].macs, costs[name].macs,
                                             costs[name].params, costs[name].params, reason=reasons.get(name, "")))
    report = CompressionReport(method, budget, report_rows, before.macs, int(planned["macs"]), before.params,
                               int(planned["params"]))
    report.choices = {"units": {unit.name: int(rank) for unit, rank in zip(units, ranks) if rank}}
    if groups:
        report.notes["joint groups"] = "; ".join(f"{k}: {len(v)} convs" for k, v in groups.items())
    if rate is not None:
        report.notes["uniform rate"] = round(rate, 4)
    note = front_note(offered, latency, options.allocation, from_plan=fixed_choices is not None)
    if note:
        report.notes["latency_front"] = note
    return result, report


class SVDMethod(Method):
    """``method="svd"`` (per-layer spatial SVD: kxk -> kx1 + 1xk) and ``method="joint_svd"`` (the
    factors shared by the repeated convs of a stage)."""

    options_class = SVDOptions
    latency_front = True
    cli_options = ("allocation", "pointwise", "variant", "groups", "rank_multiple")
    tile_options = ("rank_multiple",)

    def __init__(self, name: str) -> None:
        self.name = name
        if name == "svd":
            self.cli_options = ("allocation", "pointwise", "rank_multiple")

    def make_options(self, options: dict | None = None) -> SVDOptions:
        built = build_options(SVDOptions, dict(options or {}), self.name, validate=False)
        built.validate(self.name)
        return built

    def run(self, graph: Graph, budget: Budget, data, options: SVDOptions, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        return svd_pass(graph, infer_shapes(graph), budget, self.name, options, data, context.verbose, fixed,
                        context.latency)

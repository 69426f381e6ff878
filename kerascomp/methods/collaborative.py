"""``method="collaborative"``: joint channel pruning and low-rank decomposition (Li et al., CVPR 2021).

1. **Sensitivity** (:mod:`kerascomp.methods.sensitivity`): per dense Conv2D, the mean loss
   gradient on the user's labelled data, the multi-step removal trajectory of its units (input
   channels and singular values, rescored each step) and the exponential fitted to it.
2. **Global rates** (:func:`kerascomp.decompose.collaborative.global_rates`): one Lagrange
   multiplier, solved exactly, gives each layer the fraction of its MACs to remove. Pruning a
   conv's input channels also shrinks the filters of their producer, which the per-layer curves
   do not see, so an outer bisection on the requested total makes the *realised* model meet the
   budget.
3. **Per layer**: pruning alone if it reaches the layer's rate, else the joint trajectory's first
   step that does. Channels are removed physically through the channel graph; a cut rank turns the
   conv into a kxk conv to ``r`` filters plus a 1x1 conv (the reference's output form), both plain
   ``Conv2D`` layers.

Input channels of a conv can go only when it is their sole channel-mixing consumer (inside a
residual block, not on the residual stream); other convs get ranks only. The plan is a
:class:`kerascomp.planner.Plan`; :func:`apply_plan` realises it without data.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from kerascomp.cost import graph_cost
from kerascomp.decompose.collaborative import factor_kernel, global_rates, kept_fraction, values_to_keep
from kerascomp.errors import BudgetError, InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.channels import PER_CHANNEL, ChannelAnalysis, ChannelGroup, analyse_channels, prune_channels
from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import infer_shapes, module_for
from kerascomp.methods.base import Budget, CompressionReport, LayerDecision
from kerascomp.methods.calibrate import recalibrate_batchnorm
from kerascomp.methods.pruning import cost_tables, pruned_cost
from kerascomp.methods.sensitivity import LayerSensitivity, conv_layers, layer_sensitivities
from kerascomp.planner import LayerPlan, Plan, fingerprint

ALLOCATIONS = ("global", "uniform")


@dataclass
class CollaborativeOptions:
    """Options of ``method="collaborative"`` (``kerascomp.plan`` / ``clone_compressed`` keywords).

    Attributes:
        prune / decompose: which unit kinds may be removed (both by default, as in the reference).
        allocation: ``"global"`` (fitted curves and one Lagrange multiplier) or ``"uniform"`` (the
            same fraction of every conv's MACs: the baseline the global rates should beat).
        step_fraction: share of a layer's units removed per step before rescoring (reference: 1%).
        max_fraction: at most this share of a layer's MACs goes (reference: 0.95).
        batch_size / max_samples: batches of the gradient pass and how many labelled rows it reads.
        recalibrate: re-estimate BatchNormalization statistics on ``data`` after compressing
            (``"auto"``: when data is given).
    """

    prune: bool = True
    decompose: bool = True
    allocation: str = "global"
    step_fraction: float = 0.01
    max_fraction: float = 0.95
    batch_size: int = 64
    max_samples: int = 512
    recalibrate: bool | str = "auto"

    def validate(self) -> None:
        for name in ("prune", "decompose"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidArgumentError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        if not (self.prune or self.decompose):
            raise InvalidArgumentError("prune=False and decompose=False leave nothing to remove; enable one.")
        if self.allocation not in ALLOCATIONS:
            raise InvalidArgumentError(f"allocation must be one of {ALLOCATIONS}, got {self.allocation!r}.")
        for name, low, high in (("step_fraction", 0.0, 0.5), ("max_fraction", 0.0, 0.99)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low < value <= high:
                raise InvalidArgumentError(f"{name} must be a number in ({low}, {high}], got {value!r}.")
        for name in ("batch_size", "max_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidArgumentError(f"{name} must be an int >= 1, got {value!r}.")
        if self.recalibrate not in (True, False, "auto"):
            raise InvalidArgumentError(f"recalibrate must be True, False or 'auto', got {self.recalibrate!r}.")


def collaborative_options(options: dict) -> CollaborativeOptions:
    try:
        built = CollaborativeOptions(**options)
    except TypeError as error:
        raise InvalidArgumentError(f"unknown option for method='collaborative': {error}. Known: "
                                   f"{sorted(CollaborativeOptions.__dataclass_fields__)}.") from None
    built.validate()
    return built


@dataclass
class _Conv:
    """A dense conv the method may compress, with what its decisions need."""

    spec: LayerSpec
    pixels: int
    group: ChannelGroup | None
    positions: np.ndarray | None
    fixed_reason: str
    sensitivity: LayerSensitivity | None = None

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


def _input_group(graph: Graph, analysis: ChannelAnalysis, layer: str) -> tuple[ChannelGroup | None, np.ndarray | None, str]:
    """The channel group a conv's input channels can be pruned through, or why there is none."""
    atoms = analysis.in_atoms.get(layer)
    if atoms is None or not len(atoms):
        return None, None, "its input channels are not tracked"
    located = {analysis.channel_of_atom[int(atom)][0] for atom in atoms}
    if len(located) != 1:
        return None, None, "its input concatenates several channel groups"
    group = analysis.groups[located.pop()]
    positions = analysis.input_channels(group, layer)
    if group.blocked:
        return None, None, f"input channels fixed: {group.reason()}"
    if len(set(positions.tolist())) != len(positions) or len(positions) != group.size:
        return None, None, "its input repeats or drops channels of its group"
    mixing = [c for c in group.consumers if c != layer and graph.layers[c].class_name not in PER_CHANNEL]
    if mixing:
        return None, None, f"input channels also feed {', '.join(mixing[:3])} (e.g. the residual stream)"
    return group, positions, ""


def _convs(graph: Graph, shapes: dict, analysis: ChannelAnalysis, options: CollaborativeOptions) -> tuple[list[_Conv], dict[str, str]]:
    eligible = set(conv_layers(graph))
    costs = graph_cost(graph, shapes).by_name()
    convs, reasons = [], {}
    for name, spec in graph.layers.items():
        if costs[name].macs == 0 and costs[name].counted:
            continue
        if name not in eligible:
            reasons[name] = (f"{spec.class_name} is not a dense channels_last Conv2D" if costs[name].counted
                             else f"unknown layer class {spec.class_name}")
            continue
        if len(graph.nodes_of(name)) != 1:
            reasons[name] = "shared layer (called more than once)"
            continue
        pixels = int(np.prod(shapes[graph.nodes_of(name)[0].name][0][1:-1]))
        group, positions, why = _input_group(graph, analysis, name) if options.prune else (None, None, "prune=False")
        convs.append(_Conv(spec, pixels, group, positions, why))
    return convs, reasons


@dataclass
class _Choice:
    removed: np.ndarray
    rank: int | None
    score: float


def _choose(conv: _Conv, rate: float) -> _Choice:
    """The layer's decision at a requested MACs reduction ``rate``: pruning alone if it gets there."""
    sensitivity = conv.sensitivity
    if rate <= 0:
        return _Choice(np.zeros(0, int), None, 0.0)
    pruning, joint = sensitivity.pruning, sensitivity.joint
    reach = pruning.macs_removed[-1] if pruning is not None and len(pruning.macs_removed) else 0.0
    if reach > 0 and (reach >= rate - 1e-12 or not len(joint.macs_removed) or joint.macs_removed[-1] <= reach):
        index = min(int(np.searchsorted(pruning.macs_removed, rate - 1e-12)), len(pruning.macs_removed) - 1)
        return _Choice(np.sort(pruning.order[:pruning.units_removed[index]]), None, float(pruning.score[index]))
    if not len(joint.macs_removed):
        return _Choice(np.zeros(0, int), None, 0.0)
    index = joint.point(rate)
    height, width, channels, filters = conv.shape
    rank = int(joint.rank[index])
    removed = np.sort(joint.channel_order[:joint.channels_removed[index]])
    low_rank = rank < min(height * width * (channels - len(removed)), filters)
    return _Choice(removed, rank if low_rank else None, float(joint.score[index]))


def _atoms(convs: list[_Conv], choices: list[_Choice]) -> np.ndarray:
    found = [np.concatenate([conv.group.channels[conv.positions[i]] for i in choice.removed])
             for conv, choice in zip(convs, choices) if len(choice.removed)]
    return np.concatenate(found) if found else np.zeros(0, np.int64)


def _realised(tables, analysis: ChannelAnalysis, convs: list[_Conv], choices: list[_Choice],
              metric: int) -> float:
    """MACs (metric 0) or params (1) of the model these choices give, without building it."""
    removed = _atoms(convs, choices)
    total = float(pruned_cost(tables, removed)[metric])
    removed_set = set(removed.tolist())
    for conv, choice in zip(convs, choices):
        if choice.rank is None:
            continue
        height, width, channels, filters = conv.shape
        kept_in = channels - len(choice.removed)
        kept_out = filters - sum(int(a) in removed_set for a in analysis.out_atoms[conv.spec.name])
        area = height * width
        # the factors are used only where they are cheaper than the (pruned) dense conv
        change = min(0, choice.rank * (area * kept_in + kept_out) - area * kept_in * kept_out)
        total += change * (conv.pixels if metric == 0 else 1)
    return total


def _rates(convs: list[_Conv], requested: float, metric: int, options: CollaborativeOptions) -> np.ndarray:
    sizes = np.array([conv.macs if metric == 0 else conv.weights for conv in convs], float)
    if options.allocation == "uniform":
        return np.full(len(convs), min(requested / sizes.sum(), options.max_fraction))
    p1 = np.array([conv.sensitivity.p1 for conv in convs])
    p2 = np.array([conv.sensitivity.p2 for conv in convs])
    return global_rates(sizes, p1, p2, min(requested, options.max_fraction * sizes.sum()), options.max_fraction)


def _binding(convs: list[_Conv], choices: list[_Choice], reasons: dict[str, str], graph: Graph, shapes: dict) -> str:
    """The layers whose floor keeps the model above the target, largest remaining cost first."""
    costs = graph_cost(graph, shapes).by_name()
    rows = []
    for conv, choice in zip(convs, choices):
        height, width, channels, filters = conv.shape
        left = kept_fraction(height * width, channels, filters, channels - len(choice.removed), choice.rank)
        why = "at max_fraction" + ("" if conv.group is not None else f"; {conv.fixed_reason}")
        rows.append((left * conv.macs, f"{conv.spec.name} ({left:.0%} of its MACs left: {why})"))
    rows += [(costs[name].macs, f"{name} ({reason})") for name, reason in reasons.items()]
    rows.sort(key=lambda row: -row[0])
    return "; ".join(text for _, text in rows[:5])


def plan_collaborative(graph: Graph, shapes: dict, budget: Budget, data, loss, options: CollaborativeOptions,
                       verbose: int = 1) -> Plan:
    """Score, allocate and decide every conv; returns the :class:`Plan` (the graph is not modified)."""
    started = time.perf_counter()
    analysis = analyse_channels(graph, shapes)
    convs, reasons = _convs(graph, shapes, analysis, options)
    if not convs:
        listed = "; ".join(f"{name}: {why}" for name, why in reasons.items()) or "the model has no conv layers"
        raise UnsupportedModelError(f"method='collaborative' found no dense Conv2D to compress in {graph.name!r} "
                                    f"({listed}).")
    prunable = {conv.spec.name: conv.group is not None for conv in convs}
    sensitivities = layer_sensitivities(graph, data, loss, options.batch_size, options.max_samples, prunable,
                                        options.step_fraction, options.max_fraction, options.decompose, verbose)
    by_name = {s.layer: s for s in sensitivities}
    for conv in convs:
        if conv.spec.name not in by_name:
            reasons[conv.spec.name] = conv.fixed_reason if not options.decompose else "no unit saves MACs"
    convs = [conv for conv in convs if conv.spec.name in by_name]
    if not convs:
        raise BudgetError(f"method='collaborative' can remove nothing from {graph.name!r}: "
                          + "; ".join(f"{name}: {why}" for name, why in reasons.items()))
    for conv in convs:
        conv.sensitivity = by_name[conv.spec.name]
    metric = 0 if budget.metric == "flops" else 1
    tables = cost_tables(graph, shapes, analysis)
    before = pruned_cost(tables, np.zeros(0, np.int64))
    target = budget.fraction * before[metric]
    sizes = float(sum(conv.macs if metric == 0 else conv.weights for conv in convs))

    def decide(requested: float) -> tuple[np.ndarray, list[_Choice]]:
        rates = _rates(convs, requested, metric, options)
        return rates, [_choose(conv, rate) for conv, rate in zip(convs, rates)]

    rates, choices = decide(options.max_fraction * sizes)
    floor = _realised(tables, analysis, convs, choices, metric)
    what = "MACs" if metric == 0 else "params"
    if floor > target:
        raise BudgetError(
            f"method='collaborative' cannot reach target_{budget.metric}={budget.fraction}: compressing every conv "
            f"as far as it may leaves {floor / before[metric]:.3f} of the {what}. Binding layers: "
            f"{_binding(convs, choices, reasons, graph, shapes)}. Raise the target or max_fraction.")
    low, high = 0.0, options.max_fraction * sizes
    untouched = decide(0.0)
    if _realised(tables, analysis, convs, untouched[1], metric) <= target:
        rates, choices, low, high = *untouched, 0.0, 0.0
    for _ in range(40 if high > 0 else 0):
        middle = 0.5 * (low + high)
        trial = decide(middle)
        if _realised(tables, analysis, convs, trial[1], metric) <= target:
            high, (rates, choices) = middle, trial
        else:
            low = middle
    result = _plan(graph, shapes, analysis, convs, choices, rates, reasons, budget, options)
    result.seconds = time.perf_counter() - started
    return result


def _plan(graph: Graph, shapes: dict, analysis: ChannelAnalysis, convs: list[_Conv], choices: list[_Choice],
          rates: np.ndarray, reasons: dict[str, str], budget: Budget, options: CollaborativeOptions) -> Plan:
    entries = [LayerPlan(conv.spec.name, "Conv2D", "dense", 0, 0, 0, 0, [int(i) for i in choice.removed],
                         choice.rank, None, float(rate), choice.score, conv.fixed_reason if conv.group is None else "")
               for conv, choice, rate in zip(convs, choices, rates)]
    entries += [LayerPlan(name, graph.layers[name].class_name, "kept", 0, 0, 0, 0, reason=reason)
                for name, reason in reasons.items()]
    draft = Plan("collaborative", graph.name, fingerprint(graph), budget.metric, budget.fraction, entries, 0, 0, 0, 0,
                 settings={k: getattr(options, k) for k in CollaborativeOptions.__dataclass_fields__})
    gradients = {conv.spec.name: conv.sensitivity.gradient for conv in convs}
    _realise(graph, analysis, draft, gradients)  # fills kept_values, actions and costs
    return draft


def _removal(graph: Graph, analysis: ChannelAnalysis, plan: Plan) -> dict[int, list[int]]:
    removal: dict[int, list[int]] = {}
    for entry in plan.layers:
        if not entry.removed_inputs:
            continue
        group, positions, why = _input_group(graph, analysis, entry.layer)
        if group is None:
            raise InvalidArgumentError(f"the plan removes input channels of {entry.layer!r}, but {why}.")
        if max(entry.removed_inputs) >= len(positions) or min(entry.removed_inputs) < 0:
            raise InvalidArgumentError(f"the plan removes input position {max(entry.removed_inputs)} of "
                                       f"{entry.layer!r}, which has {len(positions)} inputs.")
        removal.setdefault(group.index, []).extend(int(positions[i]) for i in entry.removed_inputs)
    return removal


def _kept_indices(analysis: ChannelAnalysis, removal: dict[int, list[int]], layer: str, role: str) -> np.ndarray:
    atoms = analysis.in_atoms[layer] if role == "in" else analysis.out_atoms[layer]
    gone = {int(a) for g, channels in removal.items() for c in channels for a in analysis.groups[g].channels[c]}
    return np.array([i for i, atom in enumerate(atoms) if int(atom) not in gone], dtype=np.int64)


def _factored(spec: LayerSpec, kernel: np.ndarray, kept: list[int], basis_name: str, keras) -> list[LayerSpec]:
    basis, pointwise = factor_kernel(kernel, np.asarray(kept, dtype=np.int64))
    config = spec.config
    first = {key: value for key, value in config.items()
             if key not in ("name", "filters", "use_bias", "activation", "bias_initializer", "bias_regularizer",
                            "bias_constraint", "activity_regularizer")}
    first.update(name=basis_name, filters=len(kept), use_bias=False, activation=None)
    second = {key: value for key, value in config.items()
              if key not in ("kernel_size", "strides", "padding", "dilation_rate", "name")}
    second.update(name=spec.name, kernel_size=(1, 1), strides=(1, 1), padding="valid", dilation_rate=(1, 1),
                  groups=1)
    return [LayerSpec(basis_name, keras.layers.Conv2D, first, [basis]),
            LayerSpec(spec.name, keras.layers.Conv2D, second, [pointwise] + list(spec.weights[1:]))]


def _realise(graph: Graph, analysis: ChannelAnalysis, plan: Plan, gradients: dict[str, np.ndarray] | None) -> Graph:
    """Build the compressed graph of ``plan``; with ``gradients`` (planning) choose the kept singular
    values, without (re-applying) use the plan's. Fills in each entry's action and costs."""
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
            entry.kept_values = values_to_keep(kernel, gradient, entry.rank).tolist()
        if entry.kept_values is None or len(entry.kept_values) != entry.rank or \
                max(entry.kept_values) >= min(kernel.shape[-1], height * width * channels):
            raise InvalidArgumentError(f"the plan's kept singular values of {entry.layer!r} do not fit its kernel "
                                       f"{kernel.shape}; re-plan for this model.")
        chain = _factored(spec, kernel, entry.kept_values, result.unique_name(f"{entry.layer}_basis"), keras)
        result.replace_layer(entry.layer, chain)
    total_before, total_after = graph_cost(graph, infer_shapes(graph)), graph_cost(result, infer_shapes(result))
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


def apply_plan(graph: Graph, plan: Plan, data=None, recalibrate: bool | str = "auto", max_samples: int = 512,
               verbose: int = 1) -> tuple[Graph, CompressionReport]:
    """Realise ``plan`` on ``graph`` (which must be the model it was made for); ``data`` only
    re-estimates BatchNormalization statistics."""
    if not isinstance(plan, Plan):
        raise InvalidArgumentError(f"plan must be a kerascomp.Plan (see kerascomp.plan), got {type(plan).__name__}.")
    missing = [entry.layer for entry in plan.layers if entry.layer not in graph.layers]
    if missing:
        raise InvalidArgumentError(f"the plan names layers this model lacks: {', '.join(missing[:5])}. "
                                   "Apply a plan only to the model it was made for.")
    if plan.fingerprint != fingerprint(graph):
        warnings.warn(f"the plan was made for model {plan.model!r} with other weights (fingerprint "
                      f"{plan.fingerprint} != {fingerprint(graph)}); its channel and rank choices may no longer be "
                      "the best for these weights.", UserWarning, stacklevel=3)
    shapes = infer_shapes(graph)
    applied = Plan.from_json(plan.to_json())
    result = _realise(graph, analyse_channels(graph, shapes), applied, None)
    recalibrated = 0
    if recalibrate is True and data is None:
        raise InvalidArgumentError("recalibrate=True needs data= (inputs to re-estimate BatchNormalization on).")
    if recalibrate is True or (recalibrate == "auto" and data is not None):
        result, recalibrated = recalibrate_batchnorm(result, data, max_samples)
    decisions = [LayerDecision(e.layer, e.class_name, e.action, e.macs_before, e.macs_after, e.params_before,
                               e.params_after, detail={"rank": e.rank, "inputs_removed": len(e.removed_inputs),
                                                       "rate": round(e.rate, 4), "score": e.score}, reason=e.reason)
                 for e in applied.layers]
    report = CompressionReport("collaborative", Budget(plan.metric, plan.target), decisions, applied.macs_before,
                               applied.macs_after, applied.params_before, applied.params_after,
                               notes={"recalibrated_batchnorms": recalibrated, "planned_in_s": round(plan.seconds, 1)})
    return result, report

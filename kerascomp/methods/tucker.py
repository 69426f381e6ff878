"""``method="tucker"``: every kxk Conv2D becomes 1x1 -> kxk -> 1x1 by Tucker-2 (tensorly).

Ranks are ``(round(rho * C), round(rho * N))``. A mode kept at full rank has a square orthogonal factor,
which folds into the core exactly: ``(C, r_out)`` is the pair kxk ``C -> r_out`` -> 1x1 and ``(r_in, N)`` the pair
1x1 ``C -> r_in`` -> kxk, one op and its MACs fewer than the chain (on small inputs each op has a fixed cost; the
global allocation offers both when it has a latency table to time them). A 1x1 conv (``pointwise``, by default only when
the kxk convs alone cannot reach the budget) has no spatial core: its Tucker-2 at ranks ``(r, r)``
is a low-rank pair 1x1 ``C -> r`` -> 1x1 ``r -> N`` (the core folded into the second factor). ``allocation="uniform"`` bisects one ``rho`` for
every layer until the model meets the budget (the uniform-rate baseline collaborative compression
is compared with); ``allocation="global"`` gives each layer's rank options, costed exactly and
with the truncated-HOSVD error, to the Lagrangian allocation FGA and SVD use. A layer keeps its
dense conv where no rank saves anything.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tqdm.auto import tqdm

from kerascomp.allocation import Candidates, allocate, bisect, front_note
from kerascomp.cost import graph_cost
from kerascomp.decompose.tucker import compose, truncation_errors, tucker2
from kerascomp.errors import BudgetError, InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.ir import Graph, LayerSpec, conv_spec
from kerascomp.graph.keras_io import infer_shapes, module_for
from kerascomp.methods.base import Budget, CompressionReport, build_report
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.inputs import check_auto, check_bool, check_choice, check_int
from kerascomp.methods.pointwise import ONE_BY_ONE, check_pointwise
from kerascomp.methods.registry import Context, Method
from kerascomp.methods.whitening import conv_whitener, input_moments, unwhiten_layer, whitened_spec, whitening_on

ALLOCATIONS = ("uniform", "global")
RHOS = np.linspace(0.02, 1.0, 50)


@dataclass(frozen=True)
class TuckerOptions:
    """Options of ``method="tucker"``: ``allocation`` (``"uniform"`` or ``"global"``), ``iterations``
    of HOOI, ``recalibrate`` BatchNormalization on ``data`` (``"auto"``: when given), ``max_samples``;
    ``pointwise``: also take 1x1 convs, as a low-rank pair (``True``, ``False``, or ``"auto"``, the
    default: only when the kxk convs alone cannot reach the budget); ``whiten``: decompose each kernel
    whitened by its input channels' covariance on ``data`` (``max_samples`` images), so that the ranks
    and factors follow the conv's output error (:mod:`kerascomp.methods.whitening`; ``"auto"``, the
    default: whenever ``data`` is given; ``False``: the raw kernels, as before 2026-12-03);
    ``rank_multiple``: both ranks are multiples of this, or the full channel count where that is smaller
    (XNNPACK computes channels in tiles, so a rank of 6 costs about what 8 costs); ``None``, the
    default since 2026-12-05: the first of 8, 4 and 1 that meets the budget
    (:mod:`kerascomp.methods.tiles`); ``fold``: whether the global allocation also offers the forms with one
    mode at full rank, its factor folded into the core (one op fewer): ``True``, ``False``, or ``"auto"``, the
    default: only with a latency table to time them."""

    allocation: str = "global"
    pointwise: bool | str = "auto"
    iterations: int = 30
    recalibrate: bool | str = "auto"
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512
    bn_weighting: bool = False
    max_samples: int = 256
    whiten: bool | str = "auto"
    rank_multiple: int | None = None
    fold: bool | str = "auto"

    def validate(self) -> None:
        check_auto("fold", self.fold)
        check_choice("allocation", self.allocation, ALLOCATIONS)
        if self.rank_multiple is not None:
            check_int("rank_multiple", self.rank_multiple)
        check_auto("whiten", self.whiten)
        check_int("iterations", self.iterations)
        check_int("max_samples", self.max_samples)
        check_auto("recalibrate", self.recalibrate)
        check_bool("bn_weighting", self.bn_weighting)
        check_pointwise(self.pointwise)


def tucker_cost(kernel_shape: tuple[int, ...], ranks: tuple[int, int] | None, in_pixels: int, out_pixels: int,
                metric: str) -> int:
    """MACs (``metric="flops"``) or params of a conv in its Tucker-2 form with ``ranks`` (``None``: dense).
    A 1x1 conv's form is the pair C -> r (with the stride) -> N; a kxk conv's the chain 1x1(r_in) on the
    input's pixels, kxk(r_in -> r_out) and 1x1(r_out -> N) on the output's."""
    height, width, channels, filters = kernel_shape
    if ranks is None:
        weights = height * width * channels * filters
        return weights * out_pixels if metric == "flops" else weights
    r_in, r_out = ranks
    if (height, width) == (1, 1):
        return (channels + filters) * r_in * (1 if metric == "params" else out_pixels)
    first, last = folds(kernel_shape, ranks)
    if metric == "params":
        return (0 if first else channels * r_in) + height * width * r_in * r_out + (0 if last else r_out * filters)
    return ((0 if first else in_pixels * channels * r_in)
            + out_pixels * (height * width * r_in * r_out + (0 if last else r_out * filters)))


def folds(kernel_shape: tuple[int, ...], ranks: tuple[int, int]) -> tuple[bool, bool]:
    """Whether a kxk conv's Tucker-2 at ``ranks`` folds its first and its last factor into the core: a mode
    at full rank has a square factor, which the core absorbs exactly. Only one of the two folds (at
    ``(C, N)`` the chain stays whole: the full-rank Tucker-2 that the lossless checks rewrite to)."""
    _, _, channels, filters = kernel_shape
    if tuple(kernel_shape[:2]) == (1, 1) or (ranks[0] == channels and ranks[1] == filters):
        return False, False
    return ranks[0] == channels, ranks[1] == filters


def table_form(kernel_shape: tuple[int, ...], ranks: tuple[int, int]) -> str:
    """The latency table's form of a Tucker-2 at ``ranks``: ``"factored"`` (kxk(r) + 1x1: a 1x1 conv's
    low-rank pair, or the first factor folded), ``"tucker_in"`` (1x1 + kxk: the last folded) or
    ``"tucker"`` (the chain)."""
    if tuple(kernel_shape[:2]) == (1, 1):
        return "factored"
    first, last = folds(kernel_shape, ranks)
    return "factored" if first else "tucker_in" if last else "tucker"


def input_factor(made: set[str], name: str) -> str:
    """The layer of conv ``name``'s Tucker-2 (``made``: the names it added) that reads the conv's input."""
    for prefix in (f"{name}_tucker_in", f"{name}_tucker_core"):
        found = sorted(n for n in made if n.startswith(prefix))
        if found:
            return found[0]
    return name


def snap(value: float, step: int, full: int) -> int:
    """``value`` rounded to a multiple of ``step`` (at least one step), capped at ``full``."""
    return min(full, max(step, step * int(round(value / step))))


@dataclass
class _Layer:
    spec: LayerSpec
    in_pixels: int
    out_pixels: int
    step: int = 1

    @property
    def pair(self) -> bool:
        """A 1x1 conv: factored as a low-rank pair, one rank (``r_in == r_out``)."""
        return tuple(self.spec.weights[0].shape[:2]) == (1, 1)

    def ranks(self, rho: float) -> tuple[int, int]:
        _, _, channels, filters = self.spec.weights[0].shape
        if self.pair:
            rank = snap(rho * min(channels, filters), self.step, min(channels, filters))
            return rank, rank
        return snap(rho * channels, self.step, channels), snap(rho * filters, self.step, filters)

    def cost(self, ranks: tuple[int, int] | None, metric: str) -> int:
        return tucker_cost(self.spec.weights[0].shape, ranks, self.in_pixels, self.out_pixels, metric)

    def best(self, rho: float, metric: str) -> tuple[int, int] | None:
        """The ranks at ``rho``, or ``None`` (stay dense) where they save nothing."""
        ranks = self.ranks(rho)
        return ranks if self.cost(ranks, metric) < self.cost(None, metric) else None

    def offers(self, metric: str, folded: bool) -> list[tuple[int, int]]:
        """The global allocation's ranks, each saving over the dense conv, in order and without repeats: one
        ``rho`` on both modes and, with ``folded``, one mode at full rank (its factor folded), the other at ``rho``."""
        _, _, channels, filters = self.spec.weights[0].shape
        dense = self.cost(None, metric)
        found = {}
        for rho in RHOS:
            r_in, r_out = self.ranks(rho)
            for ranks in ((r_in, r_out),) + (((channels, r_out), (r_in, filters)) if folded else ()):
                if self.cost(ranks, metric) < dense:
                    found[ranks] = None
        return list(found)

    def best_at(self, rank: int, metric: str) -> bool:
        """Whether the pair of rank ``rank`` is cheaper than the dense 1x1 conv."""
        return self.cost((rank, rank), metric) < self.cost(None, metric)


def _fixed_ranks(layers: list[_Layer], fixed: dict, reasons: dict) -> list[tuple[int, int] | None]:
    """A plan's ``{"layers": {name: [r_in, r_out]}}``, checked against each kernel."""
    planned = dict(fixed.get("layers", {}))
    names = {layer.spec.name for layer in layers}
    unknown = sorted(set(planned) - names)
    if unknown:
        raise InvalidArgumentError(f"the plan decomposes {', '.join(unknown[:5])}, which Tucker cannot take in this "
                                   f"model ({'; '.join(reasons.get(n, 'no MACs') for n in unknown[:5])}).")
    chosen = []
    for layer in layers:
        ranks = planned.get(layer.spec.name)
        if ranks is not None:
            _, _, channels, filters = layer.spec.weights[0].shape
            if (len(ranks) != 2 or not all(isinstance(r, int) and not isinstance(r, bool) for r in ranks)
                    or not (1 <= ranks[0] <= channels and 1 <= ranks[1] <= filters)):
                raise InvalidArgumentError(f"the plan's Tucker ranks for {layer.spec.name!r} must be [r_in, r_out] "
                                           f"with 1 <= r_in <= {channels} and 1 <= r_out <= {filters}, got {ranks!r}.")
            ranks = (ranks[0], ranks[1])
        chosen.append(ranks)
    return chosen


def tucker_pass(graph: Graph, shapes: dict, budget: Budget, data, options: TuckerOptions,
                verbose: int = 1, fixed: dict | None = None, latency=None) -> tuple[Graph, CompressionReport]:
    """Tucker-2 every kxk conv under ``budget`` (or with the ranks of a plan's ``fixed`` choices). With
    a :class:`LatencyTable` ``latency``, the global allocation offers only the ranks on each layer's
    latency front."""
    plan_choices = fixed
    keras = module_for(graph)
    before = graph_cost(graph, shapes)
    eligible, reasons = eligible_convs(graph, shapes, None if options.pointwise else ONE_BY_ONE)
    layers = []
    for name in eligible:
        spec = graph.layers[name]
        node = graph.nodes_of(name)[0]
        source = node.input_refs()[0]
        layers.append(_Layer(spec, int(np.prod(shapes[source.node][source.index][1:-1])),
                             int(np.prod(shapes[node.name][0][1:-1])), options.rank_multiple or 1))
    if not layers:
        raise UnsupportedModelError(f"method='tucker' found no Conv2D to decompose in {graph.name!r} ("
                                    + "; ".join(f"{n}: {r}" for n, r in reasons.items()) + ").")
    blocks: dict[str, list | None] = {}
    if whitening_on(options.whiten, data, "tucker"):
        moments = input_moments(graph, shapes, [layer.spec.name for layer in layers], data, options.max_samples,
                                True, verbose)
        for layer in layers:
            blocks[layer.spec.name] = conv_whitener(moments, layer.spec.name)
            layer.spec = whitened_spec(layer.spec, blocks[layer.spec.name])
    metric = budget.metric
    total = before.macs if metric == "flops" else before.params
    fixed = total - sum(layer.cost(None, metric) for layer in layers)
    goal = budget.fraction * total
    offered: list[Candidates] = []
    if plan_choices is not None:
        chosen = _fixed_ranks(layers, plan_choices, reasons)
    elif options.allocation == "uniform":
        chosen = _uniform(layers, metric, fixed, goal, total, reasons, options.pointwise)
    else:
        folded = latency is not None if options.fold == "auto" else bool(options.fold)
        chosen, offered = _global(layers, metric, fixed, goal, total, reasons, options.pointwise, latency, folded)
    result = graph.copy()
    errors, parts = {}, {}
    for layer, ranks in tqdm(list(zip(layers, chosen)), desc="tucker", disable=not verbose):
        if ranks is None:
            continue
        before_names = set(result.layers)
        errors[layer.spec.name] = factor_layer(result, layer.spec, ranks, options.iterations, keras)
        made = set(result.layers) - before_names
        if blocks.get(layer.spec.name) is not None:  # the factor that reads the input: undo the whitening on it
            unwhiten_layer(result, input_factor(made, layer.spec.name), blocks[layer.spec.name])
        parts[layer.spec.name] = [layer.spec.name] + sorted(made)
    rewritten = {layer.spec.name: (_label(layer, ranks),
                                   errors.get(layer.spec.name), {"ranks": list(ranks) if ranks else None})
                 for layer, ranks in zip(layers, chosen)}
    notes = {"allocation": options.allocation}
    note = front_note(offered, latency, options.allocation, from_plan=plan_choices is not None)
    if note:
        notes["latency_front"] = note
    report = build_report("tucker", budget, graph, result, shapes, rewritten, reasons, parts, notes=notes,
                          choices={"layers": {layer.spec.name: list(ranks) for layer, ranks in zip(layers, chosen)
                                              if ranks is not None}})
    return result, report


def _label(layer: _Layer, ranks: tuple[int, int] | None) -> str:
    if ranks is None:
        return "dense"
    if layer.pair:
        return f"tucker pair r={ranks[0]}"
    first, last = folds(layer.spec.weights[0].shape, ranks)
    return f"tucker r_in={ranks[0]} r_out={ranks[1]}" + (" (first factor folded)" if first else
                                                         " (last factor folded)" if last else "")


def factor_layer(graph: Graph, spec: LayerSpec, ranks: tuple[int, int], iterations: int, keras) -> float:
    """Replace the conv ``spec`` in ``graph`` by its Tucker-2 chain 1x1(r_in) -> kxk(r_in, r_out) -> 1x1
    (a 1x1 conv: the pair 1x1(r) -> 1x1, its core folded into the second factor; a kxk conv with one mode
    at full rank: that mode's factor folded into the core, :func:`folds`); return the kernel's relative
    reconstruction error. The layer that reads the input is named ``<name>_tucker_in`` (or
    ``<name>_tucker_core`` when the first factor is folded); the last keeps ``name`` and the bias."""
    first, core, last = tucker2(spec.weights[0], *ranks, iterations=iterations)
    error = float(np.linalg.norm(compose(first, core, last) - spec.weights[0]) /
                  max(np.linalg.norm(spec.weights[0]), 1e-12))
    config, trainable = spec.config, spec.config.get("trainable", True)
    bias = spec.weights[1] if len(spec.weights) > 1 else None
    if tuple(spec.weights[0].shape[:2]) == (1, 1):
        second = (core[0, 0] @ last[0, 0])[None, None].astype(last.dtype)
        pair = [conv_spec(graph.unique_name(f"{spec.name}_tucker_in"), first, config.get("strides", (1, 1)),
                          config.get("padding", "valid"), (1, 1), None, None, trainable, keras),
                conv_spec(spec.name, second, (1, 1), "valid", (1, 1), bias, config.get("activation"), trainable,
                          keras)]
        graph.replace_layer(spec.name, pair)
        return error
    fold_first, fold_last = folds(spec.weights[0].shape, ranks)
    if fold_first:  # first is C x C orthogonal: the core reads the input directly
        core = np.einsum("ca,hwab->hwcb", first[0, 0], core).astype(core.dtype)
    if fold_last:
        core = np.einsum("hwab,bn->hwan", core, last[0, 0]).astype(core.dtype)
    spatial = dict(strides=config.get("strides", (1, 1)), padding=config.get("padding", "valid"),
                   dilation_rate=config.get("dilation_rate", (1, 1)))
    chain = [] if fold_first else [conv_spec(graph.unique_name(f"{spec.name}_tucker_in"), first, (1, 1), "valid",
                                             (1, 1), None, None, trainable, keras)]
    if fold_last:
        chain.append(conv_spec(spec.name, core, spatial["strides"], spatial["padding"], spatial["dilation_rate"],
                               bias, config.get("activation"), trainable, keras))
    else:
        chain += [conv_spec(graph.unique_name(f"{spec.name}_tucker_core"), core, spatial["strides"],
                            spatial["padding"], spatial["dilation_rate"], None, None, trainable, keras),
                  conv_spec(spec.name, last, (1, 1), "valid", (1, 1), bias, config.get("activation"), trainable,
                            keras)]
    graph.replace_layer(spec.name, chain)
    return error


def _uniform(layers: list[_Layer], metric: str, fixed: float, goal: float, total: float,
             reasons: dict, pointwise: bool) -> list[tuple[int, int] | None]:
    """The largest common ``rho`` whose model meets the goal."""
    def cost(rho: float) -> float:
        return fixed + sum(layer.cost(layer.best(rho, metric), metric) for layer in layers)

    if cost(1e-6) > goal:
        raise _budget_error(metric, cost(1e-6) / total, goal / total, reasons, pointwise,
                            layers[0].step if layers else 1)
    rho, _ = bisect(lambda rho: rho, lambda rho: cost(rho) <= goal, 1e-6, 1.0, None)
    return [layer.best(rho, metric) for layer in layers]


def _global(layers: list[_Layer], metric: str, fixed: float, goal: float, total: float, reasons: dict,
            pointwise: bool, latency=None, folded: bool = False) -> tuple[list[tuple[int, int] | None], list[Candidates]]:
    candidates, options = [], []
    for layer in layers:
        drop_in, drop_out = truncation_errors(layer.spec.weights[0])
        if layer.pair:  # one SVD: both unfoldings have its spectrum, and the pair drops its tail once
            top = min(layer.spec.weights[0].shape[2:])
            choices = [None] + [(r, r) for r in dict.fromkeys(snap(r, layer.step, top) for r in range(1, top + 1))
                                if layer.best_at(r, metric)]
        else:
            # fold="auto": the folded forms only with a table to time them; offered by MACs alone, the allocation put every
            # stage-3 conv of the trained ResNet-20 behind a rank-8 projection of its 64 inputs at 0.25 of the
            # MACs (its error proxy, each mode's truncation, does not see that bottleneck compound): top-1
            # before finetuning 47.1% against 62.5% for one rho on both modes (benchmarks/results/start_point_tucker_fold.md)
            choices = [None] + layer.offers(metric, folded)
        options.append(choices)
        cost = [layer.cost(c, metric) for c in choices]
        error = [0.0 if c is None else float(drop_in[c[0]] if layer.pair else drop_in[c[0]] + drop_out[c[1]])
                 for c in choices]
        candidates.append(Candidates(layer.spec.name, np.array(cost, float), np.array(error),
                                     _layer_ms(layer, choices, latency)))
    hint = ("Left alone: " + ", ".join(f"{n} ({r})" for n, r in list(reasons.items())[:5]) + ".") if reasons else ""
    hint += "" if pointwise else " pointwise=True also factors the 1x1 convs."
    picks = allocate(candidates, fixed, goal, what="MACs" if metric == "flops" else "params", hint=hint, total=total)
    return [choices[index] for choices, index in zip(options, picks)], candidates


def _layer_ms(layer: _Layer, choices: list, latency) -> np.ndarray | None:
    """Each choice's estimated milliseconds by the table (``None``: the dense conv), or ``None``
    when the table lacks the layer; a 1x1 conv's pair is the table's low-rank pair."""
    name = layer.spec.name
    if latency is None or name not in latency.layers:
        return None
    shape = layer.spec.weights[0].shape
    return np.array([latency.original_ms(name) if c is None else
                     latency.layer_ms(name, table_form(shape, c), layer.cost(c, "flops")) for c in choices], float)


def _budget_error(metric: str, floor: float, goal: float, reasons: dict, pointwise: bool,
                  step: int = 1) -> BudgetError:
    what = "MACs" if metric == "flops" else "params"
    left = "; ".join(f"{n}: {r}" for n, r in list(reasons.items())[:5]) or "none"
    lowest = "rank 1" if step == 1 else f"ranks of {step} (rank_multiple={step})"
    return BudgetError(f"method='tucker' cannot reach target_{metric}={goal:.3g}: {lowest} everywhere still leaves "
                       f"{floor:.3f} of the {what}. Layers it cannot decompose: {left}. Raise the target"
                       + ("." if pointwise else " or pass pointwise=True to factor the 1x1 convs too."),
                       reachable=floor)


class TuckerMethod(Method):
    """``method="tucker"``: Tucker-2 (1x1 -> kxk -> 1x1) of every kxk conv, by tensorly."""

    name = "tucker"
    options_class = TuckerOptions
    latency_front = True
    cli_options = ("allocation", "pointwise", "rank_multiple")
    tile_options = ("rank_multiple",)

    def run(self, graph: Graph, budget: Budget, data, options: TuckerOptions, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        return tucker_pass(graph, infer_shapes(graph), budget, data, options, context.verbose, fixed, context.latency)

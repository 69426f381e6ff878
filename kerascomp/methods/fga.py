"""Filter-group approximation as an IR pass: every eligible Conv2D becomes a FilterGroupConv2D.

The group count and rank of each layer come from :func:`kerascomp.allocation.allocate`: every layer
offers all (groups, rank) pairs cheaper than its dense form, scored by the relative squared
Frobenius error of the group-wise SVD, and one Lagrange multiplier trades error for cost
across the whole model until the budget is met.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from kerascomp.allocation import Candidates, allocate, front_note
from kerascomp.cost import graph_cost
from kerascomp.decompose import fga as fga_math
from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.ir import Graph, LayerSpec, Node
from kerascomp.graph.keras_io import infer_shapes, module_for, sample_node_inputs
from kerascomp.layers import layers_for
from kerascomp.methods.base import Budget, CompressionReport, build_report
from kerascomp.methods.eligibility import dense_conv2d_ineligibility, eligible_convs
from kerascomp.methods.inputs import check_auto, check_bool, check_int, check_number
from kerascomp.methods.pointwise import ONE_BY_ONE, check_pointwise
from kerascomp.methods.reconstruct import reconstruct_active
from kerascomp.methods.registry import Context, Method
from kerascomp.methods.tiles import first_step


@dataclass(frozen=True)
class FGAOptions:
    """Knobs of ``method="fga"``.

    * ``min_channels_per_group``: groups thinner than this are not offered (default 16). Measured
      on LiteRT/XNNPACK: grouped convs only speed up in proportion to MACs at >= 32 channels per
      group, and at <= 8 more groups can be slower than fewer.
    * ``pointwise``: also factor 1x1 convs (as a low-rank pair of 1x1 convs): ``True``, ``False``,
      or ``"auto"`` (default): only when the kxk convs alone cannot reach the budget, as on mobile
      nets whose MACs sit in 1x1 convs (:mod:`kerascomp.methods.pointwise`).
    * ``rank_multiple``: only offer ranks that are multiples of this (or the full rank).
      ``None`` (default) tries 8, then 4, then 1, keeping the first that meets the budget.
      XNNPACK computes output channels in tiles, so a rank of 7 costs about as much as 8:
      on the CIFAR ResNet-20 at half the MACs, multiples of 8 realised 0.93 of the ideal fp32
      speedup against 0.78 with any rank (benchmarks/results/latency_realization*.md).
    * ``refine``: when ``data`` is given, refit each 1x1 conv by ridge least squares so the
      layer's response on sampled activations matches the original (response reconstruction).
    * ``recalibrate``: re-estimate BatchNormalization statistics on ``data`` afterwards, as the
      other methods do (``"auto"``: when ``data`` is given). Off by default, as FGA has always been.
    * ``max_samples`` / ``max_rows``: images of ``data`` and activation rows per layer of the refit;
      ``ridge``: its regularisation; ``seed``: the row subsampling.
    * ``latency_checks``: with ``target_latency``, at most this many measured checks correct the
      target given to the latency table until the compressed model, timed here against the
      original, is within 5% of it (``methods/latency_search.py``); 0: the table's estimate alone
      (any other value: at least 2, a probe and the final build).
    """

    min_channels_per_group: int = 16
    pointwise: bool | str = "auto"
    rank_multiple: int | None = None
    refine: bool = True
    max_samples: int = 256
    max_rows: int = 20000
    ridge: float = 1e-3
    seed: int = 0
    recalibrate: bool | str = False
    reconstruct: bool | str = "auto"
    reconstruct_samples: int = 512
    bn_weighting: bool = False
    latency_checks: int = 8

    def validate(self) -> None:
        for option in ("min_channels_per_group", "max_samples", "max_rows"):
            check_int(option, getattr(self, option))
        check_int("latency_checks", self.latency_checks, least=0)
        if self.rank_multiple is not None:
            check_int("rank_multiple", self.rank_multiple)
        check_pointwise(self.pointwise)
        check_bool("refine", self.refine)
        check_auto("recalibrate", self.recalibrate)
        check_bool("bn_weighting", self.bn_weighting)
        check_number("ridge", self.ridge, 0.0, float("inf"), "[)")
        check_int("seed", self.seed, least=0)


@dataclass
class _Layer:
    spec: LayerSpec
    pixels: int
    macs: int
    params: int
    curves: dict[int, np.ndarray]
    options: list[tuple[int, int]] = field(default_factory=list)
    candidates: Candidates | None = None


def _output_pixels(graph: Graph, shapes: dict, layer: str) -> int:
    return sum(int(np.prod(shapes[node.name][0][1:-1])) for node in graph.nodes_of(layer))




def ineligibility(spec: LayerSpec, options: FGAOptions) -> str | None:
    """Why FGA leaves this layer alone, or ``None`` if it may be factored."""
    return dense_conv2d_ineligibility(spec, options.pointwise, ONE_BY_ONE)


def _group_options(channels: int, min_per_group: int) -> list[int]:
    return [g for g in range(1, channels + 1) if channels % g == 0 and (g == 1 or channels // g >= min_per_group)]


def allowed_groups(spec: LayerSpec, min_channels_per_group: int) -> list[int]:
    """The group counts FGA may give this conv. A dilated conv stays ungrouped: TensorFlow's CPU
    kernels cannot train a grouped conv with dilation (Conv2DBackpropFilter refuses it; found by
    benchmarks/fuzz.py)."""
    if any(rate != 1 for rate in spec.config.get("dilation_rate", (1, 1))):
        return [1]
    return _group_options(spec.weights[0].shape[2], min_channels_per_group)


def _error_curves(spec: LayerSpec, options: FGAOptions) -> dict[int, np.ndarray]:
    kernel = spec.weights[0]
    return {groups: fga_math.relative_error_curve(kernel, groups)
            for groups in allowed_groups(spec, options.min_channels_per_group)}


def fga_form(groups: int) -> str:
    """The latency-table form of an FGA layer with ``groups`` groups (one group: the kxk(r) + 1x1 pair)."""
    return "factored" if groups == 1 else f"fga{groups}"


def _candidates(layer: _Layer, metric: str, rank_multiple: int, latency=None) -> Candidates:
    kernel = layer.spec.weights[0]
    use_bias = len(layer.spec.weights) > 1
    name = layer.spec.name
    original = {"flops": layer.macs, "params": layer.params}.get(metric) or latency.original_ms(name)
    timed = latency is not None and name in latency.layers  # measured: only forms on the latency front
    costs, errors, pairs = [float(original)], [0.0], [(0, 0)]
    times = [latency.original_ms(name)] if timed else []
    for groups, curve in layer.curves.items():
        full_rank = fga_math.max_rank(kernel.shape, groups)
        for rank in range(1, full_rank + 1):
            if rank % rank_multiple and rank != full_rank:
                continue
            macs = fga_math.fga_macs(kernel.shape, groups, rank, layer.pixels)
            if metric == "flops":
                cost = macs
            elif metric == "params":
                cost = fga_math.fga_params(kernel.shape, groups, rank, use_bias)
            else:
                cost = latency.layer_ms(name, fga_form(groups), macs)
            if cost >= original:
                continue
            costs.append(float(cost))
            errors.append(float(curve[rank]))
            pairs.append((groups, rank))
            if timed:
                times.append(latency.layer_ms(name, fga_form(groups), macs))
    layer.options = pairs
    return Candidates(name, np.array(costs), np.array(errors), np.array(times) if timed else None)


def fga_spec(spec: LayerSpec, groups: int, rank: int, keras) -> LayerSpec:
    config = spec.config
    kernel, bias = spec.weights[0], spec.weights[1:]
    grouped, pointwise = fga_math.fga_factors(kernel, groups, rank)
    new_config = {"name": spec.name, "trainable": config.get("trainable", True), "filters": kernel.shape[-1],
                  "kernel_size": list(kernel.shape[:2]), "groups": groups, "rank": rank,
                  "strides": config.get("strides", (1, 1)), "padding": config.get("padding", "valid"),
                  "dilation_rate": config.get("dilation_rate", (1, 1)), "use_bias": bool(bias),
                  "activation": config.get("activation")}
    return LayerSpec(spec.name, layers_for(keras).FilterGroupConv2D, new_config, [grouped, pointwise] + list(bias))


def _refine(graph: Graph, chosen: dict[str, LayerSpec], originals: dict[str, LayerSpec], data, options: FGAOptions,
            verbose: int) -> dict[str, dict]:
    """Refit each chosen layer's 1x1 conv on activations sampled from the original model."""
    import tensorflow as tf

    first_nodes: dict[str, Node] = {name: graph.nodes_of(name)[0] for name in chosen}
    activations = sample_node_inputs(graph, [node.name for node in first_nodes.values()], data, options.max_samples)
    rng = np.random.default_rng(options.seed)
    details = {}
    for name in tqdm(chosen, desc="fga refine", disable=not verbose):
        spec, original = chosen[name], originals[name]
        inputs = tf.constant(activations[first_nodes[name].name], tf.float32)
        config = original.config
        conv = dict(strides=tuple(config.get("strides", (1, 1))), padding=config.get("padding", "valid").upper(),
                    dilations=tuple(config.get("dilation_rate", (1, 1))))
        target = tf.nn.conv2d(inputs, original.weights[0], **conv).numpy()
        features = tf.nn.conv2d(inputs, spec.weights[0], **conv).numpy()
        target = target.reshape(-1, target.shape[-1])
        features = features.reshape(-1, features.shape[-1])
        if len(original.weights) > 1:
            target = target + original.weights[1]
        rows = rng.permutation(len(features))[: 2 * options.max_rows]
        fit, held_out = rows[: len(rows) // 2], rows[len(rows) // 2:]
        use_bias = len(spec.weights) > 2
        weights, bias = fga_math.ridge_refit(features[fit], target[fit], options.ridge, fit_bias=use_bias)
        svd_pointwise = spec.weights[1].reshape(weights.shape)
        svd_bias = spec.weights[2] if use_bias else 0.0
        scale = np.linalg.norm(target[held_out]) or 1.0
        before = float(np.linalg.norm(features[held_out] @ svd_pointwise + svd_bias - target[held_out]) / scale)
        after = float(np.linalg.norm(features[held_out] @ weights + bias - target[held_out]) / scale)
        details[name] = {"output_error_svd": before, "output_error_refined": after, "refined": after < before}
        if after < before:
            spec.weights[1] = weights.reshape(spec.weights[1].shape).astype(spec.weights[1].dtype)
            if use_bias:
                spec.weights[2] = bias.astype(spec.weights[2].dtype)
    return details


def _fixed_choice(layer: _Layer, fixed: dict) -> tuple[int, int]:
    """The plan's (groups, rank) of ``layer`` (``(0, 0)``: dense), checked against what FGA may build."""
    name = layer.spec.name
    if name not in fixed:
        return 0, 0
    try:
        groups, rank = (int(value) for value in fixed[name])
    except (TypeError, ValueError):
        raise InvalidArgumentError(f"the plan's FGA choice for {name!r} must be [groups, rank], got "
                                   f"{fixed[name]!r}.") from None
    if groups not in layer.curves or not 1 <= rank <= fga_math.max_rank(layer.spec.weights[0].shape, groups):
        raise InvalidArgumentError(f"the plan asks groups={groups}, rank={rank} for {name!r}; FGA may use groups "
                                   f"{sorted(layer.curves)} with ranks 1..max rank. Re-plan or fix the plan.")
    return groups, rank


def fga_pass(graph: Graph, shapes: dict, budget: Budget, data=None, options: FGAOptions = FGAOptions(),
             verbose: int = 1, latency=None, fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
    """Return a new graph with FGA applied under ``budget``, and the per-layer report. A
    ``"latency"`` budget costs every (groups, rank) option by the :class:`LatencyTable` ``latency``.
    ``fixed``: a plan's choices (``{"layers": {name: [groups, rank]}}``) to realise instead of allocating."""
    keras = module_for(graph)
    before = graph_cost(graph, shapes)
    costs = before.by_name()
    # a shared conv stays one (grouped) layer called at every place, so FGA may take it
    eligible, reasons = eligible_convs(graph, shapes, None if options.pointwise else ONE_BY_ONE, allow_shared=True)
    layers = [_Layer(graph.layers[name], _output_pixels(graph, shapes, name), costs[name].macs, costs[name].params, {})
              for name in eligible]
    for layer in tqdm(layers, desc="fga candidates", disable=not verbose):
        layer.curves = _error_curves(layer.spec, options)
    if fixed is not None:
        planned = dict(fixed.get("layers", {}))
        unknown = sorted(set(planned) - {layer.spec.name for layer in layers})
        if unknown:
            raise InvalidArgumentError(f"the plan factors {', '.join(unknown[:5])}, which FGA cannot factor in this "
                                       f"model ({'; '.join(reasons.get(n, 'no MACs') for n in unknown[:5])}).")
        payable = layers
        for layer in layers:
            layer.options = [_fixed_choice(layer, planned)]
            curve = layer.curves.get(layer.options[0][0])
            layer.candidates = Candidates(layer.spec.name, np.zeros(1),
                                          np.array([0.0 if curve is None else curve[layer.options[0][1]]]))
        choice = [0] * len(layers)
        rank_multiple = fixed.get("rank_multiple")
        too_small = {}
    elif budget.metric == "latency":
        if latency is None:
            raise InvalidArgumentError("target_latency needs latency=kerascomp.latency_table(model) (or a phone table).")
        metric_total = latency.estimate({})
    else:
        metric_total = before.macs if budget.metric == "flops" else before.params
    what = {"flops": "MACs", "params": "params", "latency": "estimated ms"}[budget.metric]
    tile_step = None
    if fixed is None:
        def allocate_at(stepped: FGAOptions) -> tuple:
            """The allocation with ranks in multiples of ``stepped.rank_multiple`` (the candidates are kept)."""
            for layer in layers:
                layer.candidates = _candidates(layer, budget.metric, stepped.rank_multiple, latency)
            payable = [layer for layer in layers if len(layer.options) > 1]
            too_small = {layer.spec.name: "too small: no groups/rank choice is cheaper than the dense conv"
                         for layer in layers if len(layer.options) == 1}
            if not payable and budget.fraction < 1.0:
                listed = "; ".join(f"{name}: {reason}" for name, reason in {**reasons, **too_small}.items())
                raise UnsupportedModelError(f"method='fga' found nothing to compress in model {graph.name!r} "
                                            f"({listed or 'the model has no conv layers'}).")
            compressible = sum(layer.candidates.cost[0] for layer in payable)
            kept_summary = ", ".join(f"{name} ({reason})" for name, reason in list({**reasons, **too_small}.items())[:6])
            hint = (f"Left alone: {kept_summary}." if kept_summary else "") + (
                "" if options.pointwise else " pointwise=True also factors the 1x1 convs.")
            choice = allocate([layer.candidates for layer in payable], metric_total - compressible,
                              budget.fraction * metric_total, what=what, hint=hint, total=metric_total)
            return choice, payable, too_small, stepped.rank_multiple

        # the shared tile-step policy (kerascomp.methods.tiles), run on the allocation alone so that every
        # step reuses the curves and the whitening measured above
        (choice, payable, too_small, rank_multiple), tile_step = first_step(allocate_at, options, ("rank_multiple",))
    reasons.update(too_small)

    result = graph.copy()
    chosen: dict[str, LayerSpec] = {}
    originals: dict[str, LayerSpec] = {}
    errors: dict[str, float] = {}
    for layer, index in zip(payable, choice):
        groups, rank = layer.options[index]
        name = layer.spec.name
        if groups == 0:
            continue
        originals[name] = layer.spec
        chosen[name] = fga_spec(layer.spec, groups, rank, keras)
        errors[name] = float(np.sqrt(layer.candidates.error[index]))
    refine_details = {}
    if data is not None and options.refine and chosen and not reconstruct_active(options, data):
        refine_details = _refine(graph, chosen, originals, data, options, verbose)
    for name, spec in chosen.items():
        result.layers[name] = spec

    # "dense" rows: compressible, but the allocation spent the budget elsewhere; "kept": not compressible
    rewritten = {name: (f"fga g={spec.config['groups']} r={spec.config['rank']}", errors[name],
                        {"groups": spec.config["groups"], "rank": spec.config["rank"], "rank_multiple": rank_multiple,
                         **refine_details.get(name, {})})
                 for name, spec in chosen.items()}
    choices = {"layers": {name: [spec.config["groups"], spec.config["rank"]] for name, spec in chosen.items()},
               "rank_multiple": rank_multiple}
    report = build_report("fga", budget, graph, result, shapes, rewritten, reasons, result_shapes=shapes,
                          choices=choices)
    if tile_step is not None:
        report.notes["tile_step"] = tile_step
    if latency is not None and fixed is None:
        planned = {}
        for layer, index in zip(payable, choice):
            groups, rank = layer.options[index]
            if groups and layer.spec.name in latency.layers:
                planned[layer.spec.name] = (fga_form(groups), fga_math.fga_macs(layer.spec.weights[0].shape, groups,
                                                                                 rank, layer.pixels))
        report.notes["estimated_latency_ratio"] = round(latency.estimate(planned) / latency.estimate({}), 4)
        note = front_note([layer.candidates for layer in payable], latency)
        if note:
            report.notes["latency_front"] = note
    return result, report


class FGAMethod(Method):
    """``method="fga"``: filter-group approximation (every kxk conv becomes a grouped kxk conv to a
    low rank plus a 1x1 conv), allocated globally by MACs, params or a latency table."""

    name = "fga"
    options_class = FGAOptions
    uses_latency = True
    latency_front = True
    cli_options = ("min_channels_per_group", "pointwise", "rank_multiple")

    def run(self, graph: Graph, budget: Budget, data, options: FGAOptions, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        return fga_pass(graph, infer_shapes(graph), budget, data, options, context.verbose, context.latency, fixed)

"""Error-correcting reconstruction: refit each compressed unit's last linear map on data, in order.

After a method rewrites a model, every layer whose weights it changed computes something slightly
different from the original, and the errors add up along the network. Reconstruction walks those
layers in topological order and refits the last linear map of each (FGA's 1x1, the last factor of
SVD and Tucker-2, the per-layer factor of joint SVD, the kernel of a pruned layer on the input
channels it kept, both for collaborative) by ridge least squares, so that its pre-activation output
*in the compressed model* matches the original model's output at the same place (He et al. 2017,
"Channel pruning"; ThiNet; the response reconstruction of the FGA paper):

* the inputs come from the compressed model with every earlier refit applied, so each refit also
  corrects the error of the layers before it;
* the targets come from the original model;
* memory is bounded: only the Gram matrices are kept (:class:`kerascomp.decompose.ridge.Moments`),
  summed over batches of the data, and the original model's inputs to the units (which no refit
  changes) are computed in one pass only when they fit in ``CACHE_BYTES``, else again for each unit;
* when the original's inputs and the compressed graph's live activations fit in ``CACHE_BYTES`` (and
  no unit is a layer called twice), the compressed graph runs once, node by node, refitting each unit
  as its node comes (:func:`_walk`); otherwise a sub-model runs the compressed graph up to each unit;
* a refit is kept only when it lowers the layer's output error on the data, and only on at least
  ``ROWS_PER_WEIGHT`` activation rows (pixels x images) per weight of an output: with fewer, the least
  squares fit the calibration rows exactly, noise included (a 1x1-pixel layer of a 32x32 MobileNetV2 on
  16 images has 16 rows for up to 8,640 weights), and the refit weights amplify float rounding (FGA on
  a 32x32 NASNetMobile with 16 images: at 2 rows per weight 76 layers were refit and the .tflite
  differed from Keras by 1.7e-4 of the output, ten times the uncompressed model's own; at 4, 34 layers,
  9e-7); the report shows the error before and after (relative to the spread of the original output), and why a
  layer was not refit.

The units are found by comparing the two graphs (:func:`find_units`), so any method that keeps the
node names of the layers it rewrites, as every built-in does, gets reconstruction for free. A method
that removes output channels says which it kept (``CompressionReport.kept_outputs``).
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np
from tqdm.auto import tqdm

from kerascomp.cost import last_reads, peak_activation_bytes
from kerascomp.decompose.ridge import Moments
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph, LayerSpec, Ref, map_leaves
from kerascomp.graph.keras_io import build_layers, module_for, set_layer_weights, write_model
from kerascomp.methods.inputs import check_auto, check_int
from kerascomp.methods.strip import is_channel_batchnorm

REFITTABLE = ("Conv2D", "Dense", "FilterGroupConv2D")  # layers whose last map reconstruction can refit
RIDGE = 1e-3  # relative to the mean diagonal of the Gram matrix (see Moments.solve)
BATCH = 64
MAX_ROWS = 60000  # activation rows (pixels x images) per unit in its Gram matrix, sampled evenly over the batches
CACHE_BYTES = 512 << 20  # the original model's unit inputs, all computed in one pass when they fit in this many bytes
ROWS_PER_WEIGHT = 4  # a layer is refit only on at least this many activation rows per weight of an output
WALK = True  # refit in one eager pass over the compressed graph's nodes when it can (see _walk)
MAX_FEATURES = 8192  # a kxk conv over more input channels than this (kh*kw*C) is not refit: its Gram is too big


@dataclass(frozen=True)
class Unit:
    """One layer to refit. ``layer``: its name in the compressed graph; ``nodes``: its calls, each named as a
    call in the original graph whose pre-activation output is the target; ``originals``: the original
    layer of each call (the report rows; a layer shared by several calls, as joint SVD's shared factor,
    is refit on all of them at once); ``outputs``: per call, which of the original's output channels the
    layer's outputs are (``None``: all, in order); ``bias_into``: a BatchNormalization that alone consumes
    the layer and absorbs a fitted intercept when the layer has no bias (``moving_mean -= intercept``)."""

    layer: str
    nodes: tuple[str, ...]
    originals: tuple[str, ...]
    outputs: tuple[tuple[int, ...] | None, ...]
    bias_into: str | None = None


def validate_reconstruct(options: Any) -> None:
    """Validate the shared ``reconstruct`` / ``reconstruct_samples`` options (any options object with them)."""
    if hasattr(options, "reconstruct"):
        check_auto("reconstruct", options.reconstruct)
        check_int("reconstruct_samples", options.reconstruct_samples)


def check_reconstruct(options: Any, data: Any) -> None:
    """:func:`validate_reconstruct`, and refuse ``reconstruct=True`` without ``data``."""
    validate_reconstruct(options)
    if getattr(options, "reconstruct", False) is True and data is None:
        raise InvalidArgumentError("reconstruct=True needs data= (inputs on which the compressed layers are refit "
                                   "to match the original model); pass data or reconstruct=False.")


def reconstruct_active(options: Any, data: Any) -> bool:
    """Whether the shared reconstruction step runs: ``reconstruct=True``, or ``"auto"`` with ``data``."""
    value = getattr(options, "reconstruct", False)
    return data is not None and (value is True or value == "auto")


def _differs(a: LayerSpec, b: LayerSpec) -> bool:
    if a.class_name != b.class_name or len(a.weights) != len(b.weights):
        return True
    return any(x.shape != y.shape or not np.array_equal(x, y) for x, y in zip(a.weights, b.weights))


def _out_width(spec: LayerSpec) -> int:
    return int(spec.weights[1].shape[-1] if spec.class_name == "FilterGroupConv2D" else spec.weights[0].shape[-1])


def _why_not(spec: LayerSpec) -> str | None:
    if spec.class_name not in REFITTABLE:
        return f"its last map is a {spec.class_name}, not a Conv2D, Dense or FilterGroupConv2D"
    if spec.config.get("data_format") == "channels_first":
        return "channels_first conv"
    if spec.class_name == "Conv2D" and int(spec.config.get("groups", 1)) != 1:
        return "grouped Conv2D (its kernel is block-diagonal)"
    features = int(linear_map(spec)[0].shape[0])
    if features > MAX_FEATURES:
        return f"{features} input features per output (more than {MAX_FEATURES}: its Gram matrix would not fit)"
    return None


def _has_bias(spec: LayerSpec) -> bool:
    return len(spec.weights) > (2 if spec.class_name == "FilterGroupConv2D" else 1)


def find_units(original: Graph, compressed: Graph,
               kept_outputs: dict[str, list[int]] | None = None) -> tuple[list[Unit], dict[str, str]]:
    """The layers of ``compressed`` to refit, in topological order, and why each other changed layer is not.

    A unit is a layer of ``compressed`` whose calls all have namesakes in ``original`` that call a linear
    layer (Conv2D, Dense or FilterGroupConv2D), and that differs from that original layer. ``kept_outputs``:
    for an original layer whose output channels were removed, the indices of those kept.
    """
    kept_outputs = kept_outputs or {}
    original_nodes = {node.name: node for node in original.nodes}
    units, skipped, seen = [], {}, set()
    for node in compressed.nodes:
        if node.layer in seen or node.name not in original_nodes:
            continue
        seen.add(node.layer)
        spec = compressed.spec(node)
        calls = compressed.nodes_of(node.layer)
        sources = [original.spec(original_nodes[call.name]) for call in calls if call.name in original_nodes]
        if len(sources) != len(calls) or any(source.class_name not in REFITTABLE for source in sources):
            continue
        if not any(_differs(spec, source) for source in sources):
            continue
        reason = _why_not(spec)
        width = _out_width(spec) if reason is None else 0
        outputs = [kept_outputs.get(source.name) for source in sources]
        for source, kept in zip(sources, outputs):
            if reason is None and kept is None and width != _out_width(source):
                reason = "its output channels changed and the method did not say which it kept"
            if reason is None and kept is not None and len(kept) != width:
                reason = f"{width} outputs but {len(kept)} kept channels recorded"
        if reason is not None:
            skipped.update({source.name: reason for source in sources})
            continue
        bias_into = None
        if not _has_bias(spec) and len(calls) == 1 and spec.config.get("activation") in (None, "linear"):
            consumers = compressed.consumers(node.name)
            if len(consumers) == 1 and is_channel_batchnorm(compressed.spec(consumers[0])) \
                    and len(compressed.nodes_of(consumers[0].layer)) == 1:
                bias_into = consumers[0].layer
        units.append(Unit(node.layer, tuple(call.name for call in calls), tuple(source.name for source in sources),
                          tuple(None if kept is None else tuple(int(i) for i in kept) for kept in outputs), bias_into))
    return units, skipped


def _conv_args(spec: LayerSpec) -> dict:
    config = spec.config
    return dict(strides=tuple(config.get("strides", (1, 1))), padding=str(config.get("padding", "valid")).upper(),
                dilations=tuple(config.get("dilation_rate", (1, 1))))


def design(spec: LayerSpec, inputs: np.ndarray) -> np.ndarray:
    """The rows ``X`` with ``X @ W + b`` = the layer's pre-activation output (``W``: :func:`linear_map`)."""
    import tensorflow as tf

    x = tf.constant(inputs, tf.float32)
    if spec.class_name == "Dense":
        return np.asarray(x).reshape(-1, inputs.shape[-1])
    if spec.class_name == "FilterGroupConv2D":
        grouped = tf.nn.conv2d(x, spec.weights[0], **_conv_args(spec)).numpy()
        return grouped.reshape(-1, grouped.shape[-1])
    height, width = spec.weights[0].shape[:2]
    args = _conv_args(spec)
    if (height, width) == (1, 1) and args["strides"] == (1, 1):
        return inputs.reshape(-1, inputs.shape[-1])
    patches = tf.image.extract_patches(x, sizes=[1, height, width, 1], strides=[1, *args["strides"], 1],
                                       rates=[1, *args["dilations"], 1], padding=args["padding"]).numpy()
    return patches.reshape(-1, patches.shape[-1])


def linear_map(spec: LayerSpec) -> tuple[np.ndarray, np.ndarray]:
    """The layer's last linear map as ``(W (F, O), b (O,))``, ``F`` matching :func:`design`'s columns."""
    kernel = spec.weights[1] if spec.class_name == "FilterGroupConv2D" else spec.weights[0]
    offset = 2 if spec.class_name == "FilterGroupConv2D" else 1
    weights = kernel.reshape(-1, kernel.shape[-1])
    bias = spec.weights[offset] if len(spec.weights) > offset else np.zeros(weights.shape[1], weights.dtype)
    return weights, bias


def linear_output(spec: LayerSpec, inputs: np.ndarray) -> np.ndarray:
    """The original layer's pre-activation output as rows ``(rows, O)``."""
    import tensorflow as tf

    if spec.class_name == "Conv2D" and int(spec.config.get("groups", 1)) != 1:
        out = tf.nn.conv2d(tf.constant(inputs, tf.float32), spec.weights[0], **_conv_args(spec)).numpy()
        out = out.reshape(-1, out.shape[-1])
        return out + spec.weights[1] if len(spec.weights) > 1 else out
    weights, bias = linear_map(spec)
    return design(spec, inputs) @ weights + bias


def _set_map(spec: LayerSpec, weights: np.ndarray, bias: np.ndarray) -> None:
    index = 1 if spec.class_name == "FilterGroupConv2D" else 0
    spec.weights[index] = weights.reshape(spec.weights[index].shape).astype(spec.weights[index].dtype)
    if _has_bias(spec):
        spec.weights[index + 1] = bias.astype(spec.weights[index + 1].dtype)


def _batches(data: Any, samples: int) -> Iterator[Any]:
    arrays = data if isinstance(data, list) else [data]
    rows = min(samples, len(arrays[0]))
    for start in range(0, rows, BATCH):
        stop = min(start + BATCH, rows)
        yield [np.asarray(array[start:stop]) for array in arrays]


def _probe(graph: Graph, nodes: list[str]) -> Any:
    """A Keras model of ``graph`` whose outputs are the first input of each named node."""
    probe = graph.copy()
    probe.outputs = [probe.node(name).input_refs()[0] for name in nodes]
    probe.sequential = False
    return write_model(probe)


def _original_inputs(model: Any, data: Any, samples: int) -> list[list[np.ndarray]] | None:
    """Every unit's input in the original model, per batch, from one pass, when they fit in
    ``CACHE_BYTES`` (they do not change as units are refit, so each unit would otherwise run the
    original model up to itself again); ``None`` when they do not fit."""
    rows = min(samples, len(data[0] if isinstance(data, list) else data))
    per_row = sum(int(np.prod([d or 1 for d in tuple(output.shape)[1:]])) for output in model.outputs)
    if rows * per_row * 4 > CACHE_BYTES:
        return None
    cached = []
    for batch in _batches(data, samples):
        outputs = model(batch, training=False)
        outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
        cached.append([np.asarray(output) for output in outputs])
    return cached


def _submodel(keras, model: Any, positions: list[int]) -> Any:
    return keras.Model(model.inputs, [model.outputs[p] for p in positions])


def reconstruct(original: Graph, compressed: Graph, units: list[Unit], data: Any, samples: int = 512,
                verbose: int = 1, seed: int = 0) -> tuple[Graph, dict[str, dict]]:
    """A copy of ``compressed`` with each unit's last linear map refit (see the module docstring), and per
    original layer name ``{"output_error_before", "output_error_after", "refit"}``."""
    result = compressed.copy()
    if not units:
        return result, {}
    calls = [name for unit in units for name in unit.nodes]
    original_model = _probe(original, calls)
    position = {name: index for index, name in enumerate(calls)}
    rows = min(samples, len(data[0] if isinstance(data, list) else data))
    fit = _Fitter(original, result, -(-MAX_ROWS // max(-(-rows // BATCH), 1)), np.random.default_rng(seed))
    cached = _original_inputs(original_model, data, samples)
    if cached is not None and WALK and all(len(unit.nodes) == 1 for unit in units) and \
            peak_activation_bytes(result, rows) <= CACHE_BYTES:
        _walk(result, units, data, samples, cached, position, fit, verbose)
        return result, fit.details
    keras = module_for(result)
    compressed_model = _probe(result, calls)
    probed = {layer.name for layer in compressed_model.layers}
    for unit in tqdm(units, desc="reconstruct", disable=not verbose):
        positions = [position[name] for name in unit.nodes]
        inputs_now = _submodel(keras, compressed_model, positions)
        inputs_then = None if cached is not None else _submodel(keras, original_model, positions)

        def pairs(positions=positions, inputs_now=inputs_now, inputs_then=inputs_then) -> Iterator[tuple]:
            for index, batch in enumerate(_batches(data, samples)):
                now = inputs_now(batch, training=False)
                now = now if isinstance(now, (list, tuple)) else [now]
                if cached is not None:
                    then = [cached[index][p] for p in positions]
                else:
                    then = inputs_then(batch, training=False)
                    then = then if isinstance(then, (list, tuple)) else [then]
                yield now, then

        for name in fit(unit, pairs()):  # the probe holds only what feeds a later unit
            if name in probed:
                compressed_model.get_layer(name).set_weights(result.layers[name].weights)
    return result, fit.details


class _Fitter:
    """Refits one unit at a time on (compressed inputs, original inputs) batches, recording the report rows."""

    def __init__(self, original: Graph, result: Graph, per_batch: int, rng: np.random.Generator) -> None:
        self.original, self.result, self.per_batch, self.rng = original, result, per_batch, rng
        self.details: dict[str, dict] = {}

    def __call__(self, unit: Unit, pairs) -> list[str]:
        """Refit ``unit`` on ``pairs`` (per batch: the compressed model's inputs of each call, the original's);
        returns the layers whose weights changed."""
        spec = self.result.layers[unit.layer]
        weights, bias = linear_map(spec)
        moments = Moments.zeros(weights.shape[0], weights.shape[1])
        for now, then in pairs:
            for x_now, x_then, source, kept in zip(now, then, unit.originals, unit.outputs):
                targets = linear_output(self.original.layers[source], np.asarray(x_then))
                if kept is not None:
                    targets = targets[:, list(kept)]
                features = design(spec, np.asarray(x_now))
                if len(features) > self.per_batch:
                    rows = self.rng.choice(len(features), self.per_batch, replace=False)
                    features, targets = features[rows], targets[rows]
                moments.add(features, targets)
        fit_bias = _has_bias(spec) or unit.bias_into is not None
        new_weights, new_bias = moments.solve(RIDGE, fit_bias)
        before, after = moments.residual(weights, bias), moments.residual(new_weights, new_bias)
        spread = max(moments.spread(), 1e-30)
        few = moments.count < ROWS_PER_WEIGHT * weights.shape[0]  # it would fit the calibration rows, noise and all
        refit = after < before and not few
        changed = []
        if refit:
            _set_map(spec, new_weights, new_bias)
            changed = [unit.layer]
            if unit.bias_into is not None and not _has_bias(spec):
                bn = self.result.layers[unit.bias_into]
                offset = int(bool(bn.config.get("scale", True))) + int(bool(bn.config.get("center", True)))
                bn.weights[offset] = (bn.weights[offset] - new_bias).astype(bn.weights[offset].dtype)
                changed.append(unit.bias_into)
        detail = {"output_error_before": round(float(np.sqrt(before / spread)), 5),
                  "output_error_after": round(float(np.sqrt((after if refit else before) / spread)), 5),
                  "refit": bool(refit)}
        if few:
            detail["not_refit"] = (f"{moments.count} activation rows for {weights.shape[0]} weights per output: "
                                   f"fewer than {ROWS_PER_WEIGHT}x, a refit would fit the calibration data's noise "
                                   "(pass more data or a larger reconstruct_samples)")
        if len(unit.nodes) > 1:
            detail["refit_jointly_with"] = sorted(set(unit.originals))
        self.details.update({source: dict(detail) for source in unit.originals})
        return changed


def _walk(result: Graph, units: list[Unit], data: Any, samples: int, cached: list, position: dict[str, int],
          fit: _Fitter, verbose: int) -> None:
    """Run the compressed graph once, node by node and eagerly (the same layer calls a Keras model makes), on
    every batch, refitting each unit when its node is reached: its inputs then already carry every earlier
    refit, and the nodes after it run with its new weights. Each activation is freed after its last reader.
    (Calling a sub-model per unit re-ran the graph up to each unit: 27 of the 36 s of a ResNet50's
    reconstruction.) For units of one call each; the original model's unit inputs come from ``cached``."""
    created = build_layers(result)
    unit_at = {unit.nodes[0]: unit for unit in units}
    last_read = last_reads(result)
    batches = list(_batches(data, samples))
    tensors: list[dict[str, list]] = [{} for _ in batches]
    inputs = {name: index for index, name in enumerate(result.inputs)}
    progress = tqdm(total=len(units), desc="reconstruct", disable=not verbose)
    for index, node in enumerate(result.nodes):
        if node.name in inputs:
            for batch, held in zip(batches, tensors):
                held[node.name] = [batch[inputs[node.name]]]
            continue
        unit = unit_at.get(node.name)
        if unit is not None:
            ref = node.input_refs()[0]
            pairs = (([held[ref.node][ref.index]], [cached[b][position[node.name]]]) for b, held in enumerate(tensors))
            for name in fit(unit, pairs):
                set_layer_weights(created[name], result.layers[name])
            progress.update(1)
        layer = created[node.layer]
        training = {"training": False} if _takes_training(layer) else {}
        for held in tensors:
            resolve = lambda leaf, held=held: held[leaf.node][leaf.index] if isinstance(leaf, Ref) else leaf  # noqa: E731
            # training=False overrides a recorded training argument (Keras 3 records Dropout's), as a Keras model
            # called with training=False does
            out = layer(*map_leaves(resolve, node.args), **{**map_leaves(resolve, node.kwargs), **training})
            held[node.name] = list(out) if isinstance(out, (list, tuple)) else [out]
        for ref in node.input_refs():
            if last_read.get(ref.node) == index:
                for held in tensors:
                    held.pop(ref.node, None)
    progress.close()


def _takes_training(layer: Any) -> bool:
    call = getattr(layer, "call", None)
    try:
        return call is not None and "training" in inspect.signature(call).parameters
    except (TypeError, ValueError):
        return False

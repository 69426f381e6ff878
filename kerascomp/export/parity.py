"""Parity inputs and the comparison of a .tflite's outputs with the user's Keras model (numpy; no converter here).

Inputs: the calibration data when given, else synthetic images in the range the model's own
preprocessing expects. A leading ``Rescaling(scale, offset)`` maps [lo, hi] onto [0, 1] (or [-1, 1]
when the offset is negative), so kerascomp draws in ``[lo, hi]``; a leading ``Normalization`` draws
around its mean with its spread; otherwise the documented default is [0, 1]. The images are smooth
random fields with a random brightness and contrast each, so that the outputs differ across inputs
(i.i.d. uniform pixels average out in a pooled classifier and give near-constant outputs).

Comparison: softmax outputs are compared as logits (log-probabilities centred per row, which equal the
logits centred per row), since probabilities of an untrained or confident model hide large logit
errors. The error is reported against the output's spread across inputs as well as against its norm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascomp.graph.ir import Ref, map_leaves

DEFAULT_RANGE = (0.0, 1.0)
# Probabilities below this are floored before the log (fp32 softmax underflows below ~1e-38).
_PROBABILITY_FLOOR = 1e-30


@dataclass
class Comparison:
    max_abs_error: float
    relative_error: float  # ||tflite - keras|| / ||keras||, worst output
    spread_error: float  # ||tflite - keras|| / ||keras - its mean over inputs||, worst output
    spread: float  # smallest output spread across inputs (RMS deviation from the mean input's output)
    compared: str  # "logits" when a softmax output was compared in log space, else "outputs"


def input_range(graph: Any, name: str) -> tuple[str, Any]:
    """How to draw parity inputs for the model input ``name``: ("range", (lo, hi)) or ("normal", (mean, std))."""
    readers = graph.consumers(name) if graph is not None else []
    spec = graph.spec(readers[0]) if len(readers) == 1 else None
    kind = spec.class_name if spec is not None else ""
    if kind == "Rescaling":
        scale = float(np.mean(np.asarray(spec.config.get("scale", 1.0), dtype=np.float64)))
        offset = float(np.mean(np.asarray(spec.config.get("offset", 0.0), dtype=np.float64)))
        if scale != 0.0:
            target = (-1.0, 1.0) if offset < -0.25 else (0.0, 1.0)
            lo, hi = sorted(((target[0] - offset) / scale, (target[1] - offset) / scale))
            return "range", (lo, hi)
    if kind == "Normalization":
        mean, variance = spec.config.get("mean"), spec.config.get("variance")
        if mean is None and len(spec.weights) >= 2:  # adapted: the statistics are its first two weights
            mean, variance = spec.weights[0], spec.weights[1]
        if mean is not None and variance is not None:
            mean = np.asarray(mean, dtype=np.float64).reshape(-1)
            std = np.sqrt(np.maximum(np.asarray(variance, dtype=np.float64).reshape(-1), 1e-12))
            return "normal", (mean, std)
    return "range", DEFAULT_RANGE


def _smooth_field(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Values in [0, 1]: coarse random blocks blended with fine noise, random contrast and brightness per row."""
    rows, spatial = shape[0], shape[1:-1]
    channels = shape[-1] if len(shape) > 1 else 1
    if not spatial:
        return rng.uniform(0.0, 1.0, shape)
    coarse_shape = tuple(max(1, s // 8) for s in spatial)
    coarse = rng.uniform(0.0, 1.0, (rows, *coarse_shape, channels))
    for axis, (size, small) in enumerate(zip(spatial, coarse_shape), start=1):
        coarse = np.repeat(coarse, -(-size // small), axis=axis)
        coarse = np.take(coarse, np.arange(size), axis=axis)
    fine = rng.uniform(0.0, 1.0, shape)
    field = 0.75 * coarse + 0.25 * fine
    contrast = rng.uniform(0.3, 1.0, (rows,) + (1,) * (len(shape) - 1))
    brightness = rng.uniform(0.0, 1.0, (rows,) + (1,) * (len(shape) - 1))
    return np.clip(brightness + contrast * (field - 0.5), 0.0, 1.0)


def synthetic_inputs(graph: Any, shapes: dict[str, Any], samples: int, seed: int) -> tuple[list[np.ndarray], str]:
    """Inputs in each model input's own range (see the module notes), and a description of what was drawn.

    ``graph`` is the model's IR (None when it cannot be read: the default range then applies);
    ``shapes`` maps input names to batch shapes, in the model's input order.
    """
    rng = np.random.default_rng(seed)
    arrays, described = [], []
    for name, batch_shape in shapes.items():
        shape = (samples,) + tuple(int(d) for d in list(batch_shape)[1:])
        how, values = input_range(graph, name)
        unit = _smooth_field(rng, shape)
        if how == "range":
            lo, hi = values
            arrays.append((lo + (hi - lo) * unit).astype(np.float32))
            described.append(f"in [{lo:g}, {hi:g}]")
        else:
            mean, std = values
            arrays.append((mean + std * (unit - 0.5) * 4.0).astype(np.float32))
            described.append("around the Normalization mean")
    return arrays, "synthetic images " + ", ".join(described)


def softmax_outputs(graph: Any, count: int) -> list[bool]:
    """For each of the ``count`` model outputs, whether its producing layer ends in a softmax."""
    if graph is None:
        return [False] * count
    flags = []
    refs = graph.output_refs()
    if isinstance(graph.outputs, dict):  # Keras flattens a dict of outputs in sorted key order
        refs = [graph.outputs[key] for key in sorted(graph.outputs)]
    for ref in refs:
        spec = graph.spec(graph.node(ref.node))
        activation = spec.config.get("activation")
        flags.append(_is_softmax_layer(spec) or activation == "softmax")
    return flags if len(flags) == count else [False] * count


def _is_softmax_layer(spec: Any) -> bool:
    return spec.class_name == "Softmax" or (spec.class_name == "Activation" and spec.config.get("activation") == "softmax")


def without_softmax(graph: Any) -> Any | None:
    """A copy of ``graph`` whose softmax outputs give their logits; None when no output ends in a softmax.

    A final Softmax/Activation layer is dropped; a layer with ``activation="softmax"`` becomes linear.
    The probabilities of an untrained or confident model carry little of the logits (a random-weight
    MobileNetV2 outputs exactly 1/1000 everywhere), so parity also compares this copy's logits.
    """
    result = graph.copy()
    changed = False

    def swap(ref: Any) -> Any:
        nonlocal changed
        if not isinstance(ref, Ref):
            return ref
        node = result.node(ref.node)
        spec = result.spec(node)
        if len(result.nodes_of(node.layer)) != 1:  # a shared layer: leave it alone
            return ref
        if _is_softmax_layer(spec) and len(node.input_refs()) == 1:
            changed = True
            result.nodes.remove(node)
            del result.layers[node.layer]
            return node.input_refs()[0]
        if spec.config.get("activation") == "softmax":
            changed = True
            spec.config = {**spec.config, "activation": "linear"}
        return ref

    result.outputs = map_leaves(swap, result.outputs)
    return result if changed else None


def worst(first: Comparison, second: Comparison, compared: str) -> Comparison:
    """The larger error of two comparisons (outputs and logits) and the smaller spread."""
    return Comparison(max(first.max_abs_error, second.max_abs_error), max(first.relative_error, second.relative_error),
                      max(first.spread_error, second.spread_error), min(first.spread, second.spread), compared)


def _as_logits(probabilities: np.ndarray) -> np.ndarray:
    logs = np.log(np.maximum(probabilities.astype(np.float64), _PROBABILITY_FLOOR))
    return logs - logs.mean(axis=-1, keepdims=True)


def compare(reference: list[np.ndarray], produced: list[np.ndarray], softmax: list[bool]) -> Comparison:
    """Errors of ``produced`` against ``reference`` (lists in the model's output order)."""
    max_abs = relative = spread_error = 0.0
    spread = float("inf")
    for expected, actual, is_softmax in zip(reference, produced, softmax):
        expected, actual = np.asarray(expected, np.float64), np.asarray(actual, np.float64)
        if expected.shape != actual.shape:
            raise ValueError(f"output shapes differ: keras {expected.shape}, tflite {actual.shape}")
        if not (np.all(np.isfinite(expected)) and np.all(np.isfinite(actual))):  # NaN compares as no error
            return Comparison(float("inf"), float("inf"), float("inf"), 0.0, "non-finite outputs")
        if is_softmax:
            expected, actual = _as_logits(expected), _as_logits(actual)
        difference = np.linalg.norm(actual - expected)
        centred = np.linalg.norm(expected - expected.mean(axis=0, keepdims=True))
        max_abs = max(max_abs, float(np.max(np.abs(actual - expected))))
        relative = max(relative, float(difference / (np.linalg.norm(expected) or 1.0)))
        spread_error = max(spread_error, float(difference / centred) if centred > 0 else
                           (0.0 if difference == 0 else float("inf")))
        spread = min(spread, float(centred / np.sqrt(expected.size)))
    return Comparison(max_abs, relative, spread_error, spread, "logits" if any(softmax) else "outputs")

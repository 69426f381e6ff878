"""Per-layer compression sensitivity from loss gradients on the user's data.

For every dense Conv2D the loss gradient of its kernel is averaged over ``data`` batches;
:mod:`kerascomp.decompose.collaborative` turns kernel and gradient into Taylor scores of its
units (input channels, singular values), greedy removal curves and a fitted exponential
``score ~ p1 exp(p2 * fraction of MACs removed)``, which the global planner trades off.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
from tqdm.auto import tqdm

from kerascomp.decompose.collaborative import (
    RemovalCurve,
    Trajectory,
    channel_matrix,
    channel_removal_curve,
    factor_kernel,
    fit_exponential,
    kept_fraction,
    multi_step_curve,
    values_to_keep,
)
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.flavour import keras_of
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import write_model
from kerascomp.methods.eligibility import dense_conv2d_ineligibility


@dataclass
class LayerSensitivity:
    """One layer's curves: pruning alone (``None`` where its input channels cannot go) and the joint
    multi-step removal, the exponential fitted to the cheaper of the two at each point, and the
    mean kernel gradient they were scored with."""

    layer: str
    pruning: RemovalCurve | None
    joint: Trajectory
    p1: float
    p2: float
    gradient: np.ndarray
    measured: list[tuple[float, float]] | None = None  # (MACs fraction removed, loss increase), measured mode


def _rows(array: Any) -> int:
    """Rows of an array, or of the first of a list of arrays (a multi-input model's x, a multi-output y)."""
    return len(array[0]) if isinstance(array, list) else len(array)


def _rows_slice(array: Any, start: int, stop: int) -> Any:
    return [a[start:stop] for a in array] if isinstance(array, list) else array[start:stop]


def _tensors(array: Any) -> Any:
    import tensorflow as tf

    return [tf.convert_to_tensor(a) for a in array] if isinstance(array, list) else tf.convert_to_tensor(array)


def _arrays(value: Any, what: str) -> Any:
    """One array, or a list of arrays with equal row counts (one per model input or output)."""
    if isinstance(value, (list, tuple)) and value and all(hasattr(v, "shape") for v in value):
        arrays = [np.asarray(v) for v in value]
        if len({len(a) for a in arrays}) != 1:
            raise InvalidArgumentError(f"data's {what} arrays have different row counts {[len(a) for a in arrays]}.")
        return arrays
    return np.asarray(value)


def labelled_batches(data: Any, batch_size: int, max_samples: int) -> list[tuple[Any, Any]]:
    """``(x, y)`` arrays or a ``tf.data.Dataset`` of ``(x, y)`` batches -> up to ``max_samples`` rows in batches.

    ``x`` may be a list of arrays (one per model input) and ``y`` a list (one per output)."""
    if data is None:
        raise InvalidArgumentError("gradient sensitivity needs labelled data: pass data=(x, y) numpy arrays or a "
                                   "tf.data.Dataset of (x, y) batches (a few hundred validation images suffice).")
    if hasattr(data, "as_numpy_iterator"):
        xs, ys, rows = [], [], 0
        for item in data.as_numpy_iterator():
            if not (isinstance(item, tuple) and len(item) >= 2):
                raise InvalidArgumentError("data is a dataset of inputs only; sensitivity needs (x, y) batches.")
            xs.append(_arrays(item[0], "input"))
            ys.append(_arrays(item[1], "label"))
            rows += _rows(xs[-1])
            if rows >= max_samples:
                break

        def joined(parts):
            if isinstance(parts[0], list):
                return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]
            return np.concatenate(parts)

        x, y = joined(xs), joined(ys)
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = _arrays(data[0], "input"), _arrays(data[1], "label")
    else:
        raise InvalidArgumentError(f"data must be (x, y) or a tf.data.Dataset of (x, y) batches, got "
                                   f"{type(data).__name__}.")
    if _rows(x) != _rows(y):
        raise InvalidArgumentError(f"data has {_rows(x)} inputs but {_rows(y)} labels.")
    x, y = _rows_slice(x, 0, max_samples), _rows_slice(y, 0, max_samples)
    x = [a.astype(np.float32) for a in x] if isinstance(x, list) else x.astype(np.float32)
    return [(_rows_slice(x, i, i + batch_size), _rows_slice(y, i, i + batch_size))
            for i in range(0, _rows(x), batch_size)]


def default_loss(model: Any) -> Callable:
    """The model's compiled loss if it has one, else sparse categorical cross-entropy, from logits
    unless the output layer ends in a softmax."""
    import tensorflow as tf

    keras = keras_of(model)
    compiled = getattr(model, "loss", None)
    if isinstance(compiled, str):
        compiled = keras.losses.get(compiled)
    if callable(compiled):
        return lambda labels, outputs: tf.reduce_mean(compiled(labels, outputs))
    if len(model.outputs) > 1:
        raise InvalidArgumentError(f"model {model.name!r} has {len(model.outputs)} outputs and no compiled loss, so "
                                   "the gradient sensitivity cannot guess which loss to score with. Pass loss=a "
                                   "callable(labels, outputs) returning a scalar (labels as given in data: "
                                   "a list with one array per output).")
    activation = getattr(model.layers[-1], "activation", None)
    probabilities = getattr(activation, "__name__", "") == "softmax" or type(model.layers[-1]).__name__ == "Softmax"

    def cross_entropy(labels, outputs):
        return tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, outputs,
                                                                           from_logits=not probabilities))

    return cross_entropy


def kernel_gradients(model: Any, layers: list[str], batches: list[tuple[np.ndarray, np.ndarray]],
                     loss: Callable, verbose: int = 0, rms: bool = False) -> dict[str, np.ndarray]:
    """Mean loss gradient of each named layer's kernel over the batches (inference-mode forward;
    the model's weights are only read). With ``rms``, the root mean square of the per-batch
    gradients instead: then ``sum((g * dW)**2)`` is the Taylor score summed over batches (a
    diagonal Fisher), which stays informative at a trained optimum where the mean gradient ~ 0."""
    import tensorflow as tf

    kernels = [model.get_layer(name).weights[0] for name in layers]
    totals = [np.zeros(k.shape, np.float32) for k in kernels]

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            value = loss(y, model(x, training=False))
        return tape.gradient(value, kernels)

    for x, y in tqdm(batches, desc="gradients", disable=not verbose):
        for total, gradient in zip(totals, step(_tensors(x), _tensors(y))):
            total += (np.asarray(gradient) ** 2 if rms else np.asarray(gradient)) * _rows(x)
    rows = sum(_rows(x) for x, _ in batches)
    return {name: np.sqrt(total / rows) if rms else total / rows for name, total in zip(layers, totals)}


def conv_layers(graph: Graph) -> list[str]:
    """The dense channels_last Conv2D layers (1x1 included) whose units sensitivity scores."""
    return [name for name, spec in graph.layers.items()
            if spec.weights and dense_conv2d_ineligibility(spec, pointwise=True, pointwise_reason="") is None]


MODES = ("taylor", "measured")


def layer_sensitivities(graph: Graph, data: Any, loss: Callable | None = None, batch_size: int = 64,
                        max_samples: int = 512, prunable: dict[str, bool] | None = None, step_fraction: float = 0.01,
                        max_fraction: float = 0.95, decompose: bool = True, verbose: int = 0, mode: str = "taylor",
                        measured_rates: tuple = (0.25, 0.5, 0.75, 0.9), rms: bool = False,
                        normalize: bool | str = False, mixing: str = "joint", values: str = "largest",
                        decomposable: dict[str, bool] | None = None, layers: list[str] | None = None,
                        gradients: dict[str, np.ndarray] | None = None) -> list[LayerSensitivity]:
    """Removal curves and fitted exponentials for every dense Conv2D (or the named ``layers``).

    ``prunable[layer]`` says whether the layer's input channels may be removed (default: all may);
    only ranks are cut where they may not, and nothing where ``decompose`` is off too.
    ``decomposable[layer]``: whether the layer's rank may be cut (default: ``decompose`` for all).
    ``gradients``: a dict of kernel gradients shared between calls: those missing are computed and
    stored in it, so a second call on other options reads the data once only.
    ``mode="taylor"`` fits the curves' Taylor scores (the reference); ``mode="measured"`` fits the
    loss increase measured on ``data`` when the layer alone is cut to each of ``measured_rates`` of
    its MACs (the point the layer would take), one layer at a time. ``rms``, ``normalize``, ``mixing``
    and ``values``: see :class:`kerascomp.methods.collaborative.CollaborativeOptions`
    (``gradient="rms"``, ...). With ``mixing="joint"`` the curve fitted is the joint trajectory, the
    one the layer's decision is read from; with ``"pruning_first"`` the cheaper of the two curves.
    """
    if mode not in MODES:
        raise InvalidArgumentError(f"sensitivity must be one of {MODES}, got {mode!r}.")
    layers = conv_layers(graph) if layers is None else list(layers)
    batches = labelled_batches(data, batch_size, max_samples)
    model = write_model(graph)
    loss = loss or default_loss(model)
    gradients = {} if gradients is None else gradients
    missing = [name for name in layers if name not in gradients]
    if missing:
        gradients.update(kernel_gradients(model, missing, batches, loss, verbose, rms))
    evaluate = loss_on(model, batches, loss) if mode == "measured" else None
    base = evaluate() if evaluate else 0.0
    result = []
    for name in tqdm(layers, desc="sensitivity", disable=not verbose):
        kernel, gradient = graph.layers[name].weights[0], gradients[name]
        prune = True if prunable is None else prunable.get(name, False)
        pruning = channel_removal_curve(kernel, gradient, max_fraction) if prune else None
        factor = decompose and (True if decomposable is None else decomposable.get(name, True))
        joint = multi_step_curve(kernel, gradient, prune, factor, step_fraction, max_fraction)
        fractions, scores = joint.macs_removed, joint.score
        if pruning is not None and mixing == "pruning_first":
            fractions = np.concatenate([fractions, pruning.macs_removed])
            scores = np.concatenate([scores, pruning.score])
        saving = fractions > 0
        if not saving.any():
            continue  # nothing this layer may remove saves MACs
        measured = None
        if evaluate is not None:
            measured = _measure(model.get_layer(name).weights[0], kernel, gradient, pruning, joint, measured_rates,
                                evaluate, base, mixing, values)
            fractions, increases = map(np.array, zip(*measured))
            p1, p2 = fit_exponential(fractions, np.maximum(increases, 0.0))  # a loss that fell costs nothing
        else:
            scale = normalization(normalize, kernel, gradient, scores[saving])
            p1, p2 = fit_exponential(*_lower_envelope(fractions[saving], scores[saving] / max(scale, 1e-30)))
            # (on the joint trajectory alone the envelope only makes the scores monotone)
        result.append(LayerSensitivity(name, pruning, joint, p1, p2, gradient, measured))
    return result


def normalization(normalize, kernel: np.ndarray, gradient: np.ndarray, scores: np.ndarray) -> float:
    """The divisor of a layer's curve scores: 1 (``False``), its largest score (``"max"``) or the
    score of removing its whole kernel (``"kernel"`` or ``True``)."""
    if normalize is False:
        return 1.0
    if normalize == "max":
        return float(np.max(scores)) if scores.size else 1.0
    return float(np.sum((gradient * kernel) ** 2))


def loss_on(model: Any, batches: list, loss: Callable) -> Callable[[], float]:
    """A function returning the mean loss of ``model``'s current weights on ``batches``."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def batch_loss(x, y):
        return loss(y, model(x, training=False))

    def evaluate() -> float:
        total = sum(float(batch_loss(_tensors(x), _tensors(y))) * _rows(x) for x, y in batches)
        return total / sum(_rows(x) for x, _ in batches)

    return evaluate


def cut_kernel(kernel: np.ndarray, gradient: np.ndarray, pruning: RemovalCurve | None, joint: Trajectory,
               rate: float, mixing: str = "joint", values: str = "largest") -> tuple[float, np.ndarray]:
    """The kernel with the layer's decision at ``rate`` of its MACs applied (input channels zeroed,
    then the rank cut): with ``mixing="joint"`` the joint step's (:meth:`Trajectory.decision`),
    with ``"pruning_first"`` the cheaper-scoring curve point that gets there (or the furthest
    point). Returns (MACs removed, kernel)."""
    height, width, channels, filters = kernel.shape
    if mixing == "joint" and len(joint.macs_removed):
        channels_out, rank = joint.decision(rate, height * width, channels, filters)
        removed_fraction = 1.0 - kept_fraction(height * width, channels, filters, channels - len(channels_out), rank)
        return removed_fraction, _cut(kernel, gradient, channels_out, rank, values)
    options = []
    if pruning is not None and len(pruning.macs_removed):
        index = min(int(np.searchsorted(pruning.macs_removed, rate - 1e-12)), len(pruning.macs_removed) - 1)
        options.append((pruning.score[index], pruning.macs_removed[index], pruning.order[:pruning.units_removed[index]],
                        None))
    if len(joint.macs_removed):
        index = joint.point(rate)
        options.append((joint.score[index], joint.macs_removed[index],
                        joint.channel_order[:joint.channels_removed[index]], int(joint.rank[index])))
    reaching = [o for o in options if o[1] >= rate - 1e-12] or [max(options, key=lambda o: o[1])]
    _, removed_fraction, channels_out, rank = min(reaching, key=lambda o: o[0])
    return float(removed_fraction), _cut(kernel, gradient, channels_out, rank, values)


def _cut(kernel: np.ndarray, gradient: np.ndarray, channels: np.ndarray, rank: int | None, values: str) -> np.ndarray:
    cut = kernel.astype(np.float64).copy()
    cut[:, :, channels, :] = 0.0
    if rank is not None and rank < min(channel_matrix(cut).shape):
        basis, pointwise = factor_kernel(cut, values_to_keep(cut, gradient, rank, values))
        cut = basis.astype(np.float64) @ pointwise[0, 0].astype(np.float64)
    return cut.astype(kernel.dtype)


def _measure(variable: Any, kernel: np.ndarray, gradient: np.ndarray, pruning, joint, rates, evaluate,
             base: float, mixing: str, values: str) -> list[tuple[float, float]]:
    """(MACs fraction removed, loss change) with this layer alone cut at each rate; restores the kernel."""
    points = []
    try:
        for rate in rates:
            fraction, cut = cut_kernel(kernel, gradient, pruning, joint, rate, mixing, values)
            variable.assign(cut)
            points.append((fraction, evaluate() - base))
    finally:
        variable.assign(kernel)
    return points


def _lower_envelope(fractions: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each MACs fraction reached, the cheapest score any unit kind reaches at or beyond it."""
    order = np.argsort(fractions)
    fractions, scores = fractions[order], scores[order]
    best = np.minimum.accumulate(scores[::-1])[::-1]
    return fractions, best

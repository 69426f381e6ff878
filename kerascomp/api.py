"""The public entry points: ``compress``, ``clone_compressed`` and ``strip``."""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from kerascomp.errors import CompressionError, InvalidArgumentError, InvalidWeightsError, UnsupportedModelError
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import infer_shapes, read_model, write_model
from kerascomp.methods.base import Budget, CompressionReport
from kerascomp.methods.fga import FGAOptions, fga_pass
from kerascomp.methods.joint_svd import SVDOptions, svd_pass
from kerascomp.methods.pruning import PruneOptions
from kerascomp.methods.tucker import TuckerOptions, tucker_pass

METHODS = ("fga", "l1", "correlation", "svd", "joint_svd", "tucker", "collaborative")
SVD_METHODS = ("svd", "joint_svd")
PRUNING_METHODS = ("l1", "correlation")


class CompressionWarning(UserWarning):
    """Emitted when layers are left uncompressed; the message lists them with their reasons."""


@dataclass
class Compressed:
    """The result of :func:`compress`: the new model and the per-layer report."""

    model: Any
    report: CompressionReport


def check_finite(graph: Graph) -> None:
    for spec in graph.layers.values():
        for index, weight in enumerate(spec.weights):
            if np.issubdtype(np.asarray(weight).dtype, np.floating) and not np.all(np.isfinite(weight)):
                bad = int(np.size(weight) - np.isfinite(weight).sum())
                raise InvalidWeightsError(
                    f"layer {spec.name!r} ({spec.class_name}) has {bad} NaN/inf values in weight #{index} "
                    f"(shape {np.shape(weight)}). Fix or retrain the model before compressing it.")


def input_batch(graph: Graph, data: Any, argument: str = "data", limit: int = 512) -> Any:
    """Normalise ``data`` (array, ``(x, y)`` tuple or ``tf.data.Dataset``) to model-input arrays, checking shapes."""
    return inputs_for(graph.input_shapes(), data, argument, limit)


def inputs_for(shapes: dict[str, Any], data: Any, argument: str = "data", limit: int = 512) -> Any:
    """:func:`input_batch` for a model known only by its input names and batch shapes."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and not _is_tensor_like(data):
        data = data[0]
    if hasattr(data, "as_numpy_iterator") and hasattr(data, "take"):
        batches, rows = [], 0
        for batch in data.as_numpy_iterator():
            if isinstance(batch, tuple):
                batch = batch[0]
            batches.append(batch)
            rows += len(batch[0] if isinstance(batch, list) else batch)
            if rows >= limit:
                break
        if not batches:
            raise InvalidArgumentError(f"{argument} is an empty dataset.")
        if isinstance(batches[0], list):
            data = [np.concatenate([b[i] for b in batches]) for i in range(len(batches[0]))]
        else:
            data = np.concatenate(batches)
    arrays = data if isinstance(data, list) else [data]
    if len(arrays) != len(shapes):
        raise InvalidArgumentError(f"{argument} holds {len(arrays)} input array(s) but the model has "
                                   f"{len(shapes)} inputs ({list(shapes)}).")
    checked = []
    for array, name in zip(arrays, shapes):
        if not _is_tensor_like(array):
            raise InvalidArgumentError(f"{argument} must be a numpy array, an (x, y) tuple or a tf.data.Dataset of "
                                       f"inputs; got {type(array).__name__}.")
        array = np.asarray(array)
        expected = list(shapes[name])[1:]
        if array.ndim != len(expected) + 1 or any(e is not None and e != a for e, a in zip(expected, array.shape[1:])):
            raise InvalidArgumentError(f"{argument} has shape {array.shape} but model input {name!r} expects "
                                       f"(batch, {', '.join(str(e) for e in expected)}).")
        if not np.issubdtype(array.dtype, np.number):
            raise InvalidArgumentError(f"{argument} for input {name!r} has dtype {array.dtype}; pass numeric arrays.")
        if len(array) == 0:
            raise InvalidArgumentError(f"{argument} for input {name!r} has no rows (shape {array.shape}).")
        array = array[:limit].astype(np.float32)
        if not np.all(np.isfinite(array)):
            raise InvalidArgumentError(f"{argument} for input {name!r} contains NaN or inf values; clean it first.")
        checked.append(array)
    return checked if isinstance(data, list) else checked[0]


def _is_tensor_like(value: Any) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "shape") and hasattr(value, "dtype") and hasattr(value, "__array__"))


def check_verbose(verbose: Any) -> None:
    if isinstance(verbose, bool) or not isinstance(verbose, int) or verbose not in (0, 1, 2):
        raise InvalidArgumentError(f"verbose must be 0 (silent), 1 or 2, got {verbose!r}.")


def read_checked(model: Any) -> Graph:
    if model is None or not hasattr(model, "get_config"):
        raise InvalidArgumentError(f"expected a Keras model as the first argument, got {type(model).__name__}.")
    graph = read_model(model)
    check_finite(graph)
    return graph


def _check_has_cost(graph: Graph, what: str) -> None:
    from kerascomp.cost import graph_cost

    total = graph_cost(graph, infer_shapes(graph))
    if (total.macs if what == "MACs" else total.params) == 0:
        kinds = sorted({spec.class_name for spec in graph.layers.values()})
        raise UnsupportedModelError(f"model {graph.name!r} has no {what} to compress: it holds no conv or Dense "
                                    f"layer kerascomp can cost (layer classes: {', '.join(kinds)}). There is "
                                    "nothing to make smaller.")


def method_options_for(method: str, options: dict) -> FGAOptions | PruneOptions | SVDOptions | TuckerOptions:
    """The validated options object of ``method`` built from keyword ``options``."""
    cls = (FGAOptions if method == "fga" else SVDOptions if method in SVD_METHODS else
           TuckerOptions if method == "tucker" else PruneOptions)
    try:
        built = cls(**options)
    except TypeError as error:
        raise InvalidArgumentError(f"unknown option for method={method!r}: {error}. Known: "
                                   f"{sorted(cls.__dataclass_fields__)}.") from None
    if method in SVD_METHODS:
        built.validate(method)
        return built
    if method == "tucker":
        built.validate()
        return built
    if method != "fga":
        built.validate()
        return built
    for option in ("min_channels_per_group", "rank_multiple", "max_samples"):
        value = getattr(built, option)
        if option == "rank_multiple" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InvalidArgumentError(f"{option} must be an int >= 1, got {value!r}.")
    return built


def pruning_scorer(method: str):
    """(scorer, whether it pairs channels) of a pruning method."""
    from kerascomp.methods.correlation import correlation_steps
    from kerascomp.methods.l1 import l1_steps

    return (l1_steps, False) if method == "l1" else (correlation_steps, True)


def run_method(graph: Graph, shapes: dict, budget: Budget, batch: Any, method: str, options: Any,
               verbose: int) -> tuple[Graph, CompressionReport]:
    """Dispatch one method's IR pass."""
    if method == "fga":
        return fga_pass(graph, shapes, budget, batch, options, verbose)
    if method in SVD_METHODS:
        return svd_pass(graph, shapes, budget, method, options, batch, verbose)
    if method == "tucker":
        return tucker_pass(graph, shapes, budget, batch, options, verbose)
    from kerascomp.graph.channels import analyse_channels
    from kerascomp.methods.pruning import prune_pass

    scorer, pairs = pruning_scorer(method)
    return prune_pass(graph, shapes, analyse_channels(graph, shapes), budget, scorer, method, options, batch, pairs,
                      verbose)


def latency_budget(target_latency: Any, target_flops: Any = None, target_params: Any = None) -> Budget:
    """The budget of ``target_latency``: a fraction of the original model's estimated latency."""
    if target_flops is not None or target_params is not None:
        raise InvalidArgumentError("pass one target: target_flops, target_params or target_latency.")
    if isinstance(target_latency, bool) or not isinstance(target_latency, (int, float)) or not 0 < target_latency <= 1:
        raise InvalidArgumentError(f"target_latency={target_latency!r} must be a number in (0, 1]: the fraction "
                                   "of the original model's latency to keep.")
    return Budget("latency", float(target_latency))


def latency_for(model: Any, latency: Any, verbose: int) -> Any:
    """``latency`` checked, or measured on this host when ``None``."""
    from kerascomp.bench.latency import LatencyTable, latency_table

    if latency is None:
        return latency_table(model, verbose=verbose)
    if not isinstance(latency, LatencyTable):
        raise InvalidArgumentError(f"latency must be a kerascomp.LatencyTable, got {type(latency).__name__}.")
    return latency


def _collaborative(model: Any, graph: Graph, targets: dict, data: Any, plan: Any, loss: Any, latency: Any,
                   options: dict, verbose: int) -> tuple[Graph, CompressionReport]:
    """Plan (unless ``plan`` is given) and apply collaborative compression."""
    from kerascomp.methods.collaborative import apply_plan, collaborative_options
    from kerascomp.planner import plan as make_plan

    built = collaborative_options(options)
    if plan is None:
        plan = make_plan(model, "collaborative", data=data, loss=loss, latency=latency, verbose=verbose, **targets,
                         **options)
    return apply_plan(graph, plan, input_batch(graph, data), built.recalibrate, built.max_samples, verbose)


def compress(model: Any, method: str = "fga", target_flops: float | None = None, target_params: float | None = None,
             data: Any = None, verbose: int = 1, plan: Any = None, loss: Any = None, target_latency: float | None = None,
             latency: Any = None, **options: Any) -> Compressed:
    """Compress a copy of ``model`` and return it with its per-layer report. ``model`` is not modified.

    See :func:`clone_compressed` for the arguments.
    """
    started = time.perf_counter()
    if plan is not None:
        method = getattr(plan, "method", method)
    if method not in METHODS:
        raise InvalidArgumentError(f"method={method!r} is not one of {METHODS}.")
    if loss is not None and method != "collaborative":
        raise InvalidArgumentError(f"loss= is used by method='collaborative' only, not {method!r}.")
    for name, value in (("target_latency", target_latency), ("latency", latency)):
        if value is not None and method not in ("collaborative", "fga"):
            raise InvalidArgumentError(f"{name}= is used by method='collaborative' and 'fga' only, not {method!r}.")
    check_verbose(verbose)
    graph = read_checked(model)
    _check_has_cost(graph, "params" if target_params is not None else "MACs")
    if method == "collaborative":
        unset = target_flops is None and target_params is None and target_latency is None
        targets = {"target_flops": 0.25 if unset else target_flops, "target_params": target_params,
                   "target_latency": target_latency}
        compressed_graph, report = _collaborative(model, graph, targets, data, plan, loss, latency, options, verbose)
    else:
        budget = (latency_budget(target_latency, target_flops, target_params) if target_latency is not None else
                  Budget.from_targets(0.25 if target_flops is None and target_params is None else target_flops,
                                      target_params))
        batch = input_batch(graph, data)
        method_options = method_options_for(method, options)
        shapes = infer_shapes(graph)
        if budget.metric == "latency":
            latency = latency_for(model, latency, verbose)
            compressed_graph, report = fga_pass(graph, shapes, budget, batch, method_options, verbose, latency)
        else:
            compressed_graph, report = run_method(graph, shapes, budget, batch, method, method_options, verbose)
    new_model = write_model(compressed_graph)
    report.seconds = time.perf_counter() - started
    kept = report.kept()
    if kept:
        listed = ", ".join(f"{d.layer} ({d.reason})" for d in kept[:8]) + (" ..." if len(kept) > 8 else "")
        warnings.warn(f"kerascomp {method}: {len(kept)} layer(s) with MACs left uncompressed: {listed}. See the report (kerascomp.compress(...).report) for every layer.",
                      CompressionWarning, stacklevel=3)
    if verbose:
        print(report)
    return Compressed(new_model, report)


def clone_compressed(model: Any, method: str = "fga", target_flops: float | None = 0.25,
                     target_params: float | None = None, data: Any = None, verbose: int = 1, plan: Any = None,
                     loss: Any = None, target_latency: float | None = None, latency: Any = None,
                     **options: Any) -> Any:
    """Return a new, compressed model whose MACs (or params) are at most the target fraction of ``model``'s.

    ``model`` is never modified. The result is a model of the same Keras flavour, ready for
    ``compile`` and ``fit``; pass it through :func:`strip` (``export_tflite`` does) for plain layers.

    Args:
        model: a built Sequential or functional Keras 3 or tf_keras model.
        method: ``"fga"`` (filter-group approximation), ``"correlation"`` (filter-correlation pruning:
            drop one filter of each most-correlated pair, physically), ``"l1"`` (L1-norm filter pruning),
            ``"svd"`` (per-layer spatial SVD: kxk -> kx1 + 1xk) or ``"joint_svd"`` (spatial SVD whose factors
            are shared by the repeated convs of a stage; ``variant="left" | "right" | "bi"``, best with
            ``target_params``), ``"tucker"`` (Tucker-2: 1x1 -> kxk -> 1x1 by tensorly, one rank rate for
            every conv or ``allocation="global"``), or ``"collaborative"`` (joint channel pruning and low-rank decomposition with
            per-layer rates from gradient sensitivity; needs labelled ``data=(x, y)``).
            For the full correlation method, with regularised training rounds, see :func:`kerascomp.prune_in_rounds`.
        target_flops: fraction of the original MACs to keep, in (0, 1]. Ignored if ``target_params`` is given.
        target_params: fraction of the original params to keep, in (0, 1].
        data: optional inputs (numpy array, ``(x, y)`` or ``tf.data.Dataset``): FGA refits its 1x1 convs on
            them, correlation pruning fits the compensation of dropped filters on them, and pruning and
            (joint) SVD re-estimate BatchNormalization statistics on them. ``"collaborative"`` needs labels:
            ``(x, y)`` arrays or a dataset of ``(x, y)`` batches.
        plan: a :class:`kerascomp.Plan` from :func:`kerascomp.plan` (or ``Plan.load``) to apply instead of
            planning; the targets are then ignored and ``data`` only re-estimates BatchNormalization.
        loss: the loss the collaborative sensitivity differentiates (default: the model's compiled loss,
            else sparse categorical cross-entropy).
        target_latency, latency: ``method="collaborative"`` only: keep this fraction of the original latency,
            estimated from the :class:`kerascomp.LatencyTable` ``latency`` (measured on this host if omitted).
        verbose: 0 silences the progress bars and the report table.
        **options: method options, see :class:`kerascomp.methods.fga.FGAOptions`,
            :class:`kerascomp.methods.pruning.PruneOptions` and :class:`kerascomp.methods.joint_svd.SVDOptions`.

    Example::

        small = kerascomp.clone_compressed(model, method="fga", target_flops=0.5, data=x_train[:256])
        small.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        small.fit(x_train, y_train, epochs=1)
        kerascomp.export_tflite(small, "small.tflite")
    """
    if target_params is not None or target_latency is not None:
        target_flops = None
    return compress(model, method, target_flops, target_params, data, verbose, plan, loss, target_latency, latency,
                    **options).model


def strip(model: Any) -> Any:
    """Return an equivalent model made only of standard Keras layers (for the TFLite converter)."""
    from kerascomp.methods.strip import strip_graph

    if model is None or not hasattr(model, "get_config"):
        raise InvalidArgumentError(f"strip expects a Keras model, got {type(model).__name__}.")
    graph = read_model(model)
    return write_model(strip_graph(graph))


__all__ = ["compress", "clone_compressed", "strip", "Compressed", "CompressionWarning", "CompressionError"]

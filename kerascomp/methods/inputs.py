"""Checks of what users pass in, shared by every entry point: the model, its weights, ``data``, ``verbose``, targets.

Below the methods in the layer order, so that methods, export and bench all use the same checks.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kerascomp.cost import graph_cost
from kerascomp.errors import InvalidArgumentError, InvalidWeightsError, UnsupportedModelError
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import infer_shapes, read_model
from kerascomp.methods.base import Budget

DEFAULT_TARGET_FLOPS = 0.5  # one default for clone_compressed, plan and prune_in_rounds


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
    if isinstance(data, tuple) and len(data) == 2 and not is_tensor_like(data):
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
        if not is_tensor_like(array):
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


def is_tensor_like(value: Any) -> bool:
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


def check_has_cost(graph: Graph, what: str) -> None:
    total = graph_cost(graph, infer_shapes(graph))
    if (total.macs if what == "MACs" else total.params) == 0:
        kinds = sorted({spec.class_name for spec in graph.layers.values()})
        raise UnsupportedModelError(f"model {graph.name!r} has no {what} to compress: it holds no conv or Dense "
                                    f"layer kerascomp can cost (layer classes: {', '.join(kinds)}). There is "
                                    "nothing to make smaller.")


def latency_budget(target_latency: Any, target_flops: Any = None, target_params: Any = None) -> Budget:
    """The budget of ``target_latency``: a fraction of the original model's estimated latency."""
    if target_flops is not None or target_params is not None:
        raise InvalidArgumentError("pass one target: target_flops, target_params or target_latency.")
    if isinstance(target_latency, bool) or not isinstance(target_latency, (int, float)) or not 0 < target_latency <= 1:
        raise InvalidArgumentError(f"target_latency={target_latency!r} must be a number in (0, 1]: the fraction "
                                   "of the original model's latency to keep.")
    return Budget("latency", float(target_latency))


def budget_for(target_flops: Any = None, target_params: Any = None, target_latency: Any = None) -> Budget:
    """The one budget the targets ask for; ``target_flops`` defaults to :data:`DEFAULT_TARGET_FLOPS`."""
    if target_latency is not None:
        return latency_budget(target_latency, target_flops, target_params)
    if target_flops is None and target_params is None:
        target_flops = DEFAULT_TARGET_FLOPS
    return Budget.from_targets(target_flops, target_params)


# Validators of option fields: one message per kind of mistake, naming the option.

def check_int(name: str, value: Any, least: int = 1) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise InvalidArgumentError(f"{name} must be an int >= {least}, got {value!r}.")


def check_bool(name: str, value: Any) -> None:
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name} must be True or False, got {value!r}.")


def check_auto(name: str, value: Any) -> None:
    if value not in (True, False, "auto") or (not isinstance(value, bool) and value != "auto"):
        raise InvalidArgumentError(f"{name} must be True, False or 'auto', got {value!r}.")


def check_choice(name: str, value: Any, choices: tuple) -> None:
    if not isinstance(value, str) or value not in choices:
        raise InvalidArgumentError(f"{name} must be one of {choices}, got {value!r}.")


def check_number(name: str, value: Any, low: float, high: float, interval: str = "(]") -> None:
    """``value`` a real number in the interval from ``low`` to ``high``; ``interval`` gives the brackets."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float)) and np.isfinite(value)
    if ok:
        above = value > low if interval[0] == "(" else value >= low
        below = value < high if interval[1] == ")" else value <= high
        ok = above and below
    if not ok:
        raise InvalidArgumentError(f"{name} must be a number in {interval[0]}{low:g}, {high:g}{interval[1]}, "
                                   f"got {value!r}.")

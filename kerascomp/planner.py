"""``kerascomp.plan``: per-layer compression decisions that can be printed, saved, edited and re-applied.

Every registered method plans: ``kerascomp.plan(model, method=..., target_flops=0.5, data=...)``
returns a :class:`kerascomp.Plan` (per layer: groups and rank, Tucker ranks, SVD ranks, channels
removed, or collaborative's channels and singular values), and ``clone_compressed(model, plan=plan)``
applies it, bit for bit the same way each time::

    plan = kerascomp.plan(model, method="collaborative", target_flops=0.5, data=(x_val, y_val))
    print(plan)
    plan.save("plan.json")
    small = kerascomp.clone_compressed(model, plan=kerascomp.Plan.load("plan.json"), data=x_val)

This module also holds what planning needs from the layers above the methods: the host latency
table and the measured latency ratio (export + LiteRT), handed to methods through their
:class:`~kerascomp.methods.registry.Context`.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from kerascomp.bench.host import latency_ratio
from kerascomp.bench.latency import LatencyTable, latency_table
from kerascomp.errors import InvalidArgumentError
from kerascomp.export.tflite import convert
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import write_model
from kerascomp.methods import registry
from kerascomp.methods.base import Budget, LayerPlan, LayerRecord, Plan, fingerprint
from kerascomp.methods.inputs import budget_for, check_verbose, read_checked
from kerascomp.methods.registry import Context, Method
from kerascomp.methods.strip import strip_graph

__all__ = ["plan", "Plan", "LayerPlan", "LayerRecord", "fingerprint", "context_for", "measured_latency_ratio"]


def latency_for(model: Any, latency: Any, verbose: int) -> LatencyTable:
    """``latency`` checked, or measured on this host (cached on disk) when ``None`` or ``"host"``."""
    if latency is None or (isinstance(latency, str) and latency == "host"):
        return latency_table(model, verbose=verbose)
    if not isinstance(latency, LatencyTable):
        raise InvalidArgumentError(f"latency must be a kerascomp.LatencyTable or \"host\" (measure this host's "
                                   f"table, cached on disk), got {latency!r}.")
    return latency


def measured_latency_ratio(num_threads: int = 1, runs: int = 200, rounds: int = 5):
    """``measure(original, compressed)``: LiteRT latency of ``compressed`` over ``original``'s, timed
    interleaved on this host (fp32, ``num_threads``) in ``rounds`` alternating rounds, so that a
    load that comes and goes slows both alike; the median of three such timings with fresh
    interpreters (:func:`kerascomp.bench.host.latency_ratio`). Each round runs a file 40 times in a row:
    with 5 (``runs=100, rounds=20``, until 2026-12-06) a CIFAR ResNet-20 Tucker file measured 0.518 of
    the original where 40 in a row, as an app runs one model, gave 0.555 (byte-identical files, same
    run): short rounds favour the model that switches in cheaper, and that search returned Tucker
    models 8% slower than it reported."""
    def measure(original: Graph, compressed: Graph) -> float:
        with tempfile.TemporaryDirectory(prefix="kerascomp-latency-check-") as folder:
            paths = [Path(folder) / "original.tflite", Path(folder) / "planned.tflite"]
            for path, source in zip(paths, (original, compressed)):
                path.write_bytes(convert(write_model(strip_graph(source)), None, None, False))
            return latency_ratio(*paths, num_threads=num_threads, runs=runs, rounds=rounds)

    return measure


def context_for(method: Method, model: Any, budget: Budget, loss: Any, latency: Any, verbose: int) -> Context:
    """The :class:`Context` of one compression: the loss, and a latency table (measured here if none is
    given) only for a latency target; ``loss=`` and latency arguments are refused by methods that ignore them."""
    if loss is not None and not method.uses_loss:
        users = sorted(name for name in registry.names() if registry.get(name).uses_loss)
        raise InvalidArgumentError(f"loss= is used by method={' or '.join(map(repr, users))} only, not "
                                   f"{method.name!r}.")
    if latency is not None and not (method.uses_latency or method.latency_front):
        planners = sorted(name for name in registry.names() if registry.get(name).uses_latency)
        guards = sorted(name for name in registry.names() if registry.get(name).latency_front)
        raise InvalidArgumentError(f"latency= (a latency table) is used by method={' and '.join(map(repr, planners))} "
                                   f"(to plan target_latency) and by {', '.join(map(repr, guards))} (to keep only "
                                   f"forms the table times faster, under any target); {method.name!r} meets "
                                   "target_latency by timing the compressed model here (no table). Drop latency=, "
                                   "or choose one of those methods.")
    if latency is not None and budget.metric != "latency" and not method.latency_front:
        raise InvalidArgumentError(f"method={method.name!r} uses latency= (a latency table) for target_latency only, "
                                   f"not for target_{budget.metric}. Drop latency=, or pass target_latency.")
    if budget.metric == "latency" and not method.uses_latency:
        return Context(verbose=verbose, loss=loss, measure=measured_latency_ratio(), latency=(
            latency_for(model, latency, verbose) if latency is not None else None))
    if budget.metric == "latency" or latency is not None:
        latency = latency_for(model, latency, verbose)
    measure = measured_latency_ratio(latency.num_threads) if latency is not None else None
    return Context(verbose=verbose, loss=loss, latency=latency, measure=measure)


def plan(model: Any, method: str = "collaborative", target_flops: float | None = None,
         target_params: float | None = None, target_latency: float | None = None, data: Any = None,
         loss: Any = None, latency: Any = None, verbose: int = 1, **options: Any) -> Plan:
    """Decide, per layer, how to compress ``model`` to the target; returns a :class:`Plan` (``model`` untouched).

    Args:
        model: a built Keras 3 or tf_keras model.
        method: any registered method (``kerascomp.methods.registry.names()``); default
            ``"collaborative"`` (joint channel pruning and low-rank decomposition, Li et al. 2021).
        target_flops / target_params: fraction of the original MACs / params to keep, in (0, 1]
            (default ``target_flops=0.5``, as in ``clone_compressed`` and ``prune_in_rounds``).
        target_latency: fraction of the original model's latency to keep. ``"collaborative"`` and
            ``"fga"`` estimate it from ``latency`` (a :class:`kerascomp.LatencyTable`; measured on this
            host with :func:`kerascomp.latency_table` when not given); every other method searches its
            MACs budget by measuring the compressed model here (``methods/latency_search.py``).
        data: collaborative: labelled data for the gradient sensitivity, ``(x, y)`` arrays or a
            ``tf.data.Dataset`` of ``(x, y)`` batches (a few hundred validation images suffice).
            Other methods: inputs for their data-driven steps (FGA's refit, compensation, BN
            recalibration), which planning runs to fill in the per-layer errors.
        loss: collaborative: ``loss(y_true, y_pred) -> scalar``; defaults to the model's compiled loss,
            else sparse categorical cross-entropy from logits or probabilities, as the output layer implies.
        **options: the method's options (e.g. :class:`kerascomp.CollaborativeOptions`).
    """
    chosen = registry.get(method)
    built = chosen.make_options(options)
    budget = budget_for(target_flops, target_params, target_latency)
    check_verbose(verbose)
    graph = read_checked(model)
    context = context_for(chosen, model, budget, loss, latency, verbose)
    return chosen.plan(graph, budget, data, built, context)

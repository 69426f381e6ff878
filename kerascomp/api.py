"""The public entry points: ``compress``, ``clone_compressed`` and ``strip``.

Every method is dispatched through the registry (:mod:`kerascomp.methods.registry`); nothing here
knows one method from another.
"""
from __future__ import annotations

import time
import warnings
from dataclasses import dataclass
from typing import Any

from kerascomp.errors import CompressionError, CompressionWarning, InvalidArgumentError
from kerascomp.graph.keras_io import write_model
from kerascomp.methods import registry
from kerascomp.methods.base import CompressionReport, Plan
from kerascomp.methods.inputs import DEFAULT_TARGET_FLOPS, budget_for, check_has_cost, check_verbose, read_checked
from kerascomp.methods.registry import Context
from kerascomp.methods.strip import strip_model
from kerascomp.planner import context_for

METHODS = registry.names()  # the built-in methods (kerascomp.method_names() also lists registered ones)


@dataclass
class Compressed:
    """The result of :func:`compress`: the new model, the per-layer report and the plan that reproduces it."""

    model: Any
    report: CompressionReport
    plan: Plan | None = None


def compress(model: Any, method: str = "fga", target_flops: float | None = None, target_params: float | None = None,
             data: Any = None, verbose: int = 1, plan: Any = None, loss: Any = None, target_latency: float | None = None,
             latency: Any = None, **options: Any) -> Compressed:
    """Compress a copy of ``model`` and return it with its per-layer report and plan. ``model`` is not modified.

    See :func:`clone_compressed` for the arguments.
    """
    started = time.perf_counter()
    if plan is not None:
        if not isinstance(plan, Plan):
            raise InvalidArgumentError(f"plan must be a kerascomp.Plan (see kerascomp.plan), got "
                                       f"{type(plan).__name__}.")
        method = plan.method
    chosen = registry.get(method)
    check_verbose(verbose)
    graph = read_checked(model)
    if plan is None:
        built = chosen.make_options(options)
        budget = budget_for(target_flops, target_params, target_latency)
        check_has_cost(graph, "params" if budget.metric == "params" else "MACs")
        context = context_for(chosen, model, budget, loss, latency, verbose)
        compressed_graph, report, plan = chosen.compress(graph, budget, data, built, context)
    else:
        if options:
            # options given with a plan override its settings (e.g. recalibrate=False)
            given = chosen.rename(options)
            chosen.plan_options(plan, given)  # refuses a bad option by name before any work
            plan = Plan.from_json(plan.to_json())
            plan.settings = {**plan.settings, **given}
        compressed_graph, report = chosen.apply(graph, plan, data, Context(verbose=verbose))
    new_model = write_model(compressed_graph)
    report.seconds = time.perf_counter() - started
    kept = report.kept()
    if kept:
        listed = ", ".join(f"{d.layer} ({d.reason})" for d in kept[:8]) + (" ..." if len(kept) > 8 else "")
        warnings.warn(f"kerascomp {chosen.name}: {len(kept)} layer(s) with MACs left uncompressed: {listed}. See the "
                      "report (kerascomp.compress(...).report) for every layer.", CompressionWarning, stacklevel=3)
    if verbose:
        print(report)
    return Compressed(new_model, report, plan)


def clone_compressed(model: Any, method: str = "fga", target_flops: float | None = DEFAULT_TARGET_FLOPS,
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
        target_flops: fraction of the original MACs to keep, in (0, 1] (default 0.5, as in ``kerascomp.plan``
            and ``prune_in_rounds``). Ignored if ``target_params`` or ``target_latency`` is given.
        target_params: fraction of the original params to keep, in (0, 1].
        data: optional inputs (numpy array, ``(x, y)`` or ``tf.data.Dataset``): FGA refits its 1x1 convs on
            them, correlation pruning fits the compensation of dropped filters on them, and pruning and
            (joint) SVD re-estimate BatchNormalization statistics on them. ``"collaborative"`` needs labels:
            ``(x, y)`` arrays or a dataset of ``(x, y)`` batches.
        plan: a :class:`kerascomp.Plan` from :func:`kerascomp.plan`, ``compress(...).plan`` or ``Plan.load``,
            of any method, to apply instead of planning; the targets are then ignored, ``data`` feeds the
            method's data-driven steps (FGA's refit, compensation, BN recalibration; pass the data the plan
            was made with for a bit-identical model) and ``**options`` override the plan's settings.
        loss: the loss the collaborative sensitivity differentiates (default: the model's compiled loss,
            else sparse categorical cross-entropy).
        target_latency: keep this fraction of the original latency, any method. ``"collaborative"`` and
            ``"fga"`` plan against the :class:`kerascomp.LatencyTable` ``latency`` (measured on this host if
            omitted); the others (l1, correlation, svd, joint_svd, tucker) search their MACs budget by timing
            the compressed model against the original here (LiteRT, 1 thread) until the measured ratio is
            within 5% of the target; the report's notes list every measured point.
        latency: a :class:`kerascomp.LatencyTable` (``kerascomp.latency_table(model)``, cached on disk, or
            a phone's), or ``"host"`` to measure this host's table (cached). collaborative and fga plan
            ``target_latency`` by it; fga, svd, joint_svd, tucker, auto and collaborative also use it under
            ``target_flops``/``target_params``: each layer is offered only the forms on its latency front (none
            the table times slower than the dense layer or than a form at least as accurate; collaborative
            keeps its per-layer decision unless the table puts it off that front; the report's
            ``latency_front`` note counts what it left out); l1 and correlation (``stream="auto"``) cut the residual
            stream last or uniformly, whichever the table estimates faster (the ``stream`` note).
        verbose: 0 silences the progress bars and the report table.
        **options: the method's options (``kerascomp.FGAOptions``, ``PruneOptions``, ``SVDOptions``,
            ``TuckerOptions``, ``CollaborativeOptions``; all in one table in docs/options.md). An unknown
            or invalid option raises ``InvalidArgumentError`` naming it.

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
    return strip_model(model)


__all__ = ["compress", "clone_compressed", "strip", "Compressed", "CompressionWarning", "CompressionError"]

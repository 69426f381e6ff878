"""The method protocol and its registry: every compression method is one registered object.

A method has validated ``options`` (a dataclass built by :meth:`Method.make_options`),
``plan(graph, budget, data, options, context) -> Plan`` and ``apply(graph, plan, data, context)
-> (Graph, CompressionReport)``. ``kerascomp.clone_compressed``, ``kerascomp.plan``, the CLI,
``prune_in_rounds`` and the fuzz harness find methods here, so adding one is a file with a
:class:`Method` subclass and one :func:`register` call (see docs/ARCHITECTURE.md)::

    class Identity(Method):
        name = "identity"

        def run(self, graph, budget, data, options, context, fixed=None):
            ...  # return (new graph, CompressionReport with .choices filled)

    register(Identity())
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from dataclasses import dataclass
from typing import Any, Callable

from kerascomp.errors import BudgetError, InvalidArgumentError
from kerascomp.graph.ir import Graph
from kerascomp.methods import latency_search
from kerascomp.methods.base import Budget, CompressionReport, Plan, fingerprint, plan_from_report
from kerascomp.methods.bnfold import fold_batchnorm, unfold_batchnorm
from kerascomp.methods.calibrate import check_recalibrate, recalibrate_if_asked
from kerascomp.methods.conv_views import conv_views, restore_views
from kerascomp.methods.expansions import run_with_expansions
from kerascomp.methods.inputs import input_batch
from kerascomp.methods.pointwise import run_with_pointwise
from kerascomp.methods.reconstruct import (
    check_reconstruct,
    find_units,
    reconstruct,
    reconstruct_active,
    validate_reconstruct,
)
from kerascomp.methods.tiles import run_with_tile_steps


@dataclass(frozen=True)
class Context:
    """What a method may use besides the graph, the budget and the data.

    ``loss``: the loss a gradient sensitivity differentiates; ``latency``: a measured
    :class:`kerascomp.LatencyTable`; ``measure``: ``measure(original, compressed) -> float``, the
    measured latency ratio of two graphs (methods never export or time models themselves).
    """

    verbose: int = 1
    loss: Any = None
    latency: Any = None
    measure: Callable[[Graph, Graph], float] | None = None


@dataclass(frozen=True)
class NoOptions:
    """The options of a method that has none."""

    def validate(self) -> None:
        return None


def build_options(cls: type, options: dict, method: str, validate: bool = True) -> Any:
    """``cls(**options)``, validated (unless ``validate=False``: the caller validates), with an error that
    names an unknown option and lists the known ones."""
    known = sorted(field.name for field in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise InvalidArgumentError(f"unknown option(s) {', '.join(unknown)} for method={method!r}. "
                                   f"Known: {known or 'none'}.")
    built = cls(**options)
    if validate and hasattr(built, "validate"):
        built.validate()
    validate_reconstruct(built)
    return built


def finish(original: Graph, result: Graph, report: CompressionReport, data: Any, options: Any,
           verbose: int = 1) -> Graph:
    """The steps every method shares after its rewrite, in order: reconstruction (the ``reconstruct`` option:
    refit each changed layer's last linear map so the compressed model's outputs match the original's, see
    :mod:`kerascomp.methods.reconstruct`), then BatchNormalization recalibration (the ``recalibrate`` option;
    ``"auto"`` runs it only where reconstruction refit no layer, see :func:`recalibrate_if_asked`).
    Options objects without these fields skip the step. Records what was done in ``report``."""
    check_finishing(options, data)
    changed = fingerprint(original) != fingerprint(result)
    reconstructed = False  # whether reconstruction refit at least one layer
    if changed and reconstruct_active(options, data):
        units, skipped = find_units(original, result, report.kept_outputs)
        result, details = reconstruct(original, result, units, data, options.reconstruct_samples, verbose)
        rows = {record.layer: record for record in report.layers}
        for name, detail in details.items():
            if name in rows:
                rows[name].detail.update(detail)
        for name, reason in skipped.items():
            if name in rows:
                rows[name].detail["not_reconstructed"] = reason
        reconstructed = any(d["refit"] for d in details.values())
        report.notes["reconstructed_layers"] = f"{sum(d['refit'] for d in details.values())}/{len(units)}"
        if skipped:
            report.notes["not_reconstructed"] = len(skipped)
    if hasattr(options, "recalibrate"):
        result, recalibrated = recalibrate_if_asked(result, data, options.recalibrate,
                                                    getattr(options, "max_samples", 256), changed, reconstructed)
        report.notes["recalibrated_batchnorms"] = recalibrated
        if reconstructed and options.recalibrate == "auto":
            report.notes["recalibration"] = "skipped: recalibrate='auto' runs only where reconstruction refit nothing"
    return result


def check_finishing(options: Any, data: Any) -> None:
    """Refuse ``reconstruct=True`` / ``recalibrate=True`` without data, before any work is done."""
    check_reconstruct(options, data)
    if hasattr(options, "recalibrate"):
        check_recalibrate(options.recalibrate, data)


def method_inputs(graph: Graph, data: Any, options: Any) -> Any:
    """``data`` as model inputs; from a ``tf.data`` pipeline, as many rows as reconstruction reads."""
    return input_batch(graph, data, limit=max(512, int(getattr(options, "reconstruct_samples", 0))))


class Method:
    """One compression method. Subclasses set ``name`` and ``options_class`` and implement ``run``
    (or, for a planner with its own plan format, ``plan`` and ``apply``).

    Attributes:
        needs_labels: ``plan`` reads ``(x, y)`` data (a gradient sensitivity).
        uses_loss: ``loss=`` means something to it.
        uses_latency: it plans against a latency table (``target_latency=`` / ``latency=``).
        checks_latency: it measures its latency-targeted result itself; for every other method
            :meth:`compress` corrects a latency target by measurement (``latency_search``).
        latency_front: given a table (``latency=``) under any target, it lets the table steer its
            forms: the factoring methods offer their allocator only the forms on each layer's latency
            front (``allocation.latency_front``: none slower than the dense layer or than a form at
            least as accurate); the pruning methods pick the stream rule the table estimates faster.
        cli_options: option names the ``kerascomp compress`` command passes from its flags.
        tile_options: its step options (``channel_multiple``, ``rank_multiple``) that, left ``None``,
            take the first of 8, 4, 1 meeting the budget (:mod:`kerascomp.methods.tiles`).
    """

    name: str = ""
    options_class: type = NoOptions
    needs_labels: bool = False
    uses_loss: bool = False
    uses_latency: bool = False
    checks_latency: bool = False
    latency_front: bool = False
    cli_options: tuple[str, ...] = ()
    tile_options: tuple[str, ...] = ()
    renamed: dict[str, str] = {}  # old option name -> new name, accepted for one release

    def make_options(self, options: dict | None = None) -> Any:
        return build_options(self.options_class, self.rename(options), self.name)

    def rename(self, options: dict | None) -> dict:
        """``options`` with deprecated names replaced by their new ones (with a ``DeprecationWarning``)."""
        options = dict(options or {})
        for old, new in self.renamed.items():
            if old in options:
                if new in options:
                    raise InvalidArgumentError(f"pass {new}= only; {old}= is its deprecated name.")
                warnings.warn(f"method={self.name!r}: option {old}= is renamed {new}=; the old name goes in the "
                              "next release.", DeprecationWarning, stacklevel=4)
                options[new] = options.pop(old)
        return options

    def settings(self, options: Any) -> dict:
        """The options as plain data, stored in a plan so that ``apply`` rebuilds them."""
        return dataclasses.asdict(options)

    def run(self, graph: Graph, budget: Budget, data: Any, options: Any, context: Context,
            fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        """Compress ``graph`` to ``budget`` (or realise the ``fixed`` choices of a plan); the report's
        ``choices`` hold what a plan needs to redo it."""
        raise NotImplementedError

    def weighted_run(self, graph: Graph, budget: Budget, data: Any, options: Any, context: Context,
                     fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        """:meth:`run` on the BN-weighted graph when the options ask for it (``bn_weighting``, see
        :mod:`kerascomp.methods.bnfold`), with the weighting undone on the result; a ``pointwise="auto"``
        option is resolved here for every method that has one (:mod:`kerascomp.methods.pointwise`), and so are the
        step options a method names in ``tile_options`` when left ``None`` (:mod:`kerascomp.methods.tiles`)."""
        def run(resolved: Any, on: Graph, asked: Budget, choices: dict | None) -> tuple[Graph, CompressionReport]:
            return run_with_tile_steps(lambda stepped: self._weighted_run(on, asked, data, stepped, context, choices),
                                       resolved, self.tile_options, choices)

        pruner = _REGISTRY.get("auto")  # its pruning units prune a mobile net's expansions (methods/expansions.py)
        expansions = None if pruner is None else (
            lambda inner, resolved, choices: run_with_expansions(inner, resolved, self.name, graph, budget, data,
                                                                 context, choices, pruner))
        return run_with_pointwise(run, options, self.name, graph, budget, fixed, expansions)

    def _weighted_run(self, graph: Graph, budget: Budget, data: Any, options: Any, context: Context,
                      fixed: dict | None = None) -> tuple[Graph, CompressionReport]:
        if not getattr(options, "bn_weighting", False):
            return self._named_run(graph, budget, data, options, context, fixed)
        folded, folds = fold_batchnorm(graph)
        result, report = self._named_run(folded, budget, data, options, context, fixed)
        if folds:
            report.notes["bn_weighted_convs"] = len(folds)
        return unfold_batchnorm(result, folds, report.kept_outputs, folded, graph), report

    def _named_run(self, graph: Graph, budget: Budget, data: Any, options: Any, context: Context,
                   fixed: dict | None) -> tuple[Graph, CompressionReport]:
        """:meth:`run`, with every budget refusal saying which method and target it is about."""
        try:
            return self.run(graph, budget, data, options, context, fixed)
        except BudgetError as error:
            text = str(error)
            if text.startswith(f"method={self.name!r}"):
                raise
            raise BudgetError(f"method={self.name!r} cannot reach target_{budget.metric}={budget.fraction:g}: "
                              f"{text}", reachable=getattr(error, "reachable", None)) from error

    def compress(self, graph: Graph, budget: Budget, data: Any, options: Any,
                 context: Context) -> tuple[Graph, CompressionReport, Plan]:
        """Plan and apply in one go; returns the graph, the report and the plan that reproduces it.

        A latency budget for a method without a latency model is met by measuring
        (:func:`kerascomp.methods.latency_search.search`)."""
        started = time.perf_counter()
        checks = getattr(options, "latency_checks", latency_search.MAX_CHECKS)
        if budget.metric == "latency" and not self.checks_latency and (checks or not self.uses_latency):
            result, report, plan = latency_search.search(
                lambda asked, chosen: self.compress_to(graph, asked, data, chosen, context),
                graph, budget, options, context.measure, self.name, max_checks=max(checks, 2),
                knob="latency" if self.uses_latency else "flops")
            report.seconds = time.perf_counter() - started
            return result, report, plan
        return self.compress_to(graph, budget, data, options, context)

    def compress_to(self, graph: Graph, budget: Budget, data: Any, options: Any,
                    context: Context) -> tuple[Graph, CompressionReport, Plan]:
        """One compression to ``budget`` as the method plans it (a latency budget: by its table's estimate)."""
        started = time.perf_counter()
        data = method_inputs(graph, data, options)
        check_finishing(options, data)
        graph, views = conv_views(graph, options)  # SeparableConv2D, Dense on feature maps (methods/conv_views.py)
        result, report = self.weighted_run(graph, budget, data, options, context)
        result = restore_views(finish(graph, result, report, data, options, context.verbose), views)
        report.seconds = time.perf_counter() - started
        return result, report, plan_from_report(graph, report, {**self.settings(options), **report.resolved})

    def plan(self, graph: Graph, budget: Budget, data: Any, options: Any, context: Context) -> Plan:
        return self.compress(graph, budget, data, options, context)[2]

    def plan_options(self, plan: Plan, overrides: dict | None = None) -> Any:
        """The options a plan was made with (its ``settings`` that are options of this method; plans also
        record notes), with ``overrides`` on top (an unknown override is refused by name)."""
        known = {field.name for field in dataclasses.fields(self.options_class)} | set(self.renamed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # a plan saved before a rename
            saved = self.rename({key: value for key, value in plan.settings.items() if key in known})
        return self.make_options({**saved, **(overrides or {})})

    def apply(self, graph: Graph, plan: Plan, data: Any, context: Context) -> tuple[Graph, CompressionReport]:
        options = self.plan_options(check_plan_type(plan))
        graph, views = conv_views(graph, options)  # as compress_to did, so the plan's layer names exist
        check_plan(graph, plan)
        data = method_inputs(graph, data, options)
        check_finishing(options, data)
        result, report = self.weighted_run(graph, plan.budget, data, options, context, fixed=plan.choices)
        return restore_views(finish(graph, result, report, data, options, context.verbose), views), report


def check_plan_type(plan: Any) -> Plan:
    if not isinstance(plan, Plan):
        raise InvalidArgumentError(f"plan must be a kerascomp.Plan (see kerascomp.plan), got {type(plan).__name__}.")
    return plan


def check_plan(graph: Graph, plan: Any) -> None:
    """Refuse a plan for another model (by layer names); warn when only the weights differ."""
    check_plan_type(plan)
    missing = [entry.layer for entry in plan.layers if entry.layer not in graph.layers]
    if missing:
        raise InvalidArgumentError(f"the plan names layers this model lacks: {', '.join(missing[:5])}. "
                                   "Apply a plan only to the model it was made for.")
    if plan.fingerprint != fingerprint(graph):
        warnings.warn(f"the plan was made for model {plan.model!r} with other weights (fingerprint "
                      f"{plan.fingerprint} != {fingerprint(graph)}); its choices may no longer be the best for "
                      "these weights.", UserWarning, stacklevel=4)


_REGISTRY: dict[str, Method] = {}


def register(method: Method, replace: bool = False) -> Method:
    """Make ``method`` available by its name to every entry point; returns it."""
    if not isinstance(method, Method) or not method.name or not isinstance(method.name, str):
        raise InvalidArgumentError(f"register expects a kerascomp Method instance with a name, got {method!r}.")
    if method.name in _REGISTRY and not replace:
        raise InvalidArgumentError(f"a method named {method.name!r} is registered already; pass replace=True.")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: Any) -> Method:
    if name not in _REGISTRY:
        raise InvalidArgumentError(f"method={name!r} is not one of {names()}.")
    return _REGISTRY[name]


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


def cli_option_names() -> list[str]:
    """Every option some registered method takes from a ``kerascomp compress``/``plan`` flag."""
    return sorted({name for method in _REGISTRY.values() for name in method.cli_options})


def methods_with_cli_option(option: str) -> list[str]:
    return sorted(name for name, method in _REGISTRY.items() if option in method.cli_options)

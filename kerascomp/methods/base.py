"""What every method shares: the budget, the per-layer record, the compression report and the plan.

A :class:`Plan` is data: per layer, what a method decided (groups and rank, ranks, channels removed,
singular values kept), with the MACs and params before and after. Every registered method returns
one from ``plan`` and realises one in ``apply``; it prints, saves as JSON and re-applies bit for bit.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascomp.cost import graph_cost
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import infer_shapes
from kerascomp.tables import table

PLAN_FORMAT = 2
READABLE_PLAN_FORMATS = (1, 2)


@dataclass(frozen=True)
class Budget:
    """A target as a fraction of the original model's MACs (``"flops"``) or params (``"params"``)."""

    metric: str
    fraction: float

    @classmethod
    def from_targets(cls, target_flops: float | None, target_params: float | None) -> "Budget":
        if target_flops is not None and target_params is not None:
            raise InvalidArgumentError("pass either target_flops or target_params, not both.")
        metric, value = ("flops", target_flops) if target_params is None else ("params", target_params)
        if value is None:
            raise InvalidArgumentError("pass a budget: target_flops= or target_params= (a fraction in (0, 1]).")
        argument = f"target_{metric}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise InvalidArgumentError(f"{argument} must be a number in (0, 1], got {type(value).__name__} {value!r}.")
        if not 0.0 < float(value) <= 1.0:
            raise InvalidArgumentError(
                f"{argument}={value} is outside (0, 1]: it is the fraction of the original model's "
                f"{'MACs' if metric == 'flops' else 'params'} to keep, e.g. 0.5 keeps half.")
        return cls(metric, float(value))


@dataclass
class LayerRecord:
    """What a method decided for, or did to, one layer, with its cost before and after.

    The same record serves reports and plans. ``relative_error``: the kernel's relative
    approximation error; ``detail``: method-specific facts (groups, rank, refit errors);
    ``reason``: why a layer with MACs was left alone. Collaborative plans also fill
    ``removed_inputs`` (positions of the layer's input channels to remove), ``rank`` and
    ``kept_values`` (the singular values kept of the kernel left after channel removal),
    ``rate`` (the share of the layer's MACs the global optimisation asked for) and ``score``
    (the Taylor estimate of the loss change).
    """

    layer: str
    class_name: str
    action: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    relative_error: float | None = None
    detail: dict = field(default_factory=dict)
    reason: str = ""
    removed_inputs: list[int] = field(default_factory=list)
    rank: int | None = None
    kept_values: list[int] | None = None
    rate: float = 0.0
    score: float = 0.0


LayerDecision = LayerRecord  # the name reports used before plans and reports shared one record
LayerPlan = LayerRecord  # the name collaborative plans used


class CostRatios:
    """The MACs and params after over before, of a report or a plan."""

    macs_before: int
    macs_after: int
    params_before: int
    params_after: int

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0


@dataclass
class CompressionReport(CostRatios):
    method: str
    budget: Budget
    layers: list[LayerRecord]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)
    choices: dict = field(default_factory=dict)
    kept_outputs: dict = field(default_factory=dict)  # layer -> original output channels kept (pruned layers)
    resolved: dict = field(default_factory=dict)  # option -> the value an "auto" option took; the plan stores it

    def kept(self) -> list[LayerDecision]:
        """Layers with MACs the method could not compress, each with its reason (not those it chose to keep dense,
        nor those it could not rewrite but whose channels shrank with a pruned group: a depthwise conv, a
        squeeze-and-excite conv)."""
        return [d for d in self.layers if d.action == "kept" and not 0 <= d.macs_after < d.macs_before]

    def rows(self) -> list[list[str]]:
        rows = []
        for d in self.layers:
            error = "" if d.relative_error is None else f"{d.relative_error:.4f}"
            action = d.action if d.action != "kept" else f"kept ({d.reason})"
            refit = ""
            if "output_error_before" in d.detail:
                refit = f"{d.detail['output_error_before']:.3f} -> {d.detail['output_error_after']:.3f}"
            elif "not_reconstructed" in d.detail:
                refit = "not refit"
            rows.append([d.layer, d.class_name, action, f"{d.macs_before:,}", f"{d.macs_after:,}",
                         f"{d.params_before:,}", f"{d.params_after:,}", error, refit])
        rows.append(["total", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.params_before:,}",
                     f"{self.params_after:,}", "", ""])
        return rows

    def to_table(self, markdown: bool = False) -> str:
        headers = ["layer", "class", "action", "MACs before", "MACs after", "params before", "params after", "rel. error",
                   "output error (refit)"]
        summary = (f"{self.method}: MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f} "
                   f"(target {self.budget.metric} <= {self.budget.fraction}), {self.seconds:.1f} s")
        if self.notes:
            summary += " (" + ", ".join(f"{key.replace('_', ' ')}: {value}" for key, value in self.notes.items()) + ")"
        return table(headers, self.rows(), markdown=markdown) + "\n" + summary

    def __str__(self) -> str:
        return self.to_table()

    def to_json(self) -> str:
        payload = asdict(self)
        payload.update(macs_ratio=self.macs_ratio, params_ratio=self.params_ratio)
        return json.dumps(payload, indent=2)


@dataclass
class Plan(CostRatios):
    """A whole model's per-layer decisions for one method (see the module docstring).

    ``choices`` holds what ``apply`` realises for the factoring and pruning methods (per layer:
    ``[groups, rank]`` for FGA, ``[r_in, r_out]`` for Tucker, a rank per SVD unit, channels per
    pruned group); collaborative keeps its decisions in the records' ``removed_inputs``, ``rank``
    and ``kept_values``. ``settings`` holds the method's options.
    """

    method: str
    model: str
    fingerprint: str
    metric: str
    target: float
    layers: list[LayerRecord]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0
    choices: dict = field(default_factory=dict)

    @property
    def budget(self) -> Budget:
        return Budget(self.metric, self.target)

    def layer(self, name: str) -> LayerRecord:
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise KeyError(name)

    def to_table(self, markdown: bool = False) -> str:
        summary = (f"{self.method} plan for {self.model!r}: MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f} "
                   f"(target {self.metric} <= {self.target}), planned in {self.seconds:.1f} s")
        if self.method != "collaborative":
            headers = ["layer", "class", "action", "MACs before", "MACs after", "params before", "params after"]
            rows = [[p.layer, p.class_name, p.action if p.action != "kept" else f"kept ({p.reason})",
                     f"{p.macs_before:,}", f"{p.macs_after:,}", f"{p.params_before:,}", f"{p.params_after:,}"]
                    for p in self.layers]
            rows.append(["total", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.params_before:,}",
                         f"{self.params_after:,}"])
            if any(p.detail.get("why") for p in self.layers):  # method="auto" says why each unit got its form
                headers.append("why")
                for row, p in zip(rows, self.layers):
                    row.append(p.detail.get("why", ""))
                rows[-1].append("")
            return table(headers, rows, markdown=markdown) + "\n" + summary
        headers = ["layer", "action", "inputs removed", "rank", "rate asked", "MACs before", "MACs after",
                   "params after", "score"]
        rows = [[p.layer, p.action if p.action != "kept" else f"kept ({p.reason})", str(len(p.removed_inputs)),
                 "" if p.rank is None else str(p.rank), f"{p.rate:.2f}", f"{p.macs_before:,}", f"{p.macs_after:,}",
                 f"{p.params_after:,}", f"{p.score:.3g}"] for p in self.layers]
        rows.append(["total", "", "", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}",
                     f"{self.params_after:,}", ""])
        return table(headers, rows, markdown=markdown) + "\n" + summary

    def __str__(self) -> str:
        return self.to_table()

    def to_json(self) -> str:
        payload = asdict(self)
        payload["format"] = PLAN_FORMAT
        return json.dumps(payload, indent=1)

    @classmethod
    def from_json(cls, text: str) -> "Plan":
        try:
            payload = json.loads(text)
        except json.JSONDecodeError as error:
            raise InvalidArgumentError(f"not a kerascomp plan: invalid JSON ({error}).") from None
        if not isinstance(payload, dict) or payload.pop("format", None) not in READABLE_PLAN_FORMATS:
            raise InvalidArgumentError(f"not a kerascomp plan of format {READABLE_PLAN_FORMATS}: save plans with "
                                       "Plan.save().")
        try:
            layers = [LayerRecord(**entry) for entry in payload.pop("layers")]
            return cls(layers=layers, **payload)
        except (TypeError, KeyError) as error:
            raise InvalidArgumentError(f"not a kerascomp plan: {error}.") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "Plan":
        return cls.from_json(Path(path).read_text())


def fingerprint(graph: Graph) -> str:
    """A hash of the layer names, classes and weights: which model a plan was made for."""
    digest = hashlib.sha256()
    for name, spec in graph.layers.items():
        digest.update(f"{name}:{spec.class_name}".encode())
        for weight in spec.weights:
            digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()[:16]


def build_report(method: str, budget: Budget, graph: Graph, result: Graph, shapes: dict,
                 rewritten: dict[str, tuple[str, float | None, dict]], reasons: dict[str, str],
                 parts: dict[str, list[str]] | None = None, result_shapes: dict | None = None,
                 **fields: Any) -> CompressionReport:
    """The report every method returns, built the same way: one row per layer with MACs (or a reason).

    ``rewritten[layer] = (action, relative error, detail)`` for the layers the method decided on;
    ``reasons[layer]``: why a layer is left alone (a ``kept`` row); other layers with MACs are
    ``dense`` rows. Costs before come from ``graph``, after from ``result`` (``parts[layer]``: the
    layers of ``result`` that replace it, default the layer of the same name); ``fields`` go to the
    report (``notes``, ``choices``).
    """
    costs = graph_cost(graph, shapes).by_name()
    after = graph_cost(result, result_shapes if result_shapes is not None else infer_shapes(result)).by_name()
    parts = parts or {}
    records = []
    for name, spec in graph.layers.items():
        if costs[name].macs == 0 and name not in reasons and name not in rewritten:
            continue
        pieces = [piece for piece in parts.get(name, [name]) if piece in after]
        macs, params = sum(after[p].macs for p in pieces), sum(after[p].params for p in pieces)
        if name in rewritten:
            action, error, detail = rewritten[name]
            records.append(LayerRecord(name, spec.class_name, action, costs[name].macs, macs, costs[name].params,
                                       params, error, dict(detail)))
        else:
            records.append(LayerRecord(name, spec.class_name, "kept" if name in reasons else "dense",
                                       costs[name].macs, macs, costs[name].params, params,
                                       reason=reasons.get(name, "")))
    return CompressionReport(method, budget, records, sum(c.macs for c in costs.values()),
                             sum(c.macs for c in after.values()), sum(c.params for c in costs.values()),
                             sum(c.params for c in after.values()), **fields)


def plan_from_report(graph: Graph, report: CompressionReport, settings: dict[str, Any]) -> Plan:
    """The :class:`Plan` a pass's report describes: its records and the choices ``apply`` realises."""
    return Plan(report.method, graph.name, fingerprint(graph), report.budget.metric, report.budget.fraction,
                [LayerRecord(**asdict(record)) for record in report.layers], report.macs_before, report.macs_after,
                report.params_before, report.params_after, settings=dict(settings), seconds=report.seconds,
                choices=json.loads(json.dumps(report.choices)))


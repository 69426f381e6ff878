"""``kerascomp.plan``: per-layer compression decisions that can be printed, saved, edited and re-applied.

A :class:`Plan` says, for every conv of a model, which input channels go and which rank it is
cut to, with the MACs and params before and after and the expected loss change (the Taylor
score). ``kerascomp.plan(model, method="collaborative", target_flops=0.5, data=(x, y))`` makes
one; ``clone_compressed(model, plan=plan)`` applies it, without data, bit for bit the same way
each time::

    plan = kerascomp.plan(model, target_flops=0.5, data=(x_val, y_val))
    print(plan)
    plan.save("plan.json")
    small = kerascomp.clone_compressed(model, plan=kerascomp.Plan.load("plan.json"))
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph

PLAN_FORMAT = 1


@dataclass
class LayerPlan:
    """One layer's decision.

    ``removed_inputs``: positions of the layer's input channels to remove (their producers lose
    the same filters). ``rank``: the layer becomes a kxk conv to ``rank`` filters plus a 1x1 conv,
    keeping the singular values ``kept_values`` (indices into the descending singular values of
    the kernel left after channel removal); ``None`` keeps it a single conv. ``rate`` is the
    fraction of the layer's MACs the global optimisation asked for; ``score`` the Taylor estimate
    of the loss change of the whole layer change.
    """

    layer: str
    class_name: str
    action: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    removed_inputs: list[int] = field(default_factory=list)
    rank: int | None = None
    kept_values: list[int] | None = None
    rate: float = 0.0
    score: float = 0.0
    reason: str = ""


@dataclass
class Plan:
    """A whole model's decisions (see the module docstring)."""

    method: str
    model: str
    fingerprint: str
    metric: str
    target: float
    layers: list[LayerPlan]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    settings: dict = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def layer(self, name: str) -> LayerPlan:
        for entry in self.layers:
            if entry.layer == name:
                return entry
        raise KeyError(name)

    def to_table(self, markdown: bool = False) -> str:
        from kerascomp.report import table

        headers = ["layer", "action", "inputs removed", "rank", "rate asked", "MACs before", "MACs after",
                   "params after", "score"]
        rows = [[p.layer, p.action if p.action != "kept" else f"kept ({p.reason})", str(len(p.removed_inputs)),
                 "" if p.rank is None else str(p.rank), f"{p.rate:.2f}", f"{p.macs_before:,}", f"{p.macs_after:,}",
                 f"{p.params_after:,}", f"{p.score:.3g}"] for p in self.layers]
        rows.append(["total", "", "", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}",
                     f"{self.params_after:,}", ""])
        summary = (f"{self.method} plan for {self.model!r}: MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f} "
                   f"(target {self.metric} <= {self.target}), planned in {self.seconds:.1f} s")
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
        if not isinstance(payload, dict) or payload.pop("format", None) != PLAN_FORMAT:
            raise InvalidArgumentError(f"not a kerascomp plan of format {PLAN_FORMAT}: save plans with Plan.save().")
        try:
            layers = [LayerPlan(**entry) for entry in payload.pop("layers")]
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


def plan(model: Any, method: str = "collaborative", target_flops: float | None = None,
         target_params: float | None = None, target_latency: float | None = None, data: Any = None,
         loss: Any = None, latency: Any = None, verbose: int = 1, **options: Any) -> Plan:
    """Decide, per layer, how to compress ``model`` to the target; returns a :class:`Plan` (``model`` untouched).

    Args:
        model: a built Keras 3 or tf_keras model.
        method: ``"collaborative"`` (joint channel pruning and low-rank decomposition, Li et al. 2021).
        target_flops / target_params: fraction of the original MACs / params to keep, in (0, 1]
            (default ``target_flops=0.5``, the reference's setting).
        target_latency: fraction of the original model's latency to keep, estimated from ``latency``
            (a :class:`kerascomp.LatencyTable`; measured on this host with :func:`kerascomp.latency_table`
            when not given). Channels and ranks are then chosen by measured cost, not MACs.
        data: labelled data for the gradient sensitivity: ``(x, y)`` numpy arrays or a
            ``tf.data.Dataset`` of ``(x, y)`` batches; a few hundred validation images suffice.
        loss: ``loss(y_true, y_pred) -> scalar``; defaults to the model's compiled loss, else sparse
            categorical cross-entropy from logits or probabilities, as the output layer implies.
        **options: see :class:`kerascomp.methods.collaborative.CollaborativeOptions`.
    """
    from kerascomp.api import check_verbose, latency_for, latency_budget, read_checked
    from kerascomp.graph.keras_io import infer_shapes
    from kerascomp.methods.base import Budget
    from kerascomp.methods.collaborative import collaborative_options, plan_collaborative

    if method != "collaborative":
        raise InvalidArgumentError(f"kerascomp.plan supports method='collaborative', got {method!r}; the other "
                                   "methods plan inside clone_compressed (their report lists each layer's choice).")
    built = collaborative_options(options)
    if target_latency is not None:
        budget = latency_budget(target_latency, target_flops, target_params)
    else:
        budget = Budget.from_targets(0.5 if target_flops is None and target_params is None else target_flops,
                                     target_params)
    check_verbose(verbose)
    graph = read_checked(model)
    if budget.metric == "latency" or latency is not None:
        latency = latency_for(model, latency, verbose)
    if budget.metric != "latency":
        latency = None  # a table only steers latency targets
    return plan_collaborative(graph, infer_shapes(graph), budget, data, loss, built, verbose, latency)

"""What every method pass shares: the budget, per-layer decisions, the compression report and which convs a factoring method may take."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

from kerascomp.errors import InvalidArgumentError


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
class LayerDecision:
    """What a method did to one layer, with its cost before and after."""

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


@dataclass
class CompressionReport:
    method: str
    budget: Budget
    layers: list[LayerDecision]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)

    @property
    def macs_ratio(self) -> float:
        return self.macs_after / self.macs_before if self.macs_before else 1.0

    @property
    def params_ratio(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    def kept(self) -> list[LayerDecision]:
        """Layers with MACs the method could not compress, each with its reason (not those it chose to keep dense)."""
        return [d for d in self.layers if d.action == "kept"]

    def rows(self) -> list[list[str]]:
        rows = []
        for d in self.layers:
            error = "" if d.relative_error is None else f"{d.relative_error:.4f}"
            action = d.action if d.action != "kept" else f"kept ({d.reason})"
            rows.append([d.layer, d.class_name, action, f"{d.macs_before:,}", f"{d.macs_after:,}",
                         f"{d.params_before:,}", f"{d.params_after:,}", error])
        rows.append(["total", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.params_before:,}",
                     f"{self.params_after:,}", ""])
        return rows

    def to_table(self, markdown: bool = False) -> str:
        from kerascomp.report import table

        headers = ["layer", "class", "action", "MACs before", "MACs after", "params before", "params after", "rel. error"]
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


def dense_conv2d_ineligibility(spec, pointwise: bool, pointwise_reason: str) -> str | None:
    """Why a factoring method leaves this layer alone, or ``None`` for a dense channels_last Conv2D
    (a 1x1 kernel only with ``pointwise``; ``pointwise_reason`` says why it is skipped otherwise)."""
    if spec.class_name != "Conv2D":
        return f"{spec.class_name} is not a dense Conv2D"
    config = spec.config
    if config.get("data_format") not in (None, "channels_last"):
        return "channels_first: rebuild the model channels_last (TFLite is channels_last)"
    if (config.get("groups") or 1) != 1:
        return "already a grouped conv"
    if spec.weights[0].shape[:2] == (1, 1) and not pointwise:
        return f"1x1 conv: {pointwise_reason} (pass pointwise=True to factor it)"
    return None

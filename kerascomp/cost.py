"""The cost model: multiply-accumulates (batch 1) and parameters, per layer and in total.

MACs are counted for the layers that do dense arithmetic (convolutions, Dense and kerascomp's
own layers); element-wise layers (BN, activations, Add, pooling) count 0 MACs, as in the
usual "multiply-adds" figures of the MobileNet and ResNet papers. Params are all weights a
layer holds (``model.count_params()``), so BN's moving statistics are included.

Independent check (tests/test_cost.py): TF's graph profiler float ops of the frozen tf_keras
ResNet50 and MobileNetV2 at 224x224, divided by 2, agree with these totals within 1%
(3.858 GMACs and 300.8 MMACs). On Keras 3's graph of MobileNetV2 the profiler reports 2.3%
more, because Keras 3 lowers DepthwiseConv2D differently; the layer shapes are identical.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import infer_shapes, read_model
from kerascomp.tables import table

MacsRule = Callable[[dict, tuple, tuple], int]
_RULES: dict[str, MacsRule] = {}


def macs_rule(*class_names: str):
    """Register the MACs formula of a layer class: ``rule(config, input_shape, output_shape)``."""

    def register(rule: MacsRule) -> MacsRule:
        for name in class_names:
            _RULES[name] = rule
        return rule

    return register


def _pixels(shape: tuple) -> int:
    return int(np.prod([d for d in shape[1:-1]], dtype=np.int64)) if len(shape) > 2 else 1


def _kernel_volume(config: dict) -> int:
    size = config["kernel_size"]
    return int(np.prod(size if isinstance(size, (list, tuple)) else [size]))


@macs_rule("Conv1D", "Conv2D", "Conv3D")
def _conv_macs(config, input_shape, output_shape):
    groups = config.get("groups", 1) or 1
    return _pixels(output_shape) * _kernel_volume(config) * (input_shape[-1] // groups) * output_shape[-1]


@macs_rule("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
def _transpose_macs(config, input_shape, output_shape):
    return _pixels(input_shape) * _kernel_volume(config) * input_shape[-1] * output_shape[-1]


@macs_rule("DepthwiseConv1D", "DepthwiseConv2D")
def _depthwise_macs(config, input_shape, output_shape):
    return _pixels(output_shape) * _kernel_volume(config) * output_shape[-1]


@macs_rule("SeparableConv1D", "SeparableConv2D")
def _separable_macs(config, input_shape, output_shape):
    depth = input_shape[-1] * config.get("depth_multiplier", 1)
    return _pixels(output_shape) * (_kernel_volume(config) * depth + depth * output_shape[-1])


@macs_rule("Dense")
def _dense_macs(config, input_shape, output_shape):
    return int(np.prod(input_shape[1:], dtype=np.int64)) * output_shape[-1]


@macs_rule("FilterGroupConv2D")
def _fga_macs(config, input_shape, output_shape):
    width = config["groups"] * config["rank"]
    per_group = input_shape[-1] // config["groups"]
    return _pixels(output_shape) * width * (_kernel_volume(config) * per_group + output_shape[-1])


@dataclass
class LayerCost:
    name: str
    class_name: str
    macs: int
    params: int
    counted: bool = True


@dataclass
class CostReport:
    layers: list[LayerCost] = field(default_factory=list)

    @property
    def macs(self) -> int:
        return sum(layer.macs for layer in self.layers)

    @property
    def params(self) -> int:
        return sum(layer.params for layer in self.layers)

    def by_name(self) -> dict[str, LayerCost]:
        return {layer.name: layer for layer in self.layers}

    def uncounted(self) -> list[str]:
        return [layer.name for layer in self.layers if not layer.counted]

    def __str__(self) -> str:
        rows = [[layer.name, layer.class_name, f"{layer.macs:,}", f"{layer.params:,}"] for layer in self.layers
                if layer.macs or layer.params]
        rows.append(["total", "", f"{self.macs:,}", f"{self.params:,}"])
        return table(["layer", "class", "MACs", "params"], rows)


def spec_params(spec: LayerSpec) -> int:
    return int(sum(np.size(w) for w in spec.weights))


def layer_macs(spec: LayerSpec, input_shape: tuple, output_shape: tuple) -> int | None:
    """MACs of one call of a layer, or ``None`` if its class has no rule and holds a kernel."""
    rule = _RULES.get(spec.class_name)
    if rule is not None:
        return int(rule(spec.config, tuple(input_shape), tuple(output_shape)))
    return None if spec.weights and spec.weights[0].ndim >= 2 else 0


def graph_cost(graph: Graph, shapes: dict[str, list[tuple]]) -> CostReport:
    """Per-layer cost of a graph; ``shapes`` comes from :func:`kerascomp.graph.keras_io.infer_shapes`."""
    report = CostReport()
    for name, spec in graph.layers.items():
        macs, counted = 0, True
        for node in graph.nodes_of(name):
            refs = node.input_refs()
            if not refs:
                continue
            node_macs = layer_macs(spec, shapes[refs[0].node][refs[0].index], shapes[node.name][0])
            if node_macs is None:
                counted = False
            else:
                macs += node_macs
        report.layers.append(LayerCost(name, spec.class_name, macs, spec_params(spec), counted))
    return report


def cost(model: Any) -> CostReport:
    """MACs (batch 1) and params of a Keras model, per layer and in total.

    Example::

        report = kerascomp.cost(model)
        print(report.macs, report.params)
        print(report)                       # per-layer table
    """
    graph = read_model(model)
    return graph_cost(graph, infer_shapes(graph))


def last_reads(graph: Graph) -> dict[str, int]:
    """``{node: index of the last node that reads it}``, in ``graph.nodes`` order."""
    last = {}
    for index, node in enumerate(graph.nodes):
        for ref in node.input_refs():
            last[ref.node] = index
    return last


def peak_activation_bytes(graph: Graph, rows: int) -> int:
    """The most float32 activation bytes alive at once when ``graph`` runs node by node on ``rows`` inputs,
    each freed after its last reader (a lower bound on what a framework holds; used to size batches)."""
    shapes, last = infer_shapes(graph), last_reads(graph)
    live, peak = {}, 0
    for index, node in enumerate(graph.nodes):
        live[node.name] = sum(int(np.prod([d or 1 for d in shape[1:]])) for shape in shapes[node.name]) * rows * 4
        peak = max(peak, sum(live.values()))
        for ref in node.input_refs():
            if last.get(ref.node) == index:
                live.pop(ref.node, None)
    return peak

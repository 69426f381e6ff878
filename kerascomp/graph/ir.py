"""The graph IR every kerascomp pass reads and writes.

A :class:`Graph` is a list of :class:`Node` (one per layer *call*, in topological order)
plus a table of :class:`LayerSpec` (one per layer *object*, so a shared layer appears once
with several nodes). Tensors are addressed by :class:`Ref` (node name, output index).
Weights are numpy arrays; no Keras object is kept besides each layer's Python class.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import numpy as np


@dataclass(frozen=True)
class Ref:
    """Output ``index`` of the call ``node``."""

    node: str
    index: int = 0


@dataclass
class LayerSpec:
    """One layer object: its class, its ``get_config()`` and its weights (``get_weights()`` order)."""

    name: str
    cls: type
    config: dict
    weights: list[np.ndarray] = field(default_factory=list)
    kind: str = ""  # overrides the class name, e.g. "op:Reshape" for a Keras 3 operation that is not a layer

    @property
    def class_name(self) -> str:
        return self.kind or self.cls.__name__


@dataclass
class Node:
    """One call of a layer: ``layer(*args, **kwargs)`` where tensors in args/kwargs are :class:`Ref`."""

    name: str
    layer: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    def input_refs(self) -> list[Ref]:
        return [leaf for leaf in iter_leaves((self.args, self.kwargs)) if isinstance(leaf, Ref)]


@dataclass
class Graph:
    """A whole model. ``inputs`` are node names of input layers; ``outputs`` is a structure of Refs."""

    name: str
    flavour: str
    nodes: list[Node]
    layers: dict[str, LayerSpec]
    inputs: list[str]
    outputs: Any
    input_specs: dict[str, dict]
    sequential: bool = False

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def spec(self, node: Node | str) -> LayerSpec:
        layer = node.layer if isinstance(node, Node) else node
        return self.layers[layer]

    def input_shapes(self) -> dict[str, list]:
        """Batch shape of each model input, by input name."""
        return {name: self.input_specs[name]["batch_shape"] for name in self.inputs}

    def nodes_of(self, layer: str) -> list[Node]:
        return [node for node in self.nodes if node.layer == layer]

    def consumers(self, node_name: str) -> list[Node]:
        return [node for node in self.nodes if any(ref.node == node_name for ref in node.input_refs())]

    def output_refs(self) -> list[Ref]:
        return [leaf for leaf in iter_leaves(self.outputs) if isinstance(leaf, Ref)]

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    def unique_name(self, base: str) -> str:
        taken = set(self.layers) | {node.name for node in self.nodes}
        if base not in taken:
            return base
        suffix = 1
        while f"{base}_{suffix}" in taken:
            suffix += 1
        return f"{base}_{suffix}"

    def replace_layer(self, layer: str, chain: list[LayerSpec]) -> None:
        """Replace every call of ``layer`` by calls of the single-input ``chain`` of layers.

        The last layer of the chain takes over the node name, so consumers stay wired. A shared
        layer stays shared: each of its calls gets the same chain of layer objects.
        """
        del self.layers[layer]
        for spec in chain:
            self.layers[spec.name] = spec
        rebuilt: list[Node] = []
        for node in self.nodes:
            if node.layer != layer:
                rebuilt.append(node)
                continue
            args, kwargs = node.args, node.kwargs
            for position, spec in enumerate(chain):
                last = position == len(chain) - 1
                name = node.name if last else self.unique_name(f"{node.name}__{spec.name}")
                new = Node(name=name, layer=spec.name, args=args, kwargs=kwargs if position == 0 else {})
                rebuilt.append(new)
                args, kwargs = [Ref(name, 0)], {}
        self.nodes = rebuilt

    def splice(self, node_name: str, nodes: list[Node], specs: list[LayerSpec]) -> None:
        """Replace the call ``node_name`` by ``nodes`` (in topological order; the last one must take
        over ``node_name`` so consumers stay wired). ``specs`` are the layers the new nodes call; a
        spec passed to several splices becomes one layer object shared by those calls. The old layer is dropped once no call of it is left.
        """
        if nodes[-1].name != node_name:
            raise ValueError(f"the last spliced node must be named {node_name!r}, got {nodes[-1].name!r}")
        position = next(i for i, node in enumerate(self.nodes) if node.name == node_name)
        old_layer = self.nodes[position].layer
        self.nodes[position:position + 1] = nodes
        if old_layer not in {node.layer for node in self.nodes}:
            del self.layers[old_layer]
        for spec in specs:
            self.layers[spec.name] = spec


def conv_spec(name: str, kernel: np.ndarray, strides, padding: str, dilation, bias: np.ndarray | None,
          activation, trainable: bool, keras) -> LayerSpec:
    """A Conv2D layer spec of the flavour ``keras`` (its module) with this kernel and bias."""
    config = {"name": name, "filters": int(kernel.shape[-1]), "kernel_size": list(kernel.shape[:2]),
              "strides": list(strides), "padding": padding, "dilation_rate": list(dilation),
              "use_bias": bias is not None, "activation": activation or "linear", "trainable": trainable}
    weights = [kernel.astype(np.float32)] + ([bias.astype(np.float32)] if bias is not None else [])
    return LayerSpec(name, keras.layers.Conv2D, config, weights)


def iter_leaves(structure: Any) -> Iterator[Any]:
    """Yield the leaves of nested lists, tuples and dicts."""
    if isinstance(structure, dict):
        for value in structure.values():
            yield from iter_leaves(value)
    elif isinstance(structure, (list, tuple)):
        for value in structure:
            yield from iter_leaves(value)
    else:
        yield structure


def map_leaves(function: Callable[[Any], Any], structure: Any) -> Any:
    """Apply ``function`` to every leaf, keeping the nesting (lists, tuples, dicts)."""
    if isinstance(structure, dict):
        return {key: map_leaves(function, value) for key, value in structure.items()}
    if isinstance(structure, (list, tuple)):
        return type(structure)(map_leaves(function, value) for value in structure)
    return function(structure)

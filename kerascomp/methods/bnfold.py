"""BN weighting: methods see each conv filter scaled by the ``gamma / sigma`` of the BatchNormalization after it.

A conv followed by BatchNormalization computes ``gamma * (W x - mean) / sigma + beta``: what the network
uses of output channel ``j`` is ``W_j`` times ``s_j = |gamma_j| / sigma_j``. A kernel's SVD, Tucker-2 or
filter-group error, and a filter's L1 norm, ignore ``s``, so they keep large filters that the BN then
shrinks and cut small ones that it amplifies. Before a method runs, :func:`fold_batchnorm` multiplies
every such conv's outputs by ``s`` and gives the BN the matching statistics (``mean * s``, ``sigma * s``),
an exact rewrite in inference; in training mode (batch statistics) it differs only through BN's ``epsilon``,
which is not scaled. The method then factors or scores the weighted kernels. :func:`unfold_batchnorm` undoes the scaling on the
compressed model's last map at each such place, so the weights come back in their usual scale.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.methods.strip import is_channel_batchnorm

FLOOR = 1e-6  # a channel's scale is at least this share of its layer's largest (gamma = 0 would zero its filter)


@dataclass(frozen=True)
class Fold:
    """The conv ``conv`` (a Conv2D called once) feeds only the BatchNormalization ``bn``; ``scale`` per output."""

    conv: str
    bn: str
    scale: np.ndarray


def _offsets(bn: LayerSpec) -> int:
    return int(bool(bn.config.get("scale", True))) + int(bool(bn.config.get("center", True)))


def _epsilon(bn: LayerSpec) -> float:
    return float(bn.config.get("epsilon", 1e-3))


def _linear(spec: LayerSpec) -> bool:
    return spec.config.get("activation") in (None, "linear")


def fold_batchnorm(graph: Graph) -> tuple[Graph, list[Fold]]:
    """A copy of ``graph`` with every (Conv2D -> BatchNormalization) pair weighted (see the module docstring)."""
    result = graph.copy()
    folds = []
    for node in graph.nodes:
        spec = graph.spec(node)
        if spec.class_name != "Conv2D" or len(graph.nodes_of(spec.name)) != 1 or not _linear(spec):
            continue
        consumers = graph.consumers(node.name)
        if len(consumers) != 1 or not is_channel_batchnorm(graph.spec(consumers[0])):
            continue
        bn = graph.spec(consumers[0])
        if len(graph.nodes_of(bn.name)) != 1:
            continue
        offset = _offsets(bn)
        gamma = np.abs(bn.weights[0]) if bn.config.get("scale", True) else np.ones_like(bn.weights[offset])
        sigma = np.sqrt(bn.weights[offset + 1].astype(np.float64) + _epsilon(bn))
        scale = gamma / sigma
        scale = np.maximum(scale, FLOOR * max(float(scale.max()), 1e-30))
        _scale(result.layers[spec.name], result.layers[bn.name], scale)
        folds.append(Fold(spec.name, bn.name, scale))
    return result, folds


def _scale(conv: LayerSpec, bn: LayerSpec, scale: np.ndarray, kernel_index: int = 0) -> None:
    """Multiply ``conv``'s outputs by ``scale`` and adjust ``bn`` so that their composition is unchanged."""
    conv.weights[kernel_index] = (conv.weights[kernel_index] * scale).astype(conv.weights[kernel_index].dtype)
    if len(conv.weights) > kernel_index + 1:
        conv.weights[kernel_index + 1] = (conv.weights[kernel_index + 1] * scale).astype(
            conv.weights[kernel_index + 1].dtype)
    offset, epsilon = _offsets(bn), _epsilon(bn)
    mean, variance = bn.weights[offset].astype(np.float64), bn.weights[offset + 1].astype(np.float64)
    bn.weights[offset] = (mean * scale).astype(bn.weights[offset].dtype)
    bn.weights[offset + 1] = ((variance + epsilon) * scale ** 2 - epsilon).astype(bn.weights[offset + 1].dtype)


def _same(a: LayerSpec | None, b: LayerSpec | None) -> bool:
    return a is not None and b is not None and a.class_name == b.class_name and len(a.weights) == len(b.weights) \
        and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a.weights, b.weights))


def unfold_batchnorm(graph: Graph, folds: list[Fold], kept_outputs: dict[str, list[int]] | None = None,
                     folded: Graph | None = None, original: Graph | None = None) -> Graph:
    """Undo :func:`fold_batchnorm` on a (compressed) graph: at each fold whose conv's call still feeds its BN
    alone, divide the last linear map there (a Conv2D or FilterGroupConv2D's 1x1) by the scale of the channels
    it kept (``kept_outputs``: per original conv, the outputs kept). A pair the method left as it was in
    ``folded`` gets ``original``'s weights back exactly. Where the last map is shared or is not a
    conv (joint SVD's ``right``/``bi`` variants), the rewrite stays weighted, which is just as exact."""
    result = graph.copy()
    kept_outputs = kept_outputs or {}
    names = {node.name: node for node in result.nodes}
    for fold in folds:
        if folded is not None and original is not None and all(
                _same(result.layers.get(name), folded.layers[name]) for name in (fold.conv, fold.bn)):
            for name in (fold.conv, fold.bn):  # untouched by the method: the original weights, bit for bit
                result.layers[name].weights = [np.array(w) for w in original.layers[name].weights]
            continue
        node = names.get(fold.conv)
        if node is None or fold.bn not in result.layers:
            continue
        spec = result.spec(node)
        consumers = result.consumers(node.name)
        if len(consumers) != 1 or consumers[0].layer != fold.bn or len(result.nodes_of(spec.name)) != 1:
            continue
        index = {"Conv2D": 0, "FilterGroupConv2D": 1}.get(spec.class_name)
        if index is None:
            continue
        kept = kept_outputs.get(fold.conv)
        scale = fold.scale if kept is None else fold.scale[np.asarray(kept, dtype=np.int64)]
        if spec.weights[index].shape[-1] != len(scale):
            continue
        _scale(spec, result.layers[fold.bn], 1.0 / scale, index)
    return result

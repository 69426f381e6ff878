"""Layers seen by the factoring methods as the convs they compute, and given back when left untouched.

**SeparableConv2D.** Xception and NASNet keep most of their MACs in SeparableConv2D layers, nearly all
of them in the pointwise (1x1) part. A factoring method (fga, svd, joint_svd, tucker, auto) can only
reach a budget there by factoring those 1x1 convs, so before its run every channels_last
SeparableConv2D is split (:func:`split_separable`, exact): a ``DepthwiseConv2D`` named
``<layer>_depthwise`` (no bias) and a 1x1 ``Conv2D`` that keeps the layer's name, activation and bias.
The pointwise part is then a 1x1 conv like any other (taken when ``pointwise`` resolves to True, with
its reconstruction refit), and the depthwise part is left alone with the depthwise reason. The TFLite
converter lowers a SeparableConv2D into the same two ops, so the split itself costs no latency.

**Dense on feature maps.** ConvNeXt's MLPs are ``Dense`` layers applied to NHWC feature maps, which
compute exactly a 1x1 conv; each such Dense (input of rank 4) is read as one
(:func:`dense_as_conv`), keeping its name.

After the method and its finishing steps, :func:`restore_views` gives back every layer whose view
was left as it was made (a depthwise conv feeding only its own 1x1 conv; a 1x1 conv of the Dense's
kernel shape), whatever its weights now, so an untouched layer comes out as the class it went in.

Methods with a ``pointwise`` option get this from :meth:`Method.compress_to` and
:meth:`Method.apply` through :func:`conv_views` (``pointwise=False`` leaves the layers as they are:
their 1x1 part could not be taken anyway).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from kerascomp.graph.ir import Graph, LayerSpec, Node, conv_spec
from kerascomp.graph.keras_io import infer_shapes, module_for
from kerascomp.methods.pointwise import takes_pointwise

# the config entries of a SeparableConv2D that belong to its depthwise part
_DEPTHWISE_KEYS = ("kernel_size", "strides", "padding", "depth_multiplier", "dilation_rate")


@dataclass(frozen=True)
class SplitPair:
    """One SeparableConv2D split in two: the layer names of its parts and its config (to join them back)."""

    depthwise: str
    pointwise: str
    config: dict
    cls: type


def splittable(spec: LayerSpec) -> bool:
    return (spec.class_name == "SeparableConv2D" and spec.config.get("data_format") in (None, "channels_last")
            and len(spec.weights) in (2, 3))


def split_separable(graph: Graph, keras) -> tuple[Graph, list[SplitPair]]:
    """A copy of ``graph`` with every splittable SeparableConv2D replaced by its two parts (the same function),
    and the pairs made; ``graph`` itself unchanged (returned as is when it has none)."""
    names = [name for name, spec in graph.layers.items() if splittable(spec)]
    if not names:
        return graph, []
    result, pairs = graph.copy(), []
    for name in names:
        spec = result.layers[name]
        config = spec.config
        common = {key: config[key] for key in ("trainable", "dtype") if key in config}
        depthwise_name = result.unique_name(f"{name}_depthwise")
        depthwise = LayerSpec(depthwise_name, keras.layers.DepthwiseConv2D, {
            **common, "name": depthwise_name, "use_bias": False, "activation": "linear",
            **{key: config[key] for key in _DEPTHWISE_KEYS if key in config}}, [spec.weights[0]])
        pointwise = _one_by_one(name, spec.weights[1], spec.weights[2] if len(spec.weights) == 3 else None,
                                config, keras)
        result.replace_layer(name, [depthwise, pointwise])
        pairs.append(SplitPair(depthwise_name, name, dict(config), spec.cls))
    parts = {pair.pointwise: pair.depthwise for pair in pairs}  # both parts where the layer was, in order
    order = [part for name in graph.layers for part in ((parts[name], name) if name in parts else (name,))]
    result.layers = {name: result.layers[name] for name in order}
    return result, pairs


def _one_by_one(name: str, kernel: np.ndarray, bias: np.ndarray | None, config: dict, keras) -> LayerSpec:
    """The 1x1 Conv2D ``name`` (the view's 1x1 part) with the layer's activation and trainability."""
    return conv_spec(name, kernel, (1, 1), "valid", (1, 1), bias, config.get("activation"),
                     config.get("trainable", True), keras)


def join_separable(graph: Graph, pairs: list[SplitPair]) -> Graph:
    """``graph`` with each pair that is still a depthwise conv feeding only its own 1x1 conv (same widths,
    whatever their weights now) made one SeparableConv2D again, in place; the others stay split."""
    for pair in pairs:
        if not _intact(graph, pair):
            continue
        depthwise, pointwise = graph.layers[pair.depthwise], graph.layers[pair.pointwise]
        weights = [depthwise.weights[0], *pointwise.weights]
        by_name = {node.name: node for node in graph.nodes}
        rebuilt = []
        for node in graph.nodes:
            if node.layer == pair.depthwise:
                continue
            if node.layer == pair.pointwise:
                source = by_name[node.input_refs()[0].node]
                node = Node(node.name, pair.pointwise, source.args, source.kwargs)
            rebuilt.append(node)
        graph.nodes = rebuilt
        config = {**pair.config, "use_bias": len(weights) == 3,
                  **{key: pointwise.config[key] for key in ("activation",) if key in pointwise.config}}
        joined = LayerSpec(pair.pointwise, pair.cls, config, weights)
        graph.layers = {(pair.pointwise if name == pair.depthwise else name):
                        (joined if name == pair.depthwise else spec)
                        for name, spec in graph.layers.items() if name != pair.pointwise}
    return graph


def _intact(graph: Graph, pair: SplitPair) -> bool:
    depthwise, pointwise = graph.layers.get(pair.depthwise), graph.layers.get(pair.pointwise)
    if depthwise is None or pointwise is None or depthwise.class_name != "DepthwiseConv2D" \
            or pointwise.class_name != "Conv2D" or len(depthwise.weights) != 1:
        return False
    kernel = pointwise.weights[0]
    if kernel.shape[:2] != (1, 1) or (pointwise.config.get("groups") or 1) != 1 \
            or kernel.shape[-1] != pair.config.get("filters", kernel.shape[-1]) \
            or kernel.shape[2] != int(np.prod(depthwise.weights[0].shape[2:])):
        return False
    depthwise_calls = graph.nodes_of(pair.depthwise)
    pointwise_calls = graph.nodes_of(pair.pointwise)
    if len(depthwise_calls) != len(pointwise_calls):
        return False
    for call in pointwise_calls:
        refs = call.input_refs()
        if len(refs) != 1 or refs[0].index != 0:
            return False
        source = next((node for node in depthwise_calls if node.name == refs[0].node), None)
        if source is None or [c.name for c in graph.consumers(source.name)] != [call.name] \
                or source.name in {ref.node for ref in graph.output_refs()}:
            return False
    return True


@dataclass(frozen=True)
class DenseView:
    """A Dense layer on feature maps read as the 1x1 conv ``name`` (to give the Dense back)."""

    name: str
    config: dict
    cls: type
    kernel_shape: tuple[int, int]


def dense_as_conv(graph: Graph, keras) -> tuple[Graph, list[DenseView]]:
    """A copy of ``graph`` with every Dense that is called once on a rank-4 (NHWC) tensor replaced by the 1x1
    Conv2D it computes, and the views made; ``graph`` itself unchanged (returned as is when it has none)."""
    candidates = [name for name, spec in graph.layers.items()
                  if spec.class_name == "Dense" and len(graph.nodes_of(name)) == 1 and spec.weights]
    if not candidates:
        return graph, []
    shapes = infer_shapes(graph)
    names = []
    for name in candidates:
        refs = graph.nodes_of(name)[0].input_refs()
        if len(refs) == 1 and len(shapes[refs[0].node][refs[0].index]) == 4:
            names.append(name)
    if not names:
        return graph, []
    result, views = graph.copy(), []
    for name in names:
        spec = result.layers[name]
        kernel = spec.weights[0]
        result.layers[name] = _one_by_one(name, kernel[None, None], spec.weights[1] if len(spec.weights) == 2
                                          else None, spec.config, keras)
        views.append(DenseView(name, dict(spec.config), spec.cls, tuple(int(d) for d in kernel.shape)))
    return result, views


def conv_from_dense(graph: Graph, views: list[DenseView]) -> Graph:
    """``graph`` with each view that is still a plain 1x1 conv of its Dense's kernel shape (not factored, not
    pruned; refit weights are fine) made that Dense again, in place."""
    for view in views:
        spec = graph.layers.get(view.name)
        if spec is None or spec.class_name != "Conv2D" or not spec.weights:
            continue
        kernel = spec.weights[0]
        config = spec.config
        if kernel.shape[:2] != (1, 1) or (config.get("groups") or 1) != 1 \
                or tuple(config.get("strides", (1, 1))) != (1, 1) \
                or tuple(config.get("dilation_rate", (1, 1))) != (1, 1) \
                or tuple(kernel.shape[2:]) != view.kernel_shape:
            continue
        graph.layers[view.name] = LayerSpec(view.name, view.cls, {
            **view.config, "use_bias": len(spec.weights) == 2,
            **{key: config[key] for key in ("activation",) if key in config}}, [kernel[0, 0], *spec.weights[1:]])
    return graph


@dataclass(frozen=True)
class Views:
    """What :func:`conv_views` rewrote, to give back with :func:`restore_views`."""

    separable: tuple[SplitPair, ...] = ()
    dense: tuple[DenseView, ...] = ()


def conv_views(graph: Graph, options) -> tuple[Graph, Views]:
    """``graph`` with its SeparableConv2D layers split and its Dense layers on feature maps read as 1x1 convs,
    for a method whose options may take 1x1 convs (a ``pointwise`` field not False); else ``graph`` as is."""
    if not takes_pointwise(options) or options.pointwise is False:
        return graph, Views()
    return with_views(graph)


def with_views(graph: Graph) -> tuple[Graph, Views]:
    """``graph`` with both views made (its SeparableConv2D layers split, its Dense layers on feature maps read as
    1x1 convs), and what was made."""
    keras = module_for(graph)
    graph, pairs = split_separable(graph, keras)
    graph, dense = dense_as_conv(graph, keras)
    return graph, Views(tuple(pairs), tuple(dense))


def restore_views(graph: Graph, views: Views) -> Graph:
    """``graph`` with every view that was left untouched given back as the layer it was (in place)."""
    return join_separable(conv_from_dense(graph, list(views.dense)), list(views.separable))

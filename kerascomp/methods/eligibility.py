"""Which layers a factoring method may take, and why the others are left alone: one walk, one message per reason.

FGA, SVD, joint SVD, Tucker-2, collaborative compression and the sensitivity analysis all ask
:func:`eligible_convs`; each reason a layer is kept appears with the same words in every
method's report and ``CompressionWarning``.
"""
from __future__ import annotations

from kerascomp.cost import graph_cost
from kerascomp.graph.ir import Graph, LayerSpec

SHARED = "shared layer (called more than once)"
# the layers a method without the conv views (methods/conv_views.py) leaves whole, and who takes them
_VIEWERS = ("fga, svd, joint_svd, tucker and auto factor its 1x1 part unless pointwise=False; collaborative prunes "
            "and factors it")
SEPARABLE = (f"SeparableConv2D left whole ({_VIEWERS}, channels_last only; l1 and correlation prune its "
             "channels)")
DENSE_ON_MAPS = f"Dense on a feature map left whole (a 1x1 conv: {_VIEWERS}; l1 and correlation prune it)"


def unknown_reason(spec: LayerSpec) -> str:
    return f"unknown layer class {spec.class_name}: kerascomp cannot cost or factor it"


def dense_conv2d_ineligibility(spec: LayerSpec, pointwise: bool, pointwise_reason: str) -> str | None:
    """Why a factoring method leaves this layer alone, or ``None`` for a dense channels_last Conv2D
    (a 1x1 kernel only with ``pointwise``; ``pointwise_reason`` says why it is skipped otherwise)."""
    if spec.class_name == "SeparableConv2D":  # split in two before a run that may take 1x1 convs (conv_views.py)
        return SEPARABLE
    if spec.class_name != "Conv2D":
        return f"{spec.class_name} is not a dense Conv2D"
    config = spec.config
    if config.get("data_format") not in (None, "channels_last"):
        return "channels_first: rebuild the model channels_last (TFLite is channels_last)"
    if (config.get("groups") or 1) != 1:
        return "already a grouped conv"
    if spec.weights[0].shape[:2] == (1, 1) and not pointwise:
        return pointwise_reason
    return None


def conv_ineligibility(graph: Graph, name: str, one_by_one: str | None = None, allow_shared: bool = False) -> str | None:
    """Why the layer ``name`` is not a dense Conv2D a method may rewrite, or ``None``.

    ``one_by_one``: the reason a 1x1 conv is left alone (``None``: 1x1 convs are taken);
    ``allow_shared``: whether a layer called more than once may be rewritten.
    """
    spec = graph.layers[name]
    why = dense_conv2d_ineligibility(spec, one_by_one is None, one_by_one or "")
    if why is None and not allow_shared and len(graph.nodes_of(name)) != 1:
        why = SHARED
    return why


def eligible_convs(graph: Graph, shapes: dict, one_by_one: str | None = None,
                   allow_shared: bool = False) -> tuple[list[str], dict[str, str]]:
    """(the layers with MACs a method may rewrite, in graph order; ``{layer: reason}`` for the other layers
    with MACs, and for layers kerascomp cannot cost)."""
    costs = graph_cost(graph, shapes).by_name()
    eligible, reasons = [], {}
    for name, spec in graph.layers.items():
        if not costs[name].counted:
            reasons[name] = unknown_reason(spec)
            continue
        if costs[name].macs == 0:
            continue
        why = conv_ineligibility(graph, name, one_by_one, allow_shared)
        if spec.class_name == "Dense" and _on_feature_map(graph, name, shapes):
            why = DENSE_ON_MAPS
        if why:
            reasons[name] = why
        else:
            eligible.append(name)
    return eligible, reasons


def _on_feature_map(graph: Graph, name: str, shapes: dict) -> bool:
    refs = [ref for node in graph.nodes_of(name) for ref in node.input_refs()]
    return bool(refs) and all(len(shapes[ref.node][ref.index]) == 4 for ref in refs)

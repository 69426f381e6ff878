"""``strip``: replace kerascomp's own layers by the standard Keras layers they are made of."""
from __future__ import annotations

from typing import Any, Callable

from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import module_for

StripRule = Callable[[LayerSpec, Any], list[LayerSpec]]
_RULES: dict[str, StripRule] = {}


def strip_rule(class_name: str):
    def register(rule: StripRule) -> StripRule:
        _RULES[class_name] = rule
        return rule

    return register


@strip_rule("FilterGroupConv2D")
def _strip_fga(spec: LayerSpec, keras) -> list[LayerSpec]:
    config = spec.config
    grouped = {"name": f"{spec.name}_grouped", "filters": config["groups"] * config["rank"],
               "kernel_size": config["kernel_size"], "strides": config["strides"], "padding": config["padding"],
               "dilation_rate": config["dilation_rate"], "groups": config["groups"], "use_bias": False,
               "trainable": config.get("trainable", True)}
    pointwise = {"name": spec.name, "filters": config["filters"], "kernel_size": (1, 1),
                 "use_bias": config["use_bias"], "activation": config.get("activation"),
                 "trainable": config.get("trainable", True)}
    conv = keras.layers.Conv2D
    return [LayerSpec(grouped["name"], conv, grouped, spec.weights[:1]),
            LayerSpec(spec.name, conv, pointwise, spec.weights[1:])]


def strip_graph(graph: Graph) -> Graph:
    """A copy of ``graph`` in which every kerascomp layer is expanded into standard layers and every
    kerascomp regulariser is removed."""
    keras = module_for(graph)
    result = strip_regularizers(graph)
    for name, spec in list(result.layers.items()):
        rule = _RULES.get(spec.class_name)
        if rule is None:
            continue
        chain = rule(spec, keras)
        renamed = [LayerSpec(result.unique_name(s.name) if s.name != name else s.name, s.cls, s.config, s.weights)
                   for s in chain]
        for new in renamed:
            new.config = {**new.config, "name": new.name}
        result.replace_layer(name, renamed)
    return result


REGULARIZER_SLOTS = ("kernel_regularizer", "pointwise_regularizer", "depthwise_regularizer")


def _is_correlation_regularizer(value) -> bool:
    return isinstance(value, dict) and (value.get("class_name", "").endswith("CorrelationRegularizer")
                                        or str(value.get("registered_name", "")).endswith("CorrelationRegularizer"))


def strip_regularizers(graph: Graph) -> Graph:
    """A copy of ``graph`` where kerascomp's training-time regularisers give way to the ones they wrapped."""
    result = graph.copy()
    for spec in result.layers.values():
        for slot in REGULARIZER_SLOTS:
            value = spec.config.get(slot)
            while _is_correlation_regularizer(value):
                value = value["config"].get("base")
            if slot in spec.config:
                spec.config = {**spec.config, slot: value}
    return result

"""Read a Keras model into the IR and write an IR back into a model of the same Keras flavour.

Reading goes through ``model.get_config()`` (the public serialisation format) and
``layer.get_weights()``. Writing rebuilds each layer from its class and config and calls it
functionally, so both Keras 3 and tf_keras are served by the same code.
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib
from types import ModuleType
from typing import Any, Callable

import numpy as np

from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.graph.flavour import keras_of
from kerascomp.graph.ir import Graph, LayerSpec, Node, Ref, iter_leaves, map_leaves

_GRAPH_MODEL_CLASSES = {"Functional", "Sequential"}


def module_for(graph: Graph) -> ModuleType:
    if graph.flavour == "tf_keras":
        import tf_keras

        return tf_keras
    import keras

    return keras


def _node_name(layer: str, call_index: int) -> str:
    return layer if call_index == 0 else f"{layer}@{call_index}"


def _check_model(model: Any) -> ModuleType:
    keras = keras_of(model)
    if not isinstance(model, keras.Model):
        raise InvalidArgumentError(
            f"expected a Keras model, got the layer {getattr(model, 'name', model)!r} of class "
            f"{type(model).__name__}. Wrap it in a keras.Model (functional or Sequential).")
    classes = {cls.__name__ for cls in type(model).__mro__}
    if not classes & _GRAPH_MODEL_CLASSES:
        raise UnsupportedModelError(
            f"model {model.name!r} is a subclassed model ({type(model).__name__}); kerascomp needs a graph it can "
            "read. Rebuild it with the functional API or keras.Sequential (subclassed *layers* inside are fine).")
    if not model.built or not getattr(model, "inputs", None):
        raise UnsupportedModelError(
            f"model {model.name!r} is not built, so its layer shapes are unknown. Build it with keras.Input "
            "(e.g. keras.Sequential([keras.Input(shape), ...])) or call it once on a batch.")
    return keras


def _model_config(model: Any) -> dict:
    try:
        return model.get_config()
    except NotImplementedError as error:
        bad = [layer.name for layer in model.layers if not _has_config(layer)]
        raise UnsupportedModelError(
            f"model {model.name!r} cannot be serialised: layer(s) {bad or '?'} have no get_config(). kerascomp "
            "rebuilds models from layer configs; implement get_config() on those custom layers.") from error


def _has_config(layer: Any) -> bool:
    try:
        layer.get_config()
        return True
    except NotImplementedError:
        return False


# Keras 3 operations (``x + y``, ``keras.ops.add``) that act like the merge layer of the same name
# when they combine tensors of one rank whose shapes broadcast (an SE gate ``x * s``, s of shape (1, 1, C)).
_MERGE_OPS = {"Add", "Subtract", "Multiply", "Maximum", "Minimum"}


def _broadcast_merge(shapes: list) -> bool:
    """Whether tensors of ``shapes`` (batch axis first) combine element-wise as a merge layer would: one rank,
    and on each axis one size, or 1 (broadcast)."""
    if len(shapes) < 2 or None in shapes or len({len(s) for s in shapes}) != 1:
        return False
    return all(len({d for d in axis if d not in (1, None)}) <= 1 for axis in zip(*shapes))


def _operation_spec(model: Any, name: str, entry: dict) -> LayerSpec | None:
    """A Keras 3 functional graph may call operations that are not layers (ConvNeXt's residual
    ``inputs + x``). An element-wise merge of tensors whose shapes broadcast reads as the merge layer of
    its name; any other operation as ``op:<class>``, which every pass treats as an unknown layer."""
    operation = next((op for op in getattr(model, "operations", []) if op.name == name), None)
    if operation is None:
        return None
    cls = type(operation)
    nodes = entry.get("inbound_nodes") or []
    args = nodes[0].get("args", []) if len(nodes) == 1 and isinstance(nodes[0], dict) else [None]
    shapes = [a["config"]["shape"] if isinstance(a, dict) and a.get("class_name") == "__keras_tensor__" else None
              for a in args]
    merge = cls.__name__ in _MERGE_OPS and _broadcast_merge(shapes) and not nodes[0].get("kwargs")
    return LayerSpec(name=name, cls=cls, config=dict(entry["config"]), weights=[],
                     kind="" if merge else f"op:{cls.__name__}")


def _layer_spec(model: Any, entry: dict) -> LayerSpec:
    name = entry["config"].get("name") or entry.get("name")
    try:
        layer = model.get_layer(name)
    except ValueError:
        spec = _operation_spec(model, name, entry)
        if spec is None:
            raise
        return spec
    config = dict(entry["config"])
    return LayerSpec(name=layer.name, cls=type(layer), config=config,
                     weights=[np.array(w) for w in layer.get_weights()])


def _is_history_triple(value: Any) -> bool:
    return (isinstance(value, (list, tuple)) and len(value) == 3 and isinstance(value[0], str)
            and isinstance(value[1], int) and isinstance(value[2], int))


NodeNamer = Callable[[str, int], str]


def _parse_refs(structure: Any, name_of: NodeNamer) -> Any:
    """Turn a serialised output/input structure of [layer, node_index, tensor_index] into Refs."""
    if _is_history_triple(structure):
        return Ref(name_of(structure[0], structure[1]), structure[2])
    if isinstance(structure, dict):
        return {key: _parse_refs(value, name_of) for key, value in structure.items()}
    return [_parse_refs(value, name_of) for value in structure]


def _parse_keras3_call(value: Any, name_of: NodeNamer) -> Any:
    if isinstance(value, dict):
        if value.get("class_name") == "__keras_tensor__":
            layer, call_index, tensor_index = value["config"]["keras_history"]
            return Ref(name_of(layer, call_index), tensor_index)
        return {key: _parse_keras3_call(item, name_of) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_parse_keras3_call(item, name_of) for item in value]
    return value


def _parse_call(call: Any, name_of: NodeNamer) -> tuple[list, dict]:
    if isinstance(call, dict):  # Keras 3: {"args": [...], "kwargs": {...}}
        return _parse_keras3_call(call.get("args", []), name_of), _parse_keras3_call(call.get("kwargs", {}), name_of)
    # tf_keras: [[layer, node_index, tensor_index, kwargs], ...]; one entry means a single tensor argument. A
    # layer that keeps its call structure (TFOpLambda: ``x + y`` in a tf.keras model) writes a single tensor
    # argument unnested, [layer, node_index, tensor_index, kwargs], and tensors in kwargs as [layer, node, tensor].
    if call and isinstance(call[0], str):
        call = [call]
    refs = [Ref(name_of(item[0], item[1]), item[2]) for item in call]
    kwargs = dict(call[0][3]) if call and len(call[0]) > 3 and call[0][3] else {}
    kwargs = {key: _parse_kwarg(value, name_of) for key, value in kwargs.items()}
    if any(isinstance(leaf, (list, dict)) for leaf in iter_leaves(kwargs)):
        raise UnsupportedModelError("a tf_keras layer call passes a nested structure of tensors as a keyword "
                                    "argument; not supported.")
    return ([refs[0]] if len(refs) == 1 else [refs]), kwargs


def _parse_kwarg(value: Any, name_of: NodeNamer) -> Any:
    """A tf_keras call keyword: a tensor ([layer, node_index, tensor_index]) becomes a Ref; other values stay."""
    if _is_history_triple(value):
        return Ref(name_of(value[0], value[1]), value[2])
    return value


def _toposort(nodes: list[Node], inputs: list[str]) -> list[Node]:
    by_name = {node.name: node for node in nodes}
    done: set[str] = set()
    ordered: list[Node] = []
    visiting: set[str] = set()

    def visit(name: str) -> None:
        if name in done:
            return
        if name in visiting or name not in by_name:
            raise UnsupportedModelError(f"the graph is malformed around node {name!r} (cycle or dangling input).")
        visiting.add(name)
        for ref in by_name[name].input_refs():
            visit(ref.node)
        visiting.discard(name)
        done.add(name)
        ordered.append(by_name[name])

    for name in inputs:
        visit(name)
    for node in nodes:
        visit(node.name)
    return ordered


def _input_spec(entry: dict) -> dict:
    config = entry["config"]
    shape = config.get("batch_shape", config.get("batch_input_shape"))
    return {"batch_shape": list(shape), "dtype": config.get("dtype", "float32") if isinstance(config.get("dtype"), str)
            else "float32", "sparse": bool(config.get("sparse", False))}


def read_model(model: Any, inline_nested: bool = True) -> Graph:
    """Read a built Sequential or functional model into a :class:`Graph` (the model is not touched).

    Nested models called once (``Sequential([backbone, head])``) are inlined, so every pass sees
    their layers; a nested model called several times stays one opaque layer.
    """
    keras = _check_model(model)
    config = _model_config(model)
    flavour = keras.__name__
    entries = config["layers"]
    is_sequential = isinstance(model, keras.Sequential)
    nodes: list[Node] = []
    layers: dict[str, LayerSpec] = {}
    input_specs: dict[str, dict] = {}
    inputs: list[str] = []

    if is_sequential:
        if not entries or entries[0]["class_name"] != "InputLayer":
            shape = [None if d is None else int(d) for d in model.inputs[0].shape]
            entries = [{"class_name": "InputLayer", "config": {"batch_shape": shape, "name": "input"}}] + entries
        previous = None
        for entry in entries:
            if entry["class_name"] == "InputLayer":
                name = entry["config"]["name"]
                input_specs[name] = _input_spec(entry)
                inputs.append(name)
                nodes.append(Node(name=name, layer=name))
                layers[name] = LayerSpec(name=name, cls=type(None), config=dict(entry["config"]))
                previous = name
                continue
            spec = _layer_spec(model, entry)
            layers[spec.name] = spec
            nodes.append(Node(name=spec.name, layer=spec.name, args=[Ref(previous)]))
            previous = spec.name
        outputs: Any = Ref(previous)
    else:
        # tf_keras numbers the calls of a nested model from 1 (its call 0 is its own internal graph).
        offsets = {entry["config"].get("name") or entry["name"]: 1 for entry in entries
                   if flavour == "tf_keras" and entry["class_name"] in _GRAPH_MODEL_CLASSES | {"Model"}}

        def name_of(layer: str, call_index: int) -> str:
            return _node_name(layer, call_index - offsets.get(layer, 0))

        for entry in entries:
            name = entry["config"].get("name") or entry["name"]
            if entry["class_name"] == "InputLayer":
                input_specs[name] = _input_spec(entry)
                layers[name] = LayerSpec(name=name, cls=type(None), config=dict(entry["config"]))
                nodes.append(Node(name=name, layer=name))
                continue
            spec = _layer_spec(model, entry)
            layers[name] = spec
            for call_index, call in enumerate(entry["inbound_nodes"]):
                args, kwargs = _parse_call(call, name_of)
                nodes.append(Node(name=_node_name(name, call_index), layer=name, args=args, kwargs=kwargs))
        input_refs = _parse_refs(config["input_layers"], name_of)
        inputs = [ref.node for ref in iter_leaves(input_refs)]
        outputs = _parse_refs(config["output_layers"], name_of)
        if isinstance(outputs, list) and len(outputs) == 1 and len(model.outputs) == 1 and not _returns_list(model):
            outputs = outputs[0]
        nodes = _toposort(nodes, inputs)
    graph = Graph(name=model.name, flavour=flavour, nodes=nodes, layers=layers, inputs=inputs,
                  outputs=outputs, input_specs=input_specs, sequential=is_sequential)
    if inline_nested:
        for name, spec in list(graph.layers.items()):
            if {cls.__name__ for cls in spec.cls.__mro__} & _GRAPH_MODEL_CLASSES and len(graph.nodes_of(name)) == 1:
                _inline(graph, name, read_model(model.get_layer(name)))
    return graph


def _inline(graph: Graph, name: str, inner: Graph) -> None:
    """Replace the single call of nested model ``name`` by the nodes of its graph ``inner``."""
    outer = graph.nodes_of(name)[0]
    arguments = outer.input_refs()
    if len(arguments) != len(inner.inputs) or any(value is not None for value in outer.kwargs.values()):
        return  # an unusual call signature: keep the nested model as one layer (Keras 3 records mask=None)
    taken = {n.name for n in graph.nodes} | set(graph.layers)
    renamed = {old: (old if old not in taken else f"{name}_{old}") for old in
               [n.name for n in inner.nodes] + list(inner.layers)}
    substitutes: dict[str, Ref] = dict(zip(inner.inputs, arguments))

    def inner_ref(leaf: Any) -> Any:
        if not isinstance(leaf, Ref):
            return leaf
        return substitutes.get(leaf.node) or Ref(renamed[leaf.node], leaf.index)

    spliced = []
    for node in inner.nodes:
        if node.name in substitutes:
            continue
        spliced.append(Node(renamed[node.name], renamed[node.layer], map_leaves(inner_ref, node.args),
                            map_leaves(inner_ref, node.kwargs)))
    for layer_name, spec in inner.layers.items():
        if layer_name not in substitutes:
            new_name = renamed[layer_name]
            graph.layers[new_name] = LayerSpec(new_name, spec.cls, {**spec.config, "name": new_name}, spec.weights)
    inner_outputs = [inner_ref(ref) for ref in iter_leaves(inner.outputs)]

    def outer_ref(leaf: Any) -> Any:
        return inner_outputs[leaf.index] if isinstance(leaf, Ref) and leaf.node == outer.name else leaf

    position = graph.nodes.index(outer)
    graph.nodes[position:position + 1] = spliced
    for node in graph.nodes:
        node.args, node.kwargs = map_leaves(outer_ref, node.args), map_leaves(outer_ref, node.kwargs)
    graph.outputs = map_leaves(outer_ref, graph.outputs)
    del graph.layers[name]


def _returns_list(model: Any) -> bool:
    structure = getattr(model, "_outputs_struct", None)
    if structure is None:
        structure = getattr(model, "_nested_outputs", None)
    return isinstance(structure, (list, tuple))


def is_input(spec: LayerSpec) -> bool:
    return spec.cls is type(None)


def _trusted(spec: LayerSpec):
    """Rebuilding a Lambda from the user's own in-memory model is not loading an untrusted file, so Keras'
    safe-mode refusal of Python lambdas does not apply (the scope is private API; without it, the refusal stands)."""
    if spec.class_name != "Lambda":
        return contextlib.nullcontext()
    try:
        module = importlib.import_module(f"{spec.cls.__module__.split('.')[0]}.src.saving.serialization_lib")
        return module.SafeModeScope(False)
    except (ImportError, AttributeError):
        return contextlib.nullcontext()


def _make_layer(spec: LayerSpec) -> Any:
    try:
        with _trusted(spec):
            return spec.cls.from_config(dict(spec.config))
    except Exception as error:  # a user layer whose from_config cannot read its own get_config
        raise UnsupportedModelError(
            f"layer {spec.name!r} ({spec.class_name}) cannot be rebuilt from its config: {error}. "
            "Make its get_config()/from_config() round-trip.") from error


def set_layer_weights(layer: Any, spec: LayerSpec) -> None:
    if not spec.weights and not hasattr(layer, "set_weights"):  # a Keras 3 operation
        return
    try:
        layer.set_weights(spec.weights)
    except ValueError as error:
        raise UnsupportedModelError(
            f"layer {spec.name!r} ({spec.class_name}) rejected its weights after rebuilding: {error}") from error


def _is_chain(graph: Graph) -> bool:
    previous = None
    for node in graph.nodes:
        if previous is not None and (node.args != [Ref(previous)] or node.kwargs):
            return False
        previous = node.name
    return len(graph.inputs) == 1 and graph.outputs == Ref(previous) and len(set(n.layer for n in graph.nodes)) == len(graph.nodes)


def write_model(graph: Graph) -> Any:
    """Build a fresh model of the graph's Keras flavour with the graph's weights."""
    keras = module_for(graph)
    if graph.sequential and _is_chain(graph):
        input_spec = graph.input_specs[graph.inputs[0]]
        created = {node.layer: _make_layer(graph.spec(node)) for node in graph.nodes[1:]}
        model = keras.Sequential([keras.Input(batch_shape=tuple(input_spec["batch_shape"]), dtype=input_spec["dtype"])]
                                 + list(created.values()), name=graph.name)
    else:
        created, tensors = _call_graph(graph, keras)
        model_inputs = [tensors[name][0] for name in graph.inputs]
        model = keras.Model(model_inputs[0] if len(model_inputs) == 1 else model_inputs,
                            map_leaves(lambda leaf: _resolve(tensors, leaf), graph.outputs), name=graph.name)
    for name, layer in created.items():
        set_layer_weights(layer, graph.layers[name])
    return model


_SHAPE_CACHE: dict[str, dict[str, list[tuple]]] = {}
_SHAPE_CACHE_SIZE = 16


def _leaf_key(leaf: Any) -> str:
    if isinstance(leaf, Ref):
        return f"ref:{leaf.node}:{leaf.index}"
    if isinstance(leaf, np.ndarray):
        return f"array:{leaf.shape}:{leaf.dtype}:{hashlib.sha1(np.ascontiguousarray(leaf).tobytes()).hexdigest()}"
    return repr(leaf)


def structure_key(graph: Graph) -> str:
    """What a node's output shapes depend on: the wiring, every layer's class, config and weight shapes,
    the input specs and the flavour (not the weights' values)."""
    digest = hashlib.sha1()
    parts = [graph.flavour, repr(graph.input_specs)]
    for node in graph.nodes:
        spec = graph.spec(node)
        parts += [node.name, node.layer, spec.kind, f"{spec.cls.__module__}.{spec.cls.__qualname__}", repr(spec.config),
                  repr([tuple(np.shape(w)) for w in spec.weights]),
                  repr(map_leaves(_leaf_key, node.args)), repr(sorted(map_leaves(_leaf_key, node.kwargs).items()))]
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def infer_shapes(graph: Graph) -> dict[str, list[tuple]]:
    """Output shapes of every node (batch dimension included), by building the graph symbolically.

    Building creates (and initialises) every layer, seconds for a ResNet50; a method asks for the
    shapes of the same structure several times, so they are kept for the last few structures."""
    key = structure_key(graph)
    if key not in _SHAPE_CACHE:
        _, tensors = _call_graph(graph, module_for(graph))
        if len(_SHAPE_CACHE) >= _SHAPE_CACHE_SIZE:
            _SHAPE_CACHE.pop(next(iter(_SHAPE_CACHE)))
        _SHAPE_CACHE[key] = {name: [tuple(t.shape) for t in outputs] for name, outputs in tensors.items()}
    return {name: list(shapes) for name, shapes in _SHAPE_CACHE[key].items()}


def build_layers(graph: Graph) -> dict[str, Any]:
    """Every layer of ``graph`` as a built Keras layer holding the graph's weights, by name, to call node by
    node (as :func:`kerascomp.methods.reconstruct` does), with :func:`set_layer_weights` to update one."""
    created, _ = _call_graph(graph, module_for(graph))
    for name, layer in created.items():
        set_layer_weights(layer, graph.layers[name])
    return created


def _resolve(tensors: dict[str, list], leaf: Any) -> Any:
    return tensors[leaf.node][leaf.index] if isinstance(leaf, Ref) else leaf


def _call_graph(graph: Graph, keras: ModuleType) -> tuple[dict[str, Any], dict[str, list]]:
    """Create every layer once and call it for each of its nodes, in order, on symbolic tensors."""
    created: dict[str, Any] = {}
    tensors: dict[str, list] = {}
    for node in graph.nodes:
        spec = graph.spec(node)
        if is_input(spec):
            input_spec = graph.input_specs[node.name]
            tensors[node.name] = [keras.Input(batch_shape=tuple(input_spec["batch_shape"]),
                                              dtype=input_spec["dtype"], name=node.name)]
            continue
        layer = created.get(node.layer)
        if layer is None:
            layer = created[node.layer] = _make_layer(spec)
        args = map_leaves(lambda leaf: _resolve(tensors, leaf), node.args)
        kwargs = map_leaves(lambda leaf: _resolve(tensors, leaf), node.kwargs)
        result = layer(*args, **kwargs)
        tensors[node.name] = list(result) if isinstance(result, (list, tuple)) else [result]
    return created, tensors


def sample_node_inputs(graph: Graph, node_names: list[str], data: Any, max_samples: int) -> dict[str, np.ndarray]:
    """The first input tensor of each named node, computed on up to ``max_samples`` rows of ``data``."""
    probe = graph.copy()
    refs = [probe.node(name).input_refs()[0] for name in node_names]
    probe.outputs = refs
    probe.sequential = False
    model = write_model(probe)
    inputs = [array[:max_samples] for array in data] if isinstance(data, list) else data[:max_samples]
    outputs = model.predict(inputs, batch_size=32, verbose=0)
    outputs = outputs if isinstance(outputs, list) else [outputs]
    return {name: np.asarray(value) for name, value in zip(node_names, outputs)}

"""Channel dependencies: which channels of which layers must be removed together.

Every channel of every tensor in the graph is an *atom* id. A layer that computes new
channels (Conv, Dense, SeparableConv, ...) creates fresh atoms for its outputs; layers that
act per channel (BN, activations, pooling, padding, depthwise convs, Dropout, ...) pass their
input atoms through; element-wise merges (Add, Multiply, ...) *join* the atoms of their
inputs position by position; Concatenate lays its inputs' atoms end to end; Flatten repeats
the channel atoms once per spatial position. Joined atoms form one *channel*: removing it
removes that filter from every producer and that input slice from every consumer.

Example: ``conv_a -> bn_a -> add <- bn_b <- conv_b -> ... -> conv_c`` puts ``conv_a`` and
``conv_b`` in one :class:`ChannelGroup`; its channel ``i`` is filter ``i`` of both convs,
entry ``i`` of both BNs, and input slice ``i`` of ``conv_c``::

    analysis = analyse_channels(graph, shapes)
    print(analysis.group_of("conv_a"))      # group 0: producers conv_a, conv_b; ...
    pruned = prune_channels(graph, analysis, {0: [3, 7]})

Channels that cannot go are *blocked*, with the reason: the model's inputs and outputs, the
inputs and outputs of layers kerascomp does not know (Lambda, custom layers), and layers that
need a fixed channel count.

A grouped conv (``groups=G``) splits its input channels, and its filters, into ``G`` equal
blocks; it stays a grouped conv only if every block loses the same number of channels. Such a
group carries ``blocks`` (the conv-group block of each channel, -1 for a channel no grouped conv
splits): removals must be *balanced*, equal in every block (:meth:`ChannelGroup.balanced`).

:data:`PRUNE_RULES` says, per layer class, which axis of which weight holds input or output
channels, so removal is physical (a grouped conv's kernel is sliced per group).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph, LayerSpec, Ref
from kerascomp.graph.keras_io import is_input

CONV = {"Conv1D", "Conv2D", "Conv3D"}
TRANSPOSED = {"Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"}
DEPTHWISE = {"DepthwiseConv1D", "DepthwiseConv2D"}
SEPARABLE = {"SeparableConv1D", "SeparableConv2D"}
PER_CHANNEL = {"BatchNormalization", "LayerNormalization", "PReLU"} | DEPTHWISE
PASS_THROUGH = {
    "Activation", "ReLU", "LeakyReLU", "ELU", "ThresholdedReLU", "Dropout", "SpatialDropout1D", "SpatialDropout2D",
    "SpatialDropout3D", "GaussianNoise", "GaussianDropout", "AlphaDropout", "ActivityRegularization", "Identity",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D", "AveragePooling2D", "AveragePooling3D",
    "GlobalAveragePooling1D", "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D", "ZeroPadding2D", "ZeroPadding3D", "Cropping1D",
    "Cropping2D", "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
}
MERGE = {"Add", "Subtract", "Multiply", "Maximum", "Minimum", "Average"}
# tf_keras writes ``x + y``, ``x * y``, ... on tensors as a TFOpLambda of these functions: a merge when both are tensors
TF_OP_MERGES = {"__operators__.add", "math.add", "math.subtract", "math.multiply", "math.maximum", "math.minimum"}
# ... and, with a number for y (``x + 3.0``, ``x * (1 / 6)``: tf_keras's MobileNetV3 hard-swish), or these
# functions of one tensor, the same operation on every element: channels pass through
TF_OP_ELEMENTWISE = TF_OP_MERGES | {"math.truediv", "__operators__.truediv", "nn.relu", "nn.relu6", "math.sigmoid",
                                   "math.tanh", "nn.silu"}
# Keras 3 writes the same arithmetic with a number (``ReLU(6)(x + 3.0) * (1 / 6)``: its MobileNetV3's hard sigmoid)
# as operations of one tensor and one number: per element too
KERAS3_SCALAR_OPS = {"op:Add", "op:Subtract", "op:Multiply", "op:Divide", "op:TrueDivide"}
# those of them that keep a zero channel zero (with a number for y where they take one)
TF_OP_ZERO_PRESERVING = {"math.multiply", "math.truediv", "__operators__.truediv", "nn.relu", "nn.relu6", "math.tanh",
                         "nn.silu"}

# Per layer class: for each weight (in get_weights() order, by rank), {axis: role}. Roles:
# "in" (input channel), "out" (output channel), "mid" (a separable conv's depthwise outputs).
WeightAxes = Callable[[LayerSpec], list[dict[int, str]]]


def _conv_axes(spec: LayerSpec) -> list[dict[int, str]]:
    return [{-2: "in", -1: "out"}, {0: "out"}][:len(spec.weights)]


def _transposed_axes(spec: LayerSpec) -> list[dict[int, str]]:
    return [{-1: "in", -2: "out"}, {0: "out"}][:len(spec.weights)]


def _depthwise_axes(spec: LayerSpec) -> list[dict[int, str]]:
    return [{-2: "in"}, {0: "out"}][:len(spec.weights)]


def _separable_axes(spec: LayerSpec) -> list[dict[int, str]]:
    return [{-2: "in"}, {-2: "mid", -1: "out"}, {0: "out"}][:len(spec.weights)]


def _per_channel_axes(spec: LayerSpec) -> list[dict[int, str]]:
    return [{-1: "in"} for _ in spec.weights]


PRUNE_RULES: dict[str, WeightAxes] = {
    **{name: _conv_axes for name in CONV | {"Dense"}},
    **{name: _transposed_axes for name in TRANSPOSED},
    **{name: _depthwise_axes for name in DEPTHWISE},
    **{name: _separable_axes for name in SEPARABLE},
    **{name: _per_channel_axes for name in {"BatchNormalization", "LayerNormalization", "PReLU"}},
}


@dataclass
class ChannelGroup:
    """Channels that are removed together. ``channels[i]`` holds the atoms of channel ``i``."""

    index: int
    producers: list[str]
    consumers: list[str]
    channels: list[np.ndarray]
    blocked: dict[int, str] = field(default_factory=dict)
    blocks: np.ndarray | None = None
    split_by: list[str] = field(default_factory=list)

    @property
    def size(self) -> int:
        return len(self.channels)

    def prunable(self) -> list[int]:
        return [i for i in range(self.size) if i not in self.blocked]

    def reason(self) -> str:
        """Why channels of this group are blocked (the distinct reasons, joined)."""
        return "; ".join(dict.fromkeys(self.blocked.values()))

    def balanced(self, channels) -> bool:
        """Whether removing ``channels`` takes the same number from every block of ``blocks``."""
        if self.blocks is None:
            return True
        hit = self.blocks[np.asarray(list(channels), dtype=np.int64)]
        counts = np.bincount(hit[hit >= 0], minlength=int(self.blocks.max()) + 1)
        return len(set(counts.tolist())) <= 1

    def __str__(self) -> str:
        state = (f"{len(self.prunable())}/{self.size} prunable" +
                 (f" (blocked: {self.reason()})" if self.blocked else "") +
                 (f", in equal numbers from each of the {int(self.blocks.max()) + 1} blocks of "
                  f"{', '.join(self.split_by)}" if self.blocks is not None else ""))
        return (f"group {self.index}: {self.size} channels, {state}\n"
                f"  producers: {', '.join(self.producers)}\n  consumers: {', '.join(self.consumers) or '-'}")


@dataclass
class ChannelAnalysis:
    """The result of :func:`analyse_channels`.

    ``in_atoms[layer]``: atom of each position of the layer's (first) input's channel axis.
    ``out_atoms[layer]``: atom of each output channel. ``groups``: the coupled groups.
    """

    in_atoms: dict[str, np.ndarray]
    out_atoms: dict[str, np.ndarray]
    groups: list[ChannelGroup]
    channel_of_atom: dict[int, tuple[int, int]]
    reshaped: dict[str, np.ndarray] = field(default_factory=dict)

    def group_of(self, layer: str) -> ChannelGroup:
        """The group holding ``layer``'s output channels."""
        atoms = self.out_atoms.get(layer)
        if atoms is None or not len(atoms):
            raise InvalidArgumentError(f"layer {layer!r} has no output channels in the analysis.")
        return self.groups[self.channel_of_atom[int(atoms[0])][0]]

    def producer_channels(self, group: ChannelGroup, layer: str) -> np.ndarray:
        """For each output channel of ``layer``, its channel index in ``group`` (-1 if it is in another group)."""
        located = [self.channel_of_atom[int(a)] for a in self.out_atoms[layer]]
        return np.array([c if g == group.index else -1 for g, c in located], dtype=np.int64)

    def input_channels(self, group: ChannelGroup, layer: str) -> np.ndarray:
        """For each input position of ``layer``, its channel index in ``group`` (-1 if it is in another group)."""
        located = [self.channel_of_atom[int(a)] for a in self.in_atoms[layer]]
        return np.array([c if g == group.index else -1 for g, c in located], dtype=np.int64)

    def __str__(self) -> str:
        return "\n".join(str(group) for group in self.groups)


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []

    def make(self, count: int) -> np.ndarray:
        start = len(self.parent)
        self.parent.extend(range(start, start + count))
        return np.arange(start, start + count, dtype=np.int64)

    def find(self, atom: int) -> int:
        root = atom
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[atom] != root:
            self.parent[atom], atom = root, self.parent[atom]
        return root

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(int(a)), self.find(int(b))
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _axis(config: dict) -> int:
    axis = config.get("axis", -1)
    return axis[0] if isinstance(axis, (list, tuple)) and len(axis) == 1 else axis


def _channels_last(config: dict) -> bool:
    return config.get("data_format", "channels_last") in (None, "channels_last")


def _is_last_axis(axis, rank: int) -> bool:
    return isinstance(axis, int) and axis in (-1, rank - 1)


class _Builder:
    """Walks the graph once, assigning atoms to every tensor channel."""

    def __init__(self, graph: Graph, shapes: dict[str, list[tuple]]) -> None:
        self.graph, self.shapes = graph, shapes
        self.sets = _UnionFind()
        self.owner: list[str] = []
        self.blocked: dict[int, str] = {}
        self.tensors: dict[Ref, np.ndarray] = {}
        self.in_atoms: dict[str, np.ndarray] = {}
        self.out_atoms: dict[str, np.ndarray] = {}
        self.consumers: dict[int, list[str]] = {}
        self.reshaped: dict[str, np.ndarray] = {}
        self.splits: list[tuple[str, np.ndarray, int, str]] = []  # grouped convs: (layer, atoms, groups, what)

    def new(self, count: int, owner: str, reason: str | None = None) -> np.ndarray:
        atoms = self.sets.make(count)
        self.owner.extend([owner] * count)
        if reason:
            self.block(atoms, reason)
        return atoms

    def block(self, atoms: np.ndarray, reason: str) -> None:
        for atom in atoms:
            self.blocked.setdefault(int(atom), reason)

    def join(self, a: np.ndarray, b: np.ndarray) -> None:
        for x, y in zip(a, b):
            self.sets.union(x, y)

    def shape(self, ref: Ref) -> tuple:
        return self.shapes[ref.node][ref.index]

    def record_input(self, layer: str, atoms: np.ndarray) -> None:
        if layer in self.in_atoms:
            self.join(self.in_atoms[layer], atoms)
        else:
            self.in_atoms[layer] = atoms
            for atom in atoms:
                self.consumers.setdefault(int(atom), []).append(layer)

    def produce(self, layer: str, count: int) -> np.ndarray:
        if layer not in self.out_atoms:
            self.out_atoms[layer] = self.new(count, layer)
        return self.out_atoms[layer]

    def opaque(self, node_name: str, spec: LayerSpec, inputs: list[np.ndarray], reason: str) -> None:
        """A layer whose channel semantics kerascomp does not know: freeze what goes in and comes out."""
        for atoms in inputs:
            self.block(atoms, f"{reason} ({spec.class_name} {spec.name!r})")
        for index, shape in enumerate(self.shapes[node_name]):
            count = shape[-1] if len(shape) >= 1 and shape[-1] is not None else 0
            self.tensors[Ref(node_name, index)] = self.new(
                int(count), spec.name, f"output of {spec.class_name} {spec.name!r}, which kerascomp cannot prune")

    def visit(self, node) -> None:
        spec = self.graph.spec(node)
        name = node.name
        if is_input(spec):
            shape = self.shapes[name][0]
            self.tensors[Ref(name)] = self.new(int(shape[-1]), f"input {name}", f"model input {name!r}")
            return
        refs = node.input_refs()
        inputs = [self.tensors[ref] for ref in refs]
        cls, config = spec.class_name, spec.config
        if cls == "TFOpLambda" and config.get("function") in TF_OP_MERGES and len(refs) == 2:
            cls = "Add"  # element-wise on two tensors: the same channel coupling as a merge layer
        elif cls == "TFOpLambda" and config.get("function") in TF_OP_ELEMENTWISE and len(refs) == 1 and \
                all(isinstance(value, (int, float)) for key, value in node.kwargs.items() if key != "name"):
            cls = "Activation"  # one tensor and numbers: per element, so per channel
        elif cls in KERAS3_SCALAR_OPS and len(refs) == 1 and len(node.args) == 2 and not node.kwargs and \
                all(isinstance(a, (int, float)) and not isinstance(a, bool) for a in node.args if not isinstance(a, Ref)):
            cls = "Activation"  # the Keras 3 form of the same: ``x + 3.0``, ``x * (1 / 6)``
        out_shape = self.shapes[name][0]
        rank = len(out_shape)
        single = len(refs) == 1 or (cls in MERGE | {"Concatenate"})
        if not refs or not single or len(self.shapes[name]) != 1:
            return self.opaque(name, spec, inputs, "layer with several inputs or outputs")
        if not _channels_last(config):
            return self.opaque(name, spec, inputs, "channels_first data format")
        x = inputs[0] if inputs else None
        if cls in CONV | SEPARABLE | TRANSPOSED | {"Dense"}:
            self.record_input(spec.name, x)
            self.tensors[Ref(name)] = self.produce(spec.name, int(out_shape[-1]))
            groups = conv_groups(spec)
            if groups > 1:
                self.splits += [(spec.name, self.in_atoms[spec.name], groups, "input channels"),
                                (spec.name, self.out_atoms[spec.name], groups, "filters")]
        elif cls in DEPTHWISE:
            self.record_input(spec.name, x)
            multiplier = int(config.get("depth_multiplier", 1))
            out = np.repeat(self.in_atoms[spec.name], multiplier)
            self.out_atoms[spec.name] = out
            self.tensors[Ref(name)] = out
        elif cls in PER_CHANNEL:
            in_rank = len(self.shape(refs[0]))
            if cls in ("BatchNormalization", "LayerNormalization") and not _is_last_axis(_axis(config), in_rank):
                return self.opaque(name, spec, inputs, f"normalises over axis {config.get('axis')}, not channels")
            if cls == "PReLU" and any(w.shape[-1] != len(x) for w in spec.weights):
                return self.opaque(name, spec, inputs, "alpha is not per channel")
            self.record_input(spec.name, x)
            self.out_atoms[spec.name] = self.in_atoms[spec.name]
            self.tensors[Ref(name)] = self.in_atoms[spec.name]
        elif cls in PASS_THROUGH:
            if cls == "Activation" and config.get("activation") in ("softmax", "log_softmax"):
                self.block(x, f"softmax over channels in {spec.name!r}")
            self.tensors[Ref(name)] = x
        elif cls == "Rescaling" and np.ndim(config.get("scale", 1.0)) == 0 and np.ndim(config.get("offset", 0.0)) == 0:
            self.tensors[Ref(name)] = x
        elif cls in MERGE:
            wide = [atoms for atoms in inputs if len(atoms) > 1] or inputs
            for other in wide[1:]:
                if len(other) != len(wide[0]):
                    return self.opaque(name, spec, inputs, "merge of different channel counts")
                self.join(wide[0], other)
            self.tensors[Ref(name)] = wide[0]
        elif cls == "Concatenate":
            if _is_last_axis(_axis(config), rank):
                self.tensors[Ref(name)] = np.concatenate(inputs)
            else:
                for other in inputs[1:]:
                    self.join(inputs[0], other)
                self.tensors[Ref(name)] = inputs[0]
        elif cls == "Flatten" or (cls == "Reshape" and len(config["target_shape"]) == 1):
            in_shape = self.shape(refs[0])
            spatial = int(np.prod(in_shape[1:-1], dtype=np.int64)) if len(in_shape) > 2 else 1
            if cls == "Reshape" and config["target_shape"][0] not in (-1, spatial * len(x)):
                return self.opaque(name, spec, inputs, "reshape that is not a flatten")
            self.tensors[Ref(name)] = np.tile(x, spatial)
            if cls == "Reshape":
                self.reshaped[spec.name] = self.tensors[Ref(name)]
        elif cls == "Reshape" and config["target_shape"][-1] == len(x):
            self.tensors[Ref(name)] = self.reshaped[spec.name] = x
        else:
            reason = "Lambda layer" if cls in ("Lambda", "TFOpLambda", "SlicingOpLambda") else "unknown layer"
            return self.opaque(name, spec, inputs, reason)

    def build(self) -> ChannelAnalysis:
        for node in self.graph.nodes:
            self.visit(node)
        for ref in self.graph.output_refs():
            self.block(self.tensors[ref], f"model output {ref.node!r}")

        members: dict[int, list[int]] = {}
        for atom in range(len(self.owner)):
            members.setdefault(self.sets.find(atom), []).append(atom)
        owners = _UnionFind()
        owner_ids: dict[str, int] = {}
        for owner in self.owner:
            if owner not in owner_ids:
                owner_ids[owner] = int(owners.make(1)[0])
        for atoms in members.values():
            for atom in atoms[1:]:
                owners.union(owner_ids[self.owner[atoms[0]]], owner_ids[self.owner[atom]])

        by_root: dict[int, list[list[int]]] = {}
        for atoms in members.values():
            by_root.setdefault(owners.find(owner_ids[self.owner[atoms[0]]]), []).append(atoms)
        groups: list[ChannelGroup] = []
        channel_of_atom: dict[int, tuple[int, int]] = {}
        for root in sorted(by_root):
            channels = sorted(by_root[root], key=lambda atoms: atoms[0])
            index = len(groups)
            blocked = {}
            for position, atoms in enumerate(channels):
                for atom in atoms:
                    channel_of_atom[atom] = (index, position)
                reasons = [self.blocked[a] for a in atoms if a in self.blocked]
                if reasons:
                    blocked[position] = reasons[0]
            atom_set = {a for atoms in channels for a in atoms}
            producers = list(dict.fromkeys(self.owner[a] for a in sorted(atom_set)))
            consumers = list(dict.fromkeys(c for a in sorted(atom_set) for c in self.consumers.get(a, [])))
            groups.append(ChannelGroup(index, producers, consumers, [np.array(c) for c in channels], blocked))
        for layer, atoms, count, what in self.splits:
            _split(groups, channel_of_atom, layer, atoms, count, what)
        return ChannelAnalysis(self.in_atoms, self.out_atoms, groups, channel_of_atom, self.reshaped)


def conv_groups(spec: LayerSpec) -> int:
    """The ``groups`` of a conv (1 for every other layer)."""
    return int(spec.config.get("groups", 1) or 1) if spec.class_name in CONV else 1


def _split(groups: list[ChannelGroup], channel_of_atom: dict, layer: str, atoms: np.ndarray, count: int,
           what: str) -> None:
    """Record that grouped conv ``layer`` splits ``atoms`` (its input channels or its filters) into ``count``
    equal blocks; block the channels where removal could not stay equal per block."""
    located = [channel_of_atom[int(atom)] for atom in atoms]
    per = len(atoms) // count
    indices = {index for index, _ in located}
    reason = None
    if per == 1:
        reason = f"grouped conv {layer!r} has one of its {what} per group (its group count would change)"
    elif len(indices) != 1:
        reason = f"grouped conv {layer!r} has {what} from several channel groups"
    else:
        group = groups[indices.pop()]
        blocks = np.full(group.size, -1, dtype=np.int64)
        for position, (_, channel) in enumerate(located):
            if blocks[channel] not in (-1, position // per):
                reason = f"grouped conv {layer!r} reads one channel in two of its groups"
            blocks[channel] = position // per
        if reason is None and group.blocks is not None and not np.array_equal(group.blocks, blocks):
            reason = (f"grouped convs {group.split_by[0]!r} and {layer!r} split these channels into groups "
                      "differently")
        if reason is None:
            group.blocks = blocks
            group.split_by = list(dict.fromkeys(group.split_by + [layer]))
    if reason is not None:
        for index, channel in located:
            groups[index].blocked.setdefault(channel, reason)


def analyse_channels(graph: Graph, shapes: dict[str, list[tuple]]) -> ChannelAnalysis:
    """Find the coupled channel groups of ``graph`` (``shapes`` from ``infer_shapes``)."""
    return _Builder(graph, shapes).build()


def sole_input_group(graph: Graph, analysis: ChannelAnalysis, layer: str, shapes: dict | None = None
                     ) -> tuple[ChannelGroup | None, np.ndarray | None, str]:
    """The channel group a conv's input channels can be pruned through, with the conv's input position of each
    group channel, or ``(None, None, why not)``: the conv must be the group's only channel-mixing consumer
    (inside a residual block, not on the residual stream), reading each of its channels once.

    With the graph's ``shapes`` (:func:`kerascomp.graph.keras_io.infer_shapes`), a squeeze-and-excite block may
    share the group (EfficientNet, MobileNetV3): every other channel-mixing reader reads all of it on one
    pixel (the reduce conv, after the pooling), and besides one writer at full resolution only one-pixel
    layers write it (the expand conv, whose gate multiplies it). Pruning the group then cuts those convs'
    slices too. A residual stream, written or read by several full-resolution convs, stays refused."""
    group, positions, why = input_group(analysis, layer)
    if group is None:
        return None, None, why
    mixing = [c for c in mixing_consumers(graph, group) if c != layer]
    if mixing and shapes is not None:
        why = _squeeze_excite_refusal(graph, analysis, shapes, group, layer, mixing)
        return (group, positions, "") if not why else (None, None, why)
    if mixing:
        return None, None, f"input channels also feed {', '.join(mixing[:3])} (e.g. the residual stream)"
    return group, positions, ""


def pixels(graph: Graph, shapes: dict, layer: str, output: bool) -> int | None:
    """The spatial positions of ``layer``'s output (``output``) or first input, per image; ``None`` for a layer
    called more than once."""
    nodes = graph.nodes_of(layer)
    if len(nodes) != 1:
        return None
    node = nodes[0]
    if output:
        shape = shapes[node.name][0]
    else:
        source = node.input_refs()[0]
        shape = shapes[source.node][source.index]
    return int(np.prod(shape[1:-1]))


def _squeeze_excite_refusal(graph: Graph, analysis: ChannelAnalysis, shapes: dict, group: ChannelGroup, layer: str,
                            others: list[str]) -> str:
    """Why ``group``, read by ``others`` besides ``layer``, is not a squeeze-and-excite share ("" if it is)."""
    full = [name for name in others if pixels(graph, shapes, name, False) != 1]
    if len(full) == 1 and pixels(graph, shapes, layer, False) == 1 \
            and not _squeeze_excite_refusal(graph, analysis, shapes, group, full[0],
                                            [layer] + [name for name in others if name != full[0]]):
        return (f"its input channels are pruned through {full[0]!r}, whose squeeze-and-excite block reads them "
                "pooled here")
    if full:
        return (f"input channels also feed {', '.join(full[:3])} at full resolution (e.g. the residual stream), "
                "not only a squeeze-and-excite block's pooled convs")
    partial = [name for name in others if input_group(analysis, name)[0] is not group]
    if partial:
        return f"input channels also feed {', '.join(partial[:3])}, which reads only part of them"
    writers = [p for p in group.producers if p in graph.layers and graph.layers[p].class_name not in PER_CHANNEL]
    wide = [name for name in writers if pixels(graph, shapes, name, True) != 1]
    if len(wide) > 1:
        return (f"input channels are written by {', '.join(wide[:3])} at full resolution (a residual stream), "
                "and also feed the squeeze-and-excite convs " + ", ".join(others[:3]))
    return ""


def input_group(analysis: ChannelAnalysis, layer: str) -> tuple[ChannelGroup | None, np.ndarray | None, str]:
    """As :func:`sole_input_group`, but other channel-mixing consumers of the group may read it too (the
    caller decides what to do with them: :func:`mixing_consumers`)."""
    atoms = analysis.in_atoms.get(layer)
    if atoms is None or not len(atoms):
        return None, None, "its input channels are not tracked"
    located = {analysis.channel_of_atom[int(atom)][0] for atom in atoms}
    if len(located) != 1:
        return None, None, "its input concatenates several channel groups"
    group = analysis.groups[located.pop()]
    positions = analysis.input_channels(group, layer)
    if group.blocked:
        return None, None, f"input channels fixed: {group.reason()}"
    if group.blocks is not None:
        return None, None, (f"grouped conv {group.split_by[0]!r} splits its channels (only the pruning methods "
                            "remove them, equally per group)")
    if len(set(positions.tolist())) != len(positions) or len(positions) != group.size:
        return None, None, "its input repeats or drops channels of its group"
    return group, positions, ""


def through_depthwise(graph: Graph, group: ChannelGroup) -> bool:
    """Whether ``group``'s channels pass through a depthwise conv (an inverted-residual expansion)."""
    return any(graph.layers[name].class_name in DEPTHWISE for name in group.consumers if name in graph.layers)


def mixing_consumers(graph: Graph, group: ChannelGroup) -> list[str]:
    """The consumers of ``group`` that mix its channels (all but per-channel layers: BatchNormalization,
    depthwise convs)."""
    return [c for c in group.consumers if graph.layers[c].class_name not in PER_CHANNEL]


def kept_positions(atoms: np.ndarray, removed: set[int]) -> np.ndarray:
    return np.array([i for i, atom in enumerate(atoms) if int(atom) not in removed], dtype=np.int64)


def kept_outputs(analysis: ChannelAnalysis, removal: dict[int, list[int]]) -> dict[str, list[int]]:
    """For every layer that loses output channels under ``removal``, the indices of the outputs it keeps."""
    removed = removed_atoms(analysis, removal)
    kept = {}
    for layer, atoms in analysis.out_atoms.items():
        positions = kept_positions(atoms, removed)
        if len(positions) != len(atoms):
            kept[layer] = positions.tolist()
    return kept


def removed_atoms(analysis: ChannelAnalysis, removal: dict[int, list[int]]) -> set[int]:
    """The atoms of the channels ``removal`` names (group index -> channel indices), checked."""
    atoms: set[int] = set()
    for group_index, channels in removal.items():
        if not 0 <= group_index < len(analysis.groups):
            raise InvalidArgumentError(f"channel group {group_index} does not exist "
                                       f"(the model has {len(analysis.groups)} groups).")
        group = analysis.groups[group_index]
        for channel in channels:
            if not 0 <= channel < group.size:
                raise InvalidArgumentError(f"channel {channel} is out of range for group {group_index} "
                                           f"({group.size} channels).")
            if channel in group.blocked:
                raise InvalidArgumentError(f"channel {channel} of group {group_index} cannot be removed: "
                                           f"{group.blocked[channel]}.")
            atoms.update(int(a) for a in group.channels[channel])
        if not group.balanced(channels):
            hit = group.blocks[np.asarray(list(channels), dtype=np.int64)]
            counts = np.bincount(hit[hit >= 0], minlength=int(group.blocks.max()) + 1).tolist()
            raise InvalidArgumentError(f"removal from channel group {group_index} takes {counts} channels from the "
                                       f"groups of grouped conv {group.split_by[0]!r}; a grouped conv needs the same "
                                       "number removed from each of its groups.")
    return atoms


def _slice_weight(weight: np.ndarray, roles: dict[int, str], kept: dict[str, np.ndarray]) -> np.ndarray:
    for axis, role in roles.items():
        if kept.get(role) is not None:
            weight = np.take(weight, kept[role], axis=axis)
    return weight


def pruned_spec(spec: LayerSpec, kept_in: np.ndarray | None, kept_out: np.ndarray | None) -> LayerSpec:
    """``spec`` with only the input positions ``kept_in`` and output channels ``kept_out`` (None: all)."""
    cls = spec.class_name
    if conv_groups(spec) > 1:
        return _pruned_grouped(spec, kept_in, kept_out)
    kept = {"in": kept_in, "out": kept_out, "mid": None}
    if cls in SEPARABLE and kept_in is not None:
        multiplier = int(spec.config.get("depth_multiplier", 1))
        kept["mid"] = (kept_in[:, None] * multiplier + np.arange(multiplier)).reshape(-1)
    axes = PRUNE_RULES[cls](spec)
    weights = [_slice_weight(w, roles, kept) for w, roles in zip(spec.weights, axes)] + spec.weights[len(axes):]
    config = dict(spec.config)
    if kept_out is not None and cls in CONV | TRANSPOSED | SEPARABLE:
        config["filters"] = int(len(kept_out))
    if kept_out is not None and cls == "Dense":
        config["units"] = int(len(kept_out))
    return LayerSpec(spec.name, spec.cls, config, weights)


def _per_block(kept: np.ndarray, total: int, groups: int, layer: str, what: str) -> list[np.ndarray]:
    """``kept`` (positions among ``total``) split into the ``groups`` blocks, as positions within each block;
    raises where the blocks would keep different counts."""
    width = total // groups
    blocks = [kept[(kept >= g * width) & (kept < (g + 1) * width)] - g * width for g in range(groups)]
    if len({len(block) for block in blocks}) != 1:
        raise InvalidArgumentError(f"grouped conv {layer!r} (groups={groups}) would keep {[len(b) for b in blocks]} "
                                   f"{what} per group; a grouped conv needs the same number in each. Remove "
                                   "channels in equal numbers from each of its groups.")
    return blocks


def _pruned_grouped(spec: LayerSpec, kept_in: np.ndarray | None, kept_out: np.ndarray | None) -> LayerSpec:
    """A grouped conv keeping ``kept_in``/``kept_out``: each group's filters keep the kept input channels of
    their own group (the kernel's input axis holds one group's channels)."""
    groups, kernel = conv_groups(spec), spec.weights[0]
    per_out = kernel.shape[-1] // groups
    if kept_in is not None:
        local = _per_block(np.asarray(kept_in), kernel.shape[-2] * groups, groups, spec.name, "input channels")
        kernel = np.concatenate([kernel[..., block, g * per_out:(g + 1) * per_out] for g, block in enumerate(local)],
                                axis=-1)
    rest = list(spec.weights[1:])
    config = dict(spec.config)
    if kept_out is not None:
        _per_block(np.asarray(kept_out), kernel.shape[-1], groups, spec.name, "filters")
        kernel = np.take(kernel, kept_out, axis=-1)
        rest = [np.take(w, kept_out, axis=0) if i == 0 else w for i, w in enumerate(rest)]
        config["filters"] = int(len(kept_out))
    return LayerSpec(spec.name, spec.cls, config, [kernel] + rest)


def prune_channels(graph: Graph, analysis: ChannelAnalysis, removal: dict[int, list[int]]) -> Graph:
    """A copy of ``graph`` without the channels ``removal`` names (group index -> channel indices).

    Removal is physical: weights are sliced and ``filters``/``units`` shrink. Reshape layers
    that carry a channel count are rewritten too. The input graph is not modified.
    """
    removed = removed_atoms(analysis, removal)
    result = graph.copy()
    if not removed:
        return result
    for layer, atoms in analysis.out_atoms.items():
        if len(kept_positions(atoms, removed)) == 0:
            raise InvalidArgumentError(f"removing these channels would leave layer {layer!r} with no output "
                                       "channels; keep at least one per group.")
    for name, spec in graph.layers.items():
        if spec.class_name not in PRUNE_RULES:
            continue
        kept_in = kept_out = None
        if name in analysis.in_atoms and removed.intersection(int(a) for a in analysis.in_atoms[name]):
            kept_in = kept_positions(analysis.in_atoms[name], removed)
        if name in analysis.out_atoms and removed.intersection(int(a) for a in analysis.out_atoms[name]):
            kept_out = kept_positions(analysis.out_atoms[name], removed)
        if kept_in is not None or kept_out is not None:
            result.layers[name] = pruned_spec(spec, kept_in, kept_out)
    _rewrite_reshapes(result, analysis, removed)
    return result


def _rewrite_reshapes(result: Graph, analysis: ChannelAnalysis, removed: set[int]) -> None:
    """Reshape layers that name a channel count (or a flattened size) get the new count."""
    for layer, atoms in analysis.reshaped.items():
        spec = result.layers[layer]
        target = list(spec.config["target_shape"])
        if target[-1] != -1:
            target[-1] = int(len(kept_positions(atoms, removed)))
        spec.config = {**spec.config, "target_shape": tuple(target)}

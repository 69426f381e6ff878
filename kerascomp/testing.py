"""Random CNN graphs, each method's lossless rewrite, and the checks the fuzz tests and
``benchmarks/fuzz.py`` run on them.

A graph is drawn as a :class:`Recipe` by a *chooser*: a function that picks one item of a list.
``numpy_chooser(rng)`` draws with numpy (the benchmark); the tests pass hypothesis' ``data.draw``
so hypothesis can shrink a failing graph. ``build_model`` turns a recipe into a Keras model of
either flavour with seeded weights and non-trivial BatchNormalization statistics.

``check_graph`` runs the properties on one model and one method:

* read then write through the IR gives the same weights and outputs;
  (graphs hold convs of every kind, BN, pooling, residual and concat joins, squeeze-excite
  gates, hard-swish, shared layers called twice, nested models, Dropout, transposed convs,
  several activations, non-square inputs, Dense layers on feature maps (ConvNeXt's MLP), hidden Dense and
  Conv1D heads, and a second input and output);
* the method's *lossless* rewrite keeps the outputs (relative error < 1e-5): full-rank factors; for l1,
  channels made dead in a copy cut (:func:`pruning_lossless`); for correlation, one of each pair of
  duplicated channels cut and folded into its twin (:func:`correlation_lossless`); for collaborative,
  dead inputs cut and every conv factored at full rank through its plan (:func:`collaborative_lossless`);
* at a real target the method either refuses with a :class:`kerascomp.CompressionError`, or gives
  a model within the budget that fits one step, exports, and whose ``.tflite`` matches Keras
  within 1e-4; for the pruning methods, the model pruned without data also matches an independent
  reference, the original with the cut channels zeroed (:func:`pruned_against_dead`); for fga, svd,
  tucker and joint_svd, the original with each factored kernel replaced by its factors' numpy product
  (:func:`factored_against_composite`; for svd also checked to be the best rank-r approximation); for
  collaborative, both at once: cut channels zeroed where read, factored kernels replaced by their
  factors' product (:func:`collaborative_against_reference`; for auto, :func:`auto_against_reference`).

Any other exception is a failure, reported with its traceback.
"""
from __future__ import annotations

import tempfile
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

import kerascomp
from kerascomp.decompose import fga as fga_math
from kerascomp.decompose import jsvd
from kerascomp.errors import CompressionError
from kerascomp.graph.channels import (
    KERAS3_SCALAR_OPS,
    PER_CHANNEL,
    PRUNE_RULES,
    SEPARABLE,
    TF_OP_ZERO_PRESERVING,
    analyse_channels,
    conv_groups,
    mixing_consumers,
    sole_input_group,
)
from kerascomp.graph.flavour import keras_of
from kerascomp.graph.keras_io import infer_shapes, module_for, read_model, write_model
from kerascomp.methods import joint_svd
from kerascomp.methods.auto import AutoOptions, auto_pass
from kerascomp.methods.base import Budget
from kerascomp.methods.conv_views import with_views
from kerascomp.methods.correlation import group_correlation
from kerascomp.methods.eligibility import eligible_convs
from kerascomp.methods.fga import FGAOptions, allowed_groups, fga_spec, ineligibility
from kerascomp.methods.registry import Context
from kerascomp.methods.tucker import factor_layer

Chooser = Callable[[Sequence], Any]
LINEAR_BLOCKS = ("conv", "conv", "grouped", "dilated", "depthwise", "separable", "bn", "relu", "pool", "activation",
                 "dropout", "transpose", "pointwise_dense")
GRAPH_BLOCKS = LINEAR_BLOCKS + ("residual", "residual", "concat", "se", "hard_swish", "shared", "nested")
# Activations of a conv or of an Activation layer (both flavours know these names)
ACTIVATIONS = (None, "relu", "relu", "relu6", "swish", "hard_sigmoid")
LOSSLESS_TOLERANCE = 1e-5
TFLITE_TOLERANCE = 1e-4


def numpy_chooser(rng: np.random.Generator) -> Chooser:
    return lambda options: options[int(rng.integers(len(options)))]


@dataclass
class Recipe:
    """A random CNN: its input, its blocks in order (each ``(kind, arguments)``) and its head."""

    sequential: bool
    input_shape: tuple[int, int, int]  # (height, width, channels): not always square
    blocks: list[tuple[str, dict]] = field(default_factory=list)
    head: str = "gap"
    classes: int = 5
    seed: int = 0
    multi_io: bool = False  # a second (vector) input joins the head, and a second (map) output

    def __str__(self) -> str:
        kind = "Sequential" if self.sequential else "functional"
        blocks = ", ".join(kind + (f"{args}" if args else "") for kind, args in self.blocks)
        return f"{kind} {self.input_shape} [{blocks}] head={self.head}" + (" multi_io" if self.multi_io else "")


# bumped whenever draw_recipe draws differently, so that a resumed fuzz run cannot mix two generators
GENERATOR_VERSION = 3


def draw_recipe(choose: Chooser, max_blocks: int = 6) -> Recipe:
    """A valid random recipe: spatial sizes, channel counts and group counts are tracked as it is drawn."""
    sequential = choose([False, True])
    height, channels = choose([8, 12, 16]), choose([3, 4, 8])
    width = choose([height, height, 8, 12, 16])
    recipe = Recipe(sequential, (height, width, channels), seed=choose(list(range(1000))))
    # most real CNNs open with a dense conv, and without one most methods have nothing to rewrite; a third of
    # the graphs draw their first block freely
    stem = choose([True, True, False])
    for index in range(choose(list(range(2, max_blocks + 1)))):
        size = min(height, width)
        kind = "conv" if index == 0 and stem else choose(LINEAR_BLOCKS if sequential else GRAPH_BLOCKS)
        args: dict = {}
        if kind in ("conv", "grouped", "dilated", "separable", "transpose", "pointwise_dense"):
            args["filters"] = choose([8, 16, 24, 32])
        if kind == "transpose":
            args["strides"] = choose([1, 2]) if max(height, width) <= 8 else 1
        elif kind == "activation":
            args["name"] = choose([a for a in ACTIVATIONS if a is not None])
        elif kind == "dropout":
            args["rate"] = choose([0.1, 0.5])
        elif kind == "pointwise_dense":  # ConvNeXt's MLP: a Dense on the feature map
            args["activation"] = choose([None, "relu", "swish"])
        elif kind == "se":
            args["reduced"] = max(2, channels // choose([2, 4]))
            args["gate"] = choose(["sigmoid", "hard_sigmoid"])
        elif kind == "nested":
            args["filters"] = choose([8, 16])
        if kind == "conv":
            args["kernel"] = choose([1, 3, 5] if size >= 5 else [1, 3])
            args["strides"] = choose([1, 2]) if size >= 4 else 1
            args["padding"] = choose(["same", "valid"]) if size >= args["kernel"] + 2 else "same"
            args["use_bias"] = choose([True, False])
            args["activation"] = choose(list(ACTIVATIONS))
        elif kind == "grouped":
            divisors = [g for g in (2, 4) if channels % g == 0 and args["filters"] % g == 0]
            if not divisors:
                kind, args = "conv", {**args, "kernel": 3, "strides": 1, "padding": "same", "use_bias": True,
                                      "activation": None}
            else:
                args["groups"] = choose(divisors)
        elif kind == "dilated":
            args["rate"] = 2
        elif kind == "depthwise":
            args["multiplier"] = choose([1, 2])
            args["strides"] = choose([1, 2]) if size >= 4 else 1
        elif kind == "pool":
            if size < 4:
                kind, args = "relu", {}
            else:
                args["kind"] = choose(["max", "average"])
        elif kind == "residual":
            args["projection"] = choose([False, True])
            args["filters"] = choose([channels, 16]) if args["projection"] else channels
        elif kind == "concat":
            args["filters"] = (choose([4, 8]), choose([8, 16]))
        recipe.blocks.append((kind, args))
        height, channels = _next_shape(kind, args, height, channels)
        width, _ = _next_shape(kind, args, width, channels)
    heads = ["gap", "flatten", "mlp", "conv1d", "none"] if height * width * channels <= 4096 else ["gap", "mlp", "none"]
    recipe.head = choose(heads)
    if not sequential and recipe.head in ("gap", "mlp"):
        recipe.multi_io = choose([False, False, True])
    return recipe


def _next_shape(kind: str, args: dict, size: int, channels: int) -> tuple[int, int]:
    """The spatial size along one axis, and the channels, after a block."""
    if kind == "transpose":
        return size * args["strides"], args["filters"]
    if kind == "conv":
        if args["padding"] == "valid":
            size -= args["kernel"] - 1
        return -(-size // args["strides"]), args["filters"]
    if kind in ("grouped", "dilated", "separable", "residual", "nested", "pointwise_dense"):
        return size, args["filters"]
    if kind == "depthwise":
        return -(-size // args["strides"]), channels * args["multiplier"]
    if kind == "pool":
        return size // 2, channels
    if kind == "concat":
        return size, sum(args["filters"])
    return size, channels


def build_model(recipe: Recipe, keras) -> Any:
    """The Keras model (of the flavour ``keras``) that ``recipe`` describes, with seeded weights."""
    layers = keras.layers
    counter = iter(range(10_000))

    def name(kind: str) -> str:
        return f"{kind}{next(counter)}"

    def block(kind: str, args: dict) -> list:
        if kind == "conv":
            return [layers.Conv2D(args["filters"], args["kernel"], strides=args["strides"], padding=args["padding"],
                                  use_bias=args["use_bias"], activation=args["activation"], name=name("conv"))]
        if kind == "grouped":
            return [layers.Conv2D(args["filters"], 3, padding="same", groups=args["groups"], name=name("gconv"))]
        if kind == "dilated":
            return [layers.Conv2D(args["filters"], 3, padding="same", dilation_rate=args["rate"], name=name("dconv"))]
        if kind == "depthwise":
            return [layers.DepthwiseConv2D(3, strides=args["strides"], padding="same",
                                           depth_multiplier=args["multiplier"], name=name("dw"))]
        if kind == "separable":
            return [layers.SeparableConv2D(args["filters"], 3, padding="same", name=name("sep"))]
        if kind == "bn":
            return [layers.BatchNormalization(name=name("bn"))]
        if kind == "relu":
            return [layers.ReLU(name=name("relu"))]
        if kind == "pool":
            pool = layers.MaxPooling2D if args["kind"] == "max" else layers.AveragePooling2D
            return [pool(2, name=name("pool"))]
        if kind == "activation":
            return [layers.Activation(args["name"], name=name("act"))]
        if kind == "dropout":
            return [layers.Dropout(args["rate"], name=name("drop"))]
        if kind == "transpose":
            return [layers.Conv2DTranspose(args["filters"], 3, strides=args["strides"], padding="same",
                                           name=name("tconv"))]
        if kind == "pointwise_dense":
            return [layers.Dense(args["filters"], activation=args["activation"], name=name("pwdense"))]
        raise ValueError(kind)

    def squeeze_excite(x, args):  # MobileNetV3 / EfficientNet style: pooled 1x1 convs gate the channels
        s = layers.GlobalAveragePooling2D(keepdims=True, name=name("se_pool"))(x)
        s = layers.Conv2D(args["reduced"], 1, activation="relu", name=name("se_reduce"))(s)
        s = layers.Conv2D(int(x.shape[-1]), 1, activation=args["gate"], name=name("se_expand"))(s)
        return layers.Multiply(name=name("se_mul"))([x, s])

    def shared(x):  # one conv layer object called twice (its weights serve both calls)
        layer = layers.Conv2D(int(x.shape[-1]), 3, padding="same", activation="relu", name=name("shared"))
        return layer(layer(x))

    def nested(x, args):  # a block built as its own model, called once inside the outer one
        block_model = keras.Sequential([keras.Input(tuple(int(d) for d in x.shape[1:])),
                                        layers.Conv2D(args["filters"], 3, padding="same", name=name("inner_conv")),
                                        layers.BatchNormalization(name=name("inner_bn")),
                                        layers.ReLU(name=name("inner_relu"))], name=name("nested"))
        return block_model(x)

    def hard_swish(x):  # x * relu6(x + 3) / 6, from layers both flavours have
        gate = layers.Rescaling(1 / 6, offset=0.5, name=name("hs_scale"))(x)
        gate = layers.ReLU(max_value=1.0, name=name("hs_clip"))(gate)
        return layers.Multiply(name=name("hs_mul"))([x, gate])

    def residual(x, args):
        y = layers.Conv2D(args["filters"], 3, padding="same", use_bias=False, name=name("res_conv"))(x)
        y = layers.BatchNormalization(name=name("res_bn"))(y)
        y = layers.ReLU(name=name("res_relu"))(y)
        y = layers.Conv2D(args["filters"], 3, padding="same", use_bias=False, name=name("res_conv"))(y)
        y = layers.BatchNormalization(name=name("res_bn"))(y)
        if args["projection"]:
            x = layers.Conv2D(args["filters"], 1, use_bias=False, name=name("res_proj"))(x)
        return layers.ReLU(name=name("res_out"))(layers.Add(name=name("add"))([x, y]))

    def concat(x, args):
        a = layers.Conv2D(args["filters"][0], 1, activation="relu", name=name("cat_conv"))(x)
        b = layers.Conv2D(args["filters"][1], 3, padding="same", activation="relu", name=name("cat_conv"))(x)
        return layers.Concatenate(name=name("concat"))([a, b])

    head = {"gap": [layers.GlobalAveragePooling2D(name="gap"), layers.Dense(recipe.classes, name="logits")],
            "flatten": [layers.Flatten(name="flatten"), layers.Dense(recipe.classes, name="logits")],
            "mlp": [layers.GlobalAveragePooling2D(name="gap"), layers.Dense(16, activation="relu", name="hidden"),
                    layers.Dropout(0.2, name="head_drop"), layers.Dense(recipe.classes, name="logits")],
            "conv1d": [],  # built below: it needs the feature map's shape
            "none": []}[recipe.head]

    def conv1d_head(x):  # the feature map read as a sequence of positions, through a Conv1D
        length = int(x.shape[1]) * int(x.shape[2])
        x = layers.Reshape((length, int(x.shape[3])), name="as_sequence")(x)
        x = layers.Conv1D(8, min(3, length), padding="same", activation="relu", name="conv1d")(x)
        x = layers.GlobalAveragePooling1D(name="gap1d")(x)
        return layers.Dense(recipe.classes, name="logits")(x)
    if recipe.sequential:
        stack = [keras.Input(recipe.input_shape)] + [layer for kind, args in recipe.blocks
                                                     for layer in block(kind, args)] + head
        model = keras.Sequential(stack, name="fuzz_sequential")
        if recipe.head == "conv1d":  # a Sequential cannot know the Reshape size before it is built
            model = keras.Model(model.inputs, conv1d_head(model.outputs[0]), name="fuzz_sequential_1d")
    else:
        inputs = keras.Input(recipe.input_shape, name="image")
        x = inputs
        for kind, args in recipe.blocks:
            if kind == "residual":
                x = residual(x, args)
            elif kind == "concat":
                x = concat(x, args)
            elif kind == "se":
                x = squeeze_excite(x, args)
            elif kind == "hard_swish":
                x = hard_swish(x)
            elif kind == "shared":
                x = shared(x)
            elif kind == "nested":
                x = nested(x, args)
            else:
                for layer in block(kind, args):
                    x = layer(x)
        if recipe.multi_io:
            aux = keras.Input((4,), name="aux")
            feature_map = x
            x = head[0](x)  # the pooling, then the vector input joins before the Dense layers
            x = layers.Concatenate(name="join")([x, layers.Dense(8, activation="relu", name="aux_dense")(aux)])
            for layer in head[1:]:
                x = layer(x)
            side = layers.Conv2D(2, 1, name="map_head")(feature_map)
            model = keras.Model([inputs, aux], [x, side], name="fuzz_multi_io")
        else:
            for layer in head:
                x = layer(x)
            if recipe.head == "conv1d":
                x = conv1d_head(x)
            model = keras.Model(inputs, x, name="fuzz_functional")
    _seed_weights(model, recipe.seed)
    return model


def _leaf_layers(model: Any) -> list:
    """The layers of ``model``, with nested models replaced by their own layers (recursively)."""
    leaves = []
    for layer in model.layers:
        leaves.extend(_leaf_layers(layer) if hasattr(layer, "layers") and layer.layers else [layer])
    return leaves


def _seed_weights(model: Any, seed: int) -> None:
    """He-scaled normal kernels, small biases, and BatchNormalization statistics far from identity."""
    rng = np.random.default_rng(seed)
    for layer in _leaf_layers(model):
        weights = layer.get_weights()
        if not weights:
            continue
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = (w.shape for w in weights)
            layer.set_weights([rng.uniform(0.5, 1.5, gamma), rng.normal(0, 0.1, beta), rng.normal(0, 0.1, mean),
                               rng.uniform(0.5, 1.5, var)])
            continue
        seeded = []
        for weight in weights:
            if weight.ndim == 1:
                seeded.append(rng.normal(0, 0.1, weight.shape))
            else:
                fan_in = int(np.prod(weight.shape[:-1])) if weight.ndim == 4 else weight.shape[0]
                if type(layer).__name__ == "DepthwiseConv2D" or weight.shape[-1] == 1 and weight.ndim == 4:
                    fan_in = int(np.prod(weight.shape[:2]))
                seeded.append(rng.normal(0, np.sqrt(2.0 / max(fan_in, 1)), weight.shape))
        layer.set_weights([w.astype("float32") for w in seeded])


def sample_inputs(model: Any, count: int = 8, seed: int = 0) -> Any:
    """Uniform [0, 1] inputs: one array, or a list for a model with several inputs."""
    rng = np.random.default_rng(seed)
    arrays = [rng.uniform(0, 1, (count,) + tuple(int(d) for d in t.shape[1:])).astype("float32")
              for t in model.inputs]
    return arrays if len(arrays) > 1 else arrays[0]


def _rows(x: Any) -> int:
    return len(x[0]) if isinstance(x, list) else len(x)


def outputs_of(model: Any, x: Any) -> np.ndarray:
    """All outputs of ``model`` on ``x``, flattened per row and joined (one array for any output structure)."""
    produced = model(x, training=False)
    produced = produced if isinstance(produced, (list, tuple)) else [produced]
    return np.concatenate([np.asarray(p).reshape(_rows(x), -1) for p in produced], axis=1)


def zero_labels(model: Any, rows: int) -> Any:
    """Zero targets shaped like each output (a list for several)."""
    labels = [np.zeros((rows,) + tuple(int(d) for d in t.shape[1:]), "float32") for t in model.outputs]
    return labels if len(labels) > 1 else labels[0]


def _mse_loss(keras) -> Any:
    """Mean squared error summed over the outputs, for models with one output or several."""
    mse = keras.losses.MeanSquaredError()

    def loss(labels, outputs):
        if isinstance(outputs, (list, tuple)):
            return sum(mse(y, o) for y, o in zip(labels, outputs))
        return mse(labels, outputs)

    return loss


def rewritten_layers(model: Any, rebuilt: Any) -> int:
    """How many of ``model``'s layers ``rebuilt`` does not hold unchanged (same name, class and weight shapes),
    plus the layers ``rebuilt`` adds (a 1x1 conv factored at full rank keeps its name and shape for its
    second factor and adds the first).

    A lossless check that rewrote nothing (a pruning method at target 1.0, a graph with nothing to
    factor) proves nothing about the rewrite; the fuzz summary counts the checks that did rewrite."""
    def signature(layer: Any) -> tuple:
        return type(layer).__name__, tuple(tuple(w.shape) for w in layer.get_weights())

    after = {layer.name: signature(layer) for layer in rebuilt.layers}
    before = {layer.name for layer in model.layers}
    return sum(1 for layer in model.layers if after.get(layer.name) != signature(layer)) + len(set(after) - before)


def relative_error(actual: Any, expected: Any) -> float:
    actual, expected = np.asarray(actual, "float64"), np.asarray(expected, "float64")
    if not (np.all(np.isfinite(actual)) and np.all(np.isfinite(expected))):
        return float("inf")  # NaN would compare as no error
    return float(np.max(np.abs(actual - expected)) / max(float(np.max(np.abs(expected))), 1e-6))


def round_trip(model: Any) -> Any:
    """``model`` read into the IR and written back."""
    return write_model(read_model(model))


def lossless(model: Any, method: str, x: np.ndarray) -> Any:
    """``model`` rewritten by ``method`` with nothing removed: full-rank factors, zero pruning.

    Factor-based methods replace every layer they can factor by the factored form at full rank
    (FGA with the most groups its channels allow, SVD and Tucker-2 with the exact ranks, a 1x1 conv as
    Tucker's low-rank pair at the kernel's full rank, joint SVD
    with shared full-rank bases); pruning methods and collaborative compression run at a target of
    1.0. Raises :class:`kerascomp.CompressionError` where the method refuses the model.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        if method in ("l1", "correlation"):
            return kerascomp.clone_compressed(model, method, target_flops=1.0, verbose=0)
        if method == "collaborative":
            keras = module_for(read_model(model))
            return kerascomp.clone_compressed(model, method, target_flops=1.0, data=(x, zero_labels(model, _rows(x))),
                                              verbose=0, loss=_mse_loss(keras), recalibrate=False)
    graph = read_model(model)
    shapes = infer_shapes(graph)
    keras = module_for(graph)
    if method == "fga":
        options = FGAOptions(pointwise=True)
        for name, spec in list(graph.layers.items()):
            if len(graph.nodes_of(name)) and ineligibility(spec, options) is None:
                kernel = spec.weights[0]
                groups = max(g for g in allowed_groups(spec, 1) if g <= 4)
                graph.layers[name] = fga_spec(spec, groups, fga_math.max_rank(kernel.shape, groups), keras)
    elif method == "tucker":
        for name, spec in list(graph.layers.items()):
            if spec.class_name == "Conv2D" and spec.config.get("groups", 1) == 1 and len(graph.nodes_of(name)) == 1:
                _, _, channels, filters = spec.weights[0].shape
                if spec.weights[0].shape[:2] == (1, 1):  # a low-rank pair, at the kernel's full rank
                    factor_layer(graph, spec, (min(channels, filters),) * 2, 30, keras)
                else:
                    factor_layer(graph, spec, (channels, filters), 30, keras)
    elif method in ("svd", "joint_svd"):
        variants = ("svd",) if method == "svd" else ("left", "right", "bi")
        options = joint_svd.SVDOptions(variant=variants[len(graph.layers) % len(variants)], min_saving=0.0,
                                       pointwise=True)
        units, _ = joint_svd.svd_units(graph, shapes, method, options)
        for unit in units:
            joint_svd.factor_unit(graph, unit, jsvd.full_rank(unit.shape, len(unit.members), unit.variant), options, keras)
    elif method == "auto":  # its realisation of a plan, every conv it may factor in an exact form, kinds alternating
        forms = {}
        for index, name in enumerate(eligible_convs(graph, shapes)[0]):
            _, _, channels, filters = graph.layers[name].weights[0].shape
            exact_fga = ["fga", 1, fga_math.max_rank(graph.layers[name].weights[0].shape, 1)]
            one_by_one = graph.layers[name].weights[0].shape[:2] == (1, 1)
            exact = [["tucker", channels, filters], exact_fga, ["svd", jsvd.full_rank(graph.layers[name].weights[0].shape)]]
            forms[name] = exact_fga if one_by_one else exact[index % 3]
        graph, _ = auto_pass(graph, Budget("flops", 1.0), None, AutoOptions(), Context(verbose=0),
                             fixed={"layers": forms})
    else:
        raise ValueError(f"unknown method {method!r}")
    return write_model(graph)


PRUNING_CHECK_TARGETS = (0.7, 0.85, 0.95)  # the first the method reaches by cutting something is checked
# layers whose cut channels dead_channels can make exactly zero: kernel, bias and BN shift set to 0
_DEADENABLE = ("Conv2D", "Conv1D", "Dense", "BatchNormalization", "DepthwiseConv2D", "Conv2DTranspose",
               "SeparableConv2D")


# layers that mix channels: one reading a channel that is zero in the pruned model's reference but not in
# the dead copy (a sigmoid of a dead channel is 0.5) computes something else in each
_MIXING = ("Conv2D", "Conv1D", "Conv3D", "Dense", "SeparableConv2D", "Conv2DTranspose", "EinsumDense")


def _activation(spec: Any) -> Any:
    activation = spec.config.get("activation")
    if isinstance(activation, dict):  # a serialised activation: {"class_name": ..., "config": {"name": ...}}
        activation = activation.get("config", {}).get("name", activation.get("class_name"))
    return activation


def _maps_zero_to_nonzero(spec: Any) -> bool:
    """Whether this layer turns a zero channel into a non-zero one (a sigmoid gate, a Rescaling offset)."""
    if _activation(spec) in ("sigmoid", "hard_sigmoid", "softplus", "exponential"):
        return True
    if spec.class_name == "TFOpLambda":  # tf_keras's x + 3.0, tf.math.sigmoid(x): taken as non-zero unless known
        return spec.config.get("function") not in TF_OP_ZERO_PRESERVING
    if spec.class_name in KERAS3_SCALAR_OPS:  # Keras 3's x + 3.0: taken as non-zero unless a product
        return spec.class_name != "op:Multiply"
    return spec.class_name == "Rescaling" and bool(np.any(np.asarray(spec.config.get("offset", 0.0))))


def zero_stays_zero(graph: Any, deadened: set[str]) -> bool:
    """Whether the channels that ``deadened`` layers write as zeros reach no channel-mixing layer and no
    model output as anything but zero, so that cutting them is exact.

    A tensor is *tainted* when its dead channels may hold non-zero values: after a sigmoid or an offset
    applied downstream of a deadened layer. Per-channel layers (activations, BN, pooling, Add, Concatenate,
    reshapes) pass the taint on; a Multiply with one untainted operand is zero on the dead channels
    (a squeeze-and-excitation gate, a hard-swish); a channel-mixing layer or an output that reads a tainted
    tensor makes the dead copy differ from the cut model, and the answer is False."""
    downstream: set[str] = set()
    tainted: set[str] = set()
    for node in graph.nodes:
        spec = graph.spec(node)
        sources = [ref.node for ref in node.input_refs()]
        if node.layer in deadened or any(source in downstream for source in sources):
            downstream.add(node.name)
        reads_taint = [source in tainted for source in sources]
        if spec.class_name == "Multiply":
            taint = bool(reads_taint) and all(reads_taint)
        else:
            if any(reads_taint) and spec.class_name in _MIXING:
                return False
            taint = any(reads_taint) or (node.name in downstream and _maps_zero_to_nonzero(spec))
        if taint:
            tainted.add(node.name)
    return not any(ref.node in tainted for ref in graph.output_refs())


def _softmax_over(graph: Any, deadened: set[str]) -> bool:
    """Whether a softmax runs over dead channels (it would change the live ones too)."""
    downstream: set[str] = set()
    for node in graph.nodes:
        spec = graph.spec(node)
        if node.layer in deadened or any(ref.node in downstream for ref in node.input_refs()):
            downstream.add(node.name)
            if _activation(spec) == "softmax" and (node.layer in deadened or spec.class_name not in _MIXING):
                return True
    return False


def _zero_readers(graph: Any, kept: dict[str, list[int]]) -> None:
    """Zero, in place, every channel-mixing layer's input slices that read a channel cut from ``kept``."""
    analysis = analyse_channels(graph, infer_shapes(graph))
    removed = {int(atom) for name, channels in kept.items()
               for position, atom in enumerate(analysis.out_atoms.get(name, ())) if position not in set(channels)}
    _zero_input_slices(graph, analysis, [name for name in graph.layers if graph.layers[name].class_name in _MIXING],
                       removed)


def _zero_input_slices(graph: Any, analysis: Any, names: Sequence[str], atoms: set[int]) -> None:
    """Zero, in place, the input slices of the layers ``names`` at the positions that read ``atoms``."""
    for name in names:
        spec = graph.layers[name]
        positions = [i for i, atom in enumerate(analysis.in_atoms.get(name, ())) if int(atom) in atoms]
        if not positions:
            continue
        weights = [w.copy() for w in spec.weights]
        groups = conv_groups(spec)
        if groups > 1:  # the kernel's input axis holds one group's channels; each group's filters read their own
            width, per_out = weights[0].shape[-2], weights[0].shape[-1] // groups
            for position in positions:
                block = position // width
                weights[0][..., position % width, block * per_out:(block + 1) * per_out] = 0.0
            spec.weights = weights
            continue
        for weight, roles in zip(weights, PRUNE_RULES[spec.class_name](spec)):
            for axis, role in roles.items():
                if role == "in":
                    index = [slice(None)] * weight.ndim
                    index[axis] = positions
                    weight[tuple(index)] = 0.0
        spec.weights = weights


def _output_width(kind: str, weights: list[np.ndarray]) -> int:
    if kind == "DepthwiseConv2D":
        return weights[0].shape[2] * weights[0].shape[3]
    if kind == "Conv2DTranspose":
        return weights[0].shape[2]
    if kind == "SeparableConv2D":
        return weights[1].shape[-1]
    return weights[0].shape[-1]


def dead_channels(model: Any, kept: dict[str, list[int]]) -> Any | None:
    """A copy of ``model`` whose channels not in ``kept[layer]`` output exactly zero (kernel slices, biases,
    BN shifts and means zeroed), or None when that cannot be made exact on this graph.

    Where a zero channel does not stay zero on its way to the next channel-mixing layer (a sigmoid
    conv, an offset: :func:`zero_stays_zero`), the mixing layers that read those channels also get
    their input slices zeroed, so that the channels contribute nothing there either: the copy then
    computes what cutting them computes, whatever lies between."""
    graph = read_model(model)
    if _softmax_over(graph, set(kept)):
        return None
    if not zero_stays_zero(graph, set(kept)):
        _zero_readers(graph, kept)
    dead = write_model(graph)
    for name, channels in kept.items():
        layer = dead.get_layer(name)
        kind = type(layer).__name__
        if kind not in _DEADENABLE:
            return None
        weights = [w.copy() for w in layer.get_weights()]
        removed = sorted(set(range(_output_width(kind, weights))) - set(channels))
        if kind == "BatchNormalization":
            weights[1][removed] = 0.0  # beta
            weights[2][removed] = 0.0  # moving mean
        elif kind == "DepthwiseConv2D":
            kernel = weights[0].reshape(*weights[0].shape[:2], -1)
            kernel[..., removed] = 0.0
            weights[0] = kernel.reshape(weights[0].shape)
            if len(weights) > 1:
                weights[1][removed] = 0.0
        elif kind == "Conv2DTranspose":  # kernel (kh, kw, outputs, inputs)
            weights[0][:, :, removed, :] = 0.0
            if len(weights) > 1:
                weights[1][removed] = 0.0
        elif kind == "SeparableConv2D":  # depthwise, pointwise, bias: the pointwise writes the outputs
            weights[1][..., removed] = 0.0
            if len(weights) > 2:
                weights[2][removed] = 0.0
        else:
            weights[0][..., removed] = 0.0
            if len(weights) > 1:
                weights[1][removed] = 0.0
        layer.set_weights(weights)
    return dead


def pruning_lossless(model: Any, method: str) -> tuple[Any, Any] | None:
    """The pruning lossless check that rewrites: the channels ``method`` cuts at a real target are made
    dead in a copy; pruning that copy must cut exactly them, and its outputs must not change.

    For ``l1``, whose score is the kernel's L1 norm, so a dead filter scores 0 and goes first while
    the uniform allocation, which depends on shapes only, cuts the same count. Correlation pruning
    removes one filter of each correlated pair, not the smallest, so this check does not apply to it.

    The target is the first of :data:`PRUNING_CHECK_TARGETS` that the method reaches (a small graph
    whose prunable channels are few may reach only a mild one).
    Returns ``(dead, pruned)`` (compare their outputs), or None when the check does not apply here
    (a refusal at every target, nothing cut, or a graph where zero channels cannot stay zero); raises
    :class:`AssertionError` when the copy is cut elsewhere."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        for target in PRUNING_CHECK_TARGETS:
            try:
                first = kerascomp.compress(model, method, target_flops=target, verbose=0)
            except CompressionError:
                continue
            if first.report.kept_outputs:
                break
        else:
            return None
        dead = dead_channels(model, first.report.kept_outputs)
        if dead is None:
            return None
        second = kerascomp.compress(dead, method, target_flops=target, verbose=0)
    if second.report.kept_outputs != first.report.kept_outputs:
        changed = sorted(name for name in first.report.kept_outputs
                         if second.report.kept_outputs.get(name) != first.report.kept_outputs[name])
        raise AssertionError(f"{method} cut other channels than the dead ones in {changed}")
    return dead, second.model


def collaborative_lossless(model: Any, x: Any) -> tuple[Any, Any] | None:
    """The collaborative lossless check that rewrites through its own plan realisation, pruning and
    factoring the same convs (its joint form).

    A copy of ``model`` has, for each conv whose input channels collaborative may remove (their sole
    channel-mixing consumer), a quarter of its prunable input slices zeroed. A plan made on that copy
    is edited to remove exactly those inputs (so their producers lose those filters) and to factor
    every conv it covers at full rank (kxk to ``min(kh*kw*C, N)`` filters plus 1x1, all singular
    values kept); realised by ``clone_compressed(plan=...)`` without data, it must compute what the
    copy computes. Returns ``(dead, rewritten)``, or None where collaborative covers no conv here;
    a refusal raises :class:`kerascomp.CompressionError`."""
    with warnings.catch_warnings():  # layers it leaves alone, no data to recalibrate with: expected here
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        return _collaborative_rewrite(model, x)


def _collaborative_rewrite(model: Any, x: Any) -> tuple[Any, Any] | None:
    keras = module_for(read_model(model))
    labelled = (x, zero_labels(model, _rows(x)))
    graph = with_views(read_model(model))[0]  # the layers as collaborative sees them (methods/conv_views.py)
    shapes = infer_shapes(graph)
    analysis = analyse_channels(graph, shapes)

    def plan_of(subject: Any) -> Any:
        return kerascomp.compress(subject, "collaborative", target_flops=1.0, data=labelled, verbose=0,
                                  loss=_mse_loss(keras), recalibrate=False).plan

    def realised(plan: Any) -> Any:
        return kerascomp.clone_compressed(dead, plan=kerascomp.Plan.from_json(plan.to_json()), verbose=0)

    covered = [entry.layer for entry in plan_of(model).layers if entry.action != "kept"]
    if not covered:
        return None
    removed: dict[str, list[int]] = {}
    for name in covered:
        group, positions, _ = sole_input_group(graph, analysis, name, shapes)
        if group is None:
            continue
        prunable = set(group.prunable())
        candidates = [i for i, channel in enumerate(positions) if int(channel) in prunable]
        cut = candidates[::4][:len(positions) - 1]
        if cut:  # every reader ignores the cut channels: a squeeze-and-excite conv reads them too
            _zero_input_slices(graph, analysis, mixing_consumers(graph, group),
                               {int(atom) for i in cut for atom in group.channels[int(positions[i])]})
            removed[name] = cut
    dead = write_model(graph)
    plan = plan_of(dead)
    for entry in plan.layers:
        if entry.layer in covered:
            entry.removed_inputs = removed.get(entry.layer, [])
    pruned = realised(plan)
    for entry in plan.layers:
        if entry.layer in covered:
            height, width, channels, filters = pruned.get_layer(entry.layer).get_weights()[0].shape
            entry.rank = min(height * width * channels, filters)
            entry.kept_values = list(range(entry.rank))
    return dead, realised(plan)


# mild, so that a group rarely loses more than half its channels (pairs cannot cover it); the first that the
# method reaches by cutting something, and no group by more than half, is checked
TWIN_CHECK_TARGETS = (0.85, 0.95, 0.98)


def twin_channels(model: Any, pairs: dict[int, list[tuple[int, int]]], silenced: Sequence[str] = ()) -> Any | None:
    """A copy of ``model`` in which, per channel group (``analyse_channels`` index), each channel ``twin``
    of ``pairs[group]`` computes exactly what its ``source`` computes: every layer that writes the group
    copies the source's output slice (filter, bias, BN statistics, depthwise kernel) into the twin's.
    None when that cannot be exact on this graph (a layer norm, a layer whose weights kerascomp does not
    map, or a layer that holds one channel of a pair and not the other).
    The layers ``silenced`` read neither channel of a pair: their input slices for both are zeroed."""
    graph = read_model(model)
    analysis = analyse_channels(graph, infer_shapes(graph))
    wanted = {(group, twin): source for group, listed in pairs.items() for twin, source in listed}
    paired = {int(atom) for group, listed in pairs.items() for pair in listed for channel in pair
              for atom in analysis.groups[group].channels[channel]}
    _zero_input_slices(graph, analysis, silenced, paired)

    def copies_of(atoms: np.ndarray) -> list[tuple[int, int | None]]:
        """(twin position, source position) in ``atoms``: the k-th occurrence of a twin channel takes the k-th
        of its source (a depthwise conv with a multiplier repeats each channel)."""
        located = [analysis.channel_of_atom[int(atom)] for atom in atoms]
        occurrences: dict[tuple[int, int], list[int]] = {}
        for index, where in enumerate(located):
            occurrences.setdefault(where, []).append(index)
        found = []
        for (group, channel), positions in occurrences.items():
            if (group, channel) in wanted:
                sources = occurrences.get((group, wanted[(group, channel)]), [])
                found += [(twin, sources[k] if k < len(sources) else None) for k, twin in enumerate(positions)]
        return found

    for name, atoms in analysis.out_atoms.items():
        copies = {"out": copies_of(atoms)}
        if not copies["out"]:
            continue
        spec = graph.layers[name]
        per_channel = spec.class_name in PER_CHANNEL
        # a per-channel layer's input is its output, but for a depthwise multiplier: its kernel's channel axis
        # holds the inputs, its bias the repeated outputs
        copies["in"] = copies_of(analysis.in_atoms[name]) if per_channel and name in analysis.in_atoms else []
        if any(source is None for listed in copies.values() for _, source in listed) or \
                spec.class_name == "LayerNormalization" or spec.weights and spec.class_name not in PRUNE_RULES:
            return None
        for weight, roles in zip(spec.weights, PRUNE_RULES[spec.class_name](spec) if spec.weights else []):
            for axis, role in roles.items():
                if role == "out" or (role == "in" and per_channel):
                    moved = np.moveaxis(weight, axis, 0)  # a view: writes reach the weight
                    for twin, source in copies[role]:
                        moved[twin] = moved[source]
    return write_model(graph)


def _twins_strongest(model: Any, pairs: dict[int, list[tuple[int, int]]]) -> bool:
    """Whether each duplicate pair is more correlated than every other pair of its group (filters of two
    or fewer weights correlate at +-1 whatever they hold, which would make the check's premise false)."""
    graph = read_model(model)
    analysis = analyse_channels(graph, infer_shapes(graph))
    for index, listed in pairs.items():
        strength = group_correlation(graph, analysis, analysis.groups[index])
        others = strength.copy()
        np.fill_diagonal(others, -np.inf)
        for twin, source in listed:
            others[twin, source] = others[source, twin] = -np.inf
        if min(strength[twin, source] for twin, source in listed) <= others.max() + 1e-9:
            return False
    return True


def _twin_pairs(group: Any, cut: Sequence[int]) -> list[tuple[int, int]] | None:
    """``len(cut)`` (twin, source) pairs of prunable channels of ``group``, as many in each block of a grouped
    conv's split as ``cut`` takes there (twins in one block read the same inputs); None where a block cannot
    hold that many pairs."""
    blocks = group.blocks if group.blocks is not None else np.full(group.size, -1)
    pairs = []
    for block in sorted(set(blocks.tolist())):
        prunable = [c for c in group.prunable() if blocks[c] == block]
        count = sum(1 for c in cut if blocks[c] == block)
        if 2 * count > len(prunable):
            return None
        pairs += [(prunable[2 * i + 1], prunable[2 * i]) for i in range(count)]
    return pairs


def correlation_lossless(model: Any, x: Any) -> tuple[Any, Any] | None:
    """The correlation lossless check that rewrites: correlation pruning at the first of
    :data:`TWIN_CHECK_TARGETS` where it cuts something learns how many channels each group loses; a copy of ``model`` then holds
    that many exact duplicates per group (:func:`twin_channels`), the most correlated pairs there can be.
    Pruned with ``data`` and compensation on (refit and BN recalibration off), the copy must lose one
    channel of each duplicate pair and nothing else, each folded into its twin, and compute what the
    copy computes. A separable or grouped conv that reads a group is not compensated, so in the copy it reads
    neither channel of a pair; in a group a grouped conv splits, the pairs lie within its blocks, as many
    per block as the first cut takes there. Returns ``(twins, pruned)``, or
    None where the check does not apply (nothing cut, or a group cut by more than half its prunable channels,
    at every target; duplicates that cannot be exact);
    raises :class:`AssertionError` when other channels are cut."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        graph = read_model(model)
        groups = analyse_channels(graph, infer_shapes(graph)).groups
        for target in TWIN_CHECK_TARGETS:  # the first that cuts something, by no more than half of any group
            try:
                first = kerascomp.compress(model, "correlation", target_flops=target, verbose=0)
            except CompressionError:
                continue
            cut = {int(g): [channel for channel, _ in entry["removed"]]
                   for g, entry in first.report.choices.get("groups", {}).items()}
            pairs = {index: _twin_pairs(groups[index], channels) for index, channels in cut.items()}
            if cut and all(listed is not None for listed in pairs.values()):
                break
        else:
            return None
        separable = []
        for index in cut:
            # a separable or grouped consumer is not compensated (depthwise kernels cannot absorb a partner; a
            # grouped kernel holds the partner only in the same group), so in the copy it reads neither channel
            # of a pair: cutting either is then exact there
            separable += [c for c in groups[index].consumers
                          if graph.layers[c].class_name in SEPARABLE or conv_groups(graph.layers[c]) > 1]
        twins = twin_channels(model, pairs, silenced=separable)
        if twins is None or not _twins_strongest(twins, pairs):
            return None
        second = kerascomp.compress(twins, "correlation", target_flops=target, data=x, verbose=0,
                                    compensate=True, reconstruct=False, recalibrate=False)
    removed = {int(g): {channel for channel, _ in entry["removed"]}
               for g, entry in second.report.choices.get("groups", {}).items()}
    if set(removed) - set(pairs):
        raise AssertionError(f"correlation cut groups {sorted(set(removed) - set(pairs))}, which hold no duplicates")
    for index, listed in pairs.items():
        gone = removed.get(index, set())
        wrong = sorted(gone - {c for pair in listed for c in pair})
        kept_both = [pair for pair in listed if not gone & set(pair)]
        if wrong or kept_both or len(gone) != len(listed):
            raise AssertionError(f"correlation on group {index} with duplicated channels {listed} cut {sorted(gone)}: "
                                 f"not one channel of each duplicate pair")
    return twins, second.model


REFERENCED_PRUNING = ("l1", "correlation")


def pruned_against_dead(model: Any, method: str, target: float, x: Any) -> float | None:
    """The target stage's independent reference for pruning: ``method`` at ``target`` without data (so
    nothing is refit, compensated or recalibrated) against the *original* model with the channels it
    cut zeroed (:func:`dead_channels`, built from the original's weights, not from the rewrite). The
    two must agree exactly; None where the reference cannot be exact (nothing cut, a sigmoid gate)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        plain = kerascomp.compress(model, method, target_flops=target, verbose=0)
    if not plain.report.kept_outputs:
        return None
    dead = dead_channels(model, plain.report.kept_outputs)
    if dead is None:
        return None
    return relative_error(outputs_of(plain.model, x), outputs_of(dead, x))


REFERENCED_FACTORING = ("fga", "svd", "tucker", "joint_svd")


def _chain_product(factors: list[np.ndarray]) -> np.ndarray:
    """The kernel a chain of conv kernels computes, each applied to the last one's output."""
    kernel = factors[0].astype("float64")
    for factor in factors[1:]:
        # a 1x1 factor mixes channels; a kx1 then 1xk pair (or kxk core) composes spatially
        if factor.shape[:2] == (1, 1):
            kernel = np.einsum("ijcr,ro->ijco", kernel, factor[0, 0].astype("float64"), optimize=True)
        elif kernel.shape[:2] == (1, 1):
            kernel = np.einsum("cr,ijro->ijco", kernel[0, 0], factor.astype("float64"), optimize=True)
        else:  # kx1 then 1xk
            kernel = np.einsum("icr,jro->ijco", kernel[:, 0], factor[0].astype("float64"), optimize=True)
    return kernel


def _plain_chain(layers: list) -> tuple[list[np.ndarray], np.ndarray | None] | None:
    """The kernels of a chain of plain Conv2D layers and the last one's bias; None if a layer is missing, is
    not a Conv2D, or an inner one holds a non-zero bias."""
    if any(layer is None or type(layer).__name__ != "Conv2D" for layer in layers):
        return None
    weights = [layer.get_weights() for layer in layers]
    if any(len(w) > 1 and np.any(w[1]) for w in weights[:-1]):
        return None
    return [w[0] for w in weights], (weights[-1][1] if len(weights[-1]) > 1 else None)


def _joint_composite(names: dict, name: str, detail: dict | None,
                     has_bias: bool) -> tuple[np.ndarray, np.ndarray | None] | None:
    """Joint SVD's composite for member ``name`` from its report ``detail`` (variant, shared layer names):
    left, the shared kx1 then its own 1xk; right, its own kx1 then the shared 1xk, the bias in a unit
    depthwise conv; bi, the sum of both branches. None where the bias went into a following BN (the
    reference could not hold it) or a layer is not where the variant puts it."""
    if not detail or "variant" not in detail:
        return None
    variant, shared = detail["variant"], list(detail.get("shared", []))
    if variant == "svd":
        found = _plain_chain([names.get(name + "_v"), names.get(name)])
        return None if found is None else (_chain_product(found[0]), found[1])
    if variant == "left":
        found = _plain_chain([names.get(shared[0]), names.get(name)])
        return None if found is None else (_chain_product(found[0]), found[1])
    if variant == "right":
        found = _plain_chain([names.get(name + "_v"), names.get(shared[0])])
        carrier = names.get(name)
        if found is None:
            return None
        if carrier is not None and type(carrier).__name__ == "DepthwiseConv2D":
            unit, bias = carrier.get_weights()
            if not np.all(unit == 1.0):
                raise AssertionError(f"joint_svd: the bias carrier of {name} scales its input ({unit.ravel()[:4]})")
            return _chain_product(found[0]), bias
        return None if has_bias else (_chain_product(found[0]), None)
    left = _plain_chain([names.get(shared[0]), names.get(name + "_h")])
    right = _plain_chain([names.get(name + "_v"), names.get(shared[-1])])
    if left is None or right is None:
        return None
    return _chain_product(left[0]) + _chain_product(right[0]), left[1]


def _composite(method: str, names: dict, name: str) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The dense kernel (and bias) that the factors written for the original conv ``name`` multiply out
    to, in numpy, from ``names`` (the compressed model's layers by name); None when ``name`` was not
    factored (or a factor holds a bias that has no exact dense equivalent)."""
    if method == "fga":
        layer = names.get(name)
        if layer is None or type(layer).__name__ != "FilterGroupConv2D":
            return None
        grouped, pointwise = layer.grouped.get_weights()[0], layer.pointwise.get_weights()
        groups, rank = layer.groups, layer.rank
        inputs_per_group = grouped.shape[2]
        dense = np.zeros(grouped.shape[:2] + (inputs_per_group * groups, groups * rank), grouped.dtype)
        for q in range(groups):
            dense[:, :, q * inputs_per_group:(q + 1) * inputs_per_group, q * rank:(q + 1) * rank] = \
                grouped[:, :, :, q * rank:(q + 1) * rank]
        factors = [dense, pointwise[0]]
        bias = pointwise[1] if len(pointwise) > 1 else None
    else:
        suffixes = ("_v",) if method == "svd" else ("_tucker_in", "_tucker_core")
        chain = [names.get(name + suffix) for suffix in suffixes] + [names.get(name)]
        if method == "tucker":  # a 1x1 conv's low-rank pair, or a kxk conv with one factor folded: two layers
            chain = [layer for layer in chain[:2] if layer is not None] + chain[2:]
        if chain[0] is chain[-1]:
            return None
        found = _plain_chain(chain)
        if found is None:
            return None
        factors, bias = found
    return _chain_product(factors).astype("float32"), bias


def factored_against_composite(model: Any, method: str, target: float, x: Any,
                               **options: Any) -> tuple[float, int] | None:
    """The target stage's independent reference for the factoring methods: ``method`` at ``target``
    without data (nothing refit or recalibrated) against the *original* graph with each factored
    conv's kernel replaced by the dense kernel its factors multiply out to (:func:`_composite`, plain
    numpy). This checks the rewrite's wiring (strides, padding, dilation, activations, joins) without
    its own code; the channels that ``pointwise="auto"``'s expansion step cut are zeroed in the reference,
    and a conv both cut and factored gets its composite at its kept channels. For ``svd`` it also checks
    the maths: each layer's composite must be the best rank-r approximation of the original kernel
    (Eckart-Young, from ``numpy.linalg.svd``).

    Joint SVD takes its variant from ``options``, else left, right or bi by the model's layer count, as
    its lossless check does. Returns ``(relative output error, convs factored or cut)``, or None when
    nothing was."""
    if method == "joint_svd" and "variant" not in options:
        options["variant"] = ("left", "right", "bi")[len(model.layers) % 3]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        plain = kerascomp.compress(model, method, target_flops=target, verbose=0, **options)
    # the layers as the method saw them (a SeparableConv2D as depthwise + 1x1 Conv2D, a Dense on feature maps
    # as a 1x1 Conv2D, both exact), with the channels a pointwise="auto" expansion step cut zeroed
    graph, analysis, removed = _zeroed_reference(model, plain.report.kept_outputs)
    compressed = {layer.name: layer for layer in plain.model.layers}
    details = {decision.layer: decision.detail for decision in plain.report.layers}
    factored = 0
    for name, spec in list(graph.layers.items()):
        if spec.class_name != "Conv2D":
            continue
        if method == "joint_svd":
            composite = _joint_composite(compressed, name, details.get(name), len(spec.weights) > 1)
        else:
            composite = _composite(method, compressed, name)
        if composite is None:
            continue
        kernel = composite[0].astype("float32")
        if method == "svd" and kernel.shape == spec.weights[0].shape:  # (a pruned conv's rank is of its cut kernel)
            _check_best_rank(name, spec.weights[0], kernel)
        _set_composite(graph, analysis, removed, name, kernel, composite[1], method)
        factored += 1
    pruned = len({name for name in plain.report.kept_outputs if graph.layers[name].class_name in _MIXING})
    if not factored and not pruned:
        return None
    return relative_error(outputs_of(plain.model, x), outputs_of(write_model(graph), x)), factored + pruned


def _zeroed_reference(model: Any, kept_outputs: dict) -> tuple[Any, Any, set[int]]:
    """The original graph as the methods see it (:func:`with_views`) with every channel that ``kept_outputs``
    (a report's) does not keep zeroed wherever a channel-mixing layer reads it; its channel analysis; the
    removed atoms."""
    graph = with_views(read_model(model))[0]
    analysis = analyse_channels(graph, infer_shapes(graph))
    removed = {int(atom) for name, channels in kept_outputs.items()
               for position, atom in enumerate(analysis.out_atoms.get(name, ())) if position not in set(channels)}
    _zero_input_slices(graph, analysis, [name for name in graph.layers if graph.layers[name].class_name in _MIXING],
                       removed)
    return graph, analysis, removed


def _set_composite(graph: Any, analysis: Any, removed: set[int], name: str, kernel: np.ndarray,
                   bias: np.ndarray | None, method: str) -> None:
    """Put the dense ``kernel`` (and ``bias``) that a conv's factors multiply out to in the reference ``graph``;
    a conv whose channels were also cut gets it at its kept input and output positions, zeros elsewhere."""
    spec = graph.layers[name]
    shape = spec.weights[0].shape
    if kernel.shape != shape:
        keep_in = [i for i, atom in enumerate(analysis.in_atoms.get(name, ())) if int(atom) not in removed]
        keep_out = [i for i, atom in enumerate(analysis.out_atoms.get(name, ())) if int(atom) not in removed]
        if kernel.shape != shape[:2] + (len(keep_in), len(keep_out)):
            raise AssertionError(f"{method}: the factors of {name} multiply out to {kernel.shape}, not the original "
                                 f"kernel's {shape} nor its kept channels'")
        full = np.zeros(shape, kernel.dtype)
        full[:, :, np.asarray(keep_in)[:, None], np.asarray(keep_out)[None, :]] = kernel
        kernel = full
        if bias is not None:
            full_bias = np.zeros(shape[-1], bias.dtype)
            full_bias[keep_out] = bias
            bias = full_bias
    if len(spec.weights) > 1:
        spec.weights = [kernel, np.zeros_like(spec.weights[1]) if bias is None else bias]
    elif bias is not None and np.any(bias):
        raise AssertionError(f"{method}: the factors of {name} hold a bias the original conv lacks")
    else:
        spec.weights = [kernel]


def collaborative_against_reference(model: Any, target: float, x: Any) -> tuple[float, int] | None:
    """The target stage's independent reference for collaborative compression: the method at ``target``
    with the labelled ``x`` it needs for its sensitivities, but without reconstruction or BN recalibration,
    against the *original* graph in which every channel its plan cuts is zeroed wherever a channel-mixing
    layer reads it, and each conv it factors has its kernel replaced by the numpy product of its two
    factors (kxk basis, 1x1 pointwise), put back at the kernel's kept input and output positions.
    Returns ``(relative output error, convs pruned or factored)``, or None when the plan changed none."""
    keras = module_for(read_model(model))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        result = kerascomp.compress(model, "collaborative", target_flops=target, verbose=0, loss=_mse_loss(keras),
                                    data=(x, zero_labels(model, _rows(x))), reconstruct=False, recalibrate=False)
    graph = with_views(read_model(model))[0]  # as collaborative saw it
    analysis = analyse_channels(graph, infer_shapes(graph))
    removed: set[int] = set()
    for entry in result.plan.layers:
        for position in entry.removed_inputs or []:
            group, channel = analysis.channel_of_atom[int(analysis.in_atoms[entry.layer][position])]
            removed.update(int(atom) for atom in analysis.groups[group].channels[channel])
    _zero_input_slices(graph, analysis, [name for name in graph.layers if graph.layers[name].class_name in _MIXING],
                       removed)
    compressed = {layer.name: layer for layer in result.model.layers}
    changed = sum(1 for entry in result.plan.layers if entry.removed_inputs)
    for entry in result.plan.layers:
        basis = compressed.get(f"{entry.layer}_basis")
        if basis is None:
            continue
        found = _plain_chain([basis, compressed[entry.layer]])
        if found is None:
            raise AssertionError(f"collaborative: {entry.layer}'s factors are not a plain kxk then 1x1 pair")
        spec = graph.layers[entry.layer]
        kept_in = np.array([i for i, atom in enumerate(analysis.in_atoms[entry.layer]) if int(atom) not in removed])
        kept_out = np.array([i for i, atom in enumerate(analysis.out_atoms[entry.layer]) if int(atom) not in removed])
        product = _chain_product(found[0])
        if product.shape != spec.weights[0].shape[:2] + (len(kept_in), len(kept_out)):
            raise AssertionError(f"collaborative: the factors of {entry.layer} multiply out to {product.shape}, not "
                                 f"its kernel's kept {len(kept_in)} inputs and {len(kept_out)} outputs")
        kernel = np.zeros_like(spec.weights[0])
        kernel[:, :, kept_in[:, None], kept_out[None, :]] = product
        weights = [kernel] + [w.copy() for w in spec.weights[1:]]
        if found[1] is not None:
            weights[1][kept_out] = found[1]
        spec.weights = weights
        changed += not entry.removed_inputs
    if not changed:
        return None
    return relative_error(outputs_of(result.model, x), outputs_of(write_model(graph), x)), changed


def auto_against_reference(model: Any, target: float, x: Any) -> tuple[float, int] | None:
    """The target stage's independent reference for ``method="auto"``: auto at ``target`` without data (nothing
    refit or recalibrated) against the *original* graph in which the channels its pruned units cut are zeroed
    wherever a channel-mixing layer reads them, and each conv it factors (FGA, SVD or Tucker-2 form, by its
    plan) has its kernel replaced by the numpy product of the factors (:func:`_composite`). Auto never prunes
    and factors the same conv, so every composite has the original kernel's shape. Returns ``(relative output
    error, convs cut or factored)``, or None when the plan changed none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", kerascomp.CompressionWarning)
        result = kerascomp.compress(model, "auto", target_flops=target, verbose=0)
    kept = result.report.kept_outputs
    graph, analysis, removed = _zeroed_reference(model, kept)  # as auto saw it (see factored_against_composite)
    compressed = {layer.name: layer for layer in result.model.layers}
    forms = result.report.choices.get("layers", {})
    for name, form in forms.items():
        composite = _composite(form[0], compressed, name)
        spec = graph.layers[name]
        if composite is None or composite[0].shape != spec.weights[0].shape:
            raise AssertionError(f"auto: {name}'s {form[0]} factors are not where its plan puts them, or do not "
                                 f"multiply out to its kernel's shape {spec.weights[0].shape}")
        _set_composite(graph, analysis, removed, name, composite[0], composite[1], "auto")
    changed = len(forms) + len({name for name in kept if graph.layers[name].class_name in _MIXING})
    if not changed:
        return None
    return relative_error(outputs_of(result.model, x), outputs_of(write_model(graph), x)), changed


def _check_best_rank(name: str, original: np.ndarray, composite: np.ndarray) -> None:
    k_h, k_w, c_in, c_out = original.shape
    def matrix(kernel):  # rows (i, c), columns (j, o): a kx1 then 1xk pair is rank r here
        return kernel.astype("float64").transpose(0, 2, 1, 3).reshape(k_h * c_in, k_w * c_out)
    approx = matrix(composite)
    rank = int(np.linalg.matrix_rank(approx, tol=1e-6 * max(np.abs(approx).max(), 1e-12)))
    values = np.linalg.svd(matrix(original), compute_uv=False)
    best = float(np.sqrt(np.sum(values[rank:] ** 2)))
    error = float(np.linalg.norm(matrix(original) - approx))
    if error > best * (1 + 1e-3) + 1e-5 * float(values[0]):
        raise AssertionError(f"svd: {name}'s factors (rank {rank}) are {error:.4g} from the original kernel; the "
                             f"best rank-{rank} approximation is {best:.4g} away")


@dataclass
class Outcome:
    """What one (graph, method) check found: ``status`` is ``"ok"``, ``"refused"`` or ``"failed"``."""

    method: str
    status: str
    stage: str = ""
    detail: str = ""
    measures: dict = field(default_factory=dict)


# methods whose lossless check compares a rewrite with a prepared copy (dead or duplicated channels) rather
# than with the model itself; None from the check falls back to :func:`lossless`
LOSSLESS_CHECKS = {
    "l1": lambda model, x: pruning_lossless(model, "l1"),  # dead filters score 0
    "correlation": correlation_lossless,  # exact duplicates are the most correlated pairs
    "collaborative": collaborative_lossless,
}


def _pruned_reference(model: Any, method: str, target: float, x: Any) -> tuple[float, None] | None:
    error = pruned_against_dead(model, method, target, x)
    return None if error is None else (error, None)


_PRODUCT = "each factored kernel replaced by its factors' product"
# the target stage's independent reference per method: (check(model, method, target, x) -> (relative error,
# layers checked or None) or None where it does not apply, what a failure says)
TARGET_REFERENCES = {
    **{method: (_pruned_reference, "the pruned model differs from the original with the cut channels zeroed")
       for method in REFERENCED_PRUNING},
    **{method: (lambda model, method, target, x: factored_against_composite(model, method, target, x),
                f"the factored model differs from the original with {_PRODUCT}") for method in REFERENCED_FACTORING},
    "collaborative": (lambda model, method, target, x: collaborative_against_reference(model, target, x),
                      f"the compressed model differs from the original with the cut channels zeroed and {_PRODUCT}"),
    "auto": (lambda model, method, target, x: auto_against_reference(model, target, x),
             f"the compressed model differs from the original with the cut channels zeroed and {_PRODUCT} (FGA, "
             f"SVD or Tucker-2 by the plan)"),
}


def check_graph(model: Any, method: str, target: float | None = 0.5, export: bool = True,
                folder: str | Path | None = None) -> list[Outcome]:
    """Run the properties of the module docstring; ``target=None`` skips the compressed-model checks."""
    x = sample_inputs(model)
    expected = outputs_of(model, x)
    if not np.all(np.isfinite(expected)):
        return [Outcome(method, "failed", "build", "the generated model's own outputs are not finite")]
    outcomes = []
    stage = "round trip"
    try:
        rebuilt = round_trip(model)
        same_weights = all(np.array_equal(a, b) for a, b in zip(model.get_weights(), rebuilt.get_weights()))
        error = relative_error(outputs_of(rebuilt, x), expected)
        if not same_weights or error > 1e-6:
            return [Outcome(method, "failed", stage, f"weights equal: {same_weights}, output error {error:.2e}")]
        stage = "lossless"
        try:
            checked = LOSSLESS_CHECKS[method](model, x) if method in LOSSLESS_CHECKS else None
            if checked is not None:  # a rewrite that must be exact: dead channels cut
                reference, rewritten = checked
                error = relative_error(outputs_of(rewritten, x), outputs_of(reference, x))
                rebuilt_for_count = reference  # already written through the IR by dead_channels
            else:
                rewritten = lossless(model, method, x)
                error = relative_error(outputs_of(rewritten, x), expected)
                rebuilt_for_count = rebuilt
        except CompressionError as refusal:
            outcomes.append(Outcome(method, "refused", stage, f"{type(refusal).__name__}: {refusal}"))
        except AssertionError as wrong:
            return [Outcome(method, "failed", stage, str(wrong))]
        else:
            # against the round trip: it already inlines nested models, which is not a rewrite
            measures = {"lossless_error": error, "rewritten_layers": rewritten_layers(rebuilt_for_count, rewritten)}
            if error > LOSSLESS_TOLERANCE:
                return [Outcome(method, "failed", stage, f"relative output error {error:.2e}", measures)]
            outcomes.append(Outcome(method, "ok", stage, measures=measures))
        if target is None:
            return outcomes
        stage = "compress"
        keras = _module(model)
        options: dict = {}
        data: Any = x
        if method == "collaborative":
            data = (x, zero_labels(model, _rows(x)))
            options["loss"] = _mse_loss(keras)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", kerascomp.CompressionWarning)
                result = kerascomp.compress(model, method, target_flops=target, data=data, verbose=0, **options)
        except CompressionError as refusal:
            outcomes.append(Outcome(method, "refused", stage, f"{type(refusal).__name__}: {refusal}"))
            return outcomes
        measures = {"macs_ratio": result.report.macs_ratio}
        real = kerascomp.cost(result.model).macs / max(kerascomp.cost(model).macs, 1)
        if result.report.macs_ratio > target + 1e-9 or abs(real - result.report.macs_ratio) > 1e-9:
            return outcomes + [Outcome(method, "failed", stage, f"MACs ratio {result.report.macs_ratio} (measured "
                                                                f"{real}) for target {target}", measures)]
        if method in TARGET_REFERENCES:
            stage = "reference"
            reference, what = TARGET_REFERENCES[method]
            checked = reference(model, method, target, x)
            if checked is not None:
                error, layers = checked
                measures["reference_error"] = error
                if layers is not None:
                    measures["reference_layers"] = layers
                if error > LOSSLESS_TOLERANCE:
                    return outcomes + [Outcome(method, "failed", stage, f"{what}: relative error {error:.2e}",
                                               measures)]
        stage = "fit"
        small = result.model
        small.compile(keras.optimizers.SGD(1e-3), "mse")
        history = small.fit(x, zero_labels(small, _rows(x)), batch_size=_rows(x), epochs=1, verbose=0, shuffle=False)
        if not np.isfinite(history.history["loss"][0]):
            return outcomes + [Outcome(method, "failed", stage, "non-finite loss", measures)]
        if export:
            stage = "export"
            with tempfile.TemporaryDirectory(dir=folder) as scratch:
                exported = kerascomp.export_tflite(small, Path(scratch) / "fuzz.tflite", check_samples=4)
            measures["tflite_error"] = exported.relative_error
            if not exported.relative_error < TFLITE_TOLERANCE:
                return outcomes + [Outcome(method, "failed", stage,
                                           f"tflite relative error {exported.relative_error:.2e}", measures)]
        outcomes.append(Outcome(method, "ok", "target", measures=measures))
    except Exception as error:  # noqa: BLE001 - an internal error is the failure we are counting
        outcomes.append(Outcome(method, "failed", stage, "".join(traceback.format_exception_only(error)).strip()
                                + "\n" + traceback.format_exc(limit=-4)))
    return outcomes


def _module(model: Any):
    return keras_of(model)


__all__ = ["Recipe", "draw_recipe", "numpy_chooser", "build_model", "lossless", "check_graph", "Outcome"]

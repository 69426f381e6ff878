"""Iterative pruning around the user's own training: ``prune_in_rounds``.

The structure of a model cannot change inside one ``fit``, so the rounds are a small loop that
calls the user's ``train(model)`` (which compiles and fits, as they always do) on each new
model. For ``method="correlation"`` a round is Singh et al.'s: pick the most correlated filter
pairs, train with the correlation regulariser on them, drop one filter of each pair (folded
into its partner and with BN recalibrated when ``data`` is given), then finetune. For
``method="l1"`` a round is drop-then-finetune (Li et al.'s iterative variant).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from kerascomp.cost import graph_cost
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.channels import analyse_channels
from kerascomp.graph.keras_io import infer_shapes, read_model, write_model
from kerascomp.methods import registry
from kerascomp.methods.base import Budget, CompressionReport
from kerascomp.methods.correlation import regularize_graph
from kerascomp.methods.inputs import DEFAULT_TARGET_FLOPS, check_verbose, read_checked
from kerascomp.methods.pruning import PruningMethod, apply_pruning, plan_pruning
from kerascomp.methods.registry import finish
from kerascomp.methods.strip import strip_regularizers


@dataclass
class RoundsResult:
    """The final model, one report per round (each against the model that round started from), and
    the final MACs and params as fractions of the original model's."""

    model: Any
    rounds: list[CompressionReport] = field(default_factory=list)
    macs_ratio: float = 1.0
    params_ratio: float = 1.0
    regularized_pairs: list[int] = field(default_factory=list)
    seconds: float = 0.0

    def __str__(self) -> str:
        lines = [f"round {i + 1}: MACs x{r.macs_ratio:.3f}, params x{r.params_ratio:.3f} of the round's input"
                 + (f", {self.regularized_pairs[i]} regularised pairs" if self.regularized_pairs else "")
                 for i, r in enumerate(self.rounds)]
        lines.append(f"final: MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f} of the original "
                     f"({self.seconds:.0f} s including training)")
        return "\n".join(lines)


def prune_in_rounds(model: Any, train: Callable[[Any], Any], method: str = "correlation",
                    target_flops: float | None = DEFAULT_TARGET_FLOPS, target_params: float | None = None, rounds: int = 3,
                    strength: float = 0.1, data: Any = None, regularize_train: Callable[[Any], Any] | None = None,
                    verbose: int = 1, **options: Any) -> RoundsResult:
    """Prune ``model`` to the target in ``rounds`` steps, training with the user's ``train`` in between.

    Round ``r`` brings the cost to ``target ** (r / rounds)`` of the original, so each round removes a
    similar share. ``model`` is never modified; every model passed to ``train`` is a fresh one.

    Args:
        model: a built Keras 3 or tf_keras model.
        train: ``train(model)`` compiles and fits a model (called once per round after dropping, to finetune).
        method: ``"correlation"`` or ``"l1"``.
        target_flops / target_params: final fraction of the original MACs / params.
        rounds: number of prune steps (>= 1).
        strength: weight of the correlation regulariser (``method="correlation"``).
        data: inputs (array, ``(x, y)`` or ``tf.data``) for compensation and BN recalibration; optional.
        regularize_train: trains the regularised model before each drop (default: ``train``).
        **options: :class:`kerascomp.methods.pruning.PruneOptions`.

    Example::

        def train(m):
            m.compile(keras.optimizers.SGD(0.01, momentum=0.9), "sparse_categorical_crossentropy", ["accuracy"])
            m.fit(x_train, y_train, epochs=2, batch_size=128)

        result = kerascomp.prune_in_rounds(model, train, method="correlation", target_flops=0.5,
                                           rounds=2, data=x_train[:256])
        kerascomp.export_tflite(result.model, "pruned.tflite")
    """
    started = time.perf_counter()
    pruners = [name for name in registry.names() if isinstance(registry.get(name), PruningMethod)]
    if method not in pruners:
        raise InvalidArgumentError(f"prune_in_rounds supports the channel-pruning methods {pruners}, got {method!r}.")
    pruner = registry.get(method)
    if not callable(train) or (regularize_train is not None and not callable(regularize_train)):
        raise InvalidArgumentError("train (and regularize_train) must be callables taking a model, e.g. "
                                   "`lambda m: (m.compile(...), m.fit(...))`.")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 1:
        raise InvalidArgumentError(f"rounds must be an int >= 1, got {rounds!r}.")
    if isinstance(strength, bool) or not isinstance(strength, (int, float)) or strength < 0:
        raise InvalidArgumentError(f"strength must be a number >= 0, got {strength!r}.")
    if target_params is not None:
        target_flops = None
    budget = Budget.from_targets(target_flops, target_params)
    prune_options = pruner.make_options(options)
    check_verbose(verbose)
    graph = read_checked(model)
    batch = registry.method_inputs(graph, data, prune_options)
    scorer, pairs = pruner.steps, pruner.pairs
    original = graph_cost(graph, infer_shapes(graph))
    original_total = original.macs if budget.metric == "flops" else original.params
    result = RoundsResult(model=None)
    current = graph
    for index in range(1, rounds + 1):
        shapes = infer_shapes(current)
        now = graph_cost(current, shapes)
        current_total = now.macs if budget.metric == "flops" else now.params
        fraction = min(1.0, budget.fraction ** (index / rounds) * original_total / current_total)
        round_budget = Budget(budget.metric, fraction)
        analysis = analyse_channels(current, shapes)
        orders = plan_pruning(current, shapes, analysis, round_budget, scorer, method, prune_options, verbose)
        if pairs and strength > 0:
            regularized, count = regularize_graph(current, analysis, orders, strength)
            regularized_model = write_model(regularized)
            (regularize_train or train)(regularized_model)
            current = strip_regularizers(read_model(regularized_model))
            result.regularized_pairs.append(count)
        pruned, report = apply_pruning(current, shapes, analysis, orders, round_budget, method, prune_options,
                                       batch, pairs, verbose)
        current = finish(current, pruned, report, batch, prune_options, verbose)
        pruned_model = write_model(current)
        train(pruned_model)
        current = read_model(pruned_model)
        result.rounds.append(report)
        if verbose:
            print(f"kerascomp {method} round {index}/{rounds}:\n{report}")
    final = graph_cost(current, infer_shapes(current))
    result.model = write_model(current)
    result.macs_ratio = final.macs / original.macs
    result.params_ratio = final.params / original.params
    result.seconds = time.perf_counter() - started
    return result

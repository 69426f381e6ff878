"""Collaborative compression's units, their importance and per-layer curves (numpy only).

Li et al., "Towards Compact CNNs via Collaborative Compression", CVPR 2021, and its public
code (``compress.py``). A conv kernel ``W`` (HWIO, ``k x k x C x N``) offers two kinds of
removable *units*:

* its input channels (channel pruning): removing channel ``c`` sets ``W[:, :, c, :]`` to 0;
* the singular values of ``W`` reshaped to ``(N, k*k*C)`` (decomposition): removing value
  ``i`` subtracts ``s_i * u_i v_i^T``.

The cost of a change ``dW`` is the first-order Taylor estimate of the loss change squared,
``sum((g * dW)**2)`` with ``g`` the loss gradient on the user's data (the reference's criterion).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def channel_matrix(kernel: np.ndarray) -> np.ndarray:
    """HWIO kernel -> ``(N, k*k*C)`` with column blocks per input channel (the reference's reshape)."""
    height, width, channels, filters = kernel.shape
    return np.transpose(kernel, (3, 2, 0, 1)).reshape(filters, channels * height * width)


def channel_scores(kernel: np.ndarray, gradient: np.ndarray) -> np.ndarray:
    """Importance of each input channel: ``sum((g * W)[:, :, c, :]**2)`` (removing it is ``dW = -W[..c..]``)."""
    return np.sum((gradient * kernel) ** 2, axis=(0, 1, 3))


def singular_value_scores(kernel: np.ndarray, gradient: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Singular values of the reshaped kernel and the importance of removing each one alone."""
    left, values, right = np.linalg.svd(channel_matrix(kernel), full_matrices=False)
    return values, _value_scores(left, values, right, channel_matrix(gradient))


def thin_svd(matrix: np.ndarray, count: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``np.linalg.svd(matrix, full_matrices=False)`` for a float64 matrix, through the eigen-
    decomposition of the Gram matrix of its shorter side (``M M^T`` or ``M^T M``) when one side is at
    least 4x the other (a 3x3 conv's reshape is 9x wider) or both are at least 128 (a wide 1x1 conv,
    square or with a few input channels removed), which is several times faster (a 1024x1000 matrix:
    about 1 s through LAPACK's SVD here). Singular values below 1e-10 of the largest get zero vectors
    on the longer side. ``count``: only the leading ``count`` triplets (the longer side's vectors are then
    computed for those alone)."""
    rows, columns = matrix.shape
    if max(rows, columns) < 4 * min(rows, columns) and min(rows, columns) < 128:
        left, values, right = np.linalg.svd(matrix, full_matrices=False)
        return left[:, :count], values[:count], right[:count]
    if columns < rows:
        right, values, left = thin_svd(matrix.T, count)
        return left.T, values, right.T
    eigenvalues, left = np.linalg.eigh(matrix @ matrix.T)
    order = np.argsort(eigenvalues)[::-1][:count]
    values = np.sqrt(np.maximum(eigenvalues[order], 0.0))
    left = left[:, order]
    safe = np.where(values > values[0] * 1e-10 if values[0] > 0 else np.zeros_like(values, bool), values, np.inf)
    right = (matrix.T @ left / safe).T
    return left, values, right


def _value_scores(left: np.ndarray, values: np.ndarray, right: np.ndarray, gradient_matrix: np.ndarray) -> np.ndarray:
    # dW_i = -s_i u_i v_i^T, so (G * dW_i) summed squared = s_i^2 * sum_jk (G_jk u_ij v_ik)^2,
    # computed as one matrix product: sum_j u_ij^2 (G^2 (v^2)^T)_ji
    return values ** 2 * np.sum(left ** 2 * ((gradient_matrix ** 2) @ (right ** 2).T), axis=0)


@dataclass
class RemovalCurve:
    """Greedy removal of one kind of unit in ascending importance.

    ``order`` is the removal order of the units; at point ``j`` of the curve the first
    ``units_removed[j]`` of them are gone, the layer's MACs are down by the fraction
    ``macs_removed[j]``, and ``score[j]`` is the Taylor score of the whole change so far.
    """

    order: np.ndarray
    units_removed: np.ndarray
    macs_removed: np.ndarray
    score: np.ndarray


def channel_removal_curve(kernel: np.ndarray, gradient: np.ndarray, max_fraction: float = 0.95) -> RemovalCurve:
    """Remove input channels cheapest first; the layer's MACs fall by ``1/C`` per channel."""
    channels = kernel.shape[2]
    scores = channel_scores(kernel, gradient)
    order = np.argsort(scores, kind="stable")
    steps = max(1, min(channels - 1, int(np.floor(max_fraction * channels))))
    removed = np.arange(1, steps + 1) / channels
    # channel blocks of dW are disjoint, so the score of removing several is the sum
    return RemovalCurve(order, np.arange(1, steps + 1), removed, np.cumsum(scores[order[:steps]]))


@dataclass
class Trajectory:
    """Multi-step joint removal of input channels and singular values (the reference's heuristic).

    After step ``j``: the first ``channels_removed[j]`` channels of ``channel_order`` are gone,
    the reshaped kernel has rank ``rank[j]``, the layer's MACs are down by ``macs_removed[j]``
    and ``score[j]`` is the Taylor score of the whole change ``sum((g * (W_j - W))**2)``.
    """

    channel_order: np.ndarray
    channels_removed: np.ndarray
    rank: np.ndarray
    macs_removed: np.ndarray
    score: np.ndarray

    def point(self, fraction: float) -> int:
        """The first step that removes at least ``fraction`` of the MACs (the last step if none does)."""
        index = int(np.searchsorted(self.macs_removed, fraction - 1e-12))
        return min(index, len(self.macs_removed) - 1)

    def decision(self, fraction: float, area: int, channels: int, filters: int) -> tuple[np.ndarray, int | None]:
        """(input channels removed, rank or ``None``) at the first step removing ``fraction`` of the MACs.

        The reference's rule: the rank part is dropped only when the channels chosen jointly already
        remove ``fraction`` on their own (pruned dense conv); otherwise both parts apply together."""
        index = self.point(fraction)
        removed = np.sort(self.channel_order[:self.channels_removed[index]])
        rank = int(self.rank[index])
        kept = channels - len(removed)
        if 1.0 - kept / channels >= fraction - 1e-12 or rank >= min(area * kept, filters):
            return removed, None
        return removed, rank


def kept_fraction(area: int, channels: int, filters: int, kept_channels: int, rank: int | None,
                  kept_filters: int | None = None) -> float:
    """MACs of a ``area``-tap conv with ``kept_channels`` inputs at ``rank`` (kxk C->r then 1x1 r->N,
    used only where it is cheaper than the dense conv) as a fraction of the dense original."""
    outputs = filters if kept_filters is None else kept_filters
    dense = area * kept_channels * outputs
    if rank is not None and rank < min(area * kept_channels, outputs):
        dense = min(dense, rank * (area * kept_channels + outputs))
    return dense / (area * channels * filters)


def multi_step_curve(kernel: np.ndarray, gradient: np.ndarray, prune: bool = True, decompose: bool = True,
                     step_fraction: float = 0.01, max_fraction: float = 0.95) -> Trajectory:
    """Remove the cheapest units step by step, rescoring after each step, until ``max_fraction`` of
    the MACs is gone.

    Each step removes ``step_fraction`` of the layer's units (at least one): the input channels
    (if ``prune``) and the singular values of the current reshaped kernel (if ``decompose``) with
    the lowest Taylor score per MAC they save. Removing a channel zeroes its column block, which
    changes every singular triplet, so the SVD is recomputed each step; the gradient is the one
    of the original model (the reference's choice too).
    """
    height, width, channels, filters = kernel.shape
    area = height * width
    current, gradient = kernel.astype(np.float64), gradient.astype(np.float64)
    kept = np.ones(channels, bool)
    rank = min(area * channels, filters)
    per_step = max(1, int(round(step_fraction * (channels + rank))))
    order, removed_counts, ranks, fractions, scores = [], [], [], [], []
    stale = True
    while True:
        done = 1.0 - kept_fraction(area, channels, filters, int(kept.sum()), rank)
        if done >= max_fraction:
            break
        units = []  # (score per MAC saved, kind, index)
        low_rank = rank < min(area * int(kept.sum()), filters)
        if prune and kept.sum() > 1:
            channel_cost = np.sum((gradient * current) ** 2, axis=(0, 1, 3))
            saving = area * (rank if low_rank else filters)
            units += [(channel_cost[c] / saving, 0, int(c)) for c in np.flatnonzero(kept)]
        if decompose and rank > 1:
            if stale:  # a removed channel changes every singular triplet; removed values change none (nor
                # the other values' scores: those are kept, less the removed entries, until the next channel goes)
                left, values, right = thin_svd(channel_matrix(current[:, :, kept, :]), rank)
                value_cost = _value_scores(left, values, right, channel_matrix(gradient[:, :, kept, :]))
                stale = False
            left, values, right, value_cost = left[:, :rank], values[:rank], right[:rank], value_cost[:rank]
            saving = area * int(kept.sum()) + filters
            units += [(value_cost[i] / saving, 1, i) for i in range(rank)]
        if not units:
            break
        units.sort()
        chosen, values_taken, channels_taken = [], 0, 0
        for unit in units:  # at most per_step units; keep at least one singular value and one channel
            if len(chosen) == per_step:
                break
            if unit[1] == 1 and values_taken < rank - 1:
                values_taken += 1
                chosen.append(unit)
            elif unit[1] == 0 and channels_taken < kept.sum() - 1:
                channels_taken += 1
                chosen.append(unit)
        if not chosen:
            break
        values_out = [index for _, kind, index in chosen if kind == 1]
        if values_out:
            change = (left[:, values_out] * values[values_out]) @ right[values_out]  # sum of s_i u_i v_i^T
            block = channel_matrix(current[:, :, kept, :]) - change
            count = int(kept.sum())
            current[:, :, kept, :] = np.transpose(block.reshape(filters, count, height, width), (2, 3, 1, 0))
            rank -= len(values_out)
            left, values, right, value_cost = (np.delete(left, values_out, axis=1), np.delete(values, values_out),
                                               np.delete(right, values_out, axis=0), np.delete(value_cost, values_out))
        for _, kind, index in chosen:
            if kind == 0:
                stale = True
                kept[index] = False
                current[:, :, index, :] = 0.0
                order.append(index)
        rank = min(rank, area * int(kept.sum()), filters)
        removed_counts.append(len(order))
        ranks.append(rank)
        fractions.append(1.0 - kept_fraction(area, channels, filters, int(kept.sum()), rank))
        scores.append(float(np.sum((gradient * (current - kernel)) ** 2)))
    return Trajectory(np.array(order, dtype=int), np.array(removed_counts, dtype=int), np.array(ranks, dtype=int),
                      np.array(fractions), np.array(scores))


def factor_kernel(kernel: np.ndarray, kept: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Keep the singular values ``kept`` of the reshaped kernel: returns the kxk kernel ``C -> r``
    (``sqrt(S) V^T`` as filters) and the 1x1 kernel ``r -> N`` (``U sqrt(S)``) whose composition is the
    truncated kernel (the reference's output form)."""
    height, width, channels, filters = kernel.shape
    left, values, right = thin_svd(channel_matrix(kernel.astype(np.float64)))
    root = np.sqrt(values[kept])
    basis = (root[:, None] * right[kept]).reshape(len(kept), channels, height, width)
    pointwise = (left[:, kept] * root).T
    return (np.transpose(basis, (2, 3, 1, 0)).astype(kernel.dtype),
            pointwise.reshape(1, 1, len(kept), filters).astype(kernel.dtype))


def values_to_keep(kernel: np.ndarray, gradient: np.ndarray, rank: int, rule: str = "largest") -> np.ndarray:
    """Indices (into the descending singular values) of the ``rank`` values to keep.

    ``rule="largest"`` (the reference's choice): the top ``rank`` of the (channel-pruned) kernel, the
    truncation with the smallest weight error. ``rule="taylor"``: the values whose removal would cost
    the most by the gradient score; removing values one by one does not change the others' scores,
    so this is exact, but on a trained model it trades a large weight error for a small first-order
    loss estimate (measured in ``benchmarks/results/start_point_resnet20_cifar10.md``)."""
    if rule == "largest":
        return np.arange(rank)
    if rule != "taylor":
        raise ValueError(f"rule must be 'largest' or 'taylor', got {rule!r}")
    left, values, right = np.linalg.svd(channel_matrix(kernel.astype(np.float64)), full_matrices=False)
    scores = _value_scores(left, values, right, channel_matrix(gradient.astype(np.float64)))
    return np.sort(np.argsort(-scores, kind="stable")[:rank])


def fit_exponential(fractions: np.ndarray, scores: np.ndarray, floor: float = 1e-6) -> tuple[float, float]:
    """``score ~ p1 * exp(p2 * fraction)`` by least squares on ``log(score)``.

    Scores below ``floor`` times the largest are raised to it, and every point weighs the same.
    Choice and evidence: weighting by the score (the usual log-space correction) or dropping
    zero scores both ignore a curve's free start, e.g. a layer with duplicated filters whose
    first 44% of MACs go at zero cost; then its fit claimed it was the *more* sensitive layer
    (``tests/test_collaborative.py``). Returns ``(p1, p2)`` with ``p2 > 0`` (a flat curve gets a
    tiny slope: cheap to compress).
    """
    fractions, scores = np.asarray(fractions, float), np.asarray(scores, float)
    top = float(scores.max()) if scores.size else 0.0
    if scores.size < 2 or top <= 0:
        return max(top, 1e-12), 1e-6
    logs = np.log(np.maximum(scores, floor * top))
    design = np.stack([np.ones_like(fractions), fractions], axis=1)
    (log_p1, p2), *_ = np.linalg.lstsq(design, logs, rcond=None)
    return float(np.exp(log_p1)), float(max(p2, 1e-6))


def global_rates(macs: np.ndarray, p1: np.ndarray, p2: np.ndarray, target_removed: float,
                 max_fraction: float = 0.95, weights: np.ndarray | None = None) -> np.ndarray:
    """Per-layer fraction of MACs to remove so that ``sum(macs * rate) = target_removed``.

    Minimises ``sum_l w_l p1_l exp(p2_l rate_l)`` under that constraint (``w = weights``, 1 by
    default): the Lagrange condition ``w p1 p2 exp(p2 rate) = lam * macs`` gives
    ``rate_l(lam) = ln(lam macs_l / (w_l p1_l p2_l)) / p2_l``, clipped to ``[0, max_fraction]``. With
    ``weights=macs`` (the reference's FLOPs-weighted objective on normalised curves) this is its
    ``rate = ln(x / (p1 p2)) / p2``. The removed MACs grow monotonically with ``lam``, so a
    bisection on ``log(lam)`` solves it exactly (the reference ran SGD on the same equation).
    """
    macs, p1, p2 = (np.asarray(a, float) for a in (macs, p1, p2))
    p1 = p1 * (np.ones_like(macs) if weights is None else np.asarray(weights, float))  # w only ever scales p1
    if target_removed <= 0:
        return np.zeros_like(macs)
    if target_removed > max_fraction * macs.sum() * (1 + 1e-12):
        raise ValueError(f"cannot remove {target_removed:,.0f} MACs: at most {max_fraction:.0%} of each layer's "
                         f"{macs.sum():,.0f} can go")

    def rates(log_lam: float) -> np.ndarray:
        return np.clip((log_lam + np.log(macs) - np.log(p1 * p2)) / p2, 0.0, max_fraction)

    low = float(np.min(np.log(p1 * p2) - np.log(macs))) - 1.0  # every layer at 0
    high = float(np.max(np.log(p1 * p2) - np.log(macs) + p2 * max_fraction)) + 1.0  # every layer at max
    for _ in range(200):
        middle = 0.5 * (low + high)
        if float(np.sum(macs * rates(middle))) < target_removed:
            low = middle
        else:
            high = middle
    return rates(high)

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


def _value_scores(left: np.ndarray, values: np.ndarray, right: np.ndarray, gradient_matrix: np.ndarray) -> np.ndarray:
    # dW_i = -s_i u_i v_i^T, so (G * dW_i) summed squared = s_i^2 * sum_jk (G_jk u_ij v_ik)^2
    return values ** 2 * np.einsum("jk,ji,ik->i", gradient_matrix ** 2, left ** 2, right ** 2)


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


def rank_removal_curve(kernel: np.ndarray, gradient: np.ndarray, max_fraction: float = 0.95) -> RemovalCurve:
    """Cut singular values cheapest first. At rank r the layer becomes a kxk conv C->r plus a 1x1
    conv r->N, so its MACs fraction is ``r*(k*k*C + N) / (k*k*C*N)``; only ranks that save MACs count."""
    height, width, channels, filters = kernel.shape
    matrix, gradient_matrix = channel_matrix(kernel), channel_matrix(gradient)
    left, values, right = np.linalg.svd(matrix, full_matrices=False)
    order = np.argsort(_value_scores(left, values, right, gradient_matrix), kind="stable")
    dense = height * width * channels * filters
    per_rank = height * width * channels + filters
    steps, fractions, scores = [], [], []
    change = np.zeros_like(matrix)
    for step, index in enumerate(order[:-1], start=1):
        change -= values[index] * np.outer(left[:, index], right[index])
        removed = 1.0 - (len(values) - step) * per_rank / dense
        if removed <= 0:
            continue
        if removed > max_fraction:
            break
        steps.append(step)
        fractions.append(removed)
        scores.append(float(np.sum((gradient_matrix * change) ** 2)))
    return RemovalCurve(order, np.array(steps, dtype=int), np.array(fractions), np.array(scores))


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
                 max_fraction: float = 0.95) -> np.ndarray:
    """Per-layer fraction of MACs to remove so that ``sum(macs * rate) = target_removed``.

    Minimises ``sum_l p1_l exp(p2_l rate_l)`` under that constraint: the Lagrange condition
    ``p1 p2 exp(p2 rate) = lam * macs`` gives ``rate_l(lam) = ln(lam macs_l / (p1_l p2_l)) / p2_l``,
    clipped to ``[0, max_fraction]``. The removed MACs grow monotonically with ``lam``, so a
    bisection on ``log(lam)`` solves it exactly (the reference ran SGD on the same equation).
    """
    macs, p1, p2 = (np.asarray(a, float) for a in (macs, p1, p2))
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

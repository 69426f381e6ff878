"""Filter statistics for pruning: L1 norms, Pearson correlation, pair selection, linear fits.

Pure numpy. Filters are the rows of a ``(filters, fan_in)`` matrix built by :func:`filter_rows`.

* L1-norm filter pruning: Li, Kadav, Durdanovic, Samet, Graf, "Pruning Filters for Efficient
  ConvNets", ICLR 2017, section 3.1: filter importance is ``s_j = sum |F_j|``.
* Filter-correlation pruning: Singh, Verma, Rai, Namboodiri, "Leveraging Filter Correlations for
  Deep Model Compression", WACV 2020: the most correlated filter pairs are redundant, so one
  filter of each pair can go. Correlation here is Pearson's r of the two flattened filters.
"""
from __future__ import annotations

import numpy as np


def filter_rows(kernel: np.ndarray, out_axis: int = -1) -> np.ndarray:
    """``kernel`` as a ``(filters, fan_in)`` matrix: one flattened filter per row."""
    moved = np.moveaxis(np.asarray(kernel, dtype=np.float64), out_axis, 0)
    return moved.reshape(moved.shape[0], -1)


def l1_norms(rows: np.ndarray) -> np.ndarray:
    """Li et al. 2017, eq. (1): the sum of absolute weights of each filter."""
    return np.abs(rows).sum(axis=1)


def pearson_matrix(rows: np.ndarray) -> np.ndarray:
    """Pearson correlation between every pair of rows; constant rows correlate 0 with everything."""
    centred = rows - rows.mean(axis=1, keepdims=True)
    norms = np.linalg.norm(centred, axis=1)
    safe = np.where(norms > 1e-12, norms, 1.0)
    unit = centred / safe[:, None]
    corr = unit @ unit.T
    corr[norms <= 1e-12, :] = 0.0
    corr[:, norms <= 1e-12] = 0.0
    np.fill_diagonal(corr, 1.0)
    return np.clip(corr, -1.0, 1.0)


def top_pairs(strength: np.ndarray, candidates: np.ndarray | None = None) -> list[tuple[int, int, float]]:
    """Greedy non-overlapping pairs in decreasing ``strength`` (a symmetric matrix, e.g. ``|corr|``).

    Only indices in ``candidates`` (default: all) are paired; each index is used at most once.
    Returns ``(i, j, strength[i, j])`` with ``i < j``, strongest first.
    """
    size = strength.shape[0]
    candidates = np.arange(size) if candidates is None else np.asarray(candidates, dtype=np.int64)
    if len(candidates) < 2:
        return []
    sub = strength[np.ix_(candidates, candidates)]
    upper_i, upper_j = np.triu_indices(len(candidates), k=1)
    values = sub[upper_i, upper_j]
    order = np.argsort(-values, kind="stable")
    # plain Python lists in the greedy loop: it may visit every pair (millions for a 2048-channel group)
    firsts, seconds = candidates[upper_i[order]].tolist(), candidates[upper_j[order]].tolist()
    used = bytearray(size)
    pairs = []
    wanted = len(candidates) // 2
    for position, (i, j) in enumerate(zip(firsts, seconds)):
        if used[i] or used[j]:
            continue
        used[i] = used[j] = 1
        pairs.append((min(i, j), max(i, j), float(values[order[position]])))
        if len(pairs) == wanted:
            break
    return pairs


def removal_order(strength: np.ndarray, keep_score: np.ndarray, prunable: np.ndarray) -> list[tuple[int, int, float]]:
    """Order in which to drop channels by pairing, as ``(dropped, partner, strength)`` steps.

    Pass 1 pairs the prunable channels greedily (:func:`top_pairs`) and drops the member of
    each pair with the lower ``keep_score``; the next pass pairs the survivors, and so on until
    one channel is left. Within a pass, stronger pairs come first.
    """
    alive = np.asarray(prunable, dtype=np.int64)
    steps: list[tuple[int, int, float]] = []
    while len(alive) > 1:
        pairs = top_pairs(strength, alive)
        dropped = set()
        for i, j, value in pairs:
            drop, keep = (i, j) if keep_score[i] < keep_score[j] else (j, i)
            steps.append((drop, keep, value))
            dropped.add(drop)
        alive = np.array([c for c in alive if c not in dropped], dtype=np.int64)
    return steps


def linear_fit(target: np.ndarray, source: np.ndarray) -> tuple[float, float]:
    """Least-squares ``target ~ alpha * source + beta``.

    A constant ``source`` leaves ``alpha`` free: if it is non-zero, ``alpha = mean(target) / source``
    and ``beta = 0``, so the fold goes into the partner's weights, where a kxk consumer's zero padding
    treats it as the dropped channel's own weights (a bias would also be added at padded borders, where
    the dropped channel contributed nothing); a zero source gives ``alpha = 0, beta = mean(target)``."""
    target = np.asarray(target, dtype=np.float64).ravel()
    source = np.asarray(source, dtype=np.float64).ravel()
    centred = source - source.mean()
    variance = float(centred @ centred)
    if variance > 1e-12 * max(len(source), 1):
        alpha = float(centred @ (target - target.mean()) / variance)
    elif abs(source.mean()) > 1e-12:
        return float(target.mean() / source.mean()), 0.0
    else:
        alpha = 0.0
    return alpha, float(target.mean() - alpha * source.mean())

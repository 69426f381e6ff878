"""Reconstruction-aware channel selection (ThiNet, Luo et al. 2017; He et al. 2017), in numpy.

A consumer layer computes ``y = sum_c z_c`` over its input channels ``c``, where ``z_c`` is the part
of its pre-activation output that channel ``c`` contributes. Removing a set ``R`` of channels changes
the output by ``sum_{c in R} z_c``; its squared norm is ``1^T C[R, R] 1`` with the *contribution
Gram* ``C[a, b] = <z_a - mean, z_b - mean>`` (centred: a constant shift is the bias's to absorb,
and the refit that follows does). The greedy of ThiNet adds to ``R``, one at a time, the channel
that raises that error least, so channels that cancel each other or that carry nothing go first,
whatever their weights' norms say.
"""
from __future__ import annotations

import numpy as np


def contribution_gram(patch_gram: np.ndarray, kernel: np.ndarray, taps: int) -> np.ndarray:
    """``C`` over a consumer's input positions, from the centred Gram of its design rows.

    ``patch_gram``: ``(F, F)``, the centred ``X^T X`` of rows ``X`` with ``X @ kernel`` the
    pre-activation output; ``kernel``: ``(F, O)``; the ``F = taps * inputs`` columns are laid out
    tap-major (``(kh, kw, c_in)``, as a conv kernel reshapes), so column ``t * inputs + i`` belongs to
    input position ``i``. Returns ``(inputs, inputs)``.
    """
    features = patch_gram.shape[0]
    if patch_gram.shape != (features, features) or kernel.shape[0] != features or features % taps:
        raise ValueError(f"a Gram of shape {patch_gram.shape} does not fit a kernel of shape {kernel.shape} "
                         f"with {taps} taps")
    inputs = features // taps
    weighted = (kernel @ kernel.T) * patch_gram
    return weighted.reshape(taps, inputs, taps, inputs).sum(axis=(0, 2))


def group_gram(position_gram: np.ndarray, positions: np.ndarray, size: int) -> np.ndarray:
    """``C`` over a channel group: positions ``i`` with ``positions[i] = c >= 0`` hold channel ``c``
    (a channel read at several positions, e.g. through Flatten, sums their contributions)."""
    keep = positions >= 0
    indicator = np.zeros((int(keep.sum()), size))
    indicator[np.arange(int(keep.sum())), positions[keep]] = 1.0
    return indicator.T @ position_gram[np.ix_(keep, keep)] @ indicator


def greedy_removal(gram: np.ndarray, count: int, candidates: np.ndarray) -> list[int]:
    """The ``count`` channels of ``candidates`` to remove, in the order ThiNet's greedy picks them:
    each the one that raises ``1^T C[R, R] 1`` least given those already picked (ties: the earlier
    candidate)."""
    candidates = np.asarray(candidates, dtype=np.int64)
    if count > len(candidates):
        raise ValueError(f"cannot remove {count} of {len(candidates)} candidate channels")
    gram = 0.5 * (gram + gram.T)
    coupling = np.zeros(len(candidates))  # sum over picked r of C[r, c], for every candidate c
    diagonal = np.diag(gram)[candidates]
    free = np.ones(len(candidates), dtype=bool)
    picked = []
    for _ in range(count):
        increase = np.where(free, diagonal + 2.0 * coupling, np.inf)
        best = int(np.argmin(increase))
        free[best] = False
        picked.append(int(candidates[best]))
        coupling += gram[candidates[best], candidates]
    return picked


def removal_error(gram: np.ndarray, removed: list[int]) -> float:
    """``1^T C[R, R] 1``: the squared output change that removing ``removed`` causes."""
    index = np.asarray(removed, dtype=np.int64)
    return float(gram[np.ix_(index, index)].sum()) if len(index) else 0.0


def surgeon_order(moments: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Optimal-Brain-Surgeon greedy over a consumer's input channels, with a refit of the kept ones.

    ``moments``: ``(n, n)``, the (ridged, invertible) second moments of the channels; ``rows``: ``(n, F)``,
    each channel's weights in the consumer. Each step cuts the channel whose loss the refit of the others
    makes good best: with ``P = moments^-1`` and ``B`` the refit rows, cutting ``j`` costs
    ``|B_j|^2 / P_jj``, then ``B -= P_:j B_j / P_jj`` and ``P -= P_:j P_j: / P_jj`` (ties: the lower
    channel). Returns the channels in the order they are cut (all ``n``; the last is the one kept longest)
    and the cost of each cut, in that order (the last one's is not defined: ``nan``).

    The live channels are kept in the leading block of ``P`` and ``B`` (a cut channel swaps places with
    the last live one), so step ``k`` works on ``k`` rows, not ``n``: about a third of the work of
    updating the full matrices, with the same arithmetic per element."""
    return joint_surgeon_order([(moments, rows, 1.0)])


def joint_surgeon_order(consumers: list[tuple[np.ndarray, np.ndarray, float]]) -> tuple[np.ndarray, np.ndarray]:
    """:func:`surgeon_order` for channels that several consumers read (an EfficientNet expansion feeds its
    squeeze-and-excite conv and its projection): ``consumers`` holds each one's ``(moments, rows, weight)``
    over the same ``n`` channels, each refit on its own, and a cut costs the weighted sum of the consumers'
    costs (with weight ``1 / total`` each, the sum of their relative errors). Returns the order and the
    summed cost of each cut, as :func:`surgeon_order`."""
    if not consumers:
        raise ValueError("no consumer to order the channels by")
    size = len(consumers[0][1])
    states = []
    for moments, rows, weight in consumers:
        moments = np.asarray(moments, dtype=np.float64)
        refit = np.array(rows, dtype=np.float64)
        if len(refit) != size or moments.shape != (size, size):
            raise ValueError(f"moments of shape {moments.shape} do not fit {len(refit)} channel rows "
                             f"(of {size} channels)")
        states.append((np.linalg.inv(moments), refit, float(weight)))
    channel = np.arange(size)  # which channel each live row holds
    order, costs = [], []
    for live in range(size, 1, -1):
        cost = np.zeros(live)
        for precision, refit, weight in states:
            cost += weight * (refit[:live] ** 2).sum(axis=1) / np.maximum(np.diag(precision)[:live], 1e-300)
        lowest = np.flatnonzero(cost == cost.min())
        cut = int(lowest[np.argmin(channel[lowest])])
        order.append(int(channel[cut]))
        costs.append(float(cost[cut]))
        last = live - 1
        if cut != last:  # move the cut channel to the end of the live block
            channel[[cut, last]] = channel[[last, cut]]
        for precision, refit, _ in states:
            if cut != last:
                for matrix in (refit, precision):
                    matrix[[cut, last]] = matrix[[last, cut]]
                precision[:, [cut, last]] = precision[:, [last, cut]]
            column, pivot = precision[:last, last].copy(), precision[last, last]
            refit[:last] -= np.outer(column, refit[last]) / pivot
            block = precision[:last, :last]
            np.subtract(block, np.multiply.outer(column, column / pivot), out=block)
    order.append(int(channel[0]))
    costs.append(float("nan"))
    return np.array(order), np.array(costs)

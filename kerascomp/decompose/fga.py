"""Filter Group Approximation (Peng et al., "Extreme Network Compression via Filter Group
Approximation", ECCV 2018), closed form by group-wise SVD.

A conv kernel ``W[kh, kw, C, N]`` (HWIO) is split along its C input channels into ``g`` equal
groups. Because ``W * x = sum_j W_j * x_j``, each group's slice reshaped to the matrix
``M_j (kh*kw*C/g, N)`` is approximated by a rank-r SVD ``M_j ~ A_j B_j``:

* ``A_j`` (kh*kw*C/g, r) are the r filters of group j of a grouped kxk conv (``groups=g``);
* ``B_j`` (r, N) are rows of a following 1x1 conv.

The singular values are split evenly (``A = U sqrt(S)``, ``B = sqrt(S) V^T``) so both factors
have comparable scale, which keeps the decomposed net well conditioned for finetuning.
At ``r = min(kh*kw*C/g, N)`` the factorisation is exact.
"""
from __future__ import annotations

import numpy as np


def _check_kernel(kernel: np.ndarray, groups: int) -> tuple[int, int, int, int]:
    if kernel.ndim != 4:
        raise ValueError(f"expected an HWIO conv kernel of rank 4, got shape {kernel.shape}")
    kh, kw, channels, filters = kernel.shape
    if groups < 1 or channels % groups:
        raise ValueError(f"groups={groups} must divide the {channels} input channels")
    return kh, kw, channels, filters


def group_matrices(kernel: np.ndarray, groups: int) -> np.ndarray:
    """The stacked group matrices ``M_j``, shape ``(groups, kh*kw*C/g, N)``."""
    kh, kw, channels, filters = _check_kernel(kernel, groups)
    per_group = channels // groups
    split = kernel.reshape(kh, kw, groups, per_group, filters).transpose(2, 0, 1, 3, 4)
    return split.reshape(groups, kh * kw * per_group, filters)


def max_rank(kernel_shape: tuple[int, ...], groups: int) -> int:
    """The rank at which group-wise SVD is exact: ``min(kh*kw*C/g, N)``."""
    kh, kw, channels, filters = kernel_shape
    return min(kh * kw * channels // groups, filters)


def _gram(matrices: np.ndarray) -> tuple[np.ndarray, bool]:
    """Gram matrices on the smaller side of each ``M_j``; ``True`` if that is the column side (``M^T M``)."""
    if matrices.shape[1] >= matrices.shape[2]:
        return np.swapaxes(matrices, 1, 2) @ matrices, True
    return matrices @ np.swapaxes(matrices, 1, 2), False


def group_singular_values(kernel: np.ndarray, groups: int) -> np.ndarray:
    """Singular values of every group matrix, shape ``(groups, max_rank)``, descending.

    Computed as square roots of the eigenvalues of the smaller Gram matrix, which is 5-10x
    faster than an SVD of the tall matrix (this is the hot loop of the budget allocation).
    """
    gram, _ = _gram(group_matrices(np.asarray(kernel, dtype=np.float64), groups))
    eigenvalues = np.linalg.eigvalsh(gram)[:, ::-1]
    return np.sqrt(np.clip(eigenvalues, 0.0, None))


def relative_error_curve(kernel: np.ndarray, groups: int) -> np.ndarray:
    """``e[r] = ||W - W_r||_F^2 / ||W||_F^2`` for r = 0..max_rank (same rank r in every group)."""
    energy = group_singular_values(kernel, groups) ** 2
    total = energy.sum()
    if total == 0.0:
        return np.zeros(energy.shape[1] + 1)
    tail = np.concatenate([np.cumsum(energy[:, ::-1], axis=1)[:, ::-1], np.zeros((groups, 1))], axis=1)
    return tail.sum(axis=0) / total


def fga_factors(kernel: np.ndarray, groups: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Factor ``kernel`` into a grouped conv kernel and a 1x1 conv kernel.

    Returns ``(grouped, pointwise)`` with shapes ``(kh, kw, C/g, g*rank)`` and ``(1, 1, g*rank, N)``,
    in Keras' grouped-conv layout: outputs ``j*rank:(j+1)*rank`` of the grouped conv read input group j.
    """
    kh, kw, channels, filters = _check_kernel(kernel, groups)
    if not 1 <= rank <= max_rank(kernel.shape, groups):
        raise ValueError(f"rank={rank} must be in [1, {max_rank(kernel.shape, groups)}] for kernel {kernel.shape}, groups={groups}")
    matrices = group_matrices(np.asarray(kernel, dtype=np.float64), groups)
    # Truncated SVD through the smaller Gram matrix: its top-r eigenvectors are the top-r right
    # (or left) singular vectors; the other factor is M projected on them. A @ B is then the
    # orthogonal projection of M on its top-r singular subspace, exact at full rank.
    gram, columns = _gram(matrices)
    eigenvalues, vectors = np.linalg.eigh(gram)
    basis = vectors[:, :, ::-1][:, :, :rank]                          # (g, side, r)
    singular = np.sqrt(np.clip(eigenvalues[:, ::-1][:, :rank], 0.0, None))
    safe = np.where(singular > singular[:, :1] * 1e-12, singular, np.inf)
    if columns:
        right = np.swapaxes(basis, 1, 2) * np.sqrt(singular)[:, :, None]           # (g, r, N)
        left = matrices @ basis / np.sqrt(safe)[:, None, :]                         # (g, kh*kw*C/g, r)
    else:
        left = basis * np.sqrt(singular)[:, None, :]
        right = np.swapaxes(basis, 1, 2) @ matrices / np.sqrt(safe)[:, :, None]
    per_group = channels // groups
    grouped = left.reshape(groups, kh, kw, per_group, rank).transpose(1, 2, 3, 0, 4)
    grouped = grouped.reshape(kh, kw, per_group, groups * rank)
    pointwise = right.reshape(1, 1, groups * rank, filters)
    return grouped.astype(kernel.dtype), pointwise.astype(kernel.dtype)


def reconstruct(grouped: np.ndarray, pointwise: np.ndarray, groups: int) -> np.ndarray:
    """The dense kernel ``W[kh, kw, C, N]`` equivalent to a grouped conv followed by a 1x1 conv."""
    kh, kw, per_group, width = grouped.shape
    rank = width // groups
    left = grouped.reshape(kh, kw, per_group, groups, rank)
    right = pointwise.reshape(groups, rank, -1)
    dense = np.einsum("hwcgr,grn->hwgcn", left, right, optimize=True)
    return dense.reshape(kh, kw, groups * per_group, -1)


def fga_macs(kernel_shape: tuple[int, ...], groups: int, rank: int, output_pixels: int) -> int:
    """MACs of the grouped kxk conv plus the 1x1 conv: ``pixels * g*r * (kh*kw*C/g + N)``."""
    kh, kw, channels, filters = kernel_shape
    return int(output_pixels * groups * rank * (kh * kw * channels // groups + filters))


def fga_params(kernel_shape: tuple[int, ...], groups: int, rank: int, use_bias: bool) -> int:
    kh, kw, channels, filters = kernel_shape
    return int(groups * rank * (kh * kw * channels // groups + filters) + (filters if use_bias else 0))


def ridge_refit(features: np.ndarray, targets: np.ndarray, ridge: float = 1e-3,
                fit_bias: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Least-squares fit ``targets ~ features @ weights + bias`` with a relative ridge penalty.

    Used to refit FGA's 1x1 conv on sampled activations (response reconstruction): ``features``
    are the grouped conv's outputs ``(samples, g*r)``, ``targets`` the original layer's
    pre-activation outputs ``(samples, N)``. ``ridge`` is scaled by the mean feature energy.
    Without ``fit_bias`` the returned bias is zero (for convs followed by BatchNormalization).
    """
    features = np.asarray(features, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.float64)
    mean_features = features.mean(axis=0) if fit_bias else np.zeros(features.shape[1])
    mean_targets = targets.mean(axis=0) if fit_bias else np.zeros(targets.shape[1])
    centred = features - mean_features
    gram = centred.T @ centred
    penalty = ridge * max(np.trace(gram) / max(gram.shape[0], 1), 1e-12)
    weights = np.linalg.solve(gram + penalty * np.eye(gram.shape[0]), centred.T @ (targets - mean_targets))
    bias = mean_targets - mean_features @ weights
    return weights, bias

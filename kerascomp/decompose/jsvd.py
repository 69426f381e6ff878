"""Spatial SVD and joint SVD across repeated convs (Chen et al., "Joint Matrix Decomposition for
Deep Convolutional Neural Networks Compression", arXiv 2107.04386).

A conv kernel ``W[H, W, I, O]`` (HWIO) is reshaped to the matrix ``M = [H*I, W*O]``
(``transpose(0, 2, 1, 3)``). A rank-r factorisation ``M ~ A B`` with ``A [H*I, r]`` and
``B [r, W*O]`` is a (H x 1) conv I -> r followed by a (1 x W) conv r -> O:
``y[o] = sum_{h,w,i} W[h,w,i,o] x[h,w,i] = sum_k B[k,(w,o)] (sum_{h,i} A[(h,i),k] x[h,w,i])``.

For n convs of the same shape:

* ``svd``: every ``M_i ~ A_i B_i`` on its own;
* ``left`` (LJSVD): one shared ``A`` for all, from the SVD of ``[M_1 ... M_n]`` stacked horizontally;
* ``right`` (RJSVD): one shared ``B``, from the SVD of ``[M_1; ...; M_n]`` stacked vertically;
* ``bi`` (Bi-JSVD): ``M_i ~ A B_i + A_i B``, by alternating LJSVD and RJSVD on each other's residual.

Singular values are split evenly between the factors (``U sqrt(S)``, ``sqrt(S) V^T``) so both
convs have comparable scale for finetuning. Nothing here imports Keras.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

VARIANTS = ("svd", "left", "right", "bi")


def _check_kernel(kernel: np.ndarray) -> tuple[int, int, int, int]:
    if np.ndim(kernel) != 4:
        raise ValueError(f"expected an HWIO conv kernel of rank 4, got shape {np.shape(kernel)}")
    return tuple(int(d) for d in np.shape(kernel))  # type: ignore[return-value]


def spatial_matrix(kernel: np.ndarray) -> np.ndarray:
    """``W[H, W, I, O]`` -> ``M[H*I, W*O]``."""
    kh, kw, cin, cout = _check_kernel(kernel)
    return np.asarray(kernel).transpose(0, 2, 1, 3).reshape(kh * cin, kw * cout)


def spatial_kernel(matrix: np.ndarray, kernel_shape: tuple[int, ...]) -> np.ndarray:
    """The inverse of :func:`spatial_matrix`."""
    kh, kw, cin, cout = kernel_shape
    return np.asarray(matrix).reshape(kh, cin, kw, cout).transpose(0, 2, 1, 3)


def factor_kernels(left: np.ndarray, right: np.ndarray, kernel_shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``A [H*I, r]`` and ``B [r, W*O]`` as the kernels of a (H x 1) conv and a (1 x W) conv."""
    kh, kw, cin, cout = kernel_shape
    rank = left.shape[1]
    vertical = left.reshape(kh, cin, rank)[:, None, :, :]                    # (H, 1, I, r)
    horizontal = right.reshape(rank, kw, cout).transpose(1, 0, 2)[None]      # (1, W, r, O)
    return vertical, horizontal


def reconstruct(vertical: np.ndarray, horizontal: np.ndarray) -> np.ndarray:
    """The dense kernel equivalent to the (H x 1) conv ``vertical`` followed by the (1 x W) conv ``horizontal``."""
    return np.einsum("hir,wro->hwio", vertical[:, 0], horizontal[0], optimize=True)


def full_rank(kernel_shape: tuple[int, ...], n: int = 1, variant: str = "svd") -> int:
    """The rank at which a variant is exact (for ``bi``, the total of both parts)."""
    kh, kw, cin, cout = kernel_shape
    rows, cols = kh * cin, kw * cout
    if variant == "left":
        return min(rows, n * cols)
    if variant == "right":
        return min(n * rows, cols)
    if variant == "bi":
        return min(rows, n * cols) + min(n * rows, cols)
    return min(rows, cols)


def truncated(matrix: np.ndarray, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Best rank-``rank`` factors ``(A, B)`` of ``matrix``, singular values split evenly."""
    u, s, vt = np.linalg.svd(np.asarray(matrix, dtype=np.float64), full_matrices=False)
    rank = min(rank, len(s))
    root = np.sqrt(s[:rank])
    return u[:, :rank] * root, root[:, None] * vt[:rank]


def left_joint(matrices: list[np.ndarray], rank: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """LJSVD: shared ``A`` and per-matrix ``B_i`` from the SVD of the horizontal stack."""
    shared, stacked = truncated(np.concatenate(matrices, axis=1), rank)
    return shared, np.split(stacked, len(matrices), axis=1)


def right_joint(matrices: list[np.ndarray], rank: int) -> tuple[list[np.ndarray], np.ndarray]:
    """RJSVD: per-matrix ``A_i`` and shared ``B`` from the SVD of the vertical stack."""
    stacked, shared = truncated(np.concatenate(matrices, axis=0), rank)
    return np.split(stacked, len(matrices), axis=0), shared


@dataclass
class BiJoint:
    """``M_i ~ shared_left @ lefts[i] + rights[i] @ shared_right``."""

    shared_left: np.ndarray
    lefts: list[np.ndarray]
    rights: list[np.ndarray]
    shared_right: np.ndarray
    errors: list[float]

    def approximations(self) -> list[np.ndarray]:
        return [self.shared_left @ b + a @ self.shared_right for b, a in zip(self.lefts, self.rights)]


def bi_joint(matrices: list[np.ndarray], rank_left: int, rank_right: int, iterations: int = 10) -> BiJoint:
    """Bi-JSVD: alternate an LJSVD of the residual of the RJSVD part and vice versa.

    Each step is the optimal solve of its part given the other, so the total error never rises;
    ``errors`` records it (squared, summed over matrices) after each iteration.
    """
    if rank_left < 1 or rank_right < 1:
        raise ValueError(f"bi_joint needs both ranks >= 1, got {rank_left} and {rank_right}")
    matrices = [np.asarray(m, dtype=np.float64) for m in matrices]
    rights = [np.zeros((m.shape[0], rank_right)) for m in matrices]
    shared_right = np.zeros((rank_right, matrices[0].shape[1]))
    errors = []
    for _ in range(max(1, iterations)):
        shared_left, lefts = left_joint([m - a @ shared_right for m, a in zip(matrices, rights)], rank_left)
        rights, shared_right = right_joint([m - shared_left @ b for m, b in zip(matrices, lefts)], rank_right)
        errors.append(float(sum(np.sum((m - shared_left @ b - a @ shared_right) ** 2)
                                for m, b, a in zip(matrices, lefts, rights))))
        if len(errors) > 1 and errors[-2] - errors[-1] <= 1e-9 * max(errors[-2], 1e-30):
            break
    return BiJoint(shared_left, lefts, rights, shared_right, errors)


def split_bi_rank(rank: int) -> tuple[int, int]:
    """How a Bi-JSVD rank is shared between its left and right parts: evenly, left first."""
    return (rank + 1) // 2, rank // 2


def error_curve(matrices: list[np.ndarray], variant: str) -> np.ndarray:
    """``e[r] = sum_i ||M_i - approx_i||^2 / sum_i ||M_i||^2`` for r = 0..full rank.

    Exact for ``svd`` (the same rank r for every matrix), ``left`` and ``right``. ``bi`` has no
    closed form; its curve is the LJSVD error of its left part alone, ``left[ceil(r / 2)]``, an upper
    bound: Bi-JSVD starts from that LJSVD and every later step lowers the error.
    """
    matrices = [np.asarray(m, dtype=np.float64) for m in matrices]
    total = sum(float(np.sum(m ** 2)) for m in matrices)
    if variant == "bi":
        left = error_curve(matrices, "left")
        ranks = np.arange(2 * len(left) - 1)
        return left[np.minimum((ranks + 1) // 2, len(left) - 1)]
    if variant == "svd":
        spectra = [np.linalg.svd(m, compute_uv=False) ** 2 for m in matrices]
    elif variant == "left":
        spectra = [np.linalg.svd(np.concatenate(matrices, axis=1), compute_uv=False) ** 2]
    elif variant == "right":
        spectra = [np.linalg.svd(np.concatenate(matrices, axis=0), compute_uv=False) ** 2]
    else:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if total == 0.0:
        return np.zeros(max(len(s) for s in spectra) + 1)
    tails = [np.concatenate([np.cumsum(s[::-1])[::-1], [0.0]]) for s in spectra]
    return sum(tails) / total


def params(kernel_shape: tuple[int, ...], rank: int, n: int = 1, variant: str = "svd") -> int:
    """Weights of the factor convs of ``n`` same-shaped convs at ``rank`` (no biases)."""
    kh, kw, cin, cout = kernel_shape
    rows, cols = kh * cin, kw * cout
    if variant == "svd":
        return n * rank * (rows + cols)
    if variant == "left":
        return rank * (rows + n * cols)
    if variant == "right":
        return rank * (n * rows + cols)
    if variant == "bi":
        left, right = split_bi_rank(rank)
        return left * (rows + n * cols) + right * (n * rows + cols)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")


def macs(kernel_shape: tuple[int, ...], rank: int, vertical_pixels: int, output_pixels: int) -> int:
    """MACs of one call: the (H x 1) conv at ``vertical_pixels`` outputs plus the (1 x W) conv at ``output_pixels``."""
    kh, kw, cin, cout = kernel_shape
    return int(rank * (vertical_pixels * kh * cin + output_pixels * kw * cout))


def matched_rank(kernel_shape: tuple[int, ...], n: int, svd_rank: int, variant: str) -> int:
    """The largest joint rank whose params do not exceed per-layer SVD at ``svd_rank`` on the same n convs.

    For square 3x3 convs (I = O) this is ``floor(2n / (n + 1) * svd_rank)``, the paper's joint rate.
    """
    budget = params(kernel_shape, svd_rank, n, "svd")
    rank = 0
    while rank < full_rank(kernel_shape, n, variant) and params(kernel_shape, rank + 1, n, variant) <= budget:
        rank += 1
    return max(rank, 1)


def decompose(matrices: list[np.ndarray], rank: int, variant: str, iterations: int = 10):
    """Factors of ``matrices`` at ``rank``: a list of ``(A_i, B_i)`` for ``svd``, else the joint result."""
    if variant == "svd":
        return [truncated(m, rank) for m in matrices]
    if variant == "left":
        return left_joint(matrices, rank)
    if variant == "right":
        return right_joint(matrices, rank)
    if variant == "bi":
        return bi_joint(matrices, *split_bi_rank(rank), iterations=iterations)
    raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")

"""Tucker-2 decomposition of a conv kernel over its channel modes (tensorly's ``partial_tucker``).

``W[k, k, C, N] ~ core[k, k, r_in, r_out] x_2 A[C, r_in] x_3 B[N, r_out]`` gives three convs:
1x1 ``C -> r_in`` (kernel ``A``), kxk ``r_in -> r_out`` (the core, with the original stride,
padding and dilation) and 1x1 ``r_out -> N`` (kernel ``B^T``, with the bias), Kim et al. 2016.
"""
from __future__ import annotations

import numpy as np


def tucker2(kernel: np.ndarray, in_rank: int, out_rank: int, iterations: int = 30) -> tuple[np.ndarray, ...]:
    """(first 1x1 kernel, core kxk kernel, last 1x1 kernel) of the rank-(in, out) Tucker-2 (HOOI)."""
    import tensorly
    from tensorly.decomposition import partial_tucker

    height, width, channels, filters = kernel.shape
    if not (1 <= in_rank <= channels and 1 <= out_rank <= filters):
        raise ValueError(f"Tucker-2 ranks ({in_rank}, {out_rank}) must lie in [1, {channels}] x [1, {filters}]")
    weights = kernel.astype(np.float64)
    # HOOI from the truncated HOSVD, as tensorly's init="svd", but with each mode's leading singular vectors
    # taken from the eigenvectors of its C x C Gram matrix: tensorly's SVD of the whole unfolding (C x k*k*N)
    # was 4 of the 5 s of a 3x3 256->256 conv, and most of Tucker's time on ResNet50
    init = [_leading_vectors(_unfolding(weights, 2), in_rank), _leading_vectors(_unfolding(weights, 3), out_rank)]
    with tensorly.backend_context("numpy"):
        (core, (first, last)), _ = partial_tucker(weights, rank=[in_rank, out_rank], modes=[2, 3],
                                                  n_iter_max=iterations, init=init, random_state=0)
    dtype = kernel.dtype
    return (first.reshape(1, 1, channels, in_rank).astype(dtype), core.astype(dtype),
            last.T.reshape(1, 1, out_rank, filters).astype(dtype))


def _unfolding(kernel: np.ndarray, mode: int) -> np.ndarray:
    return np.moveaxis(kernel, mode, 0).reshape(kernel.shape[mode], -1)


def _gram_eigen(unfolded: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (largest first) and eigenvectors of the smaller Gram matrix of ``unfolded``: the squared
    singular values and the left (rows <= cols) or right singular vectors, from a BLAS product and a small
    ``eigh`` instead of an SVD of the wide matrix (about 10x faster on a 512 x 4608 unfolding, energies equal to
    1e-16 of the total; a 1x1 conv's tall 1152 x 192 unfolding takes the 192 x 192 Gram, 150x faster than the
    1152 x 1152 one)."""
    small = unfolded @ unfolded.T if unfolded.shape[0] <= unfolded.shape[1] else unfolded.T @ unfolded
    values, vectors = np.linalg.eigh(small)
    return np.maximum(values[::-1], 0.0), vectors[:, ::-1]


def _energies(unfolded: np.ndarray) -> np.ndarray:
    """The squared singular values, one per row (a tall unfolding's rows past its column count: zero)."""
    values = _gram_eigen(unfolded)[0]
    return np.concatenate([values, np.zeros(unfolded.shape[0] - len(values))])


def _leading_vectors(unfolded: np.ndarray, rank: int) -> np.ndarray:
    rows, cols = unfolded.shape
    if rows <= cols or rank > cols:  # the row Gram's eigenvectors are the left singular vectors (all rows of them)
        vectors = np.linalg.eigh(unfolded @ unfolded.T)[1][:, ::-1] if rows > cols else _gram_eigen(unfolded)[1]
        return np.ascontiguousarray(vectors[:, :rank])
    # tall: orthonormalising X V (columns s_i u_i, mutually orthogonal) gives u_i up to sign, and orthonormal
    # columns where s_i is zero, which dividing by s_i would not
    return np.linalg.qr(unfolded @ _gram_eigen(unfolded)[1][:, :rank])[0]


def compose(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The kxk kernel the three factors compute (for checks)."""
    return np.einsum("ca,hwab,bn->hwcn", first[0, 0], core, last[0, 0], optimize=True)


def truncation_errors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mode, the squared Frobenius norm the truncated HOSVD drops at each rank (index r: keep r,
    for r = 0..that mode's size), relative to ``||W||^2``; their sum bounds the Tucker-2 error (the HOOI
    result is at least as good)."""
    total = float(np.sum(kernel.astype(np.float64) ** 2)) or 1.0
    drops = []
    for mode in (2, 3):
        # a mode wider than the rest of the kernel (3 filters of 3x3 over 32 channels: 27 < 32) has fewer
        # singular values than ranks; the others are zero: they drop nothing
        energy = _energies(_unfolding(kernel.astype(np.float64), mode))
        tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])  # tail[r] = energy beyond the first r
        drops.append(tail / total)
    return drops[0], drops[1]

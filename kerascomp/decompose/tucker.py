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
    with tensorly.backend_context("numpy"):
        (core, (first, last)), _ = partial_tucker(kernel.astype(np.float64), rank=[in_rank, out_rank], modes=[2, 3],
                                                  n_iter_max=iterations, init="svd", random_state=0)
    dtype = kernel.dtype
    return (first.reshape(1, 1, channels, in_rank).astype(dtype), core.astype(dtype),
            last.T.reshape(1, 1, out_rank, filters).astype(dtype))


def compose(first: np.ndarray, core: np.ndarray, last: np.ndarray) -> np.ndarray:
    """The kxk kernel the three factors compute (for checks)."""
    return np.einsum("ca,hwab,bn->hwcn", first[0, 0], core, last[0, 0])


def truncation_errors(kernel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per mode, the squared Frobenius norm the truncated HOSVD drops at each rank (index r: keep r,
    for r = 0..that mode's size), relative to ``||W||^2``; their sum bounds the Tucker-2 error (the HOOI
    result is at least as good)."""
    total = float(np.sum(kernel.astype(np.float64) ** 2)) or 1.0
    drops = []
    for mode in (2, 3):
        unfolded = np.moveaxis(kernel.astype(np.float64), mode, 0).reshape(kernel.shape[mode], -1)
        energy = np.linalg.svd(unfolded, compute_uv=False) ** 2
        # a mode wider than the rest of the kernel (3 filters of 3x3 over 32 channels: 27 < 32) has fewer
        # singular values than ranks; the ranks past them drop nothing
        energy = np.pad(energy, (0, kernel.shape[mode] - len(energy)))
        tail = np.concatenate([np.cumsum(energy[::-1])[::-1], [0.0]])  # tail[r] = energy beyond the first r
        drops.append(tail / total)
    return drops[0], drops[1]

"""Data-whitened kernels: factor a conv so that its *output* error on the data is least, not its kernel error.

A conv's output on inputs ``x`` (channels) is ``K^T x`` at every tap; a kernel change ``dK`` changes it
by ``dK^T x``, of mean squared size ``trace(dK^T S dK)`` with ``S = E[x x^T]`` the input channels' second
moments. With ``T^T T = S`` (``T`` upper triangular, a Cholesky factor), that is ``|T dK|^2``: factoring
the *whitened* kernel ``T K`` by any method's truncation minimises the output error, and multiplying the
factor that reads the input by ``T^-1`` gives factors of ``K`` itself. Taps are taken as uncorrelated
(one ``S`` for every tap of a kxk kernel). A grouped factor (FGA) needs ``T`` block-diagonal by input
group, one block per group, so that the factors stay grouped.
"""
from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

RIDGE = 1e-2  # added to a covariance before whitening, relative to its mean diagonal (bounds T^-1)


def whitener(covariance: np.ndarray, groups: int = 1, ridge: float = RIDGE) -> list[np.ndarray]:
    """Per input-channel group, the upper-triangular ``T`` with ``T^T T`` the group's ridged block of
    ``covariance``."""
    size = covariance.shape[0] // groups
    blocks = []
    for group in range(groups):
        block = np.asarray(covariance[group * size:(group + 1) * size, group * size:(group + 1) * size], np.float64)
        penalty = ridge * max(float(np.trace(block)) / size, 1e-30)
        blocks.append(np.linalg.cholesky(block + penalty * np.eye(size)).T)
    return blocks


def whiten_kernel(kernel: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """``kernel`` (kh, kw, C, N) with each input-channel group's slice multiplied by its block ``T``."""
    size = kernel.shape[2] // len(blocks)
    # block @ each tap's (C, N) slice: a batched BLAS product (np.einsum's loop took 18 s over ResNet50's convs)
    parts = [np.matmul(block, np.asarray(kernel[:, :, g * size:(g + 1) * size, :], np.float64))
             for g, block in enumerate(blocks)]
    return np.concatenate(parts, axis=2)


def unwhiten_factor(kernel: np.ndarray, blocks: list[np.ndarray]) -> np.ndarray:
    """The inverse step on the factor that reads the input: a kernel (kh, kw, C/g, g*r) whose outputs
    ``j*r:(j+1)*r`` read input group ``j`` gets ``T_j^-1`` on its input axis (same dtype), by a triangular solve
    (``np.linalg.inv`` of a 1152-channel ``T`` took 0.1 s per layer, most of EfficientNetB0's whitening)."""
    height, width, size, columns = kernel.shape
    rank = columns // len(blocks)
    parts = []
    for g, block in enumerate(blocks):
        part = np.moveaxis(np.asarray(kernel[:, :, :, g * rank:(g + 1) * rank], np.float64), 2, 0)
        solved = solve_triangular(block, part.reshape(size, -1), lower=False)
        parts.append(np.moveaxis(solved.reshape(size, height, width, rank), 0, 2))
    return np.concatenate(parts, axis=3).astype(kernel.dtype)

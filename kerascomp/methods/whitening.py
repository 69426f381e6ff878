"""The whitening step that factoring methods share (``whiten`` of svd, tucker and auto).

With ``data``, :func:`input_moments` measures the second moments of each named conv's input channels;
a method factors :func:`whitened_spec` of the conv instead of the conv (the maths is in
:mod:`kerascomp.decompose.whitening`) and then :func:`unwhiten_layer` on the factor that reads the
input, so that the factors approximate the conv's *output* on the data. The error a method reports
and allocates by is then the whitened truncation error: the estimated relative output error.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
from tqdm.auto import tqdm

from kerascomp.decompose.whitening import unwhiten_factor, whiten_kernel, whitener
from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph, LayerSpec
from kerascomp.graph.keras_io import sample_node_inputs, structure_key
from kerascomp.methods.base import fingerprint

SAMPLE_BYTES = 512 * 2 ** 20  # activations sampled at once (a 224x224 model's early layers hold hundreds of MB)
MOMENT_ROWS = 200_000  # activation rows (pixels) per conv its input covariance is estimated on


def whitening_on(option, data, method: str) -> bool:
    """``whiten`` resolved: ``"auto"`` whitens when there is ``data``; ``True`` without data is refused
    (there is nothing to whiten by)."""
    if option is True and data is None:
        raise InvalidArgumentError(f"method={method!r}: whiten=True needs data= (the input covariances are measured "
                                   "on it); pass data, or whiten='auto' to whiten only when data is given.")
    return data is not None and option is not False


def input_moments(graph: Graph, shapes: dict, names: list[str], data, max_samples: int, covariance: bool = True,
                  verbose: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    """For each named conv (called once), ``(energy, covariance)`` of its input channels on up to
    ``max_samples`` images of ``data``: the mean squared activation per channel and, with ``covariance``,
    the channels' second-moment matrix (on at most ``MOMENT_ROWS`` pixels, drawn with a fixed seed).

    The moments of the last few (model, data) pairs are kept: a method that runs several times on the same
    model (at several tile steps, with and without its 1x1 convs) measures each conv once."""
    key = _moments_key(graph, data, max_samples, covariance)
    known = _MOMENTS.pop(key, {})
    _MOMENTS[key] = known  # the most recent last
    while len(_MOMENTS) > _MOMENTS_KEPT:
        _MOMENTS.pop(next(iter(_MOMENTS)))
    missing = [name for name in names if name not in known]
    if missing:
        for name, measured in _measure_moments(graph, shapes, missing, data, max_samples, covariance, verbose).items():
            for array in measured:
                if array is not None:
                    array.setflags(write=False)  # shared between calls: a caller must not change it in place
            known[name] = measured
    return {name: known[name] for name in names}


_MOMENTS: dict[str, dict] = {}
_MOMENTS_KEPT = 2


def _moments_key(graph: Graph, data, max_samples: int, covariance: bool) -> str:
    """What the moments depend on: the model (wiring, layers and weights) and the rows of data used."""
    digest = hashlib.sha256(f"{fingerprint(graph)}:{structure_key(graph)}:{max_samples}:{covariance}".encode())
    for array in data if isinstance(data, list) else [data]:
        rows = np.ascontiguousarray(np.asarray(array)[:max_samples])
        digest.update(f"{rows.shape}:{rows.dtype}".encode())
        digest.update(rows.tobytes())
    return digest.hexdigest()


def _measure_moments(graph: Graph, shapes: dict, names: list[str], data, max_samples: int, covariance: bool,
                     verbose: int) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
    # convs that read the same tensor (an Inception block's branches) share one sample and one set of moments
    readers: dict[tuple[str, int], list[str]] = {}
    for name in names:
        ref = graph.nodes_of(name)[0].input_refs()[0]
        readers.setdefault((ref.node, ref.index), []).append(name)
    chunks, chunk, held = [], [], 0
    for (node, index), convs in readers.items():
        size = max_samples * 4 * int(np.prod(shapes[node][index][1:]))
        if chunk and held + size > SAMPLE_BYTES:
            chunks.append(chunk)
            chunk, held = [], 0
        chunk.append(convs)
        held += size
    chunks += [chunk] if chunk else []
    found = {}
    for chunk in tqdm(chunks, desc="input moments", disable=not verbose):
        nodes = [graph.nodes_of(convs[0])[0].name for convs in chunk]
        sampled = sample_node_inputs(graph, nodes, data, max_samples)
        for convs, node in zip(chunk, nodes):
            values = np.asarray(sampled.pop(node), np.float32)
            values = values.reshape(-1, values.shape[-1])
            if not covariance:
                measured = (np.einsum("rc,rc->c", values, values, dtype=np.float64) / max(len(values), 1), None)
            else:
                if len(values) > MOMENT_ROWS:
                    values = values[np.random.default_rng(0).choice(len(values), MOMENT_ROWS, replace=False)]
                values = values.astype(np.float64)
                moments = values.T @ values / max(len(values), 1)
                measured = (np.diag(moments).copy(), moments)
            found.update((name, measured) for name in convs)
    return found


def whitened_spec(spec: LayerSpec, blocks: list[np.ndarray] | None) -> LayerSpec:
    """``spec`` with its kernel whitened (in its own dtype); ``spec`` itself when ``blocks`` is ``None``."""
    if blocks is None:
        return spec
    kernel = spec.weights[0]
    return replace(spec, weights=[whiten_kernel(kernel, blocks).astype(kernel.dtype)] + list(spec.weights[1:]))


def unwhiten_layer(graph: Graph, name: str, blocks: list[np.ndarray] | None) -> None:
    """Give the factor ``name`` (the one that reads the conv's input) the inverse whitening, in place."""
    if blocks is None:
        return
    spec = graph.layers[name]
    weights = list(spec.weights)
    weights[0] = unwhiten_factor(weights[0], blocks)
    graph.layers[name] = replace(spec, weights=weights)


def conv_whitener(moments: dict, name: str, groups: int = 1) -> list[np.ndarray] | None:
    """The whitening blocks of conv ``name`` from :func:`input_moments` (``None``: not measured)."""
    covariance = moments.get(name, (None, None))[1]
    return None if covariance is None else whitener(covariance, groups)

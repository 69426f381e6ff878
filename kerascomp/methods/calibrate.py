"""Re-estimate BatchNormalization statistics of a compressed graph on sample inputs.

Removing or approximating channels shifts the distribution every later BN sees, so its stored
moving mean and variance go stale; re-estimating them on a few hundred inputs recovers much of
the accuracy lost before any finetuning (the "BN recalibration" used throughout the pruning
literature, e.g. Li et al., "EagleEye", ECCV 2020).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from kerascomp.errors import InvalidArgumentError
from kerascomp.graph.ir import Graph
from kerascomp.graph.keras_io import read_model, write_model


def recalibrate_batchnorm(graph: Graph, data: Any, max_samples: int = 256) -> tuple[Graph, int]:
    """A copy of ``graph`` whose BN moving statistics are the statistics of ``data`` (one batch).

    Every BN gets ``momentum=0`` and the model runs once in training mode on up to
    ``max_samples`` inputs, so each BN stores the mean and variance of its inputs as computed
    through the already re-normalised layers before it. Returns the graph and the number of BN layers.
    """
    batchnorms = [name for name, spec in graph.layers.items() if spec.class_name == "BatchNormalization"]
    if not batchnorms or data is None:
        return graph.copy(), 0
    probe = graph.copy()
    for name in batchnorms:
        probe.layers[name].config = {**probe.layers[name].config, "momentum": 0.0}
    model = write_model(probe)
    inputs = [np.asarray(a[:max_samples]) for a in data] if isinstance(data, list) else np.asarray(data[:max_samples])
    model(inputs, training=True)
    measured = read_model(model, inline_nested=False)
    result = graph.copy()
    for name in batchnorms:
        result.layers[name].weights = [np.array(w) for w in measured.layers[name].weights]
    return result, len(batchnorms)


def check_recalibrate(recalibrate: bool | str, data: Any) -> None:
    """Refuse ``recalibrate=True`` without ``data`` before any work is done."""
    if recalibrate is True and data is None:
        raise InvalidArgumentError("recalibrate=True needs data= (inputs to re-estimate BatchNormalization on).")


def recalibrate_if_asked(graph: Graph, data: Any, recalibrate: bool | str, max_samples: int,
                         changed: bool = True) -> tuple[Graph, int]:
    """BN recalibration as every method's ``recalibrate`` option asks: ``True`` (needs ``data``), ``False``, or
    ``"auto"`` (when ``data`` is given); only when the method ``changed`` something. Returns the graph and the
    number of BatchNormalization layers re-estimated."""
    check_recalibrate(recalibrate, data)
    if changed and (recalibrate is True or (recalibrate == "auto" and data is not None)):
        return recalibrate_batchnorm(graph, data, max_samples)
    return graph, 0

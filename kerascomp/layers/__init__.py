"""Keras layers (and the regulariser) kerascomp inserts into compressed models, built for either Keras flavour.

``layers_for(keras)`` returns the layer classes for a Keras package (``keras`` or ``tf_keras``);
they are registered as serialisable under the ``kerascomp`` package, so ``.keras`` files load
after ``import kerascomp``.
"""
from __future__ import annotations

import functools
from types import ModuleType, SimpleNamespace

from kerascomp.layers.fga import build_filter_group_conv2d
from kerascomp.layers.regularizers import build_correlation_regularizer


@functools.cache
def layers_for(keras: ModuleType) -> SimpleNamespace:
    return SimpleNamespace(FilterGroupConv2D=build_filter_group_conv2d(keras),
                           CorrelationRegularizer=build_correlation_regularizer(keras))


def custom_objects(keras: ModuleType) -> dict[str, type]:
    """The ``custom_objects`` mapping for ``keras.models.load_model``."""
    return {name: cls for name, cls in vars(layers_for(keras)).items()}

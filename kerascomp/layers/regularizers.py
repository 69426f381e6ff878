"""``CorrelationRegularizer``: pulls chosen filter pairs towards |Pearson r| = 1 during ``fit``.

Singh et al., WACV 2020 ("Leveraging Filter Correlations for Deep Model Compression") first make
the filters of each selected pair maximally correlated, so that dropping one loses little. We
add ``strength * mean_{(a, b)} (1 - |corr(f_a, f_b)|)`` per layer as a kernel regulariser, so
it is active in the user's own ``model.fit`` in either Keras flavour and survives ``.keras``
save/load. A regulariser the layer already had (``base``) keeps applying.
"""
from __future__ import annotations

from types import ModuleType


def build_correlation_regularizer(keras: ModuleType) -> type:
    """Define ``CorrelationRegularizer`` for one Keras package (Keras 3 or tf_keras)."""
    import tensorflow as tf

    @keras.saving.register_keras_serializable(package="kerascomp", name="CorrelationRegularizer")
    class CorrelationRegularizer(keras.regularizers.Regularizer):
        """Kernel regulariser over filter pairs.

        Args:
            pairs: ``[(a, b), ...]`` output-channel indices of the layer's kernel.
            strength: weight of the mean ``1 - |corr|`` over the pairs.
            out_axis: the kernel axis that indexes filters (-1 for Conv/Dense, -2 for transposed convs).
            base: the serialised regulariser the layer had before, or ``None``.

        Example::

            conv = keras.layers.Conv2D(32, 3, kernel_regularizer=CorrelationRegularizer([(0, 5), (2, 9)]))
        """

        def __init__(self, pairs, strength: float = 0.1, out_axis: int = -1, base=None):
            if not pairs:
                raise ValueError("CorrelationRegularizer needs at least one (a, b) pair of filter indices.")
            if not isinstance(strength, (int, float)) or strength < 0:
                raise ValueError(f"CorrelationRegularizer: strength must be a number >= 0, got {strength!r}.")
            self.pairs = [[int(a), int(b)] for a, b in pairs]
            self.strength = float(strength)
            self.out_axis = int(out_axis)
            self.base = base
            self._base = keras.regularizers.deserialize(base) if base else None

        def __call__(self, kernel):
            rank = len(kernel.shape)
            axis = self.out_axis % rank
            order = [axis] + [i for i in range(rank) if i != axis]
            rows = tf.reshape(tf.transpose(kernel, order), [kernel.shape[axis], -1])
            rows = rows - tf.reduce_mean(rows, axis=1, keepdims=True)
            first = tf.gather(rows, [a for a, _ in self.pairs])
            second = tf.gather(rows, [b for _, b in self.pairs])
            corr = tf.reduce_sum(first * second, axis=1) / (
                tf.norm(first, axis=1) * tf.norm(second, axis=1) + 1e-8)
            loss = self.strength * tf.reduce_mean(1.0 - tf.abs(corr))
            if self._base is not None:
                loss = loss + self._base(kernel)
            return loss

        def get_config(self):
            return {"pairs": self.pairs, "strength": self.strength, "out_axis": self.out_axis, "base": self.base}

    return CorrelationRegularizer

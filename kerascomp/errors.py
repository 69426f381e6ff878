"""The exceptions kerascomp raises. Every message names the layer or argument, the reason, and what to do."""


class CompressionError(Exception):
    """Base class of every error kerascomp raises on purpose."""


class InvalidArgumentError(CompressionError, ValueError):
    """A public function got an argument of the wrong type or out of range."""


class UnsupportedModelError(CompressionError, TypeError):
    """The model (or one of its layers) cannot be read or compressed."""


class InvalidWeightsError(CompressionError, ValueError):
    """A layer holds NaN or infinite weights."""


class BudgetError(CompressionError, ValueError):
    """The requested compression target cannot be met by the chosen method.

    ``reachable``: the lowest ratio of the budget's metric the method can reach on this model, where
    it knows it (``None`` otherwise)."""

    def __init__(self, message: str, reachable: float | None = None):
        super().__init__(message)
        self.reachable = reachable


class ExportError(CompressionError, RuntimeError):
    """Conversion to .tflite or the LiteRT parity check failed."""


class BenchmarkError(CompressionError, RuntimeError):
    """A .tflite file could not be loaded or run by LiteRT."""


class CompressionWarning(UserWarning):
    """Emitted when layers are left uncompressed (the message lists them with their reasons), or when a
    measured target is missed."""

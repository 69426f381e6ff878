"""``export_tflite``: convert with the TF converter (builtin ops only), write atomically, check in LiteRT."""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascomp.errors import ExportError, InvalidArgumentError
from kerascomp.export.qat import is_quantize_aware
from kerascomp.graph.keras_io import read_model, write_model
from kerascomp.methods.inputs import check_finite, inputs_for
from kerascomp.methods.strip import strip_graph

QUANTIZE_MODES = (None, "float16", "dynamic", "int8")


class ParityWarning(UserWarning):
    """The exported .tflite disagrees with the Keras model more than expected for its mode."""


@dataclass
class ExportResult:
    path: str
    size_bytes: int
    quantize: str | None
    max_abs_error: float
    relative_error: float
    top1_agreement: float | None
    samples: int
    quantize_aware: bool = False

    def __str__(self) -> str:
        agreement = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        mode = (self.quantize or "fp32") + (", QAT" if self.quantize_aware else "")
        return (f"{self.path}: {self.size_bytes:,} bytes ({mode}), max |tflite - keras| "
                f"{self.max_abs_error:.3g}, relative error {self.relative_error:.3g}{agreement} on {self.samples} inputs")


# Relative error above which the parity check warns, per mode.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.1}
# Top-1 agreement below which it warns, once enough inputs were checked to tell.
_MIN_AGREEMENT = {"float16": 0.99, "dynamic": 0.97, "int8": 0.95}
_AGREEMENT_SAMPLES = 50


def _sample_inputs(model: Any, representative_data: Any, samples: int, seed: int) -> list[np.ndarray]:
    if representative_data is not None:
        arrays = representative_data if isinstance(representative_data, list) else [representative_data]
        return [np.asarray(a[:samples], dtype=np.float32) for a in arrays]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, (samples,) + tuple(int(d) for d in t.shape[1:])).astype(np.float32)
            for t in model.inputs]


def convert(model: Any, quantize: str | None, calibration: list[np.ndarray] | None, int8_io: bool,
             quantize_aware: bool = False) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8" and not quantize_aware:  # a QAT model carries its own ranges
        def representative_dataset():
            for row in range(len(calibration[0])):
                yield [array[row:row + 1] for array in calibration]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    if quantize == "int8" and int8_io:
        converter.inference_input_type = tf.int8
        converter.inference_output_type = tf.int8
    return converter.convert()


def run_tflite(model_content: bytes | str, inputs: list[np.ndarray], num_threads: int = 1) -> list[np.ndarray]:
    """Run a .tflite (bytes or path) on a batch, one row at a time, with LiteRT; handles int8 I/O."""
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model_content, (str, os.PathLike)):
        interpreter = Interpreter(model_path=str(model_content), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
    interpreter.allocate_tensors()
    input_details = sorted(interpreter.get_input_details(), key=lambda d: d["index"])
    output_details = sorted(interpreter.get_output_details(), key=lambda d: d["index"])
    if len(input_details) != len(inputs):
        raise ExportError(f"the .tflite has {len(input_details)} inputs but {len(inputs)} arrays were given.")
    results: list[list[np.ndarray]] = [[] for _ in output_details]
    for row in range(len(inputs[0])):
        for detail, array in zip(input_details, inputs):
            value = array[row:row + 1]
            if detail["dtype"] in (np.int8, np.uint8):
                scale, zero_point = detail["quantization"]
                info = np.iinfo(detail["dtype"])
                value = np.clip(np.round(value / scale + zero_point), info.min, info.max)
            interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
        interpreter.invoke()
        for slot, detail in enumerate(output_details):
            value = interpreter.get_tensor(detail["index"]).astype(np.float32)
            if detail["dtype"] in (np.int8, np.uint8):
                scale, zero_point = detail["quantization"]
                value = (value - zero_point) * scale
            results[slot].append(value)
    return [np.concatenate(r) for r in results]


def _atomic_write(path: Path, content: bytes) -> None:
    directory = path.parent
    if not directory.is_dir():
        raise InvalidArgumentError(f"cannot export to {path}: the folder {directory} does not exist.")
    if not os.access(directory, os.W_OK):
        raise InvalidArgumentError(f"cannot export to {path}: the folder {directory} is not writable.")
    if path.is_dir():
        raise InvalidArgumentError(f"cannot export to {path}: it is a folder. Pass a file path ending in .tflite.")
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):
            raise ExportError(f"cannot write {path}: {error}. Nothing was left at {path}.") from error
        raise


def export_tflite(model: Any, path: str | os.PathLike, quantize: str | None = None, representative_data: Any = None,
                  int8_io: bool = False, check_samples: int | None = None, seed: int = 0) -> ExportResult:
    """Convert ``model`` to a .tflite at ``path`` and check it against Keras in LiteRT.

    A quantisation-aware model from :func:`kerascomp.quantize_aware` exports as int8 with the
    ranges it learned (``representative_data`` then only feeds the parity check).
    Otherwise kerascomp layers are stripped first, so the converter only sees standard layers and the
    file holds builtin ops only (no Flex). Quantisation: ``None`` (fp32), ``"float16"``,
    ``"dynamic"`` (int8 weights) or ``"int8"`` (full integer; needs ``representative_data``,
    an array of inputs; ``int8_io=True`` also makes the inputs and outputs int8).
    The parity check runs ``check_samples`` inputs through LiteRT and Keras: by default all of
    ``representative_data`` (up to 500 rows), else 16 random inputs; for quantised modes it
    reports the top-1 agreement and warns (:class:`ParityWarning`) past a per-mode tolerance.
    The file is written atomically: an interrupted export leaves nothing at ``path``.
    """
    if quantize not in QUANTIZE_MODES:
        raise InvalidArgumentError(f"quantize={quantize!r} is not one of {QUANTIZE_MODES}.")
    path = Path(path)
    if path.suffix != ".tflite":
        raise InvalidArgumentError(f"export path {path} should end in .tflite.")
    quantize_aware = is_quantize_aware(model)
    if quantize_aware:
        if quantize not in (None, "int8"):
            raise InvalidArgumentError(f"model {model.name!r} is quantisation-aware (tfmot), so it exports as int8; "
                                       f"quantize={quantize!r} does not apply. Leave quantize unset or pass 'int8'.")
        quantize = "int8"
        stripped = model
        shapes = {t.name: tuple(t.shape) for t in model.inputs}
    else:
        if quantize == "int8" and representative_data is None:
            raise InvalidArgumentError("quantize='int8' needs representative_data: ~100-500 typical model inputs "
                                       "to calibrate activation ranges.")
        graph = read_model(model)
        check_finite(graph)
        stripped = write_model(strip_graph(graph))
        shapes = graph.input_shapes()
    calibration = inputs_for(shapes, representative_data, "representative_data", limit=500)
    if calibration is not None and not isinstance(calibration, list):
        calibration = [calibration]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the Keras exporter prints every captured variable
            content = convert(stripped, quantize, calibration, int8_io, quantize_aware)
    except Exception as error:
        raise ExportError(f"the TF converter failed on model {model.name!r} ({quantize or 'fp32'}): {error}") from error
    if check_samples is None:
        check_samples = 500 if calibration is not None else 16
    if not isinstance(check_samples, int) or check_samples < 1:
        raise InvalidArgumentError(f"check_samples must be a positive int, got {check_samples!r}.")
    inputs = _sample_inputs(stripped, calibration, check_samples, seed)
    reference = stripped.predict(inputs if len(inputs) > 1 else inputs[0], batch_size=64, verbose=0)
    reference = [np.asarray(r) for r in (reference if isinstance(reference, (list, tuple)) else [reference])]
    produced = run_tflite(content, inputs)
    max_abs = max(float(np.max(np.abs(p - r))) for p, r in zip(produced, reference))
    relative = max(float(np.linalg.norm(p - r) / (np.linalg.norm(r) or 1.0)) for p, r in zip(produced, reference))
    agreement = None
    if quantize is not None and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        agreement = float(np.mean(np.argmax(produced[0], 1) == np.argmax(reference[0], 1)))
    disagrees = (agreement is not None and len(inputs[0]) >= _AGREEMENT_SAMPLES
                 and agreement < _MIN_AGREEMENT[quantize])
    if relative > _TOLERANCE[quantize] or disagrees:
        warnings.warn(f"PARITY CHECK: {path.name} ({quantize or 'fp32'}) differs from the Keras model by relative "
                      f"error {relative:.3g} (max abs {max_abs:.3g})"
                      + ("" if agreement is None else f", top-1 agreement {agreement:.3f}")
                      + ". Calibrate with 100-500 real inputs, or for int8 finetune with kerascomp.quantize_aware().",
                      ParityWarning, stacklevel=2)
    _atomic_write(path, content)
    return ExportResult(str(path), len(content), quantize, max_abs, relative, agreement, len(inputs[0]),
                        quantize_aware)

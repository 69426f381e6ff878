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

    def __str__(self) -> str:
        agreement = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        return (f"{self.path}: {self.size_bytes:,} bytes ({self.quantize or 'fp32'}), max |tflite - keras| "
                f"{self.max_abs_error:.3g}, relative error {self.relative_error:.3g}{agreement} on {self.samples} inputs")


# Relative error above which the parity check warns, per mode.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.1}


def _sample_inputs(model: Any, representative_data: Any, samples: int, seed: int) -> list[np.ndarray]:
    if representative_data is not None:
        arrays = representative_data if isinstance(representative_data, list) else [representative_data]
        return [np.asarray(a[:samples], dtype=np.float32) for a in arrays]
    rng = np.random.default_rng(seed)
    return [rng.uniform(0.0, 1.0, (samples,) + tuple(int(d) for d in t.shape[1:])).astype(np.float32)
            for t in model.inputs]


def _convert(model: Any, quantize: str | None, calibration: list[np.ndarray] | None, int8_io: bool) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if quantize is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
        def representative_dataset():
            for row in range(len(calibration[0])):
                yield [array[row:row + 1] for array in calibration]

        converter.representative_dataset = representative_dataset
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        if int8_io:
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
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=directory)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def export_tflite(model: Any, path: str | os.PathLike, quantize: str | None = None, representative_data: Any = None,
                  int8_io: bool = False, check_samples: int = 16, seed: int = 0) -> ExportResult:
    """Convert ``model`` to a .tflite at ``path`` and check it against Keras in LiteRT.

    kerascomp layers are stripped first, so the converter only sees standard layers and the
    file holds builtin ops only (no Flex). Quantisation: ``None`` (fp32), ``"float16"``,
    ``"dynamic"`` (int8 weights) or ``"int8"`` (full integer; needs ``representative_data``,
    an array of inputs; ``int8_io=True`` also makes the inputs and outputs int8).
    The file is written atomically: an interrupted export leaves nothing at ``path``.
    """
    from kerascomp.api import input_batch
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.methods.strip import strip_graph

    if quantize not in QUANTIZE_MODES:
        raise InvalidArgumentError(f"quantize={quantize!r} is not one of {QUANTIZE_MODES}.")
    path = Path(path)
    if path.suffix != ".tflite":
        raise InvalidArgumentError(f"export path {path} should end in .tflite.")
    if quantize == "int8" and representative_data is None:
        raise InvalidArgumentError("quantize='int8' needs representative_data: ~100-500 typical model inputs "
                                   "to calibrate activation ranges.")
    graph = read_model(model)
    stripped = write_model(strip_graph(graph))
    calibration = input_batch(graph, representative_data, "representative_data", limit=500)
    if calibration is not None and not isinstance(calibration, list):
        calibration = [calibration]
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the Keras exporter prints every captured variable
            content = _convert(stripped, quantize, calibration, int8_io)
    except Exception as error:
        raise ExportError(f"the TF converter failed on model {model.name!r} ({quantize or 'fp32'}): {error}") from error
    inputs = _sample_inputs(stripped, calibration, check_samples, seed)
    reference = stripped(inputs if len(inputs) > 1 else inputs[0], training=False)
    reference = [np.asarray(r) for r in (reference if isinstance(reference, (list, tuple)) else [reference])]
    produced = run_tflite(content, inputs)
    max_abs = max(float(np.max(np.abs(p - r))) for p, r in zip(produced, reference))
    relative = max(float(np.linalg.norm(p - r) / (np.linalg.norm(r) or 1.0)) for p, r in zip(produced, reference))
    agreement = None
    if quantize is not None and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        agreement = float(np.mean(np.argmax(produced[0], 1) == np.argmax(reference[0], 1)))
    if relative > _TOLERANCE[quantize]:
        warnings.warn(f"PARITY CHECK: {path.name} ({quantize or 'fp32'}) differs from the Keras model by relative "
                      f"error {relative:.3g} (max abs {max_abs:.3g})"
                      + ("" if agreement is None else f", top-1 agreement {agreement:.3f}")
                      + ". Check the calibration data or keep this layer in float.", ParityWarning, stacklevel=2)
    _atomic_write(path, content)
    return ExportResult(str(path), len(content), quantize, max_abs, relative, agreement, len(inputs[0]))

"""``export_tflite``: convert with the TF converter (builtin ops only), write atomically, check in LiteRT."""
from __future__ import annotations

import contextlib
import io
import os
import re
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from kerascomp.errors import ExportError, InvalidArgumentError
from kerascomp.export import parity
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
    spread_error: float = 0.0
    compared: str = "outputs"
    inputs: str = ""
    passed: bool = True

    def __str__(self) -> str:
        agreement = "" if self.top1_agreement is None else f", top-1 agreement {self.top1_agreement:.3f}"
        mode = (self.quantize or "fp32") + (", QAT" if self.quantize_aware else "")
        verdict = "parity passed" if self.passed else "PARITY FAILED"
        return (f"{self.path}: {self.size_bytes:,} bytes ({mode}); {verdict} against the Keras model on "
                f"{self.samples} inputs ({self.inputs}), comparing {self.compared}: max |tflite - keras| "
                f"{self.max_abs_error:.3g}, relative error {self.relative_error:.3g}, error / output spread "
                f"{self.spread_error:.3g}{agreement}")


# Relative error (||tflite - keras|| / ||keras||) above which the parity check fails, per mode.
_TOLERANCE = {None: 1e-4, "float16": 1e-2, "dynamic": 5e-2, "int8": 0.1}
# Error against the outputs' spread across inputs (||tflite - keras|| / ||keras - mean||) above which it fails.
_SPREAD_TOLERANCE = {None: 1e-3, "float16": 5e-2, "dynamic": 0.25, "int8": 0.5}
# Top-1 agreement below which it warns, once enough inputs were checked to tell.
_MIN_AGREEMENT = {"float16": 0.99, "dynamic": 0.97, "int8": 0.95}
_AGREEMENT_SAMPLES = 50


def convert(model: Any, quantize: str | None, calibration: list[np.ndarray] | None, int8_io: bool,
             quantize_aware: bool = False) -> bytes:
    """The TF converter's .tflite of a functional ``model`` (through :func:`_inference_saved_model`; a
    tfmot quantisation-aware model through ``from_keras_model``, which knows its wrappers)."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="kerascomp_savedmodel_") as directory:
        if quantize_aware or len(model.inputs) > 1 and quantize == "int8":
            converter = tf.lite.TFLiteConverter.from_keras_model(model)  # (the calibration feeds inputs by position)
        else:
            converter = tf.lite.TFLiteConverter.from_saved_model(_inference_saved_model(model, directory))
        return _converted(converter, quantize, calibration, int8_io, quantize_aware)


def _inference_saved_model(model: Any, directory: str) -> str:
    """Save ``model``'s inference call (``training=False``, inputs named as the model's) as the only
    function of a SavedModel in ``directory``, with the variables it reads and nothing else.

    ``from_keras_model`` saves the Keras object: tf_keras traces every layer's call functions to save
    them, and Keras 3 goes through an ``ExportArchive`` and loads it back. For the same file (same bytes,
    same outputs) NASNetMobile at 32x32 converted in 17 s this way against 64 s in tf_keras, and 19 s
    against 37 s in Keras 3 (one run each, beside another job)."""
    import tensorflow as tf

    module = tf.Module()
    # a Keras 3 variable wraps the tf.Variable that the traced call captures (``_value``): that one must be
    # saved (saving the wrappers left the weights out of the file: NaN outputs)
    module.model_variables = [v if isinstance(v, tf.Variable) else v._value for v in model.variables]
    specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in model.inputs]

    @tf.function(input_signature=specs, autograph=False)
    def serve(*inputs):
        return model(list(inputs) if len(inputs) > 1 else inputs[0], training=False)

    module.serve = serve
    tf.saved_model.save(module, directory, signatures={"serving_default": serve.get_concrete_function()})
    return directory


def _converted(converter: Any, quantize: str | None, calibration: list[np.ndarray] | None, int8_io: bool,
               quantize_aware: bool) -> bytes:
    import tensorflow as tf

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
    with contextlib.redirect_stdout(io.StringIO()):  # the Keras 3 exporter prints every captured variable
        return converter.convert()


def _signature_runner(interpreter):
    """The file's only signature runner, or None (a .tflite from elsewhere may carry none, or several)."""
    signatures = interpreter.get_signature_list()
    return interpreter.get_signature_runner(next(iter(signatures))) if len(signatures) == 1 else None


def _positional(keys: list[str], prefix: str) -> list[str] | None:
    """Keys such as output_0 ... output_{n-1} (Keras 3 names list outputs so), in index order; else None."""
    pattern = re.compile(rf"{prefix}_(\d+)$")
    matches = [pattern.match(k) for k in keys]
    if not all(matches) or sorted(int(m.group(1)) for m in matches) != list(range(len(keys))):
        return None
    return sorted(keys, key=lambda k: int(pattern.match(k).group(1)))


def _order(keys: list[str], names: list[str] | None, what: str) -> list[str]:
    """The file's tensor names in the order of ``names`` (the Keras model's), matched by name, never by position."""
    if names is not None and len(names) == len(keys) and set(names) == set(keys):
        return list(names)
    positional = _positional(keys, what)
    if positional is not None:
        return positional
    if len(keys) == 1:
        return list(keys)
    raise ExportError(f"cannot match the .tflite's {what}s {sorted(keys)} to the model's {names}: the converter does "
                      f"not keep their order, so kerascomp matches them by name. Give the model's {what}s distinct "
                      "names, or pass the arrays as a dict keyed by the .tflite's names.")


def _quantized(detail: dict, value: np.ndarray) -> np.ndarray:
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = detail["quantization"]
        info = np.iinfo(detail["dtype"])
        value = np.clip(np.round(value / scale + zero_point), info.min, info.max)
    return value.astype(detail["dtype"])


def _dequantized(detail: dict, value: np.ndarray) -> np.ndarray:
    result = value.astype(np.float32)
    if detail["dtype"] in (np.int8, np.uint8):
        scale, zero_point = detail["quantization"]
        result = (result - zero_point) * scale
    return result


def run_tflite(model_content: bytes | str, inputs: list[np.ndarray] | dict[str, np.ndarray], num_threads: int = 1,
               input_names: list[str] | None = None, output_names: list[str] | None = None) -> list[np.ndarray]:
    """Run a .tflite (bytes or path) on a batch, one row at a time, with LiteRT; handles int8 I/O.

    Inputs and outputs are matched to the Keras model's by name through the file's signature (the TF
    converter reorders them): ``inputs`` is a list in the order of ``input_names`` (the Keras model's
    input names; not needed for one input) or a dict keyed by name; the outputs come back in the order
    of ``output_names`` (Keras 3 names list outputs ``output_0`` ... in model order, which is matched too).
    """
    from ai_edge_litert.interpreter import Interpreter

    if isinstance(model_content, (str, os.PathLike)):
        interpreter = Interpreter(model_path=str(model_content), num_threads=num_threads)
    else:
        interpreter = Interpreter(model_content=model_content, num_threads=num_threads)
    interpreter.allocate_tensors()
    runner = _signature_runner(interpreter)
    if runner is None:  # no signature to match names with: only a single input and output is unambiguous
        input_details = {d["name"]: d for d in interpreter.get_input_details()}
        output_details = {d["name"]: d for d in interpreter.get_output_details()}
        if len(input_details) > 1 or len(output_details) > 1:
            raise ExportError("the .tflite has no single signature, so its several inputs/outputs cannot be matched "
                              "to the model's by name; convert with kerascomp.export_tflite or the TF converter.")
    else:
        input_details, output_details = runner.get_input_details(), runner.get_output_details()
    if isinstance(inputs, dict):
        if set(inputs) != set(input_details):
            raise ExportError(f"inputs are keyed {sorted(inputs)} but the .tflite's inputs are {sorted(input_details)}.")
        feed = inputs
    else:
        if len(inputs) != len(input_details):
            raise ExportError(f"the .tflite has {len(input_details)} inputs but {len(inputs)} arrays were given.")
        feed = dict(zip(_order(list(input_details), input_names, "input"), inputs))
    order = _order(list(output_details), output_names, "output")
    results: dict[str, list[np.ndarray]] = {name: [] for name in order}
    rows = len(next(iter(feed.values())))
    for row in range(rows):
        values = {name: _quantized(input_details[name], array[row:row + 1]) for name, array in feed.items()}
        if runner is not None:
            produced = runner(**values)
        else:
            for name, value in values.items():
                interpreter.set_tensor(input_details[name]["index"], value)
            interpreter.invoke()
            produced = {name: interpreter.get_tensor(detail["index"]) for name, detail in output_details.items()}
        for name in order:
            results[name].append(_dequantized(output_details[name], produced[name]))
    return [np.concatenate(results[name]) for name in order]


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


def _predict(model: Any, inputs: list[np.ndarray]) -> tuple[list[np.ndarray], list[str] | None]:
    """The model's outputs as a list in its output order, and the names a dict output is keyed by."""
    produced = model.predict(inputs if len(inputs) > 1 else inputs[0], batch_size=64, verbose=0)
    if isinstance(produced, dict):  # Keras flattens a dict of outputs in sorted key order
        keys = sorted(produced)
        return [np.asarray(produced[k]) for k in keys], keys
    produced = produced if isinstance(produced, (list, tuple)) else [produced]
    return [np.asarray(p) for p in produced], None


# int8 PTQ calibrates on up to this many rows of representative_data (500 until 2026-12-07): on four kept CIFAR
# models whose int8 files agreed with Keras on under 98% of 2,000 test images, 2,000 rows gave 97.25 -> 97.25%,
# 97.80 -> 98.35%, 97.70 -> 97.80% and 97.95 -> 98.15% (benchmarks/results/int8_calibration.md)
CALIBRATION_ROWS = 2000


def export_tflite(model: Any, path: str | os.PathLike, quantize: str | None = None, representative_data: Any = None,
                  int8_io: bool = False, check_samples: int | None = None, seed: int = 0,
                  strict: bool = False) -> ExportResult:
    """Convert ``model`` to a .tflite at ``path`` and check it against the Keras model in LiteRT.

    A quantisation-aware model from :func:`kerascomp.quantize_aware` exports as int8 with the
    ranges it learned (``representative_data`` then only feeds the parity check).
    Otherwise kerascomp layers are stripped first, so the converter only sees standard layers and the
    file holds builtin ops only (no Flex). Quantisation: ``None`` (fp32), ``"float16"``,
    ``"dynamic"`` (int8 weights) or ``"int8"`` (full integer; needs ``representative_data``,
    an array of inputs; ``int8_io=True`` also makes the inputs and outputs int8).

    The parity check runs ``check_samples`` inputs through LiteRT and through ``model`` itself (as
    given, not the stripped copy that was converted, so a fault in strip or in the conversion shows):
    by default the first 500 rows of ``representative_data`` (int8 calibrates on up to
    :data:`CALIBRATION_ROWS`, 2,000), else 16 synthetic images in the range
    the model's leading Rescaling/Normalization expects ([0, 1] without one; see
    :mod:`kerascomp.export.parity`). Inputs and outputs are matched by name. Softmax outputs are
    compared as logits. It fails past a per-mode tolerance on the error relative to the outputs'
    norm and to their spread across inputs, or on the top-1 agreement for quantised modes:
    a :class:`ParityWarning` by default, an :class:`ExportError` with ``strict=True`` (nothing is
    written then). The file is written atomically: an interrupted export leaves nothing at ``path``.
    """
    if quantize not in QUANTIZE_MODES:
        raise InvalidArgumentError(f"quantize={quantize!r} is not one of {QUANTIZE_MODES}.")
    if not isinstance(strict, bool):
        raise InvalidArgumentError(f"strict must be True or False, got {strict!r}.")
    path = Path(path)
    if path.suffix != ".tflite":
        raise InvalidArgumentError(f"export path {path} should end in .tflite.")
    quantize_aware = is_quantize_aware(model)
    graph = None
    if quantize_aware:
        if quantize not in (None, "int8"):
            raise InvalidArgumentError(f"model {model.name!r} is quantisation-aware (tfmot), so it exports as int8; "
                                       f"quantize={quantize!r} does not apply. Leave quantize unset or pass 'int8'.")
        quantize = "int8"
        stripped = model
        shapes = {t.name: tuple(t.shape) for t in model.inputs}
    else:
        if quantize == "int8" and representative_data is None:
            raise InvalidArgumentError("quantize='int8' needs representative_data: ~500-2000 typical model inputs "
                                       "to calibrate activation ranges.")
        graph = read_model(model)
        check_finite(graph)
        stripped = write_model(strip_graph(graph))
        shapes = graph.input_shapes()
    calibration = inputs_for(shapes, representative_data, "representative_data", limit=CALIBRATION_ROWS)
    if calibration is not None and not isinstance(calibration, list):
        calibration = [calibration]
    try:
        content = convert(stripped, quantize, calibration, int8_io, quantize_aware)
    except Exception as error:
        raise ExportError(f"the TF converter failed on model {model.name!r} ({quantize or 'fp32'}): {error}") from error
    if check_samples is None:
        check_samples = 500 if calibration is not None else 16
    if not isinstance(check_samples, int) or isinstance(check_samples, bool) or check_samples < 1:
        raise InvalidArgumentError(f"check_samples must be a positive int, got {check_samples!r}.")
    if calibration is not None:
        inputs = [array[:check_samples] for array in calibration]
        source = "rows of representative_data"
    else:
        inputs, source = parity.synthetic_inputs(graph, shapes, check_samples, seed)
    reference, keys = _predict(model, inputs)
    produced = run_tflite(content, inputs, input_names=list(shapes),
                          output_names=keys or getattr(stripped, "output_names", None))  # Sequential: none
    comparison = parity.compare(reference, produced, parity.softmax_outputs(graph, len(reference)))
    logits_graph = parity.without_softmax(graph) if graph is not None and quantize != "int8" else None
    if logits_graph is not None:  # the same conversion without the final softmax, against the logits in Keras
        logits_model = write_model(logits_graph)
        logits_content = convert(write_model(strip_graph(logits_graph)), quantize, None, False)
        logits, logit_keys = _predict(logits_model, inputs)
        produced_logits = run_tflite(logits_content, inputs, input_names=list(shapes),
                                     output_names=logit_keys or list(logits_model.output_names))
        comparison = parity.worst(comparison, parity.compare(logits, produced_logits, [False] * len(logits)),
                                  "probabilities and logits")
    agreement = None
    if quantize is not None and reference[0].ndim == 2 and reference[0].shape[1] > 1:
        agreement = float(np.mean(np.argmax(produced[0], 1) == np.argmax(reference[0], 1)))
    disagrees = (agreement is not None and len(inputs[0]) >= _AGREEMENT_SAMPLES
                 and agreement < _MIN_AGREEMENT[quantize])
    passed = not (comparison.relative_error > _TOLERANCE[quantize]
                  or comparison.spread_error > _SPREAD_TOLERANCE[quantize] or disagrees)
    result = ExportResult(str(path), len(content), quantize, comparison.max_abs_error, comparison.relative_error,
                          agreement, len(inputs[0]), quantize_aware, comparison.spread_error, comparison.compared,
                          source, passed)
    if not passed:
        message = (f"PARITY CHECK: {path.name} ({quantize or 'fp32'}) differs from the Keras model {model.name!r} on "
                   f"{len(inputs[0])} {source} ({comparison.compared}): relative error "
                   f"{comparison.relative_error:.3g} (tolerance {_TOLERANCE[quantize]:g}), error / output spread "
                   f"{comparison.spread_error:.3g} (tolerance {_SPREAD_TOLERANCE[quantize]:g}), max abs "
                   f"{comparison.max_abs_error:.3g}"
                   + ("" if agreement is None else f", top-1 agreement {agreement:.3f}")
                   + ". Calibrate with 500-2000 real inputs, or for int8 finetune with kerascomp.quantize_aware().")
        if strict:
            raise ExportError(message + f" strict=True: nothing was written to {path}.")
        warnings.warn(message, ParityWarning, stacklevel=2)
    _atomic_write(path, content)
    return result

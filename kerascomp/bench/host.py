"""Time .tflite files with the LiteRT interpreter on this machine.

Several files are timed *interleaved* (A, B, A, B, ...) so a noisy shared machine slows
them alike; compare them by the ratio of medians, not by absolute times.
"""
from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from kerascomp.errors import BenchmarkError, InvalidArgumentError


@dataclass
class BenchmarkResult:
    path: str
    size_bytes: int
    median_ms: float
    p90_ms: float
    mean_ms: float
    runs: int
    num_threads: int
    xnnpack: bool

    def to_dict(self) -> dict:
        return asdict(self)


def _interpreter(path: str, num_threads: int, xnnpack: bool):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    if not Path(path).is_file():
        raise InvalidArgumentError(f"{path}: no such file. Pass the path of a .tflite (kerascomp export writes one).")
    resolver = OpResolverType.AUTO if xnnpack else OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
    try:
        interpreter = Interpreter(model_path=str(path), num_threads=num_threads, experimental_op_resolver_type=resolver)
        interpreter.allocate_tensors()
    except Exception as error:  # LiteRT raises ValueError/RuntimeError with its own text
        raise BenchmarkError(f"{path} is not a valid .tflite model LiteRT can load: {error}") from error
    rng = np.random.default_rng(0)
    for detail in interpreter.get_input_details():
        shape = [1 if d < 0 else d for d in detail["shape_signature"]] if len(detail["shape_signature"]) else detail["shape"]
        if np.issubdtype(detail["dtype"], np.integer):
            info = np.iinfo(detail["dtype"])
            value = rng.integers(info.min, info.max, size=shape, endpoint=True)
        else:
            value = rng.uniform(0.0, 1.0, size=shape)
        if list(detail["shape"]) != list(shape):
            interpreter.resize_tensor_input(detail["index"], shape)
            interpreter.allocate_tensors()
        interpreter.set_tensor(detail["index"], value.astype(detail["dtype"]))
    return interpreter


def latency_ratio(baseline: str | os.PathLike, candidate: str | os.PathLike, num_threads: int = 1, runs: int = 200,
                  rounds: int = 5, repeats: int = 3) -> float:
    """``candidate``'s median latency over ``baseline``'s: the median over ``repeats`` interleaved
    :func:`compare_tflite` calls, each with fresh interpreters. One interpreter pair can land on a slow
    or a fast memory layout for the whole call (measured here on a CIFAR ResNet-20 Tucker file: 0.520 in
    some calls, 0.544 in others, each of 1,000 runs), so one call alone can be 4% off. Keep ``runs /
    rounds`` at 40 or more: rounds of 5 runs gave that file 0.518 against 0.555 with 40 (see
    :func:`kerascomp.planner.measured_latency_ratio`)."""
    if not isinstance(repeats, int) or repeats < 1:
        raise InvalidArgumentError(f"repeats must be a positive int, got {repeats!r}.")
    ratios = []
    for _ in range(repeats):
        before, after = compare_tflite([baseline, candidate], num_threads=num_threads, runs=runs, rounds=rounds)
        ratios.append(after.median_ms / before.median_ms)
    return float(np.median(ratios))


def compare_tflite(paths: Sequence[str | os.PathLike], num_threads: int = 1, runs: int = 50, warmup: int = 5,
                   xnnpack: bool = True, rounds: int = 5) -> list[BenchmarkResult]:
    """Time several .tflite files interleaved: ``rounds`` rounds, each running every file ``runs/rounds`` times."""
    if not paths:
        raise InvalidArgumentError("compare_tflite needs at least one .tflite path.")
    if not isinstance(num_threads, int) or num_threads < 1:
        raise InvalidArgumentError(f"num_threads must be a positive int, got {num_threads!r}.")
    if not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"runs must be a positive int, got {runs!r}.")
    interpreters = [_interpreter(str(p), num_threads, xnnpack) for p in paths]
    for interpreter in interpreters:
        for _ in range(warmup):
            interpreter.invoke()
    rounds = max(1, min(rounds, runs))
    per_round = [runs // rounds + (1 if r < runs % rounds else 0) for r in range(rounds)]
    times: list[list[float]] = [[] for _ in paths]
    for count in per_round:
        for slot, interpreter in enumerate(interpreters):
            for _ in range(count):
                start = time.perf_counter()
                interpreter.invoke()
                times[slot].append((time.perf_counter() - start) * 1e3)
    results = []
    for path, samples in zip(paths, times):
        samples_array = np.array(samples)
        results.append(BenchmarkResult(str(path), Path(path).stat().st_size, float(np.median(samples_array)),
                                       float(np.percentile(samples_array, 90)), float(samples_array.mean()),
                                       len(samples), num_threads, xnnpack))
    return results


def benchmark_tflite(path: str | os.PathLike, num_threads: int = 1, runs: int = 50, warmup: int = 5,
                     xnnpack: bool = True) -> BenchmarkResult:
    """Median and p90 latency (ms) of one .tflite with LiteRT, ``num_threads`` threads (1 by default)."""
    return compare_tflite([path], num_threads, runs, warmup, xnnpack, rounds=1)[0]


def host_cpu() -> str:
    """The host CPU, for every latency row: its model name and the SIMD extensions LiteRT's kernels use."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or "unknown"
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), "?")
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    simd = [flag for flag in ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8")
            if flag in flags]
    cores = text.count("processor\t:")
    return f"{name} ({cores} logical cores; {' '.join(simd) or 'no AVX2'})"

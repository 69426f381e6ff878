"""Time .tflite files on an Android phone with adb and TensorFlow Lite's ``benchmark_model``.

The phone needs the prebuilt ``benchmark_model`` binary (android_aarch64 build of
``tensorflow/lite/tools/benchmark``) pushed to it once, for example to
``/data/local/tmp/benchmark_model``. For each model this module

1. pushes it (``adb push``),
2. runs ``benchmark_model --graph=... --num_threads=... --use_xnnpack=... --use_gpu=...``
   through ``adb shell`` and captures its log,
3. parses the ``Inference timings in us: ...`` line, the ``count=... avg=... std=...``
   statistics, the memory lines and (with ``enable_op_profiling``) the per-operator table,
4. removes the pushed file.

``benchmark_model`` prints the average, min, max and standard deviation of the timed runs,
not their median, so on-device rows report the average. ``runner`` is injectable so the
command construction is tested without a phone.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from kerascomp.errors import BenchmarkError, InvalidArgumentError

Runner = Callable[[list[str]], str]


@dataclass
class DeviceSettings:
    """How ``benchmark_model`` runs on the phone."""

    num_threads: int = 1
    use_xnnpack: bool = True
    use_gpu: bool = False
    num_runs: int = 50
    warmup_runs: int = 5
    enable_op_profiling: bool = False
    binary: str = "/data/local/tmp/benchmark_model"
    device_dir: str = "/data/local/tmp/kerascomp"
    serial: str | None = None
    adb: str = "adb"

    def __post_init__(self) -> None:
        for name in ("num_threads", "num_runs"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InvalidArgumentError(f"{name} must be a positive int, got {value!r}.")
        if not isinstance(self.warmup_runs, int) or self.warmup_runs < 0:
            raise InvalidArgumentError(f"warmup_runs must be a non-negative int, got {self.warmup_runs!r}.")
        for name in ("binary", "device_dir"):
            if not str(getattr(self, name)).startswith("/"):
                raise InvalidArgumentError(f"{name} must be an absolute path on the phone, got {getattr(self, name)!r}.")


@dataclass
class RunStatistics:
    """One ``count=... first=... curr=... min=... max=... avg=... std=...`` line (microseconds)."""

    count: int
    first_us: float | None = None
    min_us: float | None = None
    max_us: float | None = None
    avg_us: float | None = None
    std_us: float | None = None


@dataclass
class OpProfileRow:
    node_type: str
    first_ms: float
    avg_ms: float
    percent: float
    times_called: int
    name: str


@dataclass
class DeviceResult:
    path: str
    size_bytes: int
    init_us: float
    first_inference_us: float
    warmup_avg_us: float
    inference_avg_us: float
    runs: RunStatistics | None
    memory_init_mb: float | None
    memory_overall_mb: float | None
    peak_memory_mb: float | None
    settings: dict = field(default_factory=dict)
    op_profile: list[OpProfileRow] = field(default_factory=list)

    @property
    def avg_ms(self) -> float:
        return self.inference_avg_us / 1e3

    def to_dict(self) -> dict:
        return asdict(self)


def adb_command(settings: DeviceSettings, *arguments: str) -> list[str]:
    return [settings.adb, *(["-s", settings.serial] if settings.serial else []), *arguments]


def remote_path(settings: DeviceSettings, local: str | Path) -> str:
    return f"{settings.device_dir.rstrip('/')}/{Path(local).name}"


def benchmark_arguments(settings: DeviceSettings, graph: str) -> list[str]:
    """The ``benchmark_model`` command line for one model already on the phone."""
    flag = {True: "true", False: "false"}
    arguments = [settings.binary, f"--graph={graph}", f"--num_threads={settings.num_threads}",
                 f"--use_xnnpack={flag[settings.use_xnnpack]}", f"--use_gpu={flag[settings.use_gpu]}",
                 f"--num_runs={settings.num_runs}", f"--warmup_runs={settings.warmup_runs}",
                 "--report_peak_memory_footprint=true"]
    if settings.enable_op_profiling:
        arguments.append("--enable_op_profiling=true")
    return arguments


def commands_for(settings: DeviceSettings, local: str | Path) -> list[list[str]]:
    """The adb commands that push, run and remove one model, in order."""
    remote = remote_path(settings, local)
    shell_line = " ".join(shlex.quote(a) for a in benchmark_arguments(settings, remote))
    return [adb_command(settings, "shell", "mkdir", "-p", settings.device_dir),
            adb_command(settings, "push", str(local), remote),
            adb_command(settings, "shell", shell_line),
            adb_command(settings, "shell", "rm", "-f", remote)]


_TIMINGS = re.compile(r"Inference timings in us:\s*Init:\s*([\d.eE+-]+),\s*First inference:\s*([\d.eE+-]+),\s*"
                      r"Warmup \(avg\):\s*([\d.eE+-]+),\s*Inference \(avg\):\s*([\d.eE+-]+)")
_STAT_FIELD = re.compile(r"(count|first|curr|min|max|avg|std)=([\d.eE+-]+)")
_MEMORY = re.compile(r"Memory footprint delta from the start of the tool \(MB\):\s*init=([\d.eE+-]+)\s+"
                     r"overall=([\d.eE+-]+)")
_OLD_MEMORY = re.compile(r"Peak memory footprint \(MB\):\s*init=([\d.eE+-]+)\s+overall=([\d.eE+-]+)")
_PEAK = re.compile(r"Overall peak memory footprint \(MB\) via periodic monitoring:\s*([\d.eE+-]+)")
_OP_ROW = re.compile(r"^\s*(?P<type>\S.*?)\s+(?:(?P<start>\d+\.\d+)\s+)?(?P<first>\d+\.\d+)\s+(?P<avg>\d+\.\d+)\s+"
                     r"(?P<percent>\d+\.\d+)%\s+(?P<cdf>\d+\.\d+)%\s+(?P<mem>\d+\.\d+)\s+(?P<times>\d+)\s+(?P<name>\S.*)$")
_LOG_PREFIX = re.compile(r"^(INFO|WARNING|WARN|ERROR):\s?")


def _statistics(line: str) -> RunStatistics:
    values = dict(_STAT_FIELD.findall(line))
    number = {key: float(value) for key, value in values.items()}
    if "first" not in number and "curr" in number:  # "count=N curr=X(all same)"
        number.update(first=number["curr"], min=number["curr"], max=number["curr"], avg=number["curr"], std=0.0)
    return RunStatistics(int(number["count"]), number.get("first"), number.get("min"), number.get("max"),
                         number.get("avg"), number.get("std"))


def parse_op_profile(text: str) -> list[OpProfileRow]:
    """The "Run Order" table of the regular (not initialisation) runs, in run order."""
    rows: list[OpProfileRow] = []
    in_section = in_table = False
    for raw in text.splitlines():
        line = _LOG_PREFIX.sub("", raw.rstrip())
        if "Operator-wise Profiling Info for Regular Benchmark Runs" in line:
            in_section, in_table = True, False
            continue
        if not in_section:
            continue
        if line.startswith("=" * 10):
            in_table = "Run Order" in line
            continue
        if in_table:
            if "[node type]" in line or not line.strip():
                if rows and not line.strip():
                    in_table = False
                continue
            match = _OP_ROW.match(line.replace("\t", "  "))
            if match:
                rows.append(OpProfileRow(match["type"].strip(), float(match["first"]), float(match["avg"]),
                                         float(match["percent"]), int(match["times"]), match["name"].strip()))
    return rows


def _first_match(lines: list[str], *patterns: re.Pattern) -> re.Match | None:
    """The first match of any of ``patterns`` (tried in order on each line), top to bottom."""
    for line in lines:
        for pattern in patterns:
            match = pattern.search(line)
            if match:
                return match
    return None


def parse_benchmark_output(text: str) -> dict:
    """Numbers from a ``benchmark_model`` log: timings (us), run statistics, memory (MB), op profile."""
    lines = [_LOG_PREFIX.sub("", line.strip()) for line in text.splitlines()]
    timings = _first_match(lines, _TIMINGS)
    if timings is None:
        raw = [line.strip() for line in text.splitlines() if line.strip()]
        errors = [line for line in raw if line.startswith(("ERROR", "Failed", "error"))]
        tail = "\n".join(errors[-5:] or raw[-10:])
        raise BenchmarkError(f"benchmark_model printed no 'Inference timings in us' line; it said:\n{tail}")
    statistics = [line for line in lines if line.startswith("count=")]
    memory = _first_match(lines, _MEMORY, _OLD_MEMORY)
    peak = _first_match(lines, _PEAK)
    return {
        "init_us": float(timings[1]), "first_inference_us": float(timings[2]),
        "warmup_avg_us": float(timings[3]), "inference_avg_us": float(timings[4]),
        # The tool prints warm-up statistics first, then the regular runs'.
        "runs": _statistics(statistics[-1]) if statistics else None,
        "memory_init_mb": float(memory[1]) if memory else None,
        "memory_overall_mb": float(memory[2]) if memory else None,
        "peak_memory_mb": float(peak[1]) if peak else None,
        "op_profile": parse_op_profile(text),
    }


def _adb_runner(command: list[str]) -> str:
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    except FileNotFoundError as error:
        raise BenchmarkError(f"{command[0]!r} was not found. Install Android platform-tools and put adb on PATH, "
                             "or pass adb=/path/to/adb.") from error
    if done.returncode != 0:
        raise BenchmarkError(f"`{shlex.join(command)}` failed (exit {done.returncode}): "
                             f"{(done.stderr or done.stdout).strip()[-2000:]}")
    return done.stdout + done.stderr


def benchmark_on_device(paths: Sequence[str | Path], settings: DeviceSettings | None = None,
                        runner: Runner | None = None) -> list[DeviceResult]:
    """Run every .tflite in ``paths`` on the phone, one after the other, and parse the results."""
    settings = settings or DeviceSettings()
    runner = runner or _adb_runner
    if not paths:
        raise InvalidArgumentError("benchmark_on_device needs at least one .tflite path.")
    for path in paths:
        if not Path(path).is_file():
            raise InvalidArgumentError(f"{path}: no such file. Pass the path of a .tflite (kerascomp export writes one).")
    results = []
    for path in paths:
        prepare, push, run, remove = commands_for(settings, path)
        runner(prepare)
        runner(push)
        try:
            log = runner(run)
        finally:
            runner(remove)
        try:
            parsed = parse_benchmark_output(log)
        except BenchmarkError as error:
            raise BenchmarkError(f"{Path(path).name} on the phone: {error}") from error
        results.append(DeviceResult(str(path), Path(path).stat().st_size, settings=_settings_record(settings),
                                    **parsed))
    return results


def _settings_record(settings: DeviceSettings) -> dict:
    return {key: value for key, value in asdict(settings).items() if key not in ("adb",)}


def tflite_op_names(path: str | Path) -> dict[int, str]:
    """For each op of a .tflite: its output tensor name joined with its constant inputs' names.

    The profile names an op after its output only, and an op that writes a model output is
    named after the signature (``StatefulPartitionedCall_1:0``); its weights still carry the
    layer's name (``model_1/logits_1/MatMul``).
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    try:
        interpreter = Interpreter(model_path=str(path),
                                  experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    except (ValueError, RuntimeError) as error:
        raise BenchmarkError(f"{path} is not a .tflite LiteRT can read, so its ops cannot be named: {error}") from error
    names = {t["index"]: t["name"] for t in interpreter.get_tensor_details()}
    operations = interpreter._get_ops_details()  # the only op-level view the LiteRT Python API gives
    produced = {index for op in operations for index in op["outputs"]}
    graph_inputs = {d["index"] for d in interpreter.get_input_details()}
    table = {}
    for op in operations:
        constants = [i for i in op["inputs"] if i >= 0 and i not in produced and i not in graph_inputs]
        table[op["index"]] = ";".join(names[i] for i in list(op["outputs"]) + constants)
    return table


def layer_latency_table(profile: Sequence[OpProfileRow], layer_names: Sequence[str],
                        tflite: str | Path | None = None) -> dict[str, float]:
    """Milliseconds per Keras layer, from an op profile of a model kerascomp exported.

    TFLite names each op after its output tensor, e.g.
    ``model_1/s1b1_relu1_1/Relu;model_1/s1b1_bn1_1/...;model_1/s1b1_conv1_1/convolution``: a fused
    op lists every Keras layer folded into it (Keras 3 adds a ``_1`` call suffix). With the
    profiled ``tflite`` file at hand, its weights' names are used too (see :func:`tflite_op_names`).
    An op's time goes to the layers of ``layer_names`` it mentions (split evenly if several);
    time of ops that mention none is reported under ``"(other)"``.
    """
    if isinstance(layer_names, str):
        raise InvalidArgumentError("layer_names must be a list of layer names, not one string.")
    wanted = set(layer_names)
    by_index = tflite_op_names(tflite) if tflite is not None else {}
    table = {name: 0.0 for name in layer_names}
    table["(other)"] = 0.0
    for row in profile:
        index = re.search(r":(\d+)$", row.name)
        text = row.name + ";" + by_index.get(int(index[1]), "") if index else row.name
        mentioned = []
        for segment in re.split(r"[/\[\]:;]", text):
            for candidate in (segment, re.sub(r"_\d+$", "", segment)):
                if candidate in wanted:
                    if candidate not in mentioned:
                        mentioned.append(candidate)
                    break
        owners = mentioned or ["(other)"]
        for name in owners:
            table[name] += row.avg_ms * row.times_called / len(owners)
    return table

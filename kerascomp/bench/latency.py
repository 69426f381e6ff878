"""Per-layer latency tables, measured with LiteRT on this host or read from a phone benchmark.

``latency_table(model)`` times, for every dense Conv2D, single-layer ``.tflite`` files of its
candidate forms: the original, the conv with fewer input channels and with fewer output channels
(pruning its consumer side and its producer side; at the fractions asked and at multiples of 8),
the kxk(r) + 1x1 pair at several ranks (decomposition), FGA's grouped kxk + 1x1 for each group count, Tucker-2's
1x1 + kxk + 1x1 and its 1x1 + kxk with the last factor folded, and spatial SVD's kx1 + 1xk. Candidates of one layer shape are timed interleaved, and
layers of the same shape share one measurement. The whole original model is timed too; what
the convs do not account for is a fixed remainder.

A phone table comes from ``kerascomp bench --adb --op-profile --layers-from MODEL.keras``
(``layer_latency_ms`` of the original model): one point per layer, which the estimate scales by
MACs. The planner's ``target_latency`` is a fraction of the original model's estimated latency::

    table = kerascomp.latency_table(model)            # or LatencyTable.from_bench_json("phone.json", model)
    plan = kerascomp.plan(model, target_latency=0.6, latency=table, data=(x, y))
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from kerascomp.bench.host import benchmark_tflite, compare_tflite, host_cpu
from kerascomp.cost import graph_cost
from kerascomp.errors import InvalidArgumentError
from kerascomp.export.tflite import convert
from kerascomp.graph.keras_io import infer_shapes, module_for, read_model
from kerascomp.methods.sensitivity import conv_layers
from kerascomp.methods.strip import strip_model


@dataclass
class LatencyTable:
    """``layers[name]``: measured points ``{"form", "macs", "ms"}``; ``total_ms``: the whole original model."""

    layers: dict[str, list[dict]]
    total_ms: float
    source: str
    num_threads: int = 1
    original_macs: dict[str, int] = field(default_factory=dict)
    overhead_ms: float = 0.0

    def layer_ms(self, layer: str, form: str, macs: float) -> float:
        """Estimated milliseconds of ``layer`` in ``form`` at ``macs`` MACs: linear between measured
        points, proportional to MACs beyond them. An unmeasured form uses the dense points (an
        unmeasured group count of FGA: the ungrouped pair's; a table without ``"pruned_out"``
        points, such as a phone's: the fewer-inputs points)."""
        points = self.layers.get(layer)
        if not points:
            raise InvalidArgumentError(f"the latency table has no entry for layer {layer!r}; measure it with "
                                       "kerascomp.latency_table(model) for this model.")
        fallback = "factored" if form.startswith("fga") and any(p["form"] == "factored" for p in points) else "dense"
        chosen = [p for p in points if p["form"] == form] or [p for p in points if p["form"] == fallback]
        if form == "pruned_out" and chosen[0]["form"] == form:  # the unpruned conv is its full-width point
            chosen.append(max((p for p in points if p["form"] == "dense"), key=lambda p: p["macs"]))
        chosen = sorted(chosen, key=lambda p: p["macs"])
        xs, ys = np.array([p["macs"] for p in chosen], float), np.array([p["ms"] for p in chosen], float)
        if macs <= xs[0]:
            return float(ys[0] * macs / max(xs[0], 1.0))
        if macs >= xs[-1]:
            return float(ys[-1] * macs / max(xs[-1], 1.0))
        return float(np.interp(macs, xs, ys))

    def original_ms(self, layer: str) -> float:
        return self.layer_ms(layer, "dense", self.original_macs[layer])

    def pruned_ms(self, layer: str, in_share: float, out_share: float) -> float:
        """Estimated milliseconds of ``layer`` keeping ``in_share`` of its input channels and ``out_share`` of
        its filters: the fewer-inputs curve at those inputs, times the fewer-outputs curve's ratio at those
        filters (the two cuts taken as independent; a table without ``"pruned_out"`` points scales by MACs)."""
        full = self.original_macs[layer]
        fewer_inputs = self.layer_ms(layer, "dense", full * in_share)
        if out_share >= 1.0:
            return fewer_inputs
        original = self.original_ms(layer)
        return fewer_inputs * self.layer_ms(layer, "pruned_out", full * out_share) / max(original, 1e-12)

    @property
    def fixed_ms(self) -> float:
        """The part of the model's latency outside the tabled layers (never negative)."""
        return max(0.0, self.total_ms - sum(self.original_ms(name) for name in self.layers))

    def estimate(self, configs: dict[str, tuple[str, float]]) -> float:
        """Estimated model milliseconds with ``configs[layer] = (form, macs)`` (other layers as original)."""
        total = self.fixed_ms
        for name in self.layers:
            form, macs = configs.get(name, ("dense", self.original_macs[name]))
            total += self.layer_ms(name, form, macs)
        return total

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "LatencyTable":
        try:
            payload = json.loads(Path(path).read_text())
            return cls(**payload)
        except (OSError, json.JSONDecodeError, TypeError) as error:
            raise InvalidArgumentError(f"{path} is not a kerascomp latency table: {error}.") from None

    @classmethod
    def from_bench_json(cls, path: str | Path, model: Any, file: str | None = None) -> "LatencyTable":
        """A table from ``kerascomp bench --adb --op-profile --layers-from MODEL.keras --json PATH``
        (the profiled ``file`` among its results; the first if not named) for ``model``."""
        try:
            payload = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise InvalidArgumentError(f"cannot read the benchmark JSON {path}: {error}.") from None
        tables = payload.get("layer_latency_ms") if isinstance(payload, dict) else None
        if not tables:
            raise InvalidArgumentError(f"{path} has no layer_latency_ms: run kerascomp bench --adb --op-profile "
                                       "--layers-from MODEL.keras --json ... on the original model.")
        file = file or next(iter(tables))
        if file not in tables:
            raise InvalidArgumentError(f"{path} has no layer table for {file!r}; it has {sorted(tables)}.")
        result = next((r for r in payload.get("results", []) if Path(r.get("path", "")).name == file), None)
        if result is None:
            raise InvalidArgumentError(f"{path} has no benchmark result for {file!r}.")
        macs = conv_macs(model)
        missing = [name for name in macs if name not in tables[file]]
        if missing:
            raise InvalidArgumentError(f"the phone table of {file!r} lacks layers of this model: "
                                       f"{', '.join(missing[:5])}; profile the same model the plan is for.")
        layers = {name: [{"form": "dense", "macs": macs[name], "ms": float(tables[file][name])}] for name in macs}
        return cls(layers, float(result["inference_avg_us"]) / 1e3, f"phone: {path} ({file})",
                   int(result.get("settings", {}).get("num_threads", 1)), macs)


def conv_macs(model: Any) -> dict[str, int]:
    graph = read_model(model)
    costs = graph_cost(graph, infer_shapes(graph)).by_name()
    return {name: int(costs[name].macs) for name in conv_layers(graph)}


def _candidates(keras, kernel_shape, config: dict, input_shape: tuple, fractions,
                min_channels_per_group: int) -> list[tuple[str, float, Any]]:
    """(form, MACs fraction, single-layer model) for the original conv and its smaller forms: fewer
    inputs (``"dense"``), fewer outputs (``"pruned_out"``, a pruned producer), kxk(r) + 1x1 (``"factored"``),
    FGA's grouped kxk + 1x1 (``"fga{g}"``) and,
    for a kxk conv, Tucker-2's 1x1 + kxk core + 1x1 (``"tucker"``), 1x1 + kxk (``"tucker_in"``, its last
    factor folded) and spatial SVD's kx1 + 1xk (``"spatial"``)."""
    height, width, channels, filters = kernel_shape
    base = {key: config.get(key) for key in ("kernel_size", "strides", "padding", "dilation_rate") if key in config}
    spatial = tuple(input_shape[1:-1])

    def model(inputs: int, layers: list) -> Any:
        tensor = start = keras.Input(spatial + (inputs,), batch_size=1)
        for layer in layers:
            tensor = layer(tensor)
        return keras.Model(start, tensor)

    found = [("dense", 1.0, model(channels, [keras.layers.Conv2D(filters, **base)]))]
    area = height * width
    seen, seen_out = {channels}, {filters}
    for fraction in fractions:
        for kept in _counts(fraction, channels):
            if kept not in seen:
                seen.add(kept)
                found.append(("dense", kept / channels, model(kept, [keras.layers.Conv2D(filters, **base)])))
        for kept in _counts(fraction, filters):  # its own filters pruned: fewer output channels
            if kept not in seen_out:
                seen_out.add(kept)
                found.append(("pruned_out", kept / filters, model(channels, [keras.layers.Conv2D(kept, **base)])))
        for groups in [1] + [g for g in range(2, channels + 1)
                             if channels % g == 0 and channels // g >= min_channels_per_group]:
            # FGA with g groups at rank r costs r * (k*k*C + g*N) MACs per pixel; g = 1 is the plain factored pair
            rank = int(fraction * area * channels * filters / (area * channels + groups * filters))
            if 1 <= rank and rank * groups < min(area * channels, filters * groups):
                found.append(("factored" if groups == 1 else f"fga{groups}",
                              rank * (area * channels + groups * filters) / (area * channels * filters),
                              model(channels, [keras.layers.Conv2D(groups * rank, use_bias=False, groups=groups,
                                                                   **base),
                                               keras.layers.Conv2D(filters, 1)])))
        if area > 1:  # Tucker-2: 1x1 to s*C channels, the kxk core to s*N, 1x1 back to N (s by bisection)
            found += _tucker(keras, model, channels, filters, area, base, fraction, found)
        if height > 1 and width > 1:
            found += _spatial(keras, model, kernel_shape, base, fraction, found)
    return found


def _counts(fraction: float, channels: int) -> list[int]:
    """Channel counts timed at about ``fraction`` of ``channels``: the rounded count and the nearest multiple
    of 8 (the steps pruning snaps to by default), each below ``channels``."""
    kept = max(1, int(round(fraction * channels)))
    tile = max(8, int(round(fraction * channels / 8)) * 8)
    return [count for count in dict.fromkeys((kept, tile)) if count < channels]


def _spatial(keras, model, kernel_shape, base: dict, fraction: float, found: list) -> list[tuple[str, float, Any]]:
    """Spatial SVD's (kh x 1) conv to rank r then (1 x kw) conv, at about ``fraction`` of the MACs (the
    strides and dilations split between the two as ``methods/joint_svd.py`` does)."""
    height, width, channels, filters = kernel_shape
    strides = tuple(base.get("strides") or (1, 1))
    dilation = tuple(base.get("dilation_rate") or (1, 1))
    padding = base.get("padding", "valid")
    per_rank = strides[1] * height * channels + width * filters  # per output pixel, the first conv on stride-w more
    rank = int(fraction * height * width * channels * filters / per_rank)
    ratio = rank * per_rank / (height * width * channels * filters)
    if rank < 1 or ratio >= 1.0 or any(form == "spatial" and abs(f - ratio) < 1e-9 for form, f, _ in found):
        return []
    layers = [keras.layers.Conv2D(rank, (height, 1), strides=(strides[0], 1), dilation_rate=(dilation[0], 1),
                                  padding=padding, use_bias=False),
              keras.layers.Conv2D(filters, (1, width), strides=(1, strides[1]), dilation_rate=(1, dilation[1]),
                                  padding=padding)]
    return [("spatial", ratio, model(channels, layers))]


def _tucker(keras, model, channels: int, filters: int, area: int, base: dict, fraction: float,
            found: list) -> list[tuple[str, float, Any]]:
    """The Tucker-2 candidates of a kxk conv at about ``fraction`` of its MACs, the chain and the 1x1 + kxk
    with its last factor folded (the stride sits on the kxk conv, as ``methods/tucker.py`` builds them),
    unless ``found`` has them at those ranks already."""
    strides = base.get("strides") or (1, 1)
    step = int(np.prod(strides)) if isinstance(strides, (list, tuple)) else int(strides) ** 2

    def macs(share: float) -> tuple[float, int, int]:  # the first 1x1 runs on the input's (stride-times more) pixels
        into, out = max(1, int(share * channels)), max(1, int(share * filters))
        return (step * channels * into + area * into * out + out * filters) / (area * channels * filters), into, out

    low, high = 0.0, 1.0
    for _ in range(30):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if macs(middle)[0] <= fraction else (low, middle)
    ratio, into, out = macs(low)
    made = []
    if ratio < 1.0 and not any(form == "tucker" and abs(f - ratio) < 1e-9 for form, f, _ in found):
        layers = [keras.layers.Conv2D(into, 1, use_bias=False), keras.layers.Conv2D(out, use_bias=False, **base),
                  keras.layers.Conv2D(filters, 1)]
        made.append(("tucker", ratio, model(channels, layers)))
    # the last factor folded (the output mode at full rank): 1x1 to r channels, then the kxk conv from r to N;
    # the first folded is the kxk(r) + 1x1 pair, timed as "factored"
    rank = int(fraction * area * channels * filters / (step * channels + area * filters))
    ratio = rank * (step * channels + area * filters) / (area * channels * filters)
    if 1 <= rank < channels and ratio < 1.0 and not any(form == "tucker_in" and abs(f - ratio) < 1e-9
                                                         for form, f, _ in found):
        made.append(("tucker_in", ratio, model(channels, [keras.layers.Conv2D(rank, 1, use_bias=False),
                                                           keras.layers.Conv2D(filters, **base)])))
    return made


def default_cache() -> Path:
    """``$KERASCOMP_CACHE/latency``, else ``$XDG_CACHE_HOME/kerascomp/latency``, else ``~/.cache/kerascomp/latency``."""
    if os.environ.get("KERASCOMP_CACHE"):
        return Path(os.environ["KERASCOMP_CACHE"]) / "latency"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "kerascomp" / "latency"


def litert_version() -> str:
    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "unknown"


class TimingCache:
    """Timings on disk, keyed by what they depend on: the shapes, the host CPU, LiteRT and the threads."""

    def __init__(self, cache: Any, num_threads: int, runs: int):
        if cache is True:
            cache = default_cache()
        self.folder = Path(cache) if cache not in (None, False) else None
        self.context = {"cpu": host_cpu(), "litert": litert_version(), "threads": num_threads, "runs": runs}
        self.hits = self.misses = 0

    def _path(self, key: dict) -> Path:
        text = json.dumps({**key, **self.context}, sort_keys=True, default=str)
        return self.folder / f"{hashlib.sha256(text.encode()).hexdigest()[:24]}.json"

    def get(self, key: dict) -> Any:
        if self.folder is None:
            return None
        try:
            value = json.loads(self._path(key).read_text())["value"]
        except (OSError, ValueError, KeyError):
            self.misses += 1
            return None
        self.hits += 1
        return value

    def put(self, key: dict, value: Any) -> None:
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            path = self._path(key)
            partial = path.with_suffix(".part")
            partial.write_text(json.dumps({"key": {**key, **self.context}, "value": value}, default=str))
            os.replace(partial, path)
        except OSError:  # a read-only home must not stop the measurement
            pass


def invoke_overhead_ms(keras: Any, store: TimingCache, folder: str | Path) -> float:
    """What running any one-layer file costs beyond its layer (invoke, input and output copies): the
    median of a 1x1 conv on one pixel and one channel, subtracted from every single-layer timing."""
    overhead = store.get({"what": "overhead"})
    if overhead is None:
        empty = keras.Input((1, 1, 1), batch_size=1)
        trivial = Path(folder) / "overhead.tflite"
        trivial.write_bytes(convert(keras.Model(empty, keras.layers.Conv2D(1, 1)(empty)), None, None, False))
        overhead = benchmark_tflite(trivial, num_threads=store.context["threads"], runs=store.context["runs"]).median_ms
        store.put({"what": "overhead"}, overhead)
    return overhead


def latency_table(model: Any, fractions=(0.75, 0.5, 0.25, 0.1), num_threads: int = 1, runs: int = 30,
                  min_channels_per_group: int = 16, verbose: int = 1, cache: Any = True) -> LatencyTable:
    """Measure per-layer candidate latencies of ``model``'s dense Conv2D layers with LiteRT on this host.

    ``fractions``: the MACs fractions at which the pruned, factored and grouped (FGA, groups of at
    least ``min_channels_per_group`` channels) forms are timed. Each
    candidate is a single-layer fp32 ``.tflite`` at batch 1; candidates of one shape are timed
    interleaved, ``runs`` times each, at ``num_threads``.

    ``cache``: timings are kept on disk (``True``: :func:`default_cache`; or a folder; ``False``:
    measure everything), keyed by each layer's shapes and the candidates asked for, the host CPU
    model, the LiteRT version, the thread count and ``runs``; so a second table for the same
    architecture, or one that shares layer shapes with an earlier one, measures nothing again.
    The table's ``source`` says how many shapes came from the cache.
    """
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"runs must be an int >= 1, got {runs!r}.")
    if not fractions or any(not 0 < float(f) < 1 for f in fractions):
        raise InvalidArgumentError(f"fractions must be numbers in (0, 1), got {fractions!r}.")
    if not (isinstance(cache, (bool, str, os.PathLike)) or cache is None):
        raise InvalidArgumentError(f"cache must be True, False or a folder, got {type(cache).__name__}.")
    store = TimingCache(cache, num_threads, runs)
    options = {"fractions": [float(f) for f in fractions], "min_channels_per_group": min_channels_per_group,
               "forms": 4}  # 2: with Tucker-2 and spatial SVD; 3: with fewer output channels and multiples of 8;
    # 4: with Tucker-2's last factor folded ("tucker_in")
    graph = read_model(model)
    shapes = infer_shapes(graph)
    keras = module_for(graph)
    macs = conv_macs(model)
    signatures: dict[tuple, list[str]] = {}
    for name in conv_layers(graph):
        spec = graph.layers[name]
        node = graph.nodes_of(name)[0]
        input_shape = tuple(shapes[node.input_refs()[0].node][node.input_refs()[0].index])
        key = (spec.weights[0].shape, input_shape, tuple(sorted((k, str(spec.config.get(k))) for k in
                                                                  ("strides", "padding", "dilation_rate"))))
        signatures.setdefault(key, []).append(name)
    layers: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="kerascomp-latency-") as folder:
        overhead = invoke_overhead_ms(keras, store, folder)
        for index, (key, names) in enumerate(tqdm(signatures.items(), desc="latency table", disable=not verbose)):
            entry = {"what": "layer", "shape": key, **options}
            measured = store.get(entry)  # [(form, MACs fraction, median ms)] of this shape's candidates
            if measured is None:
                spec = graph.layers[names[0]]
                candidates = _candidates(keras, spec.weights[0].shape, spec.config, key[1], fractions,
                                         min_channels_per_group)
                paths = []
                for position, (_, _, single) in enumerate(candidates):
                    path = Path(folder) / f"{index}_{position}.tflite"
                    path.write_bytes(convert(single, None, None, False))
                    paths.append(path)
                timings = compare_tflite(paths, num_threads=num_threads, runs=runs)
                measured = [(form, fraction, t.median_ms) for (form, fraction, _), t in zip(candidates, timings)]
                store.put(entry, measured)
            for name in names:
                layers[name] = [{"form": form, "macs": int(round(fraction * macs[name])), "ms": max(ms - overhead, 0.0)}
                                for form, fraction, ms in measured]
        stripped = strip_model(model)
        whole_key = {"what": "model", "architecture": _architecture(stripped)}
        whole_ms = store.get(whole_key)
        if whole_ms is None:
            whole = Path(folder) / "model.tflite"
            whole.write_bytes(convert(stripped, None, None, False))
            whole_ms = benchmark_tflite(whole, num_threads=num_threads, runs=runs).median_ms
            store.put(whole_key, whole_ms)
        total = max(whole_ms - overhead, 0.0)
    source = f"host LiteRT (XNNPACK), {num_threads} thread(s)"
    if store.hits:
        source += f", {store.hits} of {store.hits + store.misses} timings from the cache {store.folder}"
    return LatencyTable(layers, total, source, num_threads, macs, overhead)


def _architecture(model: Any) -> str:
    """A digest of a model's structure (its config, wiring included, and weight shapes), not its weights."""
    described = [model.get_config(), [list(w.shape) for w in model.weights]]
    return hashlib.sha256(json.dumps(described, sort_keys=True, default=str).encode()).hexdigest()

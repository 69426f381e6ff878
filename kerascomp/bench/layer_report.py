"""``kerascomp.report(original, compressed)``: what compression did to each layer, measured.

Per layer of the original model: its form before and after (``Conv2D 3x3 64->64`` becomes
``Conv2D 3x3 64->16 + Conv2D 1x1 16->64``), MACs, params and the LiteRT latency of each, plus
the two whole models timed side by side. It reads both models through the graph IR and knows
nothing of methods: a layer of the compressed model belongs to the original layer of the same
name, else to the longest original name it extends (``conv_v``, ``conv_grouped``, ``conv_tucker_in``
belong to ``conv``), else to the layer a call was split from; a layer shared by several calls
(joint SVD's shared factor) is counted once for params and per call for MACs and time, each call
where it feeds. What matches nothing is listed as added.

How it times: every call with MACs becomes a one-layer fp32 ``.tflite`` at batch 1 (calls of the
same class, config and input shape share one file); all files and the two whole models are timed
interleaved at ``num_threads`` with XNNPACK, and each one-layer time has the invoke overhead
subtracted. What the timed layers do not account for (activations, adds, pooling, the invoke
itself) is the ``other`` row: the whole model's time minus the sum of its layers' (negative when
the one-layer files, each copying its input and output, add up to more than the whole model). The numbers are
ratios of one run on one host, so the CPU is recorded with them; ``cache=True`` reuses one-layer
timings of earlier runs (the whole models are always timed again).
"""
from __future__ import annotations

import json
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from kerascomp.bench.host import compare_tflite, host_cpu
from kerascomp.bench.latency import TimingCache, invoke_overhead_ms, litert_version
from kerascomp.cost import layer_macs, spec_params
from kerascomp.errors import InvalidArgumentError
from kerascomp.export.tflite import convert
from kerascomp.graph.ir import Graph, LayerSpec, Node
from kerascomp.graph.keras_io import infer_shapes, is_input, module_for, read_model, write_model
from kerascomp.loading import load_model
from kerascomp.methods.base import CostRatios
from kerascomp.methods.strip import strip_graph
from kerascomp.tables import table

ADDED = "(added)"


@dataclass
class LayerRow:
    """One original layer (or ``(added)`` layers): forms, MACs, params and measured ms before and after."""

    layer: str
    form_before: str
    form_after: str
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ms_before: float
    ms_after: float
    parts: list[str] = field(default_factory=list)

    @property
    def latency_ratio(self) -> float | None:
        return self.ms_after / self.ms_before if self.ms_before > 0 else None


@dataclass
class ModelReport(CostRatios):
    """The per-layer comparison of two models; ``save(prefix)`` writes ``.md``, ``.json`` and ``.png``."""

    original: str
    compressed: str
    rows: list[LayerRow]
    macs_before: int
    macs_after: int
    params_before: int
    params_after: int
    ms_before: float
    ms_after: float
    other_ms_before: float
    other_ms_after: float
    cpu: str
    litert: str
    num_threads: int
    runs: int
    cached_timings: int = 0

    @property
    def latency_ratio(self) -> float:
        return self.ms_after / self.ms_before if self.ms_before > 0 else float("nan")

    def summary(self) -> str:
        return (f"{self.compressed} vs {self.original}: MACs x{self.macs_ratio:.3f}, params x{self.params_ratio:.3f}, "
                f"latency x{self.latency_ratio:.3f} ({self.ms_after:.3f} / {self.ms_before:.3f} ms, whole models "
                f"timed interleaved; LiteRT {self.litert}, XNNPACK, {self.num_threads} thread(s), {self.runs} runs; "
                f"CPU {self.cpu})")

    def to_table(self, markdown: bool = False) -> str:
        def ratio(after: float, before: float) -> str:
            return f"{after / before:.2f}" if before > 0 else "-"

        rows = [[r.layer, r.form_before, r.form_after, f"{r.macs_before:,}", f"{r.macs_after:,}",
                 f"{r.params_before:,}", f"{r.params_after:,}", f"{r.ms_before:.4f}", f"{r.ms_after:.4f}",
                 ratio(r.ms_after, r.ms_before)] for r in self.rows]
        rows.append(["other", "not timed per layer", "", "", "", "", "", f"{self.other_ms_before:.4f}",
                     f"{self.other_ms_after:.4f}", ratio(self.other_ms_after, self.other_ms_before)])
        rows.append(["total", "", "", f"{self.macs_before:,}", f"{self.macs_after:,}", f"{self.params_before:,}",
                     f"{self.params_after:,}", f"{self.ms_before:.4f}", f"{self.ms_after:.4f}",
                     ratio(self.ms_after, self.ms_before)])
        headers = ["layer", "form before", "form after", "MACs before", "MACs after", "params before", "params after",
                   "ms before", "ms after", "latency ratio"]
        return table(headers, rows, markdown=markdown)

    def __str__(self) -> str:
        return self.to_table() + "\n" + self.summary()

    def to_markdown(self, command: str | None = None) -> str:
        lines = [f"### Per-layer report: {self.compressed} vs {self.original}", "", self.summary(), ""]
        if self.cached_timings:
            lines += [f"{self.cached_timings} one-layer timings came from the on-disk cache (same CPU, LiteRT, "
                      "threads and runs).", ""]
        if min(self.other_ms_before, self.other_ms_after) < 0:
            lines += ["`other` is negative: the layers timed one by one add up to more than the whole model (each "
                      "one-layer file copies its input and output and runs from a cold cache), so read the per-layer "
                      "milliseconds as relative costs.", ""]
        lines.append(self.to_table(markdown=True))
        if command:
            lines += ["", f"Made by: `{command}`"]
        return "\n".join(lines) + "\n"

    def to_json(self) -> str:
        payload = asdict(self)
        payload.update(macs_ratio=self.macs_ratio, params_ratio=self.params_ratio, latency_ratio=self.latency_ratio)
        return json.dumps(payload, indent=1)

    def plot(self, path: str | Path) -> Path:
        """A horizontal bar chart of each layer's ms before and after (and ``other``), as PNG."""
        try:
            import matplotlib

            matplotlib.use("Agg")
            from matplotlib import pyplot
        except ImportError:
            raise InvalidArgumentError("the PNG chart needs matplotlib: pip install 'kerascomp[report]' "
                                       "(or matplotlib); the Markdown and JSON need nothing more.") from None
        names = [r.layer for r in self.rows] + ["other"]
        before = [r.ms_before for r in self.rows] + [max(self.other_ms_before, 0.0)]
        after = [r.ms_after for r in self.rows] + [max(self.other_ms_after, 0.0)]
        figure, axes = pyplot.subplots(figsize=(8, max(3.0, 0.28 * len(names) + 1.2)))
        positions = range(len(names))
        axes.barh([p - 0.2 for p in positions], before, height=0.4, label=f"{self.original} ({self.ms_before:.3f} ms)")
        axes.barh([p + 0.2 for p in positions], after, height=0.4, label=f"{self.compressed} ({self.ms_after:.3f} ms)")
        axes.set_yticks(list(positions), names, fontsize=7)
        axes.invert_yaxis()
        axes.set_xlabel(f"ms per layer (LiteRT, {self.num_threads} thread(s))")
        axes.set_title(f"latency x{self.latency_ratio:.2f}, MACs x{self.macs_ratio:.2f}", fontsize=9)
        axes.legend(fontsize=7)
        figure.text(0.01, 0.005, self.cpu, fontsize=5)
        figure.tight_layout()
        path = Path(path)
        figure.savefig(path, dpi=120)
        pyplot.close(figure)
        return path

    def save(self, prefix: str | Path, command: str | None = None) -> list[Path]:
        """Write ``PREFIX.md``, ``PREFIX.json`` and ``PREFIX.png``; return their paths."""
        prefix = Path(prefix)
        if prefix.suffix in (".md", ".json", ".png"):
            prefix = prefix.with_suffix("")
        if prefix.parent and not prefix.parent.exists():
            prefix.parent.mkdir(parents=True, exist_ok=True)
        markdown, data, chart = (prefix.with_name(prefix.name + ext) for ext in (".md", ".json", ".png"))
        markdown.write_text(self.to_markdown(command))
        data.write_text(self.to_json())
        return [markdown, data, self.plot(chart)]


def _as_model(value: Any, argument: str) -> tuple[Any, str]:
    if isinstance(value, (str, Path)):
        return load_model(value), Path(value).name
    if hasattr(value, "get_config") and hasattr(value, "layers"):
        return value, value.name
    inner = getattr(value, "model", None)  # a kerascomp.compress(...) result
    if inner is not None and hasattr(inner, "get_config"):
        return inner, inner.name
    raise InvalidArgumentError(f"{argument} must be a Keras model, a .keras path or a kerascomp.compress(...) result, "
                               f"got {type(value).__name__}.")


def describe(spec: LayerSpec, input_shape: tuple) -> str:
    """A short form of one layer call: ``Conv2D 3x3/2 16->32 g2``, ``DepthwiseConv2D 3x3 96``, ``Dense 64->10``."""
    config = spec.config
    channels = input_shape[-1] if input_shape else "?"
    kernel = "x".join(str(v) for v in config.get("kernel_size", ()) or ())
    strides = tuple(config.get("strides", ()) or ())
    if kernel and any(s != 1 for s in strides):
        kernel += "/" + "x".join(str(s) for s in strides)
    name = spec.class_name
    if name == "DepthwiseConv2D":
        multiplier = config.get("depth_multiplier", 1)
        return f"{name} {kernel} {channels}" + (f"x{multiplier}" if multiplier != 1 else "")
    if "filters" in config:
        groups = config.get("groups", 1) or 1
        return f"{name} {kernel} {channels}->{config['filters']}" + (f" g{groups}" if groups > 1 else "")
    if "units" in config:
        return f"{name} {channels}->{config['units']}"
    return name


def _origin(graph: Graph, original: Graph, node: Node, depth: int = 0) -> str | None:
    """The original layer a call of the compressed graph belongs to (see the module docstring)."""
    if node.layer in original.layers:
        return node.layer
    if "__" in node.name:  # Graph.replace_layer names the leading calls of a chain ORIGINALCALL__LAYER
        head = node.name.split("__", 1)[0]
        called = next((n.layer for n in original.nodes if n.name == head), None)
        if called is not None:
            return called
    if len(graph.nodes_of(node.layer)) > 1 and depth < 8:  # a shared layer: where this call feeds
        consumers = graph.consumers(node.name)
        if len(consumers) == 1:
            found = _origin(graph, original, consumers[0], depth + 1)
            if found is not None:
                return found
    candidates = [name for name in original.layers if node.layer.startswith(name + "_")]
    return max(candidates, key=len) if candidates else None


def _timed_calls(graph: Graph, shapes: dict) -> list[tuple[Node, LayerSpec, tuple, int]]:
    """(call, layer, batch-1 input shape, MACs) of every single-input call with MACs."""
    found = []
    for node in graph.nodes:
        spec = graph.spec(node)
        refs = node.input_refs()
        if is_input(spec) or len(refs) != 1:
            continue
        input_shape = tuple(shapes[refs[0].node][refs[0].index])
        macs = layer_macs(spec, input_shape, shapes[node.name][0]) or 0
        if macs > 0:
            found.append((node, spec, (1,) + input_shape[1:], int(macs)))
    return found


def _signature(spec: LayerSpec, input_shape: tuple) -> dict:
    config = {k: v for k, v in spec.config.items() if k not in ("name", "trainable")}
    return {"what": "layer call", "class": spec.class_name, "config": json.loads(json.dumps(config, default=str)),
            "input": list(input_shape)}


def _single_layer(keras: Any, spec: LayerSpec, input_shape: tuple) -> Any:
    start = keras.Input(batch_shape=input_shape)
    return keras.Model(start, spec.cls.from_config({**spec.config, "name": "timed"})(start))


def report(original: Any, compressed: Any, num_threads: int = 1, runs: int = 50, cache: Any = False,
           verbose: int = 1, names: tuple[str, str] | None = None) -> ModelReport:
    """Compare ``compressed`` with ``original`` layer by layer, with latencies measured here (LiteRT).

    Both may be Keras models or ``.keras`` paths (``compressed`` also a ``kerascomp.compress``
    result). ``cache`` as in :func:`kerascomp.latency_table`. Returns a :class:`ModelReport`: print
    it, or ``.save("out/report")`` for the Markdown, JSON and PNG chart::

        rep = kerascomp.report(model, small)
        rep.save("small_report")          # small_report.md, .json, .png
    """
    if isinstance(num_threads, bool) or not isinstance(num_threads, int) or num_threads < 1:
        raise InvalidArgumentError(f"num_threads must be an int >= 1, got {num_threads!r}.")
    if isinstance(runs, bool) or not isinstance(runs, int) or runs < 1:
        raise InvalidArgumentError(f"runs must be an int >= 1, got {runs!r}.")
    models = [_as_model(original, "original"), _as_model(compressed, "compressed")]
    (before_model, before_name), (after_model, after_name) = models
    if names is not None:
        before_name, after_name = (str(name) for name in names)
    elif before_name == after_name:
        after_name += " (compressed)"
    graphs = [strip_graph(read_model(before_model)), strip_graph(read_model(after_model))]
    inputs = [sorted(tuple(s[1:]) for s in g.input_shapes().values()) for g in graphs]
    if inputs[0] != inputs[1]:
        raise InvalidArgumentError(f"the two models take different inputs ({inputs[0]} vs {inputs[1]}): "
                                   "compare a compressed model with the model it was made from.")
    keras = module_for(graphs[0])
    store = TimingCache(cache, num_threads, runs)
    calls = [(graph, _timed_calls(graph, infer_shapes(graph))) for graph in graphs]
    with tempfile.TemporaryDirectory(prefix="kerascomp-report-") as folder:
        overhead = invoke_overhead_ms(keras, store, folder)
        timings: dict[str, float] = {}
        pending: dict[str, tuple[dict, Path]] = {}
        for _graph, found in calls:
            for _, spec, input_shape, _ in found:
                key = _signature(spec, input_shape)
                text = json.dumps(key, sort_keys=True)
                if text in timings or text in pending:
                    continue
                hit = store.get(key)
                if hit is not None:
                    timings[text] = hit
                    continue
                path = Path(folder) / f"layer_{len(pending)}.tflite"
                path.write_bytes(convert(_single_layer(keras, spec, input_shape), None, None, False))
                pending[text] = (key, path)
        wholes = []
        for index, graph in enumerate(graphs):
            path = Path(folder) / f"model_{index}.tflite"
            path.write_bytes(convert(write_model(graph), None, None, False))
            wholes.append(path)
        if verbose:
            print(f"timing {len(pending)} one-layer files and the two models ({len(timings)} layer timings cached)")
        results = compare_tflite(wholes + [path for _, path in pending.values()], num_threads=num_threads, runs=runs)
    whole_ms = [r.median_ms for r in results[:2]]  # as a user would time them, invoke included
    for (text, (key, _)), result in zip(pending.items(), results[2:]):
        timings[text] = result.median_ms
        store.put(key, result.median_ms)

    def call_ms(spec: LayerSpec, input_shape: tuple) -> float:
        return max(timings[json.dumps(_signature(spec, input_shape), sort_keys=True)] - overhead, 0.0)

    rows: dict[str, LayerRow] = {}
    order = [node.layer for node in graphs[0].nodes]
    for side, (graph, found) in enumerate(calls):
        counted_params: set[str] = set()
        for node, spec, input_shape, macs in found:
            owner = node.layer if side == 0 else (_origin(graph, graphs[0], node) or ADDED)
            row = rows.setdefault(owner, LayerRow(owner, "", "", 0, 0, 0, 0, 0.0, 0.0))
            params = 0 if spec.name in counted_params else spec_params(spec)
            counted_params.add(spec.name)
            form = describe(spec, input_shape)
            ms = call_ms(spec, input_shape)
            if side == 0:
                row.form_before = f"{row.form_before} + {form}" if row.form_before else form
                row.macs_before += macs
                row.params_before += params
                row.ms_before += ms
            else:
                row.form_after = f"{row.form_after} + {form}" if row.form_after else form
                row.macs_after += macs
                row.params_after += params
                row.ms_after += ms
                row.parts.append(node.name)
    for row in rows.values():
        row.form_before = row.form_before or "-"
        row.form_after = row.form_after or "removed"
    ranked = sorted(rows.values(), key=lambda r: (r.layer == ADDED, order.index(r.layer) if r.layer in order else 0))
    totals = [(sum(m for _, _, _, m in found), sum(spec_params(s) for s in graph.layers.values()))
              for graph, found in calls]
    other = [whole_ms[0] - sum(r.ms_before for r in ranked), whole_ms[1] - sum(r.ms_after for r in ranked)]
    return ModelReport(before_name, after_name, ranked, totals[0][0], totals[1][0], totals[0][1], totals[1][1],
                       whole_ms[0], whole_ms[1], other[0], other[1], host_cpu(), litert_version(), num_threads, runs,
                       store.hits)

"""How much of the MACs cut does each method turn into LiteRT speed? fp32 and int8, 1 thread, XNNPACK.

    python -m benchmarks.latency_realization --models resnet20 --latency-table
    python -m benchmarks.latency_realization --models resnet50,mobilenetv2 --runs 10
    python -m benchmarks.latency_realization --report        # rewrite the Markdown from the JSON

Writes benchmarks/results/latency_realization.{json,md} (one file per run of the script; ``--out``
names another). For each model, every method is compressed to each ``--targets`` MACs fraction at
default options, exported fp32 and int8 (each file checked against its Keras model), and every
file of the model -- original, compressed, and the *thin anchors* (the same architecture built thin and
dense, random weights: CIFAR ResNets of the same depth at widths 6..14; MobileNetV2, MobileNetV3Small and
EfficientNetB0 at width multipliers 0.35, 0.5, 0.75) -- is timed in one interleaved
``compare_tflite`` call per precision. So every ratio in a row was measured side by side, and the
CPU model is recorded with them.

Columns: latency ratio (compressed / original); realised fraction = MACs kept / latency kept (1.0:
the speed-up equals the MACs cut); vs thin anchor = the compressed latency / the anchors' latency
interpolated at the same MACs ratio (<= 1.0: at least as fast as a dense model built thin, the
honest reference on 32x32 inputs where the host has a floor no compression removes).
``--latency-table`` adds a ``<method>+table`` row for each method that plans against a measured
table under a MACs target (``Method.latency_front``), with ``latency=kerascomp.latency_table(model)``.

Data: the CIFAR models are trained (the shipped ResNet-20, benchmarks/models/resnet56_cifar10.keras)
and get ``--calibration`` labelled CIFAR training images as ``data=`` (reconstruction, BN
recalibration, collaborative's sensitivity) and for the int8 calibration and parity. The 224x224
keras.applications models have random weights and get random images in their input range ([-1, 1]
for MobileNetV2, 0..255 for the others, which rescale inside) and random labels, with their BatchNorm
statistics taken from the first 64 of those images (so their outputs vary from image to image and the
parity check means something): only their timing and parity mean anything.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import calibrated, result_file

RESULTS = Path(__file__).resolve().parent / "results"
MODELS_DIR = Path(__file__).resolve().parent / "models"
ALL_METHODS = ("fga", "l1", "correlation", "svd", "joint_svd", "tucker", "collaborative", "auto")
THIN_WIDTHS = (6, 8, 10, 12, 14)
PRECISIONS = ("fp32", "int8")


MOBILE = {  # name -> (keras.applications builder, input range of its images)
    "mobilenetv2": ("MobileNetV2", (-1.0, 1.0)),
    "mobilenetv3small": ("MobileNetV3Small", (0.0, 255.0)),
    "efficientnetb0": ("EfficientNetB0", (0.0, 255.0)),
}
ALPHAS = (0.35, 0.5, 0.75)  # the mobile nets' thin anchors: the same architecture at these width multipliers


def _model(keras, name: str):
    """(model, CIFAR ResNet depth or None)."""
    from kerascomp.loading import load_demo_model

    if name == "resnet20":
        return load_demo_model(), 20
    if name == "resnet56":
        return keras.models.load_model(MODELS_DIR / "resnet56_cifar10.keras", compile=False), 56
    if name == "resnet50":
        return keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3)), None
    if name in MOBILE:
        return getattr(keras.applications, MOBILE[name][0])(weights=None, input_shape=(224, 224, 3)), None
    raise SystemExit(f"unknown model {name!r}: choose from resnet20, resnet56, resnet50, {', '.join(MOBILE)}")


def _thin_models(keras, name: str, depth):
    """{label: (dense model of the same architecture built thin)}: the CIFAR ResNets at widths 6..14, the
    mobile nets at width multipliers ``ALPHAS`` (EfficientNetB0 through keras' EfficientNet builder with
    ``width_coefficient``); ResNet50 has none. Random weights: they are timed, never run for accuracy."""
    if depth is not None:
        from kerascomp.zoo import cifar_resnet

        return {f"thin{width}": cifar_resnet(depth, width=width, keras_module=keras) for width in THIN_WIDTHS}
    if name in ("mobilenetv2", "mobilenetv3small"):
        build = getattr(keras.applications, MOBILE[name][0])
        return {f"alpha{alpha}": build(alpha=alpha, weights=None, input_shape=(224, 224, 3)) for alpha in ALPHAS}
    if name == "efficientnetb0":
        try:
            from keras.src.applications.efficientnet import EfficientNet
        except ImportError:  # tf_keras
            EfficientNet = getattr(getattr(keras.applications, "efficientnet", None), "EfficientNet", None)
        if EfficientNet is None:
            return {}
        return {f"alpha{alpha}": EfficientNet(alpha, 1.0, 224, weights=None, input_shape=(224, 224, 3),
                                              name=f"efficientnet_w{alpha}") for alpha in ALPHAS}
    return {}


def _data(model, name: str, depth, count: int, data_argument):
    import numpy as np

    shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    classes = int(model.outputs[0].shape[-1])
    if depth is not None:
        from benchmarks.common import load_cifar

        arrays = load_cifar(data_argument)
        if arrays is None:
            raise SystemExit(2)
        return arrays["x_train"][:count].astype("float32"), arrays["y_train"][:count].reshape(-1).astype("int64")
    rng = np.random.default_rng(0)
    low, high = MOBILE[name][1] if name in MOBILE else (0.0, 255.0)
    return (rng.uniform(low, high, (count,) + shape).astype("float32"),
            rng.integers(0, classes, count).astype("int64"))


def _export(kerascomp, model, path: Path, label: str, calibration) -> dict:
    mode = None if label == "fp32" else label
    try:
        result = kerascomp.export_tflite(model, path, quantize=mode, representative_data=calibration)
    except kerascomp.CompressionError as error:
        return {"error": f"{type(error).__name__}: {error}"}
    return {"path": str(path), "size_bytes": result.size_bytes, "parity_relative_error": result.relative_error,
            "parity_top1_agreement": result.top1_agreement, "parity_passed": bool(result.passed)}


def _anchor_curve(points: list[tuple[float, float]]):
    """Piecewise-linear latency ratio of the thin anchors as a function of their MACs ratio."""
    import numpy as np

    points = sorted(points)
    macs, latency = np.array([p[0] for p in points]), np.array([p[1] for p in points])

    def at(ratio: float) -> float | None:
        if ratio < macs[0] or ratio > macs[-1]:
            return None  # outside the anchors' range: no extrapolation
        return float(np.interp(ratio, macs, latency))
    return at


def run_model(kerascomp, keras, name: str, args, workdir: Path) -> list[dict]:
    keras.utils.set_random_seed(0)  # the same random weights in every run
    model, depth = _model(keras, name)
    x, y = _data(model, name, depth, args.calibration, args.data)
    if depth is None:  # random weights: take the BN statistics from the images, so the outputs vary
        model = calibrated(model, x[:64])
    calibration = x[: min(len(x), 64)]
    original_macs = kerascomp.cost(model).macs
    files: dict[str, dict] = {}  # key -> {"fp32": export, "int8": export}
    files["original"] = {label: _export(kerascomp, model, workdir / f"{name}_original_{label}.tflite", label,
                                        calibration) for label in args.precisions}
    anchors = {}  # label -> MACs ratio of the thin dense model
    for key, thin in ({} if args.no_anchors else _thin_models(keras, name, depth)).items():
        anchors[key] = kerascomp.cost(thin).macs / original_macs
        files[key] = {label: _export(kerascomp, thin, workdir / f"{name}_{key}_{label}.tflite", label,
                                     calibration[:8]) for label in args.precisions}
    table = None
    runs = []
    for spec in args.methods:
        method, options = parse_method(spec)
        variants = [(spec, None)]
        if args.latency_table and kerascomp.methods.registry.get(method).latency_front:
            if table is None:
                table = kerascomp.latency_table(model, verbose=0)
            variants.append((spec + "+table", table))
        for row_name, latency in variants:
            for target in args.targets:
                record = {"model": name, "method": row_name, "target_flops": target}
                started = time.perf_counter()
                try:
                    result = kerascomp.compress(model, method=method, target_flops=target, data=(x, y), verbose=0,
                                                **({"latency": latency} if latency is not None else {}), **options)
                except kerascomp.CompressionError as error:
                    record["error"] = f"{type(error).__name__}: {error}"
                    runs.append(record)
                    print(json.dumps(record), flush=True)
                    continue
                record["compress_seconds"] = round(time.perf_counter() - started, 1)
                record["macs_ratio"] = result.report.macs_ratio
                record["params_ratio"] = result.report.params_ratio
                if "latency_front" in result.report.notes:
                    record["latency_front"] = result.report.notes["latency_front"]
                key = f"{row_name}@{target}"
                files[key] = {label: _export(kerascomp, result.model, workdir / f"{name}_{key}_{label}.tflite".replace(
                    "+", "_"), label, calibration) for label in args.precisions}
                record["file"] = key
                runs.append(record)
                print(json.dumps({k: v for k, v in record.items() if k != "latency_front"}), flush=True)
    # every file of this model, one interleaved timing per precision
    for label in args.precisions:
        keys = [k for k, v in files.items() if "path" in v[label]]
        if "original" not in keys:
            continue
        timings = kerascomp.compare_tflite([files[k][label]["path"] for k in keys], num_threads=1, runs=args.runs)
        for key, timing in zip(keys, timings):
            files[key][label]["median_ms"] = timing.median_ms
    records = []
    for label in args.precisions:
        base = files["original"][label].get("median_ms")
        if base is None:
            continue
        points = [(1.0, 1.0)] + [(anchors[w], files[w][label]["median_ms"] / base)
                                 for w in anchors if "median_ms" in files[w][label]]
        files["original"][label]["anchor_points"] = [[round(m, 4), round(t, 4)] for m, t in sorted(points)]
    curves = {label: _anchor_curve(files["original"][label].get("anchor_points", [(1.0, 1.0)])) for label in args.precisions}
    for record in runs:
        if "file" in record:
            for label in args.precisions:
                entry, base = dict(files[record["file"]][label]), files["original"][label]
                entry.pop("path", None)
                if "median_ms" in entry and "median_ms" in base:
                    ratio = entry["median_ms"] / base["median_ms"]
                    entry["latency_ratio"] = ratio
                    entry["realised_fraction"] = record["macs_ratio"] / ratio
                    anchor = curves[label](record["macs_ratio"]) if anchors else None
                    if anchor is not None:
                        entry["anchor_latency_ratio"] = anchor
                        entry["vs_anchor"] = ratio / anchor
                entry["original_parity_passed"] = base.get("parity_passed")
                record[label] = entry
        records.append(record)
    original = {label: {k: v for k, v in files["original"][label].items() if k != "path"} for label in args.precisions}
    thin = {w: {"macs_ratio": anchors[w], **{label: {k: v for k, v in files[w][label].items() if k != "path"}
                                             for label in args.precisions}} for w in anchors}
    records.append({"model": name, "method": "original", "macs": original_macs, **original, "anchors": thin})
    return records


def parse_method(spec: str) -> tuple[str, dict]:
    """``"l1"`` -> ("l1", {}); ``"l1:stream=uniform;max_fraction=0.9"`` -> ("l1", {...}). Options are
    joined by ``;`` (commas separate rows). A value is read as JSON when it parses (numbers, true,
    false), else kept as a string."""
    method, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, rest.split(";")):
        key, equals, value = item.partition("=")
        if not equals:
            raise SystemExit(f"--methods {spec!r}: an option must read name=value, got {item!r}")
        try:
            options[key] = json.loads(value)
        except json.JSONDecodeError:
            options[key] = value
    return method, options


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet56,resnet50,mobilenetv2")
    parser.add_argument("--methods", default=",".join(ALL_METHODS),
                        help="comma-separated; a method may carry options: l1:stream=uniform;max_fraction=0.9")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per file and precision")
    parser.add_argument("--calibration", type=int, default=512, help="images given as data= and for int8")
    parser.add_argument("--latency-table", action="store_true",
                        help="also a <method>+table row for each method with a latency front")
    parser.add_argument("--no-anchors", action="store_true", help="skip the thin anchors (dense models built thin)")
    parser.add_argument("--precisions", default=",".join(PRECISIONS),
                        help="fp32,int8 (default) or one of them: int8 on random-weight models says little")
    parser.add_argument("--data", default=None)
    parser.add_argument("--out", default=str(RESULTS / "latency_realization"))
    parser.add_argument("--report", action="store_true", help="only rewrite --out's Markdown from its JSON")
    args = parser.parse_args(argv)
    if args.report:
        regenerate(Path(args.out))
        return 0
    args.methods = [m for m in args.methods.split(",") if m]
    args.targets = [float(t) for t in args.targets.split(",")]
    args.precisions = [p for p in args.precisions.split(",") if p]
    if not args.precisions or set(args.precisions) - set(PRECISIONS):
        raise SystemExit(f"--precisions takes {' and/or '.join(PRECISIONS)}, got {args.precisions}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import kerascomp
    import kerascomp.methods.registry  # noqa: F401
    from benchmarks.common import command_line, cpu_model
    from kerascomp.graph.flavour import default_keras

    unknown = [m for m in args.methods if parse_method(m)[0] not in kerascomp.methods.registry.names()]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from {', '.join(ALL_METHODS)}")
    keras = default_keras()
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-latency-"))
    out = Path(args.out)
    records = []
    meta = {"command": command_line("benchmarks.latency_realization") if argv is None else
            "python -m benchmarks.latency_realization " + " ".join(argv),
            "date": time.strftime("%Y-%m-%d %H:%M"), "cpu": cpu_model(), "cpus": os.cpu_count(),
            "keras": keras.__name__ + " " + keras.__version__, "threads": 1, "runs": args.runs,
            "calibration": args.calibration}
    for name in [m for m in args.models.split(",") if m]:
        try:
            records.extend(run_model(kerascomp, keras, name, args, workdir))
        except Exception:  # one model's failure is recorded, the others still run
            records.append({"model": name, "method": "original", "error": traceback.format_exc(limit=3)})
        write(out, meta, records)  # after each model, so a long run leaves what it finished
    print(markdown_report(meta, records))
    return 0


def write(out: Path, meta: dict, records: list[dict]) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file(out, ".json").write_text(json.dumps({"meta": meta, "results": records}, indent=2, default=str) + "\n")
    result_file(out, ".md").write_text(markdown_report(meta, records))


HEADERS = ["model", "method", "target", "precision", "MACs ratio", "latency ratio", "realised fraction",
           "thin anchor", "vs anchor", "parity (rel. error, top-1 agr.)", "compress s"]
_TOLERANCE = {"fp32": 1e-4, "int8": 0.1}  # export_tflite's tolerance, for rows recorded before the verdict was


def _parity(entry: dict, label: str) -> tuple[bool, str]:
    passed = entry.get("parity_passed")
    if passed is None:
        passed = entry["parity_relative_error"] <= _TOLERANCE[label]
    agreement = entry.get("parity_top1_agreement")
    text = f"{entry['parity_relative_error']:.3g}" + ("" if agreement is None else f", {agreement:.3f}")
    return passed, text + ("" if passed else " **FAILED**")


def _fmt(value, digits=3):
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(record: dict) -> list[list]:
    """One row per precision; a latency whose file failed its parity check is marked, not shown bare."""
    rows = []
    for label in PRECISIONS:
        entry = record.get(label)
        if entry is None:
            continue
        if "error" in entry:
            rows.append([record["model"], record.get("method", "fga"), record["target_flops"], label,
                         _fmt(record["macs_ratio"]), "export failed: " + entry["error"][:80], "", "", "", "", ""])
            continue
        if "latency_ratio" not in entry:
            continue
        passed, parity = _parity(entry, label)
        mark = "" if passed else " (parity failed)"
        vs = entry.get("vs_anchor")
        rows.append([record["model"], record.get("method", "fga"), record["target_flops"], label,
                     _fmt(record["macs_ratio"]), _fmt(entry["latency_ratio"]) + mark,
                     _fmt(entry["realised_fraction"], 2) + mark, _fmt(entry.get("anchor_latency_ratio")),
                     "" if vs is None else _fmt(vs) + (" ok" if vs <= 1.0 else " slower") + mark, parity,
                     record.get("compress_seconds", "")])
    return rows


def _anchor_lines(records: list[dict]) -> list[str]:
    lines = []
    for record in records:
        if record.get("method") != "original" or "anchors" not in record:
            continue
        for label in PRECISIONS:
            points = record.get(label, {}).get("anchor_points")
            if points and len(points) > 1:  # (1, 1), the original alone, is no anchor
                lines.append(f"- {record['model']} {label}: (MACs ratio, latency ratio) of the thin anchors "
                             + ", ".join(f"({m:.3f}, {t:.3f})" for m, t in points))
    return lines


def markdown_report(meta: dict, records: list[dict]) -> str:
    from kerascomp.tables import table

    rows = [row for record in records if record.get("method") != "original" for row in table_rows(record)]
    errors = [f"- {r['model']} {r.get('method', 'fga')} @ {r.get('target_flops', '')}: {r['error']}"
              for r in records if "error" in r]
    markdown = ["# Latency realisation (LiteRT, 1 thread, XNNPACK)\n", f"Command: `{meta['command']}`  ",
                f"Run: {meta['date']}, {meta['keras']}, CPU: {meta.get('cpu', 'not recorded')}, {meta['cpus']} "
                f"CPUs, {meta['runs']} interleaved runs per file; every file of a model timed in one call per "
                "precision.\n",
                "latency ratio = compressed / original median; realised fraction = MACs ratio / latency ratio "
                "(1.0: the speed-up equals the MACs cut); thin anchor = the latency ratio of the same architecture built "
                "thin and dense (CIFAR ResNets at widths 6-14; MobileNetV2, MobileNetV3Small, EfficientNetB0 at width "
                f"multipliers {', '.join(map(str, ALPHAS))}; same run), interpolated at the row's MACs ratio; vs anchor = "
                "latency ratio / thin anchor (<= 1.0: at least as fast as the thin dense model). A file that "
                "failed its parity check against its Keras model is marked: its latency is not evidence. "
                "Random-weight 224x224 models are calibrated on random images, so their int8 parity is weak.\n",
                table(HEADERS, rows, markdown=True)]
    if meta.get("note"):
        markdown.insert(3, f"Note: {meta['note']}\n")
    anchors = _anchor_lines(records)
    if anchors:
        markdown += ["\nThin anchors:\n"] + anchors
    if errors:
        markdown += ["\nRefused or failed:\n"] + errors
    return "\n".join(markdown) + "\n"


def regenerate(path: Path) -> None:
    """Rewrite the Markdown of an existing JSON (``--report``), e.g. after the table format changed."""
    data = json.loads(result_file(path, ".json").read_text())
    result_file(path, ".md").write_text(markdown_report(data["meta"], data["results"]))


if __name__ == "__main__":
    sys.exit(main())

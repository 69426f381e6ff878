"""How much of the ideal (MACs) speedup does FGA realise in LiteRT? fp32 and int8, 1 thread.

    python -m benchmarks.latency_realization            # writes benchmarks/results/latency_realization.{json,md}

Models: the shipped CIFAR ResNet-20 (32x32) and keras.applications ResNet50 (224x224, random
weights: only timing matters). Each is compressed with FGA to target_flops 0.5 and 0.25 and
timed interleaved with its original (ratios only; this machine is shared and noisy).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def _models(keras, which: list[str]):
    from kerascomp.loading import load_demo_model

    if "resnet20" in which:
        yield "cifar_resnet20", load_demo_model(), {}
    if "resnet50" in which:
        # ResNet50's 3x3 convs and stem hold only ~48% of its MACs, so FGA needs its 1x1 convs too.
        yield "resnet50_224", keras.applications.ResNet50(weights=None, input_shape=(224, 224, 3)), {"pointwise": True}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet20,resnet50")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--calibration", type=int, default=32)
    parser.add_argument("--rank-multiple", type=int, default=None, help="FGA rank_multiple (default: auto 8, 4, 1)")
    parser.add_argument("--out", default=str(RESULTS / "latency_realization"))
    parser.add_argument("--report", action="store_true", help="only rewrite --out's Markdown from its JSON")
    args = parser.parse_args(argv)
    if args.report:
        regenerate(Path(args.out))
        return 0
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from benchmarks.common import cpu_model
    from kerascomp.graph.flavour import default_keras
    from kerascomp.tables import table

    keras = default_keras()
    rows, records = [], []
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-latency-"))
    for name, model, options in _models(keras, args.models.split(",")):
        if args.rank_multiple is not None:
            options = {**options, "rank_multiple": args.rank_multiple}
        shape = tuple(int(d) for d in model.inputs[0].shape[1:])
        calibration = np.random.default_rng(0).uniform(0, 255, (args.calibration,) + shape).astype("float32")
        exports = {}
        for mode in (None, "int8"):
            exports[("orig", mode)] = kerascomp.export_tflite(model, workdir / f"{name}_orig_{mode}.tflite", quantize=mode,
                                                             representative_data=calibration)
        for target in [float(t) for t in args.targets.split(",")]:
            record = {"model": name, "target_flops": target, "options": options}
            try:
                started = time.perf_counter()
                result = kerascomp.compress(model, method="fga", target_flops=target, verbose=0, **options)
                record["compress_seconds"] = round(time.perf_counter() - started, 2)
            except kerascomp.CompressionError as error:
                record["error"] = f"{type(error).__name__}: {error}"
                records.append(record)
                continue
            record["macs_ratio"] = result.report.macs_ratio
            record["params_ratio"] = result.report.params_ratio
            for mode in (None, "int8"):
                label = mode or "fp32"
                try:
                    small = kerascomp.export_tflite(result.model, workdir / f"{name}_{target}_{label}.tflite",
                                                    quantize=mode, representative_data=calibration)
                except kerascomp.CompressionError:
                    record[f"{label}_error"] = traceback.format_exc(limit=1)
                    continue
                original = exports[("orig", mode)]
                timings = kerascomp.compare_tflite([original.path, small.path], num_threads=1, runs=args.runs)
                latency_ratio = timings[1].median_ms / timings[0].median_ms
                realised = (1 / latency_ratio) / (1 / result.report.macs_ratio)
                record[label] = {"latency_ratio": latency_ratio, "realised_fraction": realised,
                                 "size_ratio": small.size_bytes / original.size_bytes,
                                 "original_median_ms": timings[0].median_ms, "compressed_median_ms": timings[1].median_ms,
                                 "parity_relative_error": small.relative_error, "parity_passed": small.passed,
                                 "original_parity_passed": original.passed,
                                 "parity_top1_agreement": small.top1_agreement}
            records.append(record)
            rows.extend(table_rows(record))
            print(json.dumps(record), flush=True)
    command = "python -m benchmarks.latency_realization " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
            "cpu": cpu_model(), "cpus": os.cpu_count(), "keras": keras.__name__ + " " + keras.__version__,
            "threads": 1, "runs": args.runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": records}, indent=2) + "\n")
    out.with_suffix(".md").write_text(markdown_report(meta, records))
    print(table(HEADERS, rows))
    return 0


HEADERS = ["model", "target", "precision", "MACs ratio", "latency ratio", "realised fraction", "size ratio",
           "parity (relative error, top-1 agreement)", "compress s"]
# export_tflite's relative-error tolerance per precision, for rows recorded before they stored the verdict
_TOLERANCE = {"fp32": 1e-4, "int8": 0.1}


def _parity(entry: dict, label: str) -> tuple[bool, str]:
    passed = entry.get("parity_passed")
    if passed is None:  # an older row: judge its recorded relative error against the export tolerance
        passed = entry["parity_relative_error"] <= _TOLERANCE[label]
    agreement = entry.get("parity_top1_agreement")
    text = f"{entry['parity_relative_error']:.3g}" + ("" if agreement is None else f", {agreement:.3f}")
    return passed, text + ("" if passed else " **FAILED**")


def table_rows(record: dict) -> list[list]:
    """One row per precision; a latency whose file failed its parity check is marked, not shown bare."""
    rows = []
    for label in ("fp32", "int8"):
        entry = record.get(label)
        if entry is None:
            continue
        passed, parity = _parity(entry, label)
        latency = f"{entry['latency_ratio']:.3f}" + ("" if passed else " (parity failed)")
        realised = f"{entry['realised_fraction']:.2f}" + ("" if passed else " (parity failed)")
        rows.append([record["model"], record["target_flops"], label, f"{record['macs_ratio']:.3f}", latency,
                     realised, f"{entry['size_ratio']:.3f}", parity, record["compress_seconds"]])
    return rows


def markdown_report(meta: dict, records: list[dict]) -> str:
    from kerascomp.tables import table

    rows = [row for record in records for row in table_rows(record)]
    errors = [f"- {r['model']} @ {r['target_flops']}: {r['error']}" for r in records if "error" in r]
    markdown = ["# FGA latency realisation (LiteRT, 1 thread, XNNPACK)\n", f"Command: `{meta['command']}`  ",
                f"Run: {meta['date']}, {meta['keras']}, {meta.get('cpu', 'CPU model not recorded')}, {meta['cpus']} "
                f"CPUs, {meta['runs']} interleaved runs per file.\n",
                "realised fraction = (original latency / compressed latency) / (original MACs / compressed MACs); "
                "1.0 means the speedup equals the MACs reduction. A file that failed its parity check against "
                "its Keras model is marked: its latency is not evidence of anything. The calibration inputs are "
                "random, so int8 parity on these random-weight models is weak at best.\n",
                table(HEADERS, rows, markdown=True)]
    if errors:
        markdown += ["\nRefused:\n"] + errors
    return "\n".join(markdown) + "\n"


def regenerate(path: Path) -> None:
    """Rewrite the Markdown of an existing JSON (``--report``), e.g. after the table format changed."""
    data = json.loads(path.with_suffix(".json").read_text())
    path.with_suffix(".md").write_text(markdown_report(data["meta"], data["results"]))


if __name__ == "__main__":
    sys.exit(main())

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
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from kerascomp.graph.flavour import default_keras
    from kerascomp.report import table

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
                                 "parity_relative_error": small.relative_error}
                rows.append([name, target, label, f"{result.report.macs_ratio:.3f}", f"{latency_ratio:.3f}",
                             f"{realised:.2f}", f"{small.size_bytes / original.size_bytes:.3f}",
                             record["compress_seconds"]])
            records.append(record)
            print(json.dumps(record), flush=True)
    command = "python -m benchmarks.latency_realization " + " ".join(argv if argv is not None else sys.argv[1:])
    meta = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.machine(),
            "cpus": os.cpu_count(), "keras": keras.__name__ + " " + keras.__version__, "threads": 1,
            "runs": args.runs}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "results": records}, indent=2) + "\n")
    headers = ["model", "target", "precision", "MACs ratio", "latency ratio", "realised fraction", "size ratio",
               "compress s"]
    errors = [f"- {r['model']} @ {r['target_flops']}: {r['error']}" for r in records if "error" in r]
    markdown = ["# FGA latency realisation (LiteRT, 1 thread, XNNPACK)\n", f"Command: `{meta['command']}`  ",
                f"Run: {meta['date']}, {meta['keras']}, {meta['cpus']} CPUs, {args.runs} interleaved runs per file.\n",
                "realised fraction = (original latency / compressed latency) / (original MACs / compressed MACs); "
                "1.0 means the speedup equals the MACs reduction.\n", table(headers, rows, markdown=True)]
    if errors:
        markdown += ["\nRefused:\n"] + errors
    out.with_suffix(".md").write_text("\n".join(markdown) + "\n")
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

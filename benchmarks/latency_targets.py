"""How close latency-targeted plans land to the latency asked for, and what planning costs.

    python -m benchmarks.latency_targets
    # writes benchmarks/results/latency_targets.{json,md}

On the shipped CIFAR ResNet-20: measure a host latency table (``kerascomp.latency_table``), then
for each ``--targets`` fraction plan ``method="collaborative"`` with ``target_latency`` from the
table alone (``latency_checks=0``) and with the default two measured corrections, and FGA with
``target_latency``; the methods that plan by MACs (``--methods``, default l1, correlation, svd,
joint_svd, tucker) with ``target_latency`` alone, which they meet by the measured search of
``kerascomp/methods/latency_search.py``. Each compressed model is exported and timed against the original (LiteRT fp32,
1 thread, interleaved, ``--runs`` each, median); the table reports requested vs measured ratio.
Also times a collaborative ``target_flops=0.5`` plan of the CIFAR ResNet-56 (``--resnet56``).
Labelled data for the sensitivity: ``--plan-samples`` CIFAR training images (``--data``).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import DATA_HELP, cpu_model, load_cifar

RESULTS = Path(__file__).resolve().parent / "results"
RESNET56 = Path(__file__).resolve().parent / "models" / "resnet56_cifar10.keras"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--targets", default="0.8,0.6,0.5,0.4")
    parser.add_argument("--methods", default="l1,correlation,svd,joint_svd,tucker",
                        help="methods without a latency table, run with target_latency alone (measured search)")
    parser.add_argument("--plan-samples", type=int, default=512)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--resnet56", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--out", default=str(RESULTS / "latency_targets"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import kerascomp
    from kerascomp.loading import load_demo_model, load_model
    from kerascomp.tables import table

    data = load_cifar(args.data)
    if data is None:
        return 2
    labelled = (data["x_train"][-args.plan_samples:].astype("float32"), data["y_train"][-args.plan_samples:].ravel())
    model = load_demo_model()
    started = time.perf_counter()
    latency = kerascomp.latency_table(model, verbose=0)
    table_seconds = time.perf_counter() - started
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-latency-targets-"))
    original = workdir / "original.tflite"
    kerascomp.export_tflite(model, original)
    rows = []
    for target in (float(t) for t in args.targets.split(",")):
        variants = {
            "collaborative, table only": dict(method="collaborative", latency_checks=0),
            "collaborative, 2 measured checks": dict(method="collaborative"),
            "fga": dict(method="fga"),
            **{f"{name}, measured search": dict(method=name, searched=True) for name in args.methods.split(",") if name},
        }
        for name, options in variants.items():
            started = time.perf_counter()
            method, searched = options.pop("method"), options.pop("searched", False)
            data_argument = labelled if method == "collaborative" else labelled[0][:256]
            try:
                result = kerascomp.compress(model, method=method, target_latency=target,
                                            latency=None if searched else latency, data=data_argument, verbose=0,
                                            **options)
            except kerascomp.BudgetError as error:
                rows.append({"variant": name, "target_latency": target, "refused": str(error)})
                print(rows[-1], flush=True)
                continue
            seconds = time.perf_counter() - started
            path = workdir / f"{name.split(',')[0]}_{target}_{len(rows)}.tflite"
            kerascomp.export_tflite(result.model, path)
            base, small = kerascomp.compare_tflite([original, path], num_threads=1, runs=args.runs)
            measured = small.median_ms / base.median_ms
            rows.append({"variant": name, "target_latency": target, "measured_latency_ratio": measured,
                         "off_by": measured / target - 1, "macs_ratio": result.report.macs_ratio,
                         "seconds": seconds, "checks": result.report.notes.get("latency_checks", "")})
            print(rows[-1], flush=True)
    record = {"command": "python -m benchmarks.latency_targets " + " ".join(sys.argv[1:]),
              "machine": platform.platform(), "cpu": cpu_model(), "latency_table_seconds": table_seconds,
              "latency_table_total_ms": latency.total_ms, "rows": rows}
    if args.resnet56 and RESNET56.is_file():
        deep = load_model(str(RESNET56))
        started = time.perf_counter()
        plan = kerascomp.plan(deep, target_flops=0.5, data=labelled, verbose=0)
        record["resnet56_plan_seconds"] = time.perf_counter() - started
        record["resnet56_plan_macs_ratio"] = plan.macs_ratio
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(record, indent=2))
    text = (f"# Latency-targeted plans, CIFAR ResNet-20, LiteRT fp32 1 thread\n\nCommand: `{record['command']}`\n\n"
            f"CPU: {record['cpu']}. Latency table measured in {table_seconds:.0f} s. Measured ratio: "
            f"compressed/original median, interleaved, {args.runs} runs each, timed again after compression "
            "(independent of the search's own checks).\n\n"
            + table(["variant", "latency asked", "measured", "off by", "MACs ratio", "seconds"],
                    [[r["variant"], f"{r['target_latency']:.2f}", f"{r['measured_latency_ratio']:.3f}",
                      f"{r['off_by']:+.1%}", f"{r['macs_ratio']:.3f}", f"{r['seconds']:.0f}"] if "refused" not in r
                     else [r["variant"], f"{r['target_latency']:.2f}", "refused", r["refused"][:120], "", ""]
                     for r in rows], markdown=True) + "\n")
    if "resnet56_plan_seconds" in record:
        text += (f"\nResNet-56 collaborative plan at target_flops=0.5 ({args.plan_samples} labelled images): "
                 f"{record['resnet56_plan_seconds']:.0f} s, MACs x{record['resnet56_plan_macs_ratio']:.3f}.\n")
    out.with_suffix(".md").write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())

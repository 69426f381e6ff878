"""How close latency-targeted plans land to the latency asked for, and what planning costs.

    python -m benchmarks.latency_targets
    python -m benchmarks.latency_targets --models mobilenetv2 --targets 0.5 --resume
    # writes benchmarks/results/latency_targets.{json,md}; --resume keeps the rows already there

On each ``--models`` model (``resnet20``: the shipped trained CIFAR ResNet-20 with CIFAR images;
``mobilenetv2``: keras.applications MobileNetV2 at 224x224, random weights and random images in its
[-1, 1] input range, for timing only): measure a host latency table (``kerascomp.latency_table``), then
for each ``--targets`` fraction plan ``method="collaborative"`` with ``target_latency`` from the
table alone (``latency_checks=0``) and with its measured corrections (up to 6 by default), and FGA with
``target_latency``; the methods that plan by MACs (``--methods``, default l1, correlation, svd,
joint_svd, tucker) with ``target_latency`` alone, which they meet by the measured search of
``kerascomp/methods/latency_search.py``. Each compressed model is exported and timed against the original (LiteRT fp32,
1 thread, interleaved, ``--runs`` each, median of three timings with fresh interpreters:
``kerascomp.bench.host.latency_ratio``); the table reports requested vs measured ratio.
Also times a collaborative ``target_flops=0.5`` plan of the CIFAR ResNet-56 (``--resnet56``).
Labelled data for the sensitivity: ``--plan-samples`` CIFAR training images (``--data``), or random
images and labels for MobileNetV2. A row is **within** when the re-timed ratio is within 5% of the
target (the search's own tolerance); every row records the host CPU, and ratios compare only within
one host.
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

from benchmarks.common import DATA_HELP, command_line, cpu_model, load_cifar, result_file, write_results

RESULTS = Path(__file__).resolve().parent / "results"
RESNET56 = Path(__file__).resolve().parent / "models" / "resnet56_cifar10.keras"


MODELS = ("resnet20", "mobilenetv2")
TOLERANCE = 0.05  # the measured search's own (kerascomp/methods/latency_search.py)


def _model_and_data(name: str, samples: int, data_argument: str | None):
    """(model, labelled images for the sensitivity) of one ``--models`` name."""
    import numpy as np

    from kerascomp.graph.flavour import default_keras
    from kerascomp.loading import load_demo_model

    if name == "resnet20":
        data = load_cifar(data_argument)
        if data is None:
            raise SystemExit(2)
        return load_demo_model(), (data["x_train"][-samples:].astype("float32"), data["y_train"][-samples:].ravel())
    if name == "mobilenetv2":
        keras = default_keras()
        keras.utils.set_random_seed(0)
        model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
        rng = np.random.default_rng(0)
        return model, (rng.uniform(-1, 1, (samples, 224, 224, 3)).astype("float32"),
                       rng.integers(0, 1000, samples).astype("int64"))
    raise SystemExit(f"unknown model {name!r}: choose from {', '.join(MODELS)}")


def _variants(methods: str) -> dict[str, dict]:
    return {
        "collaborative, table only": dict(method="collaborative", latency_checks=0),
        "collaborative, measured checks": dict(method="collaborative"),
        "fga": dict(method="fga"),
        **{f"{name}, measured search": dict(method=name, searched=True) for name in methods.split(",") if name},
    }


def run_model(kerascomp, name: str, args, workdir: Path, done: set, emit) -> None:
    """Every variant x target of one model; ``emit(row)`` stores each row as soon as it is measured."""
    from kerascomp.bench.host import latency_ratio

    wanted = [(variant, float(t)) for t in args.targets.split(",") for variant in _variants(args.methods)]
    if all((name, variant, target) in done for variant, target in wanted):
        return
    model, labelled = _model_and_data(name, args.plan_samples, args.data)
    started = time.perf_counter()
    latency = kerascomp.latency_table(model, verbose=0)
    emit({"model": name, "latency_table": True, "seconds": time.perf_counter() - started,
          "total_ms": latency.total_ms, "cpu": cpu_model()})
    original = workdir / f"{name}_original.tflite"
    kerascomp.export_tflite(model, original, representative_data=labelled[0][:8])
    for variant, target in wanted:
        if (name, variant, target) in done:
            continue
        options = dict(_variants(args.methods)[variant])
        method, searched = options.pop("method"), options.pop("searched", False)
        data_argument = labelled if method == "collaborative" else labelled[0][:256]
        row = {"model": name, "variant": variant, "target_latency": target, "cpu": cpu_model()}
        started = time.perf_counter()
        try:
            result = kerascomp.compress(model, method=method, target_latency=target,
                                        latency=None if searched else latency, data=data_argument, verbose=0,
                                        **options)
        except kerascomp.BudgetError as error:
            emit({**row, "refused": str(error), "seconds": time.perf_counter() - started})
            continue
        seconds = time.perf_counter() - started
        path = workdir / f"{name}_{method}_{target}.tflite"
        kerascomp.export_tflite(result.model, path, representative_data=labelled[0][:8])
        measured = latency_ratio(original, path, num_threads=1, runs=args.runs)
        emit({**row, "measured_latency_ratio": measured, "off_by": measured / target - 1,
              "within": abs(measured / target - 1) <= TOLERANCE, "macs_ratio": result.report.macs_ratio,
              "seconds": seconds, "checks": result.report.notes.get("latency_checks", "")})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--models", default="resnet20,mobilenetv2")
    parser.add_argument("--targets", default="0.7,0.5")
    parser.add_argument("--methods", default="l1,correlation,svd,joint_svd,tucker",
                        help="methods without a latency table, run with target_latency alone (measured search)")
    parser.add_argument("--plan-samples", type=int, default=512)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--resnet56", action=argparse.BooleanOptionalAction, default=False,
                        help="also time a collaborative target_flops=0.5 plan of the CIFAR ResNet-56")
    parser.add_argument("--resume", action="store_true", help="keep the rows already in --out's JSON")
    parser.add_argument("--report", action="store_true", help="only rewrite --out's Markdown from its JSON")
    parser.add_argument("--out", default=str(RESULTS / "latency_targets"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = Path(args.out)
    record = {"rows": []}
    if (args.resume or args.report) and result_file(out, ".json").exists():
        record = json.loads(result_file(out, ".json").read_text())
    if args.report:
        write_results(out, record, markdown(record))
        return 0

    import kerascomp
    from kerascomp.loading import load_model

    record.update({"machine": platform.platform(), "cpu": cpu_model(), "runs": args.runs})
    record["commands"] = record.get("commands", []) + [command_line("benchmarks.latency_targets")]
    done = {(r["model"], r["variant"], r["target_latency"]) for r in record["rows"] if "variant" in r}

    def emit(row: dict) -> None:
        record["rows"].append(row)
        print(row, flush=True)
        write_results(out, record, markdown(record))

    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-latency-targets-"))
    for name in args.models.split(","):
        run_model(kerascomp, name, args, workdir, done, emit)
    if args.resnet56 and RESNET56.is_file():
        labelled = _model_and_data("resnet20", args.plan_samples, args.data)[1]
        deep = load_model(str(RESNET56))
        started = time.perf_counter()
        plan = kerascomp.plan(deep, target_flops=0.5, data=labelled, verbose=0)
        record["resnet56_plan_seconds"] = time.perf_counter() - started
        record["resnet56_plan_macs_ratio"] = plan.macs_ratio
    write_results(out, record, markdown(record))
    return 0


def markdown(record: dict) -> str:
    from kerascomp.tables import table

    commands = record.get("commands") or [record.get("command", "")]
    text = ("# Latency-targeted compression, LiteRT fp32 1 thread\n\n"
            + "Commands (a later one adds rows): " + ", ".join(f"`{c}`" for c in commands) + "\n\n"
            f"Measured ratio: compressed/original median, interleaved, {record.get('runs', 200)} runs each, timed "
            "again after compression (independent of the search's own checks). **within**: the re-timed ratio is "
            f"within {TOLERANCE:.0%} of the target. Ratios compare only within one host (each row's CPU below).\n")
    rows = record["rows"]
    for name in dict.fromkeys(r.get("model", "resnet20") for r in rows):
        mine = [r for r in rows if r.get("model", "resnet20") == name]
        tables = [r for r in mine if r.get("latency_table")]
        cases = [r for r in mine if "variant" in r]
        hosts = sorted({r.get("cpu", record.get("cpu", "?")) for r in cases})
        for r in cases:  # rows from before the column existed
            r.setdefault("within", "off_by" in r and abs(r["off_by"]) <= TOLERANCE)
        within = sum(bool(r["within"]) for r in cases)
        text += (f"\n## {name}\n\nCPU: {'; '.join(hosts)}."
                 + (f" Latency table measured in {tables[-1]['seconds']:.0f} s." if tables else "")
                 + f" **{within} of {len(cases)} rows within {TOLERANCE:.0%}.**\n\n")
        text += table(["variant", "latency asked", "measured", "off by", "within", "MACs ratio", "seconds"],
                      [[r["variant"], f"{r['target_latency']:.2f}", f"{r['measured_latency_ratio']:.3f}",
                        f"{r['off_by']:+.1%}", "yes" if r["within"] else "**no**", f"{r['macs_ratio']:.3f}",
                        f"{r['seconds']:.0f}"] if "refused" not in r
                       else [r["variant"], f"{r['target_latency']:.2f}", "refused", r["refused"][:160], "**no**", "",
                             f"{r.get('seconds', 0):.0f}"]
                       for r in cases], markdown=True) + "\n"
    if "resnet56_plan_seconds" in record:
        text += (f"\nResNet-56 collaborative plan at target_flops=0.5: {record['resnet56_plan_seconds']:.0f} s, "
                 f"MACs x{record['resnet56_plan_macs_ratio']:.3f}.\n")
    return text


if __name__ == "__main__":
    sys.exit(main())

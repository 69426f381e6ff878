"""Top-1 right after compression, before any finetuning: where each method starts from on a trained model.

For every method (a ``VARIANTS`` name of ``benchmarks/cifar.py``) and option variant, compress the
baseline to the target with ``--calibration`` training images as ``data`` and measure top-1 on the
test set. The variants switch the shared steps on and off (``reconstruct``, ``recalibrate``), so one
table shows what each adds, per method::

    KERASCOMP_DATA=../shared/data python -m benchmarks.start_point \\
        --model benchmarks/models/resnet20_cifar10.keras --methods fga,l1,svd --target 0.5

Rows are appended to ``benchmarks/results/start_point_<model>.{json,md}`` as they finish; a re-run
skips the rows already there (``--fresh`` starts over).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time
from pathlib import Path

from benchmarks.common import DATA_HELP, command_line, cpu_model, load_cifar, result_file, write_results

SETTINGS = {
    "default": {},
    "no_reconstruct": {"reconstruct": False},
    "no_recalibrate": {"recalibrate": False},
    "neither": {"reconstruct": False, "recalibrate": False},
    "recalibrate_only": {"reconstruct": False, "recalibrate": True},
    "reconstruct_recalibrate": {"reconstruct": True, "recalibrate": True},
    "no_bn_weighting": {"bn_weighting": False},
    "raw": {"reconstruct": False, "recalibrate": False, "bn_weighting": False},
}


COMPRESS_ARGUMENTS = {"latency"}  # kerascomp.compress's own arguments a setting may carry, e.g. {"latency": "host"}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="baseline .keras (default: the shipped demo model)")
    parser.add_argument("--methods", default="fga,l1,correlation,svd,joint_svd,tucker,collaborative")
    parser.add_argument("--settings", default="default,neither", help=f"from {','.join(SETTINGS)}")
    parser.add_argument("--setting", action="append", default=[], metavar="NAME=JSON",
                        help='an extra setting, e.g. old_mixing=\'{"mixing": "pruning_first"}\' (repeatable; '
                             'name it in --settings too)')
    parser.add_argument("--target", type=float, default=0.5, help="fraction of MACs kept")
    parser.add_argument("--calibration", type=int, default=2000, help="training images passed as data")
    parser.add_argument("--test", type=int, default=10000, help="test images scored")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--out", default=None)
    parser.add_argument("--fresh", action="store_true")
    args = parser.parse_args(argv)
    for item in args.setting:
        name, _, options = item.partition("=")
        SETTINGS[name] = json.loads(options)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from benchmarks.cifar import VARIANTS
    from kerascomp.loading import demo_model_path, load_demo_model, load_model
    from kerascomp.methods import registry

    data = load_cifar(args.data)
    if data is None:
        return 1
    model = load_model(args.model) if args.model else load_demo_model()
    stem = Path(args.model).stem if args.model else "demo"
    out = Path(args.out or Path(__file__).parent / "results" / f"start_point_{stem}")
    previous = json.loads(result_file(out, ".json").read_text()) if result_file(out, ".json").is_file() else {}
    rows = [] if args.fresh else previous.get("rows", [])
    done = {(r["method"], r["setting"], r["target"]) for r in rows}
    rng = np.random.default_rng(0)
    calibration = rng.permutation(len(data["x_train"]))[: args.calibration]
    x_cal, y_cal = data["x_train"][calibration], data["y_train"][calibration]
    x_test, y_test = data["x_test"][: args.test], data["y_test"][: args.test]

    def top1(network) -> float:
        return float(np.mean(np.argmax(network.predict(x_test, batch_size=250, verbose=0), -1) == y_test))

    baseline = top1(model)
    record = {"model": str(args.model or demo_model_path()), "baseline_top1": baseline,
              "calibration_images": args.calibration, "test_images": len(y_test), "cpu": cpu_model(),
              "command": command_line("benchmarks.start_point"), "rows": rows}
    for method in args.methods.split(","):
        how, name, options, kind = VARIANTS[method]
        for setting in args.settings.split(","):
            if (method, setting, args.target) in done:
                continue
            known = {f.name for f in dataclasses.fields(registry.get(name).options_class)} | COMPRESS_ARGUMENTS
            if setting not in SETTINGS:
                parser.error(f"unknown setting {setting!r}: pick from {', '.join(SETTINGS)} or define it with --setting")
            if not set(SETTINGS[setting]) <= known:
                print(f"{method}: setting {setting} uses options it does not have; skipped", flush=True)
                continue
            chosen = {**options, **SETTINGS[setting]}
            data_arg = (x_cal, y_cal) if name == "collaborative" else x_cal
            started = time.perf_counter()
            result = kerascomp.compress(model, method=name, target_flops=args.target, data=data_arg, verbose=0,
                                        **chosen)
            seconds = time.perf_counter() - started
            refits = {d.layer: [d.detail["output_error_before"], d.detail["output_error_after"]]
                      for d in result.report.layers if "output_error_before" in d.detail}
            rows.append({"method": method, "setting": setting, "options": chosen, "target": args.target,
                         "macs_ratio": round(result.report.macs_ratio, 4),
                         "params_ratio": round(result.report.params_ratio, 4), "top1": top1(result.model),
                         "seconds": round(seconds, 1), "command": record["command"], "notes": {k: str(v) for k, v in result.report.notes.items()},
                         "output_errors": refits})
            print(f"{method:16s} {setting:24s} MACs {rows[-1]['macs_ratio']:.3f} top-1 {rows[-1]['top1']:.4f} "
                  f"({seconds:.0f} s)", flush=True)
            _merge_rows(out, rows)  # another run may have written rows meanwhile: keep them
            write_results(out, record, markdown(record))
    write_results(out, record, markdown(record))
    return 0


def _merge_rows(out: Path, rows: list) -> None:
    """Add to ``rows`` (in place) the rows the results file holds now and ``rows`` lacks."""
    path = result_file(out, ".json")
    if not path.is_file():
        return
    mine = {(r["method"], r["setting"], r["target"]) for r in rows}
    rows.extend(r for r in json.loads(path.read_text()).get("rows", [])
                if (r["method"], r["setting"], r["target"]) not in mine)


def markdown(record: dict) -> str:
    lines = [f"# Top-1 right after compression (no finetuning): {Path(record['model']).name}", "",
             f"Baseline top-1 {record['baseline_top1']:.4f} on {record['test_images']} test images; "
             f"{record['calibration_images']} training images as `data`. CPU: {record['cpu']}.", "",
             f"Latest command: `{record['command']}`. Rows are added run by run; each row since 2026-12-01 "
             "stores the command that made it in the JSON (`--methods M --settings S`, with "
             "`--setting S=JSON` for the settings not built in).", "",
             "| method | setting | options | MACs | params | top-1 | mean output error before -> after refit | s |",
             "|---|---|---|---|---|---|---|---|"]
    for row in record["rows"]:
        errors = list(row["output_errors"].values())
        refit = (f"{sum(e[0] for e in errors) / len(errors):.3f} -> {sum(e[1] for e in errors) / len(errors):.3f}"
                 if errors else "")
        options = ", ".join(f"{k}={v}" for k, v in row["options"].items())
        lines.append(f"| {row['method']} | {row['setting']} | {options} | {row['macs_ratio']:.3f} | "
                     f"{row['params_ratio']:.3f} | {row['top1']:.4f} | {refit} | {row['seconds']} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

"""Zoo sweep: every keras.applications CNN under every method -- compress, strip, export, run.

    python -m benchmarks.zoo                   # one model per family (the smallest), every method
    python -m benchmarks.zoo --models all      # every CNN in keras.applications
    python -m benchmarks.zoo --models ResNet50,VGG16 --methods l1,fga
    # writes benchmarks/results/zoo.{json,md}; cases already in the JSON are skipped
    # (--fresh redoes them all, --redo-failed the failed ones, --redo MobileNetV2 that model's)

Each model is built with ``weights=None`` (seeded: every case of a model compresses the same weights), ``classes=10``, logits out (``classifier_activation=None``:
a saturated softmax would make the parity check vacuous) and the smallest input its family
accepts (32x32, or 75x75 for Inception, 71x71 for Xception), its BatchNormalization statistics
measured on 16 random images in [0, 255] (at their initial values some random-weight models give the
same ~1e-11 logits for every input; ``output_spread`` records how much the logits vary across inputs),
each case (one model and one method) in its own process with its own time limit
(``--timeout`` seconds), so a crash or a hang in one case cannot stop the sweep or eat another
case's time; the uncompressed model's own export runs once per model, in a process of its own. Per
method: ``kerascomp.compress(target_flops=--target, data=those images)`` (collaborative gets
random labels), then ``strip``, ``export_tflite`` (its LiteRT parity check runs the file on 4 of
the images) and a
3-run LiteRT benchmark. An outcome is **ok** (exported, .tflite relative error under 1e-4, or under 3x
the uncompressed model's own error on the same images where that is larger: a random-weight ResNet50
at 32x32 is already at 2-3e-4 before any compression; ``original_tflite_error`` records it), **refused**
(a kerascomp error, with its message), or **failed**: any other exception (an internal traceback),
a broken budget, a parity error or a changed input model; **timeout**: the case ran past ``--timeout``.
Each case records the host CPU it ran on (a sweep that spans sessions may span hosts).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.common import calibrated, command_line, result_file, write_results

RESULTS = Path(__file__).resolve().parent / "results"
METHODS = "fga,l1,correlation,svd,joint_svd,tucker,collaborative,auto"
FAMILIES = ["ConvNeXtTiny", "DenseNet121", "EfficientNetB0", "EfficientNetV2B0", "InceptionResNetV2", "InceptionV3",
            "MobileNet", "MobileNetV2", "MobileNetV3Small", "NASNetMobile", "ResNet50", "ResNet50V2", "VGG16",
            "Xception"]
MIN_SIZE = {"InceptionV3": 75, "InceptionResNetV2": 75, "Xception": 71}
PARITY = 1e-4  # .tflite relative error a case must stay under, or PARITY_FACTOR x the uncompressed model's own
PARITY_FACTOR = 3  # (random weights at 32x32 with BN from 16 images: ResNet50's own error is 2-3e-4)
CASE_LIMIT_S = 120  # what a user may wait for one model and method at the smallest input


def application_names(keras) -> list[str]:
    """Every model constructor in keras.applications (all of them are CNNs in Keras 3.15)."""
    names = []
    for name in dir(keras.applications):
        attribute = getattr(keras.applications, name)
        if callable(attribute) and name[0].isupper() and not isinstance(attribute, type):
            names.append(name)
    return sorted(names)


def input_size(name: str) -> int:
    return next((s for prefix, s in MIN_SIZE.items() if name.startswith(prefix)), 32)


def build_model(keras, name: str, size: int):
    """The model every case of ``name`` compresses (seeded: the same weights in every case) and its 16 images."""
    import numpy as np

    keras.utils.set_random_seed(0)
    build = getattr(keras.applications, name)
    try:  # logits: a saturated softmax of random weights would make the parity check vacuous
        model = build(weights=None, input_shape=(size, size, 3), classes=10, classifier_activation=None)
    except TypeError:
        model = build(weights=None, input_shape=(size, size, 3), classes=10)
    x = np.random.default_rng(0).uniform(0, 255, (16, size, size, 3)).astype("float32")
    return calibrated(model, x), x  # BN statistics from the images: a parity check then means something


def original_parity(keras, name: str, folder: Path) -> float | None:
    """The uncompressed model's own .tflite relative error on the same images (None if it cannot export)."""
    import kerascomp

    try:
        model, x = build_model(keras, name, input_size(name))
        exported = kerascomp.export_tflite(model, folder / f"{name}_original.tflite", representative_data=x[:4])
    except Exception:  # noqa: BLE001 - a model that cannot export shows in every case's own outcome
        return None
    os.unlink(exported.path)
    return float(exported.relative_error)


def run_case(keras, name: str, method: str, target: float, folder: Path, original_error: float | None = None) -> dict:
    """One (model, method) case, in this process; ``case_s`` is its wall time, building the model included."""
    size = input_size(name)
    case = {"model": name, "method": method, "input": size}
    if original_error is not None:
        case["original_tflite_error"] = float(f"{original_error:.3g}")
    began = time.perf_counter()
    case, status = _case(keras, name, method, target, folder, case, original_error)
    return {**case, **status, "case_s": round(time.perf_counter() - began, 1)}


def _case(keras, name: str, method: str, target: float, folder: Path, case: dict,
          original_error: float | None = None) -> tuple[dict, dict]:
    """``run_case``'s work: (the measures, the outcome: status, stage and message)."""
    import traceback

    import numpy as np

    import kerascomp
    from kerascomp.errors import CompressionError

    size = case["input"]
    stage = "build"
    try:
        model, x = build_model(keras, name, size)
        rng = np.random.default_rng(0)
        logits = np.asarray(model(x[:4]))
        case["output_spread"] = float(f"{np.std(logits, axis=0).mean() / (np.abs(logits).mean() + 1e-30):.3g}")
        before = [w.copy() for w in model.get_weights()]
        case["params"] = int(model.count_params())
        data = (x, rng.integers(0, 10, 16)) if method == "collaborative" else x
        stage = "compress"
        started = time.perf_counter()
        try:
            import warnings

            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", kerascomp.CompressionWarning)
                result = kerascomp.compress(model, method, target_flops=target, data=data, verbose=0)
        except CompressionError as refusal:
            return case, {"status": "refused", "stage": stage, "error": type(refusal).__name__,
                          "message": str(refusal)[:600]}
        case["compress_s"] = round(time.perf_counter() - started, 1)
        case["macs_ratio"] = round(result.report.macs_ratio, 4)
        case["params_ratio"] = round(result.report.params_ratio, 4)
        case["kept_layers"] = len(result.report.kept())
        case["warnings"] = len(caught)
        if result.report.macs_ratio > target + 1e-9:
            return case, {"status": "failed", "stage": stage, "message": f"MACs ratio {result.report.macs_ratio}"}
        if any(not np.array_equal(a, b) for a, b in zip(before, model.get_weights())):
            return case, {"status": "failed", "stage": stage, "message": "the input model's weights changed"}
        stage = "strip"
        kerascomp.strip(result.model)
        stage = "export"
        started = time.perf_counter()
        exported = kerascomp.export_tflite(result.model, folder / f"{name}_{method}.tflite",
                                           representative_data=x[:4])  # parity on the images it was built for
        case["export_s"] = round(time.perf_counter() - started, 1)
        case["tflite_kib"] = round(exported.size_bytes / 1024, 1)
        case["tflite_error"] = float(f"{exported.relative_error:.3g}")
        tolerance = max(PARITY, PARITY_FACTOR * (original_error or 0.0))
        if not exported.relative_error < tolerance:
            return case, {"status": "failed", "stage": stage,
                          "message": f"parity {exported.relative_error:.3g} (tolerance {tolerance:.3g})"}
        stage = "run"
        kerascomp.benchmark_tflite(exported.path, runs=3, warmup=1)
        os.unlink(exported.path)
        return case, {"status": "ok", "stage": "run"}
    except Exception as error:  # noqa: BLE001 - an internal traceback is the failure this sweep counts
        return case, {"status": "failed", "stage": stage, "error": type(error).__name__,
                      "message": str(error)[:400], "traceback": traceback.format_exc(limit=-6)[-3000:]}


def worker(name: str, methods: list[str], target: float, original_error: str | None = None) -> None:
    """Run ``methods`` on one model and print one JSON line per case; with no methods, print the uncompressed
    model's own .tflite error (``ORIGINAL <error or none>``). ``original_error`` is that line's value from an
    earlier worker ("none": it could not export); without it, the worker measures it first."""
    import tempfile

    from kerascomp.bench.host import host_cpu
    from kerascomp.graph.flavour import default_keras

    keras = default_keras()
    with tempfile.TemporaryDirectory(prefix="kerascomp-zoo-") as folder:
        if original_error is None:
            baseline = original_parity(keras, name, Path(folder))
        else:
            baseline = None if original_error == "none" else float(original_error)
        if not methods:
            print(f"ORIGINAL {'none' if baseline is None else repr(baseline)}", flush=True)
        for method in methods:
            case = run_case(keras, name, method, target, Path(folder), baseline)
            print("CASE " + json.dumps({**case, "cpu": host_cpu()}), flush=True)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="families", help="'families' (default), 'all', or a comma list")
    parser.add_argument("--methods", default=METHODS)
    parser.add_argument("--target", type=float, default=0.5, help="fraction of the MACs to keep")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per case (one model, one method)")
    parser.add_argument("--fresh", action="store_true", help="redo cases already in the results JSON")
    parser.add_argument("--redo-failed", action="store_true", help="redo the failed and timed-out cases in the results JSON")
    parser.add_argument("--redo", default="", help="comma list of models whose cases are redone (the others are kept)")
    parser.add_argument("--out", default=str(RESULTS / "zoo"))
    parser.add_argument("--report-only", action="store_true", help="rewrite the .md from the .json and exit")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--original-error", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    methods = [m for m in args.methods.split(",") if m]
    if args.worker:
        worker(args.worker, methods, args.target, args.original_error)
        return 0

    from kerascomp.graph.flavour import default_keras, legacy_requested

    keras = default_keras()
    names = (FAMILIES if args.models == "families" else application_names(keras) if args.models == "all"
             else args.models.split(","))
    unknown = sorted(set(names) - set(application_names(keras))) if not args.report_only else []
    if unknown:  # before any case runs: a name this flavour lacks is a typo or another flavour's model, not a failure
        raise SystemExit(f"{', '.join(unknown)}: not in this flavour's keras.applications "
                         f"({'tf_keras' if legacy_requested() else 'Keras 3'}; RegNet is tf_keras only); it has "
                         f"{', '.join(application_names(keras))}.")
    out = Path(args.out)
    if args.report_only:
        record = json.loads(result_file(out, ".json").read_text())
        for case in record["cases"]:  # runs before the timeout status existed
            if case["status"] == "failed" and case.get("message", "").startswith("timed out"):
                case["status"] = "timeout"
        write_results(out, record, markdown(record))
        return 0
    record = {"cases": []}
    if result_file(out, ".json").exists() and not args.fresh:
        record = json.loads(result_file(out, ".json").read_text())
    from kerascomp.bench.host import host_cpu

    for case in record["cases"]:  # cases from before per-case CPU records ran on the record's CPU
        case.setdefault("cpu", record.get("cpu", "CPU not recorded"))
    earlier = record.get("commands") or ([record["command"]] if record.get("command") else [])
    record["commands"] = earlier + [command_line("benchmarks.zoo")]  # the cases kept may come from earlier runs
    record.update({"command": command_line("benchmarks.zoo"), "machine": platform.platform(),
                   "cpu": host_cpu(), "keras": keras.__version__,
                   "flavour": "tf_keras" if legacy_requested() else f"Keras {keras.__version__}",
                   "target_flops": args.target})
    redo = set(filter(None, args.redo.split(",")))
    done = {(c["model"], c["method"]) for c in record["cases"]
            if not (args.redo_failed and c["status"] in ("failed", "timeout")) and c["model"] not in redo}
    for name in names:
        todo = [m for m in methods if (name, m) not in done]
        if not todo:
            continue
        print(f"{name}: {', '.join(todo)}", flush=True)
        original = _original_error(name, args)
        for method in todo:
            case = _run_worker(name, method, original, args)
            record["cases"] = [c for c in record["cases"] if (c["model"], c["method"]) != (name, method)] + [case]
            print(f"  {method}: {case['status']} {case.get('case_s', '')} {case.get('message', '')[:120]}", flush=True)
            write_results(out, record, markdown(record))
    failures = [c for c in record["cases"] if c["status"] == "failed"]
    return 1 if failures else 0


def _worker_command(name: str, methods: list[str], args) -> list[str]:
    return [sys.executable, "-m", "benchmarks.zoo", "--worker", name, "--methods", ",".join(methods),
            "--target", str(args.target)]


def _run(command: list[str], timeout: int) -> tuple[str, str, int | None]:
    """(stdout, stderr, exit code or None when it ran past ``timeout``)."""
    try:
        completed = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                                   cwd=Path(__file__).resolve().parents[1])
        return completed.stdout, completed.stderr, completed.returncode
    except subprocess.TimeoutExpired as expired:
        stdout = expired.stdout.decode() if isinstance(expired.stdout, bytes) else (expired.stdout or "")
        return stdout, f"timed out after {timeout} s", None


def _original_error(name: str, args) -> str:
    """The uncompressed model's own .tflite error, measured once per model in its own process ("none": none)."""
    stdout, _, _ = _run(_worker_command(name, [], args), args.timeout)
    lines = [line.split(" ", 1)[1] for line in stdout.splitlines() if line.startswith("ORIGINAL ")]
    return lines[0] if lines else "none"


def _run_worker(name: str, method: str, original: str, args) -> dict:
    """One case in its own process, limited to ``args.timeout`` seconds."""
    started = time.perf_counter()
    stdout, stderr, code = _run(_worker_command(name, [method], args) + ["--original-error", original],
                                args.timeout)
    cases = [json.loads(line[5:]) for line in stdout.splitlines() if line.startswith("CASE ")]
    if cases:
        return cases[0]
    reason = stderr.strip().splitlines()[-1] if stderr.strip() else f"worker exited with {code}"
    from kerascomp.bench.host import host_cpu

    return {"model": name, "method": method, "status": "timeout" if code is None else "failed",
            "stage": "worker", "message": reason[:400], "worker_s": round(time.perf_counter() - started, 1),
            "cpu": host_cpu()}


def _hosts(record: dict) -> str:
    """The CPU the cases ran on; cases from before per-case records count under the record's own CPU."""
    default = record.get("cpu", "CPU not recorded")
    counts: dict[str, int] = {}
    for case in record["cases"]:
        counts[case.get("cpu", default)] = counts.get(case.get("cpu", default), 0) + 1
    if len(counts) <= 1:
        return next(iter(counts), default)
    return "cases on several hosts, compare their times only within one: " + ", ".join(
        f"{count} on {cpu}" for cpu, count in counts.items())


def markdown(record: dict) -> str:
    from kerascomp.tables import table

    cases = record["cases"]
    methods = [m for m in METHODS.split(",") if any(c["method"] == m for c in cases)]
    models = list(dict.fromkeys(c["model"] for c in cases))
    by_key = {(c["model"], c["method"]): c for c in cases}
    mark = {"ok": "ok", "refused": "refused", "failed": "**FAILED**", "timeout": "timeout"}
    rows = []
    for name in models:
        row = [name]
        for method in methods:
            case = by_key.get((name, method))
            if case is None:
                row.append("")
                continue
            cell = mark[case["status"]]
            if case["status"] == "ok":
                cell += f" {case['macs_ratio']:.2f}"
            row.append(cell)
        rows.append(row)
    totals = {status: sum(c["status"] == status for c in cases) for status in ("ok", "refused", "failed", "timeout")}
    timed = sorted((c for c in cases if "case_s" in c), key=lambda c: -c["case_s"])
    slow = [c for c in timed if c["case_s"] > CASE_LIMIT_S]
    timing = (f"Per case (build, compress, strip, export with parity, 3 LiteRT runs): {len(timed)} timed, "
              f"**{len(slow)} over {CASE_LIMIT_S} s**; slowest: "
              + ", ".join(f"{c['model']}/{c['method']} {c['case_s']} s" for c in timed[:5]) + ".\n\n") if timed else ""
    details = "\n".join(f"- {c['model']} / {c['method']} ({c['status']} at {c['stage']}): "
                        f"`{c.get('error', '')} {c.get('message', '')[:300]}`"
                        for c in cases if c["status"] != "ok")
    commands = record.get("commands") or [record["command"]]
    ran = (f"Command: `{commands[0]}`" if len(commands) == 1 else
           "Commands (in order; a later one redoes or adds cases): " + ", ".join(f"`{c}`" for c in commands))
    return (f"# keras.applications sweep (Keras {record['keras']})\n\n{ran}\n\n"
            f"Target: {record['target_flops']} of the MACs. Each cell: ok (with the realised MACs ratio), refused "
            f"(a kerascomp error), FAILED (an internal error, a broken budget or parity: .tflite relative error "
            f"over max({PARITY:g}, {PARITY_FACTOR}x the uncompressed model's own, where a case records it) or "
            f"timeout (the case ran past --timeout; before 2026-12-06 the limit was per model, so a slow "
            f"method could leave the model's later ones no time).\n\n"
            f"**{totals['ok']} ok, {totals['refused']} refused, {totals['failed']} failed, {totals['timeout']} timed "
            f"out** of {len(cases)} cases "
            f"on {len(models)} models ({record.get('flavour', 'keras')}; {_hosts(record)}).\n\n"
            f"{timing}{table(['model'] + methods, rows, markdown=True)}\n\n"
            f"## Refusals and failures\n\n{details or 'None.'}\n")


if __name__ == "__main__":
    raise SystemExit(main())

"""The ``kerascomp`` command: ``compress``, ``export``, ``bench`` and ``demo``."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import kerascomp
from kerascomp.bench.android import DeviceSettings, benchmark_on_device, layer_latency_table
from kerascomp.bench.host import host_cpu
from kerascomp.data import augmented_dataset, find_data, load_npz
from kerascomp.errors import CompressionError, InvalidArgumentError
from kerascomp.graph.flavour import keras_of
from kerascomp.loading import load_demo_model, load_model
from kerascomp.methods import collaborative, pruning, registry
from kerascomp.startup import native_lines_filtered, quiet_requested
from kerascomp.tables import table


def _load_inputs(path: str | None, limit: int):
    if path is None:
        return None
    with np.load(path) as archive:
        key = next((k for k in ("x", "x_calibration", "x_train", "x_test") if k in archive.files), archive.files[0])
        return archive[key][:limit].astype("float32")


def _load_labelled(path: str | None, limit: int):
    """``(x, y)`` from an .npz holding x/y, x_val/y_val, x_train/y_train or x_test/y_test (None without a path)."""
    if path is None:
        return None
    with np.load(path) as archive:
        for suffix in ("", "_val", "_train", "_test"):
            if f"x{suffix}" in archive.files and f"y{suffix}" in archive.files:
                labels = archive[f"y{suffix}"][-limit:]
                return archive[f"x{suffix}"][-limit:].astype("float32"), labels.reshape(len(labels), -1)[:, 0]
    raise InvalidArgumentError(f"{path} holds no labelled pair (x and y, x_val and y_val, x_train and y_train or "
                               f"x_test and y_test); method='collaborative' needs labels.")


def _latency_argument(args, model):
    if getattr(args, "latency_table", None) == "host":
        return "host"  # measured here by kerascomp.compress, cached on disk
    if getattr(args, "latency_table", None):
        return kerascomp.LatencyTable.load(args.latency_table)
    if getattr(args, "phone_json", None):
        return kerascomp.LatencyTable.from_bench_json(args.phone_json, model)
    return None


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _method_options(method, args) -> dict:
    """The method's options that were given as flags (unset flags leave the method's defaults).

    A flag that only other methods use is refused, naming the methods that take it, and so are the
    latency flags for a method that uses no table (the planner refuses a table for any other misuse)."""
    given = {name for name in registry.cli_option_names() if getattr(args, name, None) is not None}
    unused = sorted(given - set(method.cli_options))
    if unused:
        described = "; ".join(f"{_flag(name)} is used by {', '.join(registry.methods_with_cli_option(name))}"
                              for name in unused)
        raise InvalidArgumentError(f"method {method.name!r} does not use {', '.join(map(_flag, unused))} ({described}). "
                                   f"Drop the flag, or choose one of those methods.")
    tables = [flag for flag, value in (("--latency-table", getattr(args, "latency_table", None)),
                                       ("--phone-json", getattr(args, "phone_json", None))) if value]
    if tables and not (method.uses_latency or method.latency_front):
        users = sorted(name for name in registry.names()
                       if registry.get(name).uses_latency or registry.get(name).latency_front)
        raise InvalidArgumentError(f"method {method.name!r} uses no latency table ({' and '.join(tables)}): it meets "
                                   f"--target-latency by timing the compressed model here. Drop the flag, or choose "
                                   f"one of {', '.join(users)}.")
    options = {name: getattr(args, name) for name in method.cli_options if getattr(args, name, None) is not None}
    return {name: None if name in _STEP_OPTIONS and value == "auto" else value  # None: the tile policy
            for name, value in options.items()}


_STEP_OPTIONS = ("channel_multiple", "rank_multiple")
STREAM_RULES = tuple(sorted(set(collaborative.STREAMS) | set(pruning.STREAMS)))  # each method checks its own


def _stream(text: str) -> str | float:
    """``--stream``: a rule name, or the fraction of each stream group to keep (collaborative)."""
    if text in STREAM_RULES:
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one of {', '.join(STREAM_RULES)} or a fraction, got {text!r}") from None


def _step(text: str) -> int | str:
    """``--channel-multiple`` / ``--rank-multiple``: a positive integer, or ``auto``."""
    if text == "auto":
        return text
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer or 'auto', got {text!r}")
    return value


def _targets(args) -> dict:
    unset = args.target_params is not None or args.target_latency is not None
    return {"target_flops": None if unset else args.target_flops, "target_params": args.target_params,
            "target_latency": args.target_latency}


def cmd_compress(args) -> int:
    model = load_model(args.model)
    verbose = 0 if args.quiet else 1
    plan = kerascomp.Plan.load(args.plan) if args.plan else None
    method = registry.get(plan.method if plan else args.method)
    if plan is not None:
        ignored = [_flag(name) for name in (*registry.cli_option_names(), "target_params", "target_latency",
                                            "latency_table", "phone_json") if getattr(args, name, None) is not None]
        if ignored:
            raise InvalidArgumentError(f"--plan fixes the method, targets and options, so {', '.join(ignored)} would "
                                       "be ignored. Drop them, or plan again with them (kerascomp plan).")
        result = kerascomp.compress(model, plan=plan, verbose=verbose,
                                    data=_load_inputs(args.data, 256))
    else:
        options = _method_options(method, args)  # refuses unused flags before any work
        data = _load_labelled(args.data, 512) if method.needs_labels else _load_inputs(args.data, 256)
        result = kerascomp.compress(model, method=method.name, data=data, verbose=verbose,
                                    latency=_latency_argument(args, model), **_targets(args), **options)
    if args.quiet:
        print(result.report)
    result.model.save(args.output)
    if args.report_json:
        Path(args.report_json).write_text(result.report.to_json())
    if args.plan_json:
        result.plan.save(args.plan_json)
    print(f"saved {args.output}")
    if args.report_json:
        print(f"compression report (per-layer decisions): {args.report_json}")
    if args.report:
        with native_lines_filtered(quiet_requested()):  # the converter's and LiteRT's native lines
            measured = kerascomp.report(model, result.model, verbose=verbose,
                                        names=(Path(args.model).name, Path(args.output).name))
        written = measured.save(args.report, command=_command(args))
        print(f"measured per-layer report: {', '.join(str(path) for path in written)}")
    else:
        print(f"per-layer forms, MACs and measured latency: kerascomp report {args.model} {args.output} -o PREFIX")
    return 0


def _command(args) -> str:
    return "kerascomp " + " ".join(args.full_argv)


def cmd_report(args) -> int:
    result = kerascomp.report(args.original, args.compressed, num_threads=args.threads, runs=args.runs,
                              cache=args.cache, verbose=0 if args.quiet else 1)
    print(result)
    written = result.save(args.output, command=_command(args))
    print(f"saved {', '.join(str(path) for path in written)}")
    return 0


def cmd_plan(args) -> int:
    model = load_model(args.model)
    method = registry.get(args.method)
    options = _method_options(method, args)
    data = _load_labelled(args.data, args.samples) if method.needs_labels else _load_inputs(args.data, args.samples)
    plan = kerascomp.plan(model, method.name, data=data, latency=_latency_argument(args, model),
                          verbose=0 if args.quiet else 1, **_targets(args), **options)
    plan.save(args.output)
    print(plan)
    print(f"saved {args.output}; apply with: kerascomp compress {args.model} --plan {args.output} -o SMALL.keras")
    return 0


def cmd_latency(args) -> int:
    table = kerascomp.latency_table(load_model(args.model), num_threads=args.threads, runs=args.runs,
                                    verbose=0 if args.quiet else 1)
    table.save(args.output)
    print(f"{len(table.layers)} layers, whole model {table.total_ms:.3f} ms ({table.source}); saved {args.output}")
    return 0


def cmd_export(args) -> int:
    model = load_model(args.model)
    result = kerascomp.export_tflite(model, args.output, quantize=args.quantize,
                                     representative_data=_load_inputs(args.calibration, 500), int8_io=args.int8_io,
                                     strict=args.strict)
    print(result)
    return 0


def bench_table(results, markdown: bool = False) -> str:
    """Host rows (median/p90 over interleaved runs) or phone rows (benchmark_model's avg/min/std)."""
    if hasattr(results[0], "median_ms"):
        base = results[0].median_ms
        rows = [[Path(r.path).name, f"{r.size_bytes / 1024:.1f}", f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}",
                 f"{base / r.median_ms:.2f}x"] for r in results]
        return table(["model", "size KiB", "median ms", "p90 ms", "speedup vs first"], rows, markdown=markdown)
    base = results[0].avg_ms

    def optional(value, scale=1e-3, digits=3):
        return "-" if value is None else f"{value * scale:.{digits}f}"

    rows = [[Path(r.path).name, f"{r.size_bytes / 1024:.1f}", f"{r.avg_ms:.3f}", optional(r.runs and r.runs.min_us),
             optional(r.runs and r.runs.std_us), optional(r.peak_memory_mb, 1, 1), f"{base / r.avg_ms:.2f}x"]
            for r in results]
    return table(["model", "size KiB", "avg ms", "min ms", "std ms", "peak MB", "speedup vs first"], rows,
                 markdown=markdown)


def _device_settings(args):
    return DeviceSettings(num_threads=args.threads, use_xnnpack=not args.no_xnnpack, use_gpu=args.use_gpu,
                          num_runs=args.runs, enable_op_profiling=args.op_profile or bool(args.layers_from),
                          binary=args.binary, device_dir=args.device_dir, serial=args.serial, adb=args.adb_path)


def cmd_bench(args) -> int:
    command = "kerascomp bench " + " ".join(args.argv)
    phone_only = [flag for flag, used in (("--use-gpu", args.use_gpu), ("--op-profile", args.op_profile),
                                          ("--layers-from", args.layers_from), ("--serial", args.serial)) if used]
    if phone_only and not args.adb:
        raise InvalidArgumentError(f"{', '.join(phone_only)} only apply with --adb: the host LiteRT Python API has no "
                                   "per-operator profiler, and GPU timings belong on the phone.")
    if args.adb:
        settings = _device_settings(args)
        results = benchmark_on_device(args.models, settings)
        where = (f"phone{' ' + args.serial if args.serial else ''} via adb, benchmark_model, {args.threads} thread(s), "
                 f"XNNPACK {'off' if args.no_xnnpack else 'on'}, GPU {'on' if args.use_gpu else 'off'}, "
                 f"{args.runs} runs each, one model after the other")
    else:
        results = kerascomp.compare_tflite(args.models, num_threads=args.threads, runs=args.runs,
                                           xnnpack=not args.no_xnnpack)
        where = (f"host LiteRT, {args.threads} thread(s), XNNPACK {'off' if args.no_xnnpack else 'on'}, "
                 f"{args.runs} runs each, interleaved, CPU: {host_cpu()}")
    print(bench_table(results))
    print(f"({where})")
    record = {"command": command, "runner": "adb" if args.adb else "host", "conditions": where,
              "results": [r.to_dict() for r in results]}
    if args.layers_from:
        record["layer_latency_ms"] = _layer_tables(args.layers_from, results)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=2))
    if args.markdown:
        Path(args.markdown).write_text(f"{bench_table(results, markdown=True)}\n\n{where}.\n\n"
                                       f"Made with `{command}`.\n")
    return 0


def _layer_tables(model_path: str, results) -> dict:
    """Per-layer milliseconds for each profiled file, for the layers of ``model_path`` that hold weights."""
    model = load_model(model_path)
    names = [layer.name for layer in model.layers if layer.weights]
    return {Path(r.path).name: layer_latency_table(r.op_profile, names, tflite=r.path) for r in results}


def cmd_demo(args) -> int:
    started = time.time()
    model = load_model(args.model) if args.model else load_demo_model()
    data_path = find_data(args.data)
    print(f"model: {model.name} ({args.model or 'shipped demo model'}); data: {data_path or 'none (set --data or KERASCOMP_DATA)'}")
    calibration = None
    if data_path is not None:
        data = load_npz(data_path)
        x_test = data["x_test"][: args.eval_images].astype("float32")
        y_test = data["y_test"][: args.eval_images].astype("int32")
        calibration = data["x_train"][:256].astype("float32")

    small = kerascomp.compress(model, method="fga", target_flops=args.target_flops, data=calibration,
                               verbose=args.verbose).model

    accuracy = {}
    if data_path is not None:
        keras = keras_of(model)

        def evaluate(m):
            return float(np.mean(np.argmax(m.predict(x_test, batch_size=250, verbose=0), 1) == y_test))

        accuracy["original"] = evaluate(model)
        accuracy["compressed"] = evaluate(small)
        steps = args.finetune_steps
        if steps > 0:
            train = augmented_dataset(data["x_train"], data["y_train"], 128).repeat().take(steps)
            schedule = keras.optimizers.schedules.CosineDecay(args.finetune_lr, steps)
            small.compile(optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
            print(f"finetuning {steps} steps of batch 128 ...")
            small.fit(train, epochs=1, verbose=2 if args.verbose else 0)
            accuracy["finetuned"] = evaluate(small)


    output = Path(args.output_dir or tempfile.mkdtemp(prefix="kerascomp-demo-"))
    output.mkdir(parents=True, exist_ok=True)
    original_export = kerascomp.export_tflite(model, output / "original.tflite")
    small_export = kerascomp.export_tflite(small, output / "fga.tflite")
    timings = kerascomp.compare_tflite([original_export.path, small_export.path], num_threads=1, runs=args.runs)
    before, after = kerascomp.cost(model), kerascomp.cost(small)
    rows = [["MACs", f"{before.macs:,}", f"{after.macs:,}", f"{after.macs / before.macs:.3f}"],
            ["params", f"{before.params:,}", f"{after.params:,}", f"{after.params / before.params:.3f}"],
            [".tflite bytes", f"{original_export.size_bytes:,}", f"{small_export.size_bytes:,}",
             f"{small_export.size_bytes / original_export.size_bytes:.3f}"],
            ["LiteRT median ms (1 thread)", f"{timings[0].median_ms:.3f}", f"{timings[1].median_ms:.3f}",
             f"{timings[1].median_ms / timings[0].median_ms:.3f}"]]
    for key in ("compressed", "finetuned"):
        if key in accuracy:
            rows.append([f"top-1 ({key}, {len(x_test)} test images)", f"{accuracy['original']:.4f}",
                         f"{accuracy[key]:.4f}", f"{accuracy[key] - accuracy['original']:+.4f}"])
    print()
    print(table(["", "original", "fga", "ratio / change"], rows))
    ideal = before.macs / after.macs
    measured = timings[0].median_ms / timings[1].median_ms
    print(f"speedup {measured:.2f}x measured vs {ideal:.2f}x ideal from MACs "
          f"(realised fraction {measured / ideal:.2f}); files in {output}; {time.time() - started:.0f} s")
    return 0


def _add_target_arguments(parser) -> None:
    """The arguments shared by ``compress`` and ``plan`` (targets, tables, collaborative's and the stream's)."""
    parser.add_argument("--target-latency", type=float, default=None,
                        help="fraction of the original latency to keep (collaborative, fga plan it by a latency table: "
                             "--latency-table, --phone-json, or measured here; the others by timing)")
    parser.add_argument("--latency-table", help="JSON from kerascomp latency-table, or 'host' to measure this "
                                                "host's table (cached on disk)")
    parser.add_argument("--phone-json", help="JSON from kerascomp bench --adb --op-profile --layers-from MODEL")
    parser.add_argument("--sensitivity", default=None, choices=["taylor", "measured"],
                        help="collaborative: first-order Taylor scores (reference) or measured loss changes")
    parser.add_argument("--stream", type=_stream, default=None, metavar="RULE",
                        help="l1, correlation, collaborative: how the residual stream (channels several convs write "
                             "through an Add) is cut. l1/correlation: auto (default), last or uniform; collaborative: "
                             "auto (default), keep, uniform, or the fraction of each stream group to keep "
                             "(docs/options.md)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kerascomp", description="Compress Keras CNNs for TFLite/LiteRT.")
    commands = parser.add_subparsers(dest="command", required=True)

    compress = commands.add_parser("compress", help="compress a .keras model")
    compress.add_argument("model")
    compress.add_argument("-o", "--output", required=True)
    compress.add_argument("--method", default="fga", choices=registry.names())
    compress.add_argument("--target-flops", type=float, default=kerascomp.DEFAULT_TARGET_FLOPS)
    compress.add_argument("--target-params", type=float, default=None)
    compress.add_argument("--data", help=".npz with inputs (x, x_train or x_test): fga refinement, pruning compensation and BN recalibration")
    compress.add_argument("--min-channels-per-group", type=int, default=None, help="fga (default 16)")
    compress.add_argument("--pointwise", action=argparse.BooleanOptionalAction, default=None,
                          help="fga, svd, joint_svd, tucker, auto, collaborative: factor 1x1 convs too (--pointwise) or never "
                               "(--no-pointwise); default: only when the kxk convs alone cannot reach the target")
    compress.add_argument("--allocation", default=None, choices=["uniform", "global"],
                          help="pruning: same fraction per channel group, or one global score threshold; "
                               "svd/joint_svd: one rate for every layer (the paper's rule), or the global allocation")
    compress.add_argument("--variant", default=None, choices=["left", "right", "bi"],
                          help="joint_svd: which factor is shared (left: the kx1 conv, right: the 1xk conv, bi: both)")
    compress.add_argument("--groups", action="append", metavar="REGEX",
                          help="joint_svd: one joint group per regex over layer names (repeatable); default: automatic")
    compress.add_argument("--max-fraction", type=float, default=None,
                          help="pruning: at most this fraction of a group's channels is removed (default 0.8)")
    compress.add_argument("--channel-multiple", type=_step, default=None, metavar="N|auto",
                          help="l1, correlation, collaborative, auto: pruned layers keep a multiple of N channels; "
                               "auto: 8, else 4, else 1, the first that meets the target (default for all but "
                               "collaborative, whose default is 1)")
    compress.add_argument("--rank-multiple", type=_step, default=None, metavar="N|auto",
                          help="fga, svd, joint_svd, tucker, collaborative, auto: ranks are multiples of N; auto as "
                               "for --channel-multiple")
    compress.add_argument("--plan", help="apply this plan JSON (kerascomp plan, or --plan-json of an earlier run) "
                                         "instead of planning; the method is the plan's")
    _add_target_arguments(compress)
    compress.add_argument("--report-json")
    compress.add_argument("--plan-json", help="also save the plan that reproduces this model")
    compress.add_argument("--report", metavar="PREFIX",
                          help="also time both models layer by layer here (kerascomp report) and write "
                               "PREFIX.md, PREFIX.json and PREFIX.png")
    compress.add_argument("-q", "--quiet", action="store_true")
    compress.set_defaults(run=cmd_compress)

    plan = commands.add_parser("plan", help="per-layer decisions of any method for a target, as JSON")
    plan.add_argument("model")
    plan.add_argument("-o", "--output", required=True, help="plan JSON to write")
    plan.add_argument("--method", default="collaborative", choices=registry.names())
    plan.add_argument("--data", help=".npz with data; collaborative needs labels (x and y, x_val/y_val or "
                                     "x_train/y_train)")
    plan.add_argument("--samples", type=int, default=512, help="rows of --data read")
    plan.add_argument("--target-flops", type=float, default=kerascomp.DEFAULT_TARGET_FLOPS)
    plan.add_argument("--target-params", type=float, default=None)
    plan.add_argument("--allocation", default=None, choices=["global", "uniform"])
    _add_target_arguments(plan)
    plan.add_argument("-q", "--quiet", action="store_true")
    plan.set_defaults(run=cmd_plan)

    latency = commands.add_parser("latency-table", help="time every conv's candidate forms with LiteRT here, as JSON")
    latency.add_argument("model")
    latency.add_argument("-o", "--output", required=True)
    latency.add_argument("--threads", type=int, default=1)
    latency.add_argument("--runs", type=int, default=30)
    latency.add_argument("-q", "--quiet", action="store_true")
    latency.set_defaults(run=cmd_latency)

    compare = commands.add_parser("report", help="per-layer forms, MACs, params and measured latency of a "
                                                 "compressed model against its original (Markdown, JSON, PNG)")
    compare.add_argument("original")
    compare.add_argument("compressed")
    compare.add_argument("-o", "--output", required=True, metavar="PREFIX",
                         help="writes PREFIX.md, PREFIX.json and PREFIX.png")
    compare.add_argument("--threads", type=int, default=1)
    compare.add_argument("--runs", type=int, default=50)
    compare.add_argument("--cache", action="store_true", help="reuse one-layer timings of earlier runs on this "
                                                              "CPU, LiteRT and settings (default: time all in this run)")
    compare.add_argument("-q", "--quiet", action="store_true")
    compare.set_defaults(run=cmd_report)

    export = commands.add_parser("export", help="convert a .keras model to .tflite and check it in LiteRT")
    export.add_argument("model")
    export.add_argument("-o", "--output", required=True)
    export.add_argument("--quantize", choices=["float16", "dynamic", "int8"])
    export.add_argument("--calibration", help=".npz with calibration inputs (needed for int8)")
    export.add_argument("--int8-io", action="store_true", help="int8 inputs and outputs (with --quantize int8)")
    export.add_argument("--strict", action="store_true",
                        help="fail (exit 1, nothing written) when the .tflite disagrees with the model, "
                             "instead of warning")
    export.set_defaults(run=cmd_export)

    bench = commands.add_parser("bench", help="time .tflite files with LiteRT here, or on a phone with --adb")
    bench.add_argument("models", nargs="+")
    bench.add_argument("--threads", type=int, default=1)
    bench.add_argument("--runs", type=int, default=50)
    bench.add_argument("--no-xnnpack", action="store_true")
    bench.add_argument("--json")
    bench.add_argument("--markdown")
    phone = bench.add_argument_group("phone (adb + benchmark_model)")
    phone.add_argument("--adb", action="store_true", help="run on the phone adb sees, with benchmark_model")
    phone.add_argument("--serial", help="adb device serial (adb devices), when several are attached")
    phone.add_argument("--use-gpu", action="store_true", help="benchmark_model --use_gpu=true")
    phone.add_argument("--binary", default="/data/local/tmp/benchmark_model", help="benchmark_model on the phone")
    phone.add_argument("--device-dir", default="/data/local/tmp/kerascomp", help="where models are pushed")
    phone.add_argument("--adb-path", default="adb")
    phone.add_argument("--op-profile", action="store_true", help="benchmark_model --enable_op_profiling=true")
    phone.add_argument("--layers-from", metavar="MODEL.keras",
                       help="with --adb: also write per-layer ms (layers of this model) into --json")
    bench.set_defaults(run=cmd_bench)

    demo = commands.add_parser("demo", help="compress, finetune, export and benchmark the shipped CIFAR-10 model")
    demo.add_argument("--model", help="a .keras model instead of the shipped one")
    demo.add_argument("--data", help="cifar10.npz (default: $KERASCOMP_DATA)")
    demo.add_argument("--target-flops", type=float, default=0.5)
    demo.add_argument("--finetune-steps", type=int, default=100)
    demo.add_argument("--finetune-lr", type=float, default=0.01)
    demo.add_argument("--eval-images", type=int, default=2000)
    demo.add_argument("--runs", type=int, default=100)
    demo.add_argument("--output-dir")
    demo.add_argument("--verbose", type=int, default=0)
    demo.set_defaults(run=cmd_demo)
    return parser


# Commands that create LiteRT interpreters, whose native "INFO: Created ... delegate" line the quiet CLI drops.
_LITERT_COMMANDS = ("export", "bench", "latency-table", "demo", "report")


def main(argv: list[str] | None = None) -> int:
    """Exit codes: 0 done, 2 bad arguments (argparse's or kerascomp's InvalidArgumentError), 1 refused
    (the model, its weights or the budget cannot be handled, or export/bench failed); messages on stderr."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.argv = argv[1:]
    args.full_argv = argv
    try:
        with native_lines_filtered(quiet_requested() and args.command in _LITERT_COMMANDS):
            return args.run(args)
    except InvalidArgumentError as error:
        print(f"kerascomp: error: {error}", file=sys.stderr)
        return 2
    except CompressionError as error:
        print(f"kerascomp: refused: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

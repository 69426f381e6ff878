"""The CIFAR-10 benchmark suite: every kerascomp method and the peers at equal targets and one finetune budget.

    KERASCOMP_DATA=../shared/data python -m benchmarks.cifar --model resnet20 \\
        --methods none,fga,l1,correlation,svd,joint_svd,tucker,collaborative,tfmot,mct --targets 0.5,0.2
    python -m benchmarks.cifar --report        # benchmarks/RESULTS.md + results/cifar_accuracy_vs_macs.png
    python -m benchmarks.cifar --verify        # reload the kept .keras files, check checksums and top-1
    python -m benchmarks.cifar --preset pruning   # an ablation grid: results/cifar_resnet20_pruning.{json,md}

``--model``: ``resnet20`` (the shipped demo model), ``resnet56`` or ``mobilenetv2`` (the baselines in
``benchmarks/models/``, each with its recipe JSON; under tf_keras a twin of the architecture gets their weights).
``--methods`` takes the names in ``VARIANTS`` (a kerascomp method with options: ``fga_no_refine``,
``correlation_x4``, ``collaborative_prune_only``, ``joint_bi``, ...) as well as ``none``, ``tfmot`` and
``mct``. ``--preset`` fills in the methods, targets and epochs of the ablations that once had scripts of
their own (``pruning``, ``jsvd``, ``collaborative``, ``fga_refinement``; see ``PRESETS``); flags given on
the command line still win.

Writes ``benchmarks/results/cifar_<model>.{json,md}`` after every row; a re-run keeps the rows it
already has (``--redo KEY,...`` or ``--fresh`` to measure again). Rows, one per method and target:

* ``none``: the baseline finetuned with the same budget (the control every drop is read against);
* ``fga``, ``l1``, ``svd``, ``tucker``: ``clone_compressed(method=..., target_flops=t, data=256 images)``;
* ``joint_svd``: the same with ``target_params=t`` (the method is a params compressor);
* ``correlation``: ``prune_in_rounds`` with one round: one epoch of the correlation regulariser,
  the drop (compensated, BN recalibrated), then the remaining epochs of finetuning;
* ``collaborative``: ``kerascomp.plan`` on 512 labelled training images the finetuning never sees, then
  ``clone_compressed(plan=...)``;
* ``tfmot``: tensorflow-model-optimization magnitude pruning to sparsity 1 - t (tf_keras, in a child
  process), sparsity ramped over the first half of the budget; the masks stay dense in the .tflite;
* ``mct``: Sony model-compression-toolkit structured pruning to t of the kernel memory, run in a
  separate TF 2.15 venv (``benchmarks/peers/setup_mct.sh``), then finetuned here like every row.

Every row is finetuned ``--epochs`` epochs on the first ``--train-samples`` training images (standard
augmentation, SGD momentum 0.9 nesterov, cosine decay from ``--lr``, batch 128) and evaluated on all
10,000 test images. Latency ratios are compressed/original LiteRT medians at 1 thread, XNNPACK on,
the pair timed interleaved in one run; realised fraction = MACs ratio / latency ratio (1.0 = the
speed-up equals the MACs cut). The shared CIFAR copy is JPEG-degraded: compare rows with each other.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import DATA_HELP, cpu_model, load_cifar, result_file

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
KEPT = HERE / "models" / "compressed"
MCT_PYTHON = HERE.parent / ".venv-mct" / "bin" / "python"
# name -> (the kerascomp.zoo architecture: "resnet" with its depth, or "mobilenetv2" with its alpha; the baseline
# .keras, None for the shipped demo model)
MODELS = {"resnet20": (("resnet", 20), None), "resnet56": (("resnet", 56), HERE / "models" / "resnet56_cifar10.keras"),
          "mobilenetv2": (("mobilenetv2", 1.0), HERE / "models" / "mobilenetv2_cifar10.keras")}
METHODS = ("none", "fga", "l1", "correlation", "svd", "joint_svd", "tucker", "collaborative", "tfmot", "mct")
LEGACY = ("tfmot", "mct", "mct_simd1")  # need tf_keras: run in a child process with TF_USE_LEGACY_KERAS=1
# A row name -> (how it is built, the kerascomp method, its options, the budget it targets).
# "clone": clone_compressed on 256 calibration images; "plan": kerascomp.plan on 512 labelled images the
# finetuning never sees, then the plan applied; "rounds": prune_in_rounds, one regularised round.
VARIANTS = {
    "fga": ("clone", "fga", {}, "macs"),
    "fga_no_refine": ("clone", "fga", {"refine": False}, "macs"),
    "l1": ("clone", "l1", {}, "macs"),
    "l1_x4": ("clone", "l1", {"channel_multiple": 4}, "macs"),
    "l1_thinet": ("clone", "l1", {"selection": "reconstruction"}, "macs"),
    "svd": ("clone", "svd", {}, "macs"),
    "svd_params": ("clone", "svd", {}, "params"),
    "tucker": ("clone", "tucker", {}, "macs"),
    "tucker_global": ("clone", "tucker", {"allocation": "global"}, "macs"),
    "joint_svd": ("clone", "joint_svd", {}, "params"),
    "joint_right": ("clone", "joint_svd", {"variant": "right"}, "params"),
    "joint_bi": ("clone", "joint_svd", {"variant": "bi"}, "params"),
    "joint_left_global": ("clone", "joint_svd", {"variant": "left", "allocation": "global"}, "params"),
    "correlation": ("rounds", "correlation", {}, "macs"),
    "correlation_no_reg": ("clone", "correlation", {}, "macs"),
    "correlation_no_comp": ("rounds", "correlation", {"compensate": False}, "macs"),
    "correlation_x4": ("rounds", "correlation", {"channel_multiple": 4}, "macs"),
    "collaborative": ("plan", "collaborative", {}, "macs"),
    "collaborative_prune_only": ("plan", "collaborative", {"decompose": False}, "macs"),
    "collaborative_measured": ("plan", "collaborative", {"sensitivity": "measured"}, "macs"),
    "collaborative_max08": ("plan", "collaborative", {"max_macs_fraction": 0.8}, "macs"),
    "uniform_lowrank": ("plan", "collaborative", {"allocation": "uniform", "prune": False}, "macs"),
    # equal params (issue 18: every method at params 0.5, against mct / mct_simd1)
    "fga_params": ("clone", "fga", {}, "params"),
    "l1_params": ("clone", "l1", {}, "params"),
    "tucker_params": ("clone", "tucker", {}, "params"),
    "collaborative_params": ("plan", "collaborative", {}, "params"),
    "correlation_params": ("rounds", "correlation", {}, "params"),
    # ablations of the shared steps (reconstruction here; distillation through NO_DISTILL below)
    "fga_no_reconstruct": ("clone", "fga", {"reconstruct": False}, "macs"),
    "fga_no_distill": ("clone", "fga", {}, "macs"),
    "fga_neither": ("clone", "fga", {"reconstruct": False}, "macs"),
    # the same ablations for SVD, the best method at 0.5 MACs on the trained ResNet-20 (2026-12-01 grid)
    "svd_no_reconstruct": ("clone", "svd", {"reconstruct": False}, "macs"),
    "svd_no_distill": ("clone", "svd", {}, "macs"),
    "svd_neither": ("clone", "svd", {"reconstruct": False}, "macs"),
    # method="auto" (issue 19): per layer the best form, planned with this host's measured latency table
    # ("latency" is an argument of clone_compressed, not a method option: see CALL_ARGUMENTS)
    "auto": ("clone", "auto", {"latency": "host"}, "macs"),
    "auto_latency": ("clone", "auto", {"latency": "host"}, "latency"),
    # the ablation of auto's whitening (per-channel energies only, as auto was before 2026-12-03)
    "auto_latency_diagonal": ("clone", "auto", {"latency": "host", "whiten": False}, "latency"),
    # the single methods at the same measured-latency target (the rows auto_latency is compared with); the
    # ones with a latency model plan by the host table
    "svd_latency": ("clone", "svd", {"latency": "host"}, "latency"),
    "svd_latency_raw": ("clone", "svd", {"latency": "host", "whiten": False}, "latency"),  # as svd before whiten
    "l1_latency": ("clone", "l1", {}, "latency"),  # l1 has no latency model: target_latency by measured search
    "fga_latency": ("clone", "fga", {"latency": "host"}, "latency"),
    "tucker_latency": ("clone", "tucker", {"latency": "host"}, "latency"),
}
# Keys of a variant's options that are clone_compressed arguments rather than method options.
CALL_ARGUMENTS = ("latency",)
# Rows finetuned without distillation whatever --alpha says (the ablation "without distillation").
NO_DISTILL = ("fga_no_distill", "fga_neither", "svd_no_distill", "svd_neither")
# The ablations that had scripts of their own before (pruning_cifar, jsvd_cifar, collaborative_cifar,
# fga_refinement); their old results files stay in results/ with the command that made them.
PRESETS = {
    "pruning": {"methods": "none,correlation,correlation_no_reg,correlation_no_comp,l1,correlation_x4",
                "targets": "0.5", "epochs": 3},
    "jsvd": {"methods": "none,svd_params,joint_svd,joint_right,joint_bi,joint_left_global", "targets": "0.1",
             "epochs": 3},
    "collaborative": {"methods": "none,collaborative,collaborative_prune_only,collaborative_max08,l1,"
                                 "uniform_lowrank,tucker", "targets": "0.5,0.25"},
    "fga_refinement": {"methods": "none,fga,fga_no_refine", "targets": "0.5"},
}
KEEP_BYTES = 2_000_000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet20", choices=sorted(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--targets", default="0.5,0.2", help="fractions of MACs kept (params for joint_svd/mct)")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--alpha", type=float, default=0.0,
                        help="distillation weight: finetune through kerascomp.distiller with the baseline as teacher "
                             "(0: plain finetuning, as rows before 2026-12 were made)")
    parser.add_argument("--temperature", type=float, default=4.0, help="distillation temperature")
    parser.add_argument("--calibration", type=int, default=256, help="training images passed to methods as data")
    parser.add_argument("--runs", type=int, default=60, help="LiteRT runs per file for the latency ratios")
    parser.add_argument("--out", default=None, help="results file stem (default: benchmarks/results/cifar_MODEL)")
    parser.add_argument("--redo", default="", help="comma-separated row keys (method@target) to measure again")
    parser.add_argument("--fresh", action="store_true", help="drop every kept row of this model")
    parser.add_argument("--report", action="store_true", help="only write benchmarks/RESULTS.md and the plot")
    parser.add_argument("--verify", action="store_true", help="only re-check the kept .keras files")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="an ablation grid (sets methods, targets, epochs)")
    preset = parser.parse_known_args(argv)[0].preset
    if preset:
        parser.set_defaults(**PRESETS[preset])
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.report:
        from benchmarks.cifar_report import write_report

        write_report()
        return 0
    methods = [m for m in args.methods.split(",") if m]
    known = ("none", *VARIANTS, *LEGACY)
    unknown = sorted(set(methods) - set(known))
    if unknown:
        parser.error(f"unknown methods {unknown}; choose from {','.join(known)}")
    if args.epochs < 2 and any(VARIANTS.get(m, ("",))[0] == "rounds" for m in methods):
        parser.error("--epochs must be >= 2: correlation spends one epoch on its regulariser")
    data = load_cifar(args.data)
    if data is None:
        return 2
    out = Path(args.out) if args.out else RESULTS / (f"cifar_{args.model}" + (f"_{preset}" if preset else ""))
    store = Store(result_file(out, ".json"), setup={
        "model": args.model, "epochs": args.epochs, "train_samples": args.train_samples, "lr": args.lr,
        "data": args.data, **({"alpha": args.alpha, "temperature": args.temperature} if args.alpha else {}),
        **({"calibration": args.calibration} if args.calibration != 256 else {})})
    if args.verify:
        return verify(store, data)
    if args.fresh:
        store.clear()
    if args.out:  # the report's command line names the file
        store.update(out=args.out)
    bench = None
    redo = set(filter(None, args.redo.split(",")))
    legacy = os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    for requested in (float(t) for t in args.targets.split(",")):
        for method in methods:
            target = requested
            if method == "none":  # the finetuned control is one row, whatever the targets
                target = 1.0
            key = f"{method}@{target:g}"
            if key in store.rows() and key not in redo:
                print(f"{key}: kept from {store.path.name}")
                continue
            if method in LEGACY and not legacy:
                _run_legacy_child(argv, method, target, key in redo)
                continue
            print(f"== {key}", flush=True)
            bench = bench or Bench(args, data, KEPT / out.name)
            store.put(key, bench.row(method, target))
            store.write_markdown()
    store.write_markdown()
    return 0


def _run_legacy_child(argv, method: str, target: float, redo: bool) -> None:
    """Measure one tf_keras-only row in a child process (tfmot sets TF_USE_LEGACY_KERAS process-wide)."""
    args = list(argv if argv is not None else sys.argv[1:])
    child = [sys.executable, "-m", "benchmarks.cifar", *_without(args, ("--methods", "--targets", "--redo", "--fresh")),
             "--methods", method, "--targets", f"{target:g}"] + (["--redo", f"{method}@{target:g}"] if redo else [])
    print(f"== {method}@{target:g} in a tf_keras child process", flush=True)
    subprocess.run(child, env={**os.environ, "TF_USE_LEGACY_KERAS": "1"}, check=False)


def _without(args: list[str], options: tuple[str, ...]) -> list[str]:
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in options:
            skip = "=" not in arg and name != "--fresh"
            continue
        out.append(arg)
    return out


class Store:
    """The JSON file of one model's rows; re-read before every write so child processes can add rows."""

    def __init__(self, path: Path, setup: dict):
        self.path, self.setup = path, setup
        if path.exists():
            kept = json.loads(path.read_text()).get("setup")
            if kept is not None and kept != setup:
                raise SystemExit(f"{path} holds rows measured with {kept}, not {setup}. "
                                 "Pass the same options, or --fresh to start over.")

    def _load(self) -> dict:
        if self.path.exists():
            return json.loads(self.path.read_text())
        return {"setup": self.setup, "rows": {}}

    def rows(self) -> dict:
        return self._load()["rows"]

    def clear(self) -> None:
        state = self._load()
        state["rows"] = {}
        self._save(state)

    def put(self, key: str, row: dict) -> None:
        state = self._load()
        state["rows"][key] = row
        self._save(state)

    def update(self, **fields) -> None:
        state = self._load()
        state.update(fields)
        self._save(state)

    def _save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state["setup"] = self.setup
        self.path.write_text(json.dumps(state, indent=2, default=str) + "\n")

    def write_markdown(self) -> None:
        from benchmarks.cifar_report import model_table

        state = self._load()
        result_file(self.path, ".md").write_text(model_table(state) + "\n")


class Bench:
    """The baseline, the data, and the measurements every row goes through."""

    def __init__(self, args, data: dict, kept: Path):
        import numpy as np

        import kerascomp

        self.args, self.kerascomp, self.np, self.kept = args, kerascomp, np, kept
        self.keras = kerascomp._default_keras()
        self.x_train = data["x_train"][:args.train_samples]
        self.y_train = data["y_train"][:args.train_samples].ravel()
        self.x_test, self.y_test = data["x_test"].astype("float32"), data["y_test"].ravel()
        self.calibration = self.x_train[:args.calibration].astype("float32")
        # the planner's labelled images come from the end of the training set, apart from the finetuning rows
        self.labelled = (data["x_train"][-512:].astype("float32"), data["y_train"][-512:].ravel())
        self.baseline = load_baseline(args.model)
        self.original = kerascomp.cost(self.baseline)
        self.workdir = Path(tempfile.mkdtemp(prefix="kerascomp-cifar-"))
        self.originals = {}
        for mode in ("fp32", "int8"):
            self.originals[mode] = self.workdir / f"original_{mode}.tflite"
            self._export(self.baseline, self.originals[mode], mode)
        self.baseline_accuracy = self.accuracy(self.baseline)
        self.baseline_info = {"accuracy": self.baseline_accuracy, "macs": self.original.macs,
                              "params": self.original.params,
                              "tflite_bytes_fp32": self.originals["fp32"].stat().st_size,
                              "tflite_bytes_int8": self.originals["int8"].stat().st_size,
                              "parity_int8": self.parity(self.baseline, self.originals["int8"])}

    # -- measurements -------------------------------------------------------------------------------------------
    def accuracy(self, model) -> float:
        return float((model.predict(self.x_test, batch_size=500, verbose=0).argmax(-1) == self.y_test).mean())

    def train(self, model, epochs: int, callbacks=(), distill: bool = True) -> float:
        from kerascomp.data import augmented_dataset

        keras, started = self.keras, time.perf_counter()
        if epochs == 0:
            return 0.0
        steps = epochs * int(self.np.ceil(len(self.x_train) / 128))
        if self.args.alpha and distill:  # the same distillation from the same teacher for every row, the control included
            model = self.kerascomp.distiller(model, self.baseline, temperature=self.args.temperature,
                                             alpha=self.args.alpha)
        model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(self.args.lr, steps), momentum=0.9,
                                           nesterov=True),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=False)
        model.fit(augmented_dataset(self.x_train, self.y_train, 128), epochs=epochs, verbose=2,
                  callbacks=list(callbacks))
        return time.perf_counter() - started

    def _export(self, model, path: Path, mode: str):
        return self.kerascomp.export_tflite(model, path, quantize=None if mode == "fp32" else mode,
                                            representative_data=self.calibration)

    def parity(self, model, path: Path, images: int = 2000) -> dict:
        """The .tflite against the Keras model on the first ``images`` test images: top-1 of each and how
        often their top-1 agree (an int8 latency is shown only with this)."""
        from kerascomp.export.tflite import run_tflite

        x, y = self.x_test[:images], self.y_test[:images]
        lite = run_tflite(path, [x])[0].argmax(-1)
        keras_top = model.predict(x, batch_size=500, verbose=0).argmax(-1)
        return {"images": images, "top1_tflite": float((lite == y).mean()), "top1_keras": float((keras_top == y).mean()),
                "top1_agreement": float((lite == keras_top).mean())}

    def row(self, method: str, target: float) -> dict:
        """Compress, finetune and measure one row; a kerascomp refusal is a row too."""
        from kerascomp.errors import CompressionError

        kerascomp, started = self.kerascomp, time.perf_counter()
        kind = "params" if method.startswith("mct") else VARIANTS.get(method, ("", "", {}, "macs"))[3]
        row = {"method": method, "target": target, "target_kind": kind, "baseline": self.baseline_info,
               "keras": f"{self.keras.__name__} {self.keras.__version__}", "command": _command(method, target),
               "machine": platform.platform(), "cpu": cpu_model()}
        if method in VARIANTS:
            row["kerascomp_method"], row["options"] = VARIANTS[method][1], VARIANTS[method][2]
        try:
            model, info = compress_for(self, method, target)
        except CompressionError as error:
            row.update(status="refused", error=f"{type(error).__name__}: {error}")
            return row
        except Exception:  # a crash is a result too; the run goes on to the next row
            row.update(status="failed", error=traceback.format_exc())
            print(row["error"], file=sys.stderr)
            return row
        callbacks, finish, trained = info.pop("callbacks", ()), info.pop("finish", None), info.pop("trained", False)
        row.update(info)
        row["compress_seconds"] = time.perf_counter() - started - info.get("train_seconds", 0.0)
        if "accuracy_before_finetune" not in row:
            row["accuracy_before_finetune"] = self.accuracy(model)
        if not trained:
            row["distilled"] = bool(self.args.alpha) and method not in NO_DISTILL
            row["train_seconds"] = self.train(model, self.args.epochs, callbacks, distill=row["distilled"])
        if finish is not None:
            model = finish(model)
            row.update(finish.extra)
        row["accuracy_after_finetune"] = self.accuracy(model)
        cost = kerascomp.cost(model)
        row.update(macs=cost.macs, params=cost.params, macs_ratio=cost.macs / self.original.macs,
                   params_ratio=cost.params / self.original.params)
        for mode in ("fp32", "int8"):
            path = self.workdir / f"{method}_{target:g}_{mode}.tflite"
            exported = self._export(model, path, mode)
            row[f"export_relative_error_{mode}"] = exported.relative_error
            row[f"parity_{mode}"] = self.parity(model, path)
            timings = kerascomp.compare_tflite([self.originals[mode], path], num_threads=1, runs=self.args.runs)
            ratio = timings[1].median_ms / timings[0].median_ms
            row[f"tflite_bytes_{mode}"] = path.stat().st_size
            row[f"latency_ratio_{mode}"] = ratio
            row[f"realised_fraction_{mode}"] = row["macs_ratio"] / ratio
        row.update(_keep(kerascomp.strip(model) if method not in LEGACY else model, method, target, self.kept))
        row["status"] = "ok"
        row["seconds"] = time.perf_counter() - started
        print({k: v for k, v in row.items() if k != "baseline"}, flush=True)
        return row


def compress_for(bench: Bench, method: str, target: float):
    """(model, info) for one row: the compressed, not yet finetuned model (or a trained one with trained=True)."""
    kerascomp, base = bench.kerascomp, bench.baseline
    common = {"data": bench.calibration, "verbose": 0}
    if method == "none":
        return _copy(bench, base), {}
    if method in LEGACY:
        return _tfmot(bench, target) if method == "tfmot" else _mct(bench, target, 1 if method == "mct_simd1" else None)
    how, name, options, kind = VARIANTS[method]
    targets = {"target_flops": target}
    if kind in ("params", "latency"):
        targets = {"target_flops": None, f"target_{kind}": target}
    if how == "clone":
        result = kerascomp.compress(base, method=name, **targets, **options, **common)
        notes = {k: result.report.notes[k] for k in ("forms", "estimated_latency_ratio") if k in result.report.notes}
        return result.model, ({"report_notes": notes} if notes else {})
    if how == "plan":
        plan = kerascomp.plan(base, name, **targets, data=bench.labelled, verbose=0, **options)
        model = kerascomp.clone_compressed(base, plan=plan, **common)
        return model, {"plan_seconds": plan.seconds}
    if how == "rounds":
        one_shot = kerascomp.clone_compressed(base, method=name, **targets, **options, **common)
        before = bench.accuracy(one_shot)
        seconds = []

        def phase(epochs):
            return lambda m: seconds.append(bench.train(m, epochs))

        result = kerascomp.prune_in_rounds(base, phase(bench.args.epochs - 1), method=name, **targets, rounds=1,
                                           strength=1.0, regularize_train=phase(1), **options, **common)
        return result.model, {"accuracy_before_finetune": before, "trained": True, "train_seconds": sum(seconds),
                              "regularized_pairs": result.regularized_pairs[0]}
    raise ValueError(f"unknown way {how!r} of building row {method!r}")


def _copy(bench: Bench, model):
    twin = bench.keras.models.clone_model(model)
    twin.set_weights(model.get_weights())
    return twin


def _tfmot(bench: Bench, target: float):
    """Magnitude pruning to sparsity 1 - target over the first half of the finetune budget (tf_keras only)."""
    import numpy as np
    import tensorflow_model_optimization as tfmot

    sparsity = 1.0 - target
    masked = _copy(bench, bench.baseline)
    for layer in masked.layers:  # the one-shot magnitude mask, for "top-1 before finetuning"
        if hasattr(layer, "kernel"):
            kernel = layer.kernel.numpy()
            threshold = np.quantile(np.abs(kernel), sparsity)
            layer.kernel.assign(np.where(np.abs(kernel) > threshold, kernel, 0.0))
    before = bench.accuracy(masked)
    steps = bench.args.epochs * int(np.ceil(len(bench.x_train) / 128))
    schedule = tfmot.sparsity.keras.PolynomialDecay(0.0, sparsity, begin_step=0, end_step=max(1, steps // 2),
                                                     frequency=max(1, steps // 20))
    keras = bench.keras

    def wrap(layer):  # tfmot's documented route for models with layers it cannot prune (Rescaling)
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.Dense)):
            return tfmot.sparsity.keras.prune_low_magnitude(layer, pruning_schedule=schedule)
        return layer

    model = keras.models.clone_model(_copy(bench, bench.baseline), clone_function=wrap)

    def finish(trained):
        stripped = tfmot.sparsity.keras.strip_pruning(trained)
        kernels = [w for layer in stripped.layers if hasattr(layer, "kernel") for w in [layer.kernel.numpy()]]
        total = sum(k.size for k in kernels)
        finish.extra = {"nonzero_kernel_fraction": sum(int(np.count_nonzero(k)) for k in kernels) / total}
        return stripped

    info = {"accuracy_before_finetune": before, "sparsity": sparsity,
            "callbacks": [tfmot.sparsity.keras.UpdatePruningStep()], "finish": finish}
    return model, info


def _mct(bench: Bench, target: float, simd: int | None = None):
    """Sony MCT structured pruning in its own TF 2.15 venv, handed over as an .h5 file (``simd``: its
    TPC's op configs cloned with that ``simd_size``; ``None``: MCT's default, groups of 32)."""
    from kerascomp.errors import CompressionError

    if not MCT_PYTHON.exists():
        raise CompressionError(f"{MCT_PYTHON} not found: run benchmarks/peers/setup_mct.sh first (MCT's Keras "
                               "pruning needs TF <= 2.15).")
    source, pruned = bench.workdir / "baseline.h5", bench.workdir / f"mct_{target:g}.h5"
    calibration = bench.workdir / "calibration.npy"
    bench.baseline.save(source)
    bench.np.save(calibration, bench.calibration)
    started = time.perf_counter()
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}  # TF 2.15 has no tf_keras
    done = subprocess.run([str(MCT_PYTHON), str(HERE / "peers" / "mct_prune.py"), str(source), str(pruned),
                           str(calibration), str(target)] + ([str(simd)] if simd else []),
                          capture_output=True, text=True, env=env)
    if done.returncode != 0:
        last = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit code {done.returncode}"
        raise CompressionError(f"MCT {last}\n{done.stderr[-3000:]}")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    model = bench.keras.models.load_model(pruned, compile=False)
    return model, {"mct": info, "mct_seconds": time.perf_counter() - started}


def load_baseline(name: str):
    """The model ``name`` in this process's Keras flavour (a tf_keras twin gets the Keras 3 file's weights)."""
    import keras as keras3

    import kerascomp
    from kerascomp.loading import load_demo_model
    from kerascomp.zoo import cifar_mobilenetv2, cifar_resnet

    (arch, size), path = MODELS[name]
    if path is None:
        return load_demo_model()
    model = keras3.models.load_model(path, custom_objects=kerascomp.custom_objects(keras3), compile=False)
    flavour = kerascomp._default_keras()
    if flavour is keras3:
        return model
    twin = (cifar_resnet(size, 16, keras_module=flavour) if arch == "resnet"
            else cifar_mobilenetv2(size, keras_module=flavour))
    twin.set_weights(model.get_weights())
    return twin


def _keep(model, method: str, target: float, folder: Path) -> dict:
    """Save the finetuned model when small; its path and sha256 go into the row."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{method}_{target:g}.keras"
    model.save(path)
    if path.stat().st_size > KEEP_BYTES:
        size = path.stat().st_size
        path.unlink()
        return {"kept_model": None, "kept_model_bytes": size}
    return {"kept_model": str(path.relative_to(HERE.parent)), "kept_model_bytes": path.stat().st_size,
            "kept_model_sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def verify(store: Store, data: dict) -> int:
    """Reload every kept model, check its checksum and that its top-1 matches the row (to 1e-3)."""
    import kerascomp

    x, y = data["x_test"].astype("float32"), data["y_test"].ravel()
    keras, bad = kerascomp._default_keras(), 0
    for key, row in store.rows().items():
        if not row.get("kept_model"):
            continue
        path = HERE.parent / row["kept_model"]
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else None
        if digest != row["kept_model_sha256"]:
            print(f"{key}: {path} checksum mismatch or missing")
            bad += 1
            continue
        if (row["method"] in LEGACY) != (os.environ.get("TF_USE_LEGACY_KERAS") == "1"):
            flavour = "tf_keras" if row["method"] in LEGACY else "Keras 3"
            print(f"{key}: checksum ok ({flavour} file: re-evaluated in the {flavour} run, "
                  "TF_USE_LEGACY_KERAS=1 for tf_keras)")
            continue
        model = keras.models.load_model(path, custom_objects=kerascomp.custom_objects(keras), compile=False)
        accuracy = float((model.predict(x, batch_size=500, verbose=0).argmax(-1) == y).mean())
        ok = abs(accuracy - row["accuracy_after_finetune"]) <= 1e-3
        bad += not ok
        print(f"{key}: checksum ok, top-1 {accuracy:.4f} vs {row['accuracy_after_finetune']:.4f} "
              f"{'ok' if ok else 'MISMATCH'}")
    return 1 if bad else 0


def _command(method: str, target: float) -> str:
    args = _without(sys.argv[1:], ("--methods", "--targets", "--redo", "--fresh"))
    return " ".join(["python -m benchmarks.cifar", *args, "--methods", method, "--targets", f"{target:g}"])


if __name__ == "__main__":
    sys.exit(main())

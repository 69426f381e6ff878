"""Collaborative compression vs uniform-rate pruning and uniform-rate low-rank, on the shared CIFAR-10.

    KERASCOMP_DATA=../shared/data python -m benchmarks.collaborative_cifar
    # writes benchmarks/results/collaborative_cifar.{json,md}; re-running resumes (finished runs are kept)

Baseline: the shipped CIFAR ResNet-20 (kerascomp/assets/resnet20_cifar10.keras). For each MACs
target (``--targets``, fraction kept) every variant is compressed one-shot (BN recalibrated on
256 training images) and then finetuned with the same budget (``--epochs`` on ``--train-samples``
images, SGD + cosine decay):

* ``collaborative``: ``method="collaborative"``: gradient sensitivity on ``--plan-samples`` labelled
  training images, global rates, joint channel pruning + rank cuts;
* ``collaborative_prune_only``: the same planner with ``decompose=False`` (ablation);
* ``collaborative_measured``: measured sensitivity (loss change with one conv cut at a time)
  instead of the Taylor scores (ablation);
* ``collaborative_max08``: at most 80% of a conv's MACs removed instead of 95% (ablation);
* ``uniform_pruning``: L1-norm filter pruning, the same fraction of every channel group;
* ``uniform_lowrank``: every conv cut to the same MACs fraction by rank alone, in the reference's
  kxk(r) + 1x1 form (``method="collaborative", allocation="uniform", prune=False``);
* ``uniform_tucker``: Tucker-2 (1x1 -> kxk -> 1x1, tensorly) of every kxk conv at one rank rate
  (``method="tucker"``).

Reported: test top-1 (10,000 images) before and after finetuning, MACs and params ratios, the
planner's wall time, and LiteRT latency ratios compressed/original at 1 thread, fp32 and int8
(each pair measured interleaved in one run).
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

from benchmarks.common import DATA_HELP, load_cifar

RESULTS = Path(__file__).resolve().parent / "results"
VARIANTS = {
    "collaborative": ("collaborative", {}),
    "collaborative_prune_only": ("collaborative", {"decompose": False}),
    "collaborative_measured": ("collaborative", {"sensitivity": "measured"}),
    "collaborative_max08": ("collaborative", {"max_macs_fraction": 0.8}),
    "uniform_pruning": ("l1", {"allocation": "uniform"}),
    "uniform_lowrank": ("collaborative", {"allocation": "uniform", "prune": False}),
    "uniform_tucker": ("tucker", {"allocation": "uniform"}),
}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--variants", default="collaborative,collaborative_prune_only,uniform_pruning,uniform_lowrank,"
                                              "uniform_tucker")
    parser.add_argument("--targets", default="0.5,0.25")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--plan-samples", type=int, default=512)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=60)
    parser.add_argument("--out", default=str(RESULTS / "collaborative_cifar"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from kerascomp.data import augmented_dataset
    from kerascomp.graph.flavour import default_keras
    from kerascomp.loading import load_demo_model

    data = load_cifar(args.data)
    if data is None:
        return 2
    keras = default_keras()
    x_train, y_train = data["x_train"][:args.train_samples], data["y_train"][:args.train_samples].ravel()
    x_test, y_test = data["x_test"].astype("float32"), data["y_test"].ravel()
    calibration = x_train[:256].astype("float32")
    # the planner's labelled images come from the end of the training set, apart from the finetuning rows
    labelled = (data["x_train"][-args.plan_samples:].astype("float32"), data["y_train"][-args.plan_samples:].ravel())

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    setup = {k: v for k, v in vars(args).items() if k not in ("variants", "targets", "out", "runs")}
    state = json.loads(json_path.read_text()) if json_path.exists() else {}
    records = state.get("runs", {}) if state.get("setup") == setup else {}

    def accuracy(model) -> float:
        return float((model.predict(x_test, batch_size=500, verbose=0).argmax(-1) == y_test).mean())

    def finetune(model) -> None:
        steps = args.epochs * int(np.ceil(len(x_train) / 128))
        model.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(args.lr, steps), momentum=0.9,
                                           nesterov=True),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=False)
        model.fit(augmented_dataset(x_train, y_train, 128), epochs=args.epochs, verbose=2)

    baseline = load_demo_model()
    baseline_accuracy = accuracy(baseline)
    original_cost = kerascomp.cost(baseline)
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-collaborative-"))
    originals = {}
    for mode in (None, "int8"):
        originals[mode] = workdir / f"original_{mode or 'fp32'}.tflite"
        kerascomp.export_tflite(baseline, originals[mode], quantize=mode, representative_data=calibration)
    for target in (float(t) for t in args.targets.split(",")):
        for variant in args.variants.split(","):
            key = f"{variant}@{target}"
            if key in records:
                print(f"{key}: kept from {json_path}")
                continue
            method, options = VARIANTS[variant]
            started = time.perf_counter()
            plan_seconds = None
            if method == "collaborative":
                plan = kerascomp.plan(baseline, target_flops=target, data=labelled, verbose=0, **options)
                plan_seconds = plan.seconds
                model = kerascomp.clone_compressed(baseline, plan=plan, data=calibration, verbose=0)
            else:
                model = kerascomp.clone_compressed(baseline, method=method, target_flops=target, data=calibration,
                                                   verbose=0, **options)
            before = accuracy(model)
            finetune(model)
            record = {"variant": variant, "target": target, "accuracy_before_finetune": before,
                      "accuracy_after_finetune": accuracy(model),
                      "macs_ratio": kerascomp.cost(model).macs / original_cost.macs,
                      "params_ratio": kerascomp.cost(model).params / original_cost.params,
                      "plan_seconds": plan_seconds}
            for mode in (None, "int8"):
                path = workdir / f"{variant}_{target}_{mode or 'fp32'}.tflite"
                kerascomp.export_tflite(model, path, quantize=mode, representative_data=calibration)
                timings = kerascomp.compare_tflite([originals[mode], path], num_threads=1, runs=args.runs)
                record[f"latency_ratio_{mode or 'fp32'}"] = timings[1].median_ms / timings[0].median_ms
            record["seconds"] = time.perf_counter() - started
            record["command"] = "python -m benchmarks.collaborative_cifar " + " ".join(sys.argv[1:])
            records[key] = record
            print(key, record, flush=True)
            _write(json_path, out, setup, baseline_accuracy, records, keras)
    _write(json_path, out, setup, baseline_accuracy, records, keras)
    return 0


def _write(json_path: Path, out: Path, setup: dict, baseline_accuracy: float, records: dict, keras) -> None:
    from kerascomp.report import table

    command = "python -m benchmarks.collaborative_cifar " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "setup": setup, "baseline_accuracy": baseline_accuracy,
               "keras": f"{keras.__name__} {keras.__version__}", "machine": platform.platform(), "runs": records}
    json_path.write_text(json.dumps(payload, indent=2))
    rows = [[r["variant"], f"{r['target']}", f"{r['accuracy_before_finetune']:.4f}",
             f"{r['accuracy_after_finetune']:.4f}", f"{r['accuracy_after_finetune'] - baseline_accuracy:+.4f}",
             f"{r['macs_ratio']:.3f}", f"{r['params_ratio']:.3f}", f"{r['latency_ratio_fp32']:.3f}",
             f"{r['latency_ratio_int8']:.3f}", "" if r["plan_seconds"] is None else f"{r['plan_seconds']:.1f}"]
            for r in records.values()]
    text = (f"# Collaborative compression vs uniform pruning and uniform low-rank, CIFAR ResNet-20\n\n"
            f"Command: `{payload['command']}`\n\nShared, JPEG-degraded CIFAR-10; baseline test top-1 "
            f"{baseline_accuracy:.4f}. Setup: {json.dumps(setup)}. {payload['keras']}. Latency ratios are "
            "compressed/original LiteRT medians at 1 thread, each pair interleaved in one run.\n\n"
            + table(["variant", "MACs target", "top-1 before finetune", "top-1 after", "change", "MACs ratio",
                     "params ratio", "latency fp32", "latency int8", "plan s"], rows, markdown=True) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())

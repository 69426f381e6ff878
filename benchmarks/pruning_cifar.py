"""Filter-correlation pruning vs L1-norm pruning on the shared CIFAR-10, at equal MACs and epochs.

    KERASCOMP_DATA=../shared/data python -m benchmarks.pruning_cifar
    # writes benchmarks/results/pruning_cifar.{json,md}; re-running resumes (finished variants are kept)

Baseline: the shipped CIFAR ResNet-20 (kerascomp/assets/resnet20_cifar10.keras, trained with
``python -m benchmarks.train_cifar --depth 20 --epochs 4``). Every variant is pruned to
``--target`` of its MACs and trains for the same number of epochs in total (``--reg-epochs`` +
``--finetune-epochs``) on the same ``--train-samples`` images with the same SGD schedule:

* ``correlation``: ``prune_in_rounds`` with one round: train with the correlation regulariser on the
  chosen pairs (reg epochs), drop one filter of each pair (compensated, BN recalibrated), finetune.
* ``correlation_no_reg``: the same drop without the regularised phase (one-shot), then all epochs finetuning.
* ``correlation_no_comp``: as ``correlation`` but without compensation (the ablation of our fold).
* ``l1``: L1-norm pruning (one-shot, BN recalibrated), then all epochs finetuning.
* ``correlation_x4``: as ``correlation`` with ``channel_multiple=4`` (widths XNNPACK tiles well).

Reported: test accuracy (10,000 images) of the baseline, of each variant right after pruning
(before any finetuning) and after training; MACs and params ratios; and the LiteRT fp32 latency
ratio pruned/original measured interleaved at 1 thread, next to the MACs ideal.
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
VARIANTS = ("correlation", "correlation_no_reg", "correlation_no_comp", "l1", "correlation_x4")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--reg-epochs", type=int, default=1)
    parser.add_argument("--finetune-epochs", type=int, default=2)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--strength", type=float, default=1.0)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "pruning_cifar"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from kerascomp.data import augmented_dataset
    from kerascomp.graph.flavour import default_keras
    from kerascomp.loading import load_demo_model
    from kerascomp.report import table

    data = load_cifar(args.data)
    if data is None:
        return 2
    keras = default_keras()
    x_train, y_train = data["x_train"][:args.train_samples], data["y_train"][:args.train_samples].ravel()
    x_test, y_test = data["x_test"].astype("float32"), data["y_test"].ravel()
    calibration = x_train[:256].astype("float32")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    state = json.loads(json_path.read_text()) if json_path.exists() else {}
    same_setup = state.get("setup", {}) == {k: v for k, v in vars(args).items() if k not in ("variants", "out", "runs")}
    records = state.get("variants", {}) if same_setup else {}
    setup = {k: v for k, v in vars(args).items() if k not in ("variants", "out", "runs")}

    def accuracy(model) -> float:
        return float((model.predict(x_test, batch_size=500, verbose=0).argmax(-1) == y_test).mean())

    def train_for(epochs: int):
        def train(model):
            if epochs == 0:
                return
            steps = epochs * int(np.ceil(len(x_train) / 128))
            schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps)
            model.compile(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                          keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                          jit_compile=False)
            model.fit(augmented_dataset(x_train, y_train, 128), epochs=epochs, verbose=2)
        return train

    baseline = load_demo_model()
    baseline_accuracy = accuracy(baseline)
    epochs = args.reg_epochs + args.finetune_epochs
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-pruning-"))
    original_tflite = workdir / "original.tflite"
    kerascomp.export_tflite(baseline, original_tflite)
    for variant in args.variants.split(","):
        if variant in records:
            print(f"{variant}: kept from {json_path}")
            continue
        started = time.perf_counter()
        method = "l1" if variant == "l1" else "correlation"
        options = {"correlation_no_comp": {"compensate": False},
                   "correlation_x4": {"channel_multiple": 4}}.get(variant, {})
        one_shot = kerascomp.compress(baseline, method=method, target_flops=args.target, data=calibration,
                                      verbose=0, **options)
        pruned_accuracy = accuracy(one_shot.model)
        if variant in ("correlation", "correlation_no_comp", "correlation_x4"):
            result = kerascomp.prune_in_rounds(baseline, train_for(args.finetune_epochs), method="correlation",
                                               target_flops=args.target, rounds=1, strength=args.strength,
                                               data=calibration, regularize_train=train_for(args.reg_epochs),
                                               verbose=0, **options)
            model, pairs = result.model, result.regularized_pairs[0]
        else:
            model, pairs = one_shot.model, 0
            train_for(epochs)(model)
        tflite = workdir / f"{variant}.tflite"
        kerascomp.export_tflite(model, tflite)
        timings = kerascomp.compare_tflite([original_tflite, tflite], num_threads=1, runs=args.runs)
        cost, original_cost = kerascomp.cost(model), kerascomp.cost(baseline)
        records[variant] = {
            "accuracy_after_pruning": pruned_accuracy, "accuracy_after_training": accuracy(model),
            "macs_ratio": cost.macs / original_cost.macs, "params_ratio": cost.params / original_cost.params,
            "latency_ratio_fp32_1thread": timings[1].median_ms / timings[0].median_ms,
            "tflite_size_ratio": timings[1].size_bytes / timings[0].size_bytes,
            "regularized_pairs": pairs, "epochs": epochs, "seconds": time.perf_counter() - started,
        }
        print(variant, records[variant], flush=True)
        _write(json_path, out, setup, baseline_accuracy, records, table, keras)
    _write(json_path, out, setup, baseline_accuracy, records, table, keras)
    return 0


def _write(json_path: Path, out: Path, setup: dict, baseline_accuracy: float, records: dict, table, keras) -> None:
    command = "python -m benchmarks.pruning_cifar " + " ".join(sys.argv[1:])
    payload = {"command": command.strip(), "setup": setup, "baseline_accuracy": baseline_accuracy,
               "keras": f"{keras.__name__} {keras.__version__}", "machine": platform.platform(),
               "variants": records}
    json_path.write_text(json.dumps(payload, indent=2))
    rows = [[name, f"{r['accuracy_after_pruning']:.4f}", f"{r['accuracy_after_training']:.4f}",
             f"{r['accuracy_after_training'] - baseline_accuracy:+.4f}", f"{r['macs_ratio']:.3f}",
             f"{r['params_ratio']:.3f}", f"{r['latency_ratio_fp32_1thread']:.3f}", f"{r['tflite_size_ratio']:.3f}",
             str(r["epochs"])] for name, r in records.items()]
    text = (f"# Correlation vs L1 pruning, CIFAR ResNet-20 (shared, JPEG-degraded CIFAR-10)\n\n"
            f"Command: `{payload['command']}`\n\nBaseline test accuracy: {baseline_accuracy:.4f}. "
            f"Setup: {json.dumps(setup)}. {payload['keras']}.\n\n"
            + table(["variant", "acc. after pruning", "acc. after training", "change vs baseline", "MACs ratio",
                     "params ratio", "LiteRT latency ratio (fp32, 1 thread)", ".tflite size ratio", "epochs"],
                    rows, markdown=True) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())

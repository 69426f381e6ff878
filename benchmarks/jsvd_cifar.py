"""Joint SVD (left, right, bi) against per-layer spatial SVD on the shared CIFAR-10, at equal params and epochs.

    KERASCOMP_DATA=../shared/data python -m benchmarks.jsvd_cifar
    # writes benchmarks/results/jsvd_cifar.{json,md}; re-running resumes (finished variants are kept)

Baseline: ``--model`` (default: the shipped CIFAR ResNet-20, kerascomp/assets/resnet20_cifar10.keras,
trained with ``python -m benchmarks.train_cifar --depth 20 --epochs 4``). Every variant is
compressed to ``--target`` of the baseline's params, its BatchNormalization statistics are
re-estimated on 256 training images, and it is finetuned for ``--epochs`` on the same
``--train-samples`` images with the same SGD schedule. Variants:

* ``svd``: per-layer spatial SVD (kxk -> kx1 + 1xk), the paper's baseline;
* ``left``, ``right``, ``bi``: LJSVD, RJSVD and Bi-JSVD on the automatically found groups;
* ``left_global``: LJSVD with the Lagrangian allocation instead of the paper's uniform rate.

Reported: test accuracy (10,000 images) before and after finetuning; params and MACs ratios;
``.tflite`` fp32 size, next to ``4 * params`` and to the size the same weights would take with
the sharing broken; and the LiteRT fp32 latency ratio compressed/original measured interleaved at
1 thread, next to the MACs ratio.
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
VARIANTS = {"svd": ("svd", {}), "left": ("joint_svd", {"variant": "left"}),
            "right": ("joint_svd", {"variant": "right"}), "bi": ("joint_svd", {"variant": "bi"}),
            "left_global": ("joint_svd", {"variant": "left", "allocation": "global"})}


def unshared_params(model) -> int:
    """Params if every shared layer stored its weights once per call."""
    from kerascomp.cost import spec_params
    from kerascomp.graph.keras_io import read_model

    graph = read_model(model)
    return sum(spec_params(spec) * max(1, len(graph.nodes_of(name))) for name, spec in graph.layers.items())


def weight_errors(model, svd_ranks=(2, 4, 8, 16)) -> list[dict]:
    """Relative squared weight error of every automatic joint group at matched params, per variant."""
    from kerascomp.decompose import jsvd
    from kerascomp.graph.keras_io import infer_shapes, read_model
    from kerascomp.methods.joint_svd import SVDOptions, svd_units

    graph = read_model(model)
    units, _ = svd_units(graph, infer_shapes(graph), "joint_svd", SVDOptions())
    rows = []
    for unit in units:
        if len(unit.members) < 2:
            continue
        matrices = [jsvd.spatial_matrix(m.spec.weights[0]) for m in unit.members]
        total = sum(float((m ** 2).sum()) for m in matrices)
        for svd_rank in svd_ranks:
            row = {"group": f"{unit.members[0].spec.name} +{len(matrices) - 1}", "n": len(matrices),
                   "svd_rank": svd_rank, "svd": float(jsvd.error_curve(matrices, "svd")[svd_rank])}
            for variant in ("left", "right", "bi"):
                rank = jsvd.matched_rank(unit.shape, len(matrices), svd_rank, variant)
                if variant == "bi":
                    row[variant] = jsvd.bi_joint(matrices, *jsvd.split_bi_rank(rank)).errors[-1] / total
                else:
                    row[variant] = float(jsvd.error_curve(matrices, variant)[rank])
            rows.append(row)
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--model", default=None, help=".keras baseline (default: the shipped ResNet-20)")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--target", type=float, default=0.1, help="fraction of params kept")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--train-samples", type=int, default=10000)
    parser.add_argument("--lr", type=float, default=0.01)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "jsvd_cifar"))
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
    setup = {k: v for k, v in vars(args).items() if k not in ("variants", "out", "runs")}
    state = json.loads(json_path.read_text()) if json_path.exists() else {}
    records = state.get("variants", {}) if state.get("setup") == setup else {}

    def accuracy(model) -> float:
        return float((model.predict(x_test, batch_size=500, verbose=0).argmax(-1) == y_test).mean())

    def finetune(model) -> None:
        steps = args.epochs * int(np.ceil(len(x_train) / 128))
        schedule = keras.optimizers.schedules.CosineDecay(args.lr, steps)
        model.compile(keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"],
                      jit_compile=False)
        model.fit(augmented_dataset(x_train, y_train, 128), epochs=args.epochs, verbose=2)

    baseline = keras.saving.load_model(args.model) if args.model else load_demo_model()
    baseline_accuracy = accuracy(baseline)
    workdir = Path(tempfile.mkdtemp(prefix="kerascomp-jsvd-"))
    original_tflite = workdir / "original.tflite"
    kerascomp.export_tflite(baseline, original_tflite)
    original_cost = kerascomp.cost(baseline)
    errors = weight_errors(baseline)
    for variant in args.variants.split(","):
        if variant in records:
            print(f"{variant}: kept from {json_path}")
            continue
        method, options = VARIANTS[variant]
        started = time.perf_counter()
        result = kerascomp.compress(baseline, method, target_params=args.target, data=calibration, verbose=0,
                                    **options)
        seconds = time.perf_counter() - started
        model = result.model
        before = accuracy(model)
        finetune(model)
        tflite = workdir / f"{variant}.tflite"
        export = kerascomp.export_tflite(model, tflite)
        timings = kerascomp.compare_tflite([original_tflite, tflite], num_threads=1, runs=args.runs)
        cost = kerascomp.cost(model)
        records[variant] = {
            "method": method, "options": options,
            "accuracy_after_compression": before, "accuracy_after_finetuning": accuracy(model),
            "params_ratio": cost.params / original_cost.params, "macs_ratio": cost.macs / original_cost.macs,
            "params": cost.params, "tflite_bytes": export.size_bytes, "params_bytes": 4 * cost.params,
            "unshared_params_bytes": 4 * unshared_params(model),
            "latency_ratio_fp32_1thread": timings[1].median_ms / timings[0].median_ms,
            "tflite_parity_max_abs_error": export.max_abs_error,
            "joint_groups": result.report.notes.get("joint groups", ""),
            "compression_seconds": seconds, "epochs": args.epochs,
        }
        print(variant, records[variant], flush=True)
        _write(json_path, out, setup, baseline_accuracy, original_cost.params, records, errors, table, keras)
    _write(json_path, out, setup, baseline_accuracy, original_cost.params, records, errors, table, keras)
    return 0


def _write(json_path: Path, out: Path, setup: dict, baseline_accuracy: float, baseline_params: int, records: dict,
           errors: list[dict], table, keras) -> None:
    command = ("python -m benchmarks.jsvd_cifar " + " ".join(sys.argv[1:])).strip()
    payload = {"command": command, "setup": setup, "baseline_accuracy": baseline_accuracy,
               "baseline_params": baseline_params, "keras": f"{keras.__name__} {keras.__version__}",
               "machine": platform.platform(), "variants": records, "weight_errors_at_matched_params": errors}
    json_path.write_text(json.dumps(payload, indent=2))
    rows = [[name, f"{r['accuracy_after_compression']:.4f}", f"{r['accuracy_after_finetuning']:.4f}",
             f"{r['accuracy_after_finetuning'] - baseline_accuracy:+.4f}", f"{1 / r['params_ratio']:.1f}x",
             f"{r['macs_ratio']:.3f}", f"{r['tflite_bytes']:,}", f"{r['params_bytes']:,}",
             f"{r['unshared_params_bytes']:,}", f"{r['latency_ratio_fp32_1thread']:.3f}"] for name, r in records.items()]
    text = (f"# Joint SVD vs per-layer SVD, CIFAR (shared, JPEG-degraded CIFAR-10)\n\n"
            f"Command: `{command}`\n\nBaseline test accuracy: {baseline_accuracy:.4f}, {baseline_params:,} params. "
            f"Setup: {json.dumps(setup)}. {payload['keras']}.\n\n"
            + table(["variant", "acc. after compression", "acc. after finetuning", "change vs baseline",
                     "params reduction", "MACs ratio", ".tflite bytes", "4 x params", "4 x params, sharing broken",
                     "LiteRT latency ratio (fp32, 1 thread)"], rows, markdown=True) + "\n\n"
            "Relative squared weight error of each automatic group before finetuning, joint variants at the "
            "params of per-layer SVD at the given rank:\n\n"
            + table(["group", "convs", "svd rank", "svd", "left", "right", "bi"],
                    [[e["group"], str(e["n"]), str(e["svd_rank"])] + [f"{e[v]:.3f}" for v in ("svd", "left", "right", "bi")]
                     for e in errors], markdown=True) + "\n")
    out.with_suffix(".md").write_text(text)


if __name__ == "__main__":
    sys.exit(main())

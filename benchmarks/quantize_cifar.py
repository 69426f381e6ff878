"""Quantised export on the shared CIFAR-10: accuracy, size and LiteRT speed of every mode, PTQ vs QAT.

    KERASCOMP_DATA=../shared/data python -m benchmarks.quantize_cifar
    # writes benchmarks/results/quantize_cifar.{json,md}

Models: the shipped CIFAR ResNet-20 (``original``) and an FGA copy at ``--target`` of its MACs,
finetuned ``--finetune-steps`` SGD steps (``fga``). Each is exported as fp32, float16, dynamic
(int8 weights), int8 post-training quantisation (``--calibration`` training images), and int8
after quantisation-aware training (``kerascomp.quantize_aware``, ``--qat-epochs`` on
``--qat-samples`` training images; Keras 3 models go through the tf_keras bridge).

Reported per file: top-1 on the first ``--eval-images`` test images *run in LiteRT*, its
agreement with the fp32 Keras model, the .tflite size, and the LiteRT 1-thread median latency
relative to the original fp32 file, all files timed interleaved in one run.
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

from benchmarks.common import DATA_HELP, load_cifar, result_file

RESULTS = Path(__file__).resolve().parent / "results"
MODES = ("fp32", "float16", "dynamic", "int8_ptq", "int8_qat")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--target", type=float, default=0.5)
    parser.add_argument("--finetune-steps", type=int, default=300)
    parser.add_argument("--calibration", type=int, default=500)
    parser.add_argument("--qat-epochs", type=int, default=1)
    parser.add_argument("--qat-samples", type=int, default=5000)
    parser.add_argument("--qat-lr", type=float, default=1e-5, help="Adam learning rate (1e-3: 56%%, 1e-4: 70%%, 1e-5: 73%% here)")
    parser.add_argument("--eval-images", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", default=str(RESULTS / "quantize_cifar"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


    import kerascomp
    from kerascomp.data import augmented_dataset
    from kerascomp.export.tflite import run_tflite
    from kerascomp.graph.flavour import keras_of
    from kerascomp.loading import load_demo_model
    from kerascomp.tables import table

    data = load_cifar(args.data)
    if data is None:
        return 2
    x_test = data["x_test"][:args.eval_images].astype("float32")
    y_test = data["y_test"][:args.eval_images].ravel()
    calibration = data["x_train"][-args.calibration:].astype("float32")
    started = time.time()

    original = load_demo_model()
    keras = keras_of(original)
    fga = kerascomp.compress(original, method="fga", target_flops=args.target, data=calibration[:256], verbose=0).model
    if args.finetune_steps:
        train = augmented_dataset(data["x_train"], data["y_train"], 128).repeat().take(args.finetune_steps)
        fga.compile(keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, args.finetune_steps),
                                         momentum=0.9),
                    keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
        fga.fit(train, epochs=1, verbose=0)

    folder = Path(tempfile.mkdtemp(prefix="kerascomp-quantize-"))
    rows, files = {}, []
    for name, model in (("original", original), ("fga", fga)):
        reference = model.predict(x_test, batch_size=500, verbose=0).argmax(-1)
        for mode in MODES:
            target = folder / f"{name}_{mode}.tflite"
            begun = time.time()
            if mode == "int8_qat":
                import tf_keras

                qat = kerascomp.quantize_aware(model)
                qat.compile(tf_keras.optimizers.Adam(args.qat_lr),
                            tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
                x_qat = data["x_train"][:args.qat_samples].astype("float32")
                qat.fit(x_qat, data["y_train"][:args.qat_samples].ravel(), batch_size=64, epochs=args.qat_epochs,
                        verbose=0)
                exported = kerascomp.export_tflite(qat, target, representative_data=calibration)
            else:
                quantize = {"fp32": None, "int8_ptq": "int8"}.get(mode, mode)
                exported = kerascomp.export_tflite(model, target, quantize=quantize,
                                                   representative_data=calibration)
            predicted = run_tflite(exported.path, [x_test])[0].argmax(-1)
            rows[f"{name}/{mode}"] = {
                "top1": float((predicted == y_test).mean()),
                "agreement_with_keras_fp32": float((predicted == reference).mean()),
                "size_bytes": exported.size_bytes, "macs": kerascomp.cost(model).macs,
                "export_and_training_s": round(time.time() - begun, 1)}
            files.append((f"{name}/{mode}", exported.path))
            print(f"{name}/{mode}: {rows[f'{name}/{mode}']}", flush=True)

    timings = kerascomp.compare_tflite([p for _, p in files], num_threads=1, runs=args.runs)
    base = timings[0].median_ms
    for (key, _), timing in zip(files, timings):
        rows[key]["latency_ratio_vs_original_fp32"] = timing.median_ms / base
    command = " ".join(["python -m benchmarks.quantize_cifar", *(argv if argv is not None else sys.argv[1:])])
    record = {"command": command, "setup": vars(args), "machine": platform.platform(),
              "wall_s": round(time.time() - started), "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result_file(out, ".json").write_text(json.dumps(record, indent=2))
    lines = [[key, f"{row['top1']:.4f}", f"{row['agreement_with_keras_fp32']:.3f}", f"{row['size_bytes'] / 1024:.0f}",
              f"{row['latency_ratio_vs_original_fp32']:.2f}", f"{row['macs'] / rows['original/fp32']['macs']:.2f}"]
             for key, row in rows.items()]
    markdown = table(["model/mode", f"top-1 ({args.eval_images} test, LiteRT)", "agreement with fp32 Keras",
                      "size KiB", "latency vs original fp32", "MACs vs original"], lines, markdown=True)
    result_file(out, ".md").write_text(
        f"# Quantised export on CIFAR-10 (ResNet-20)\n\n{markdown}\n\nLiteRT, 1 thread, XNNPACK on, {args.runs} runs "
        f"per file interleaved. CIFAR copy is JPEG-degraded: compare rows with each other only.\n\n"
        f"Made with `{command}` ({record['wall_s']} s).\n")
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())

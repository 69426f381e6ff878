"""How many calibration rows int8 post-training quantisation needs: top-1 agreement of the int8 .tflite with
the Keras model, per calibration size, on kept CIFAR models.

    KERASCOMP_DATA=../shared/data python -m benchmarks.int8_calibration \\
        benchmarks/models/compressed/cifar_resnet20_e40/tucker_0.25.keras ... --rows 500,2000

For each model and each ``--rows`` N: the TF converter's full-integer PTQ (``kerascomp.export.tflite.convert``,
what ``export_tflite(quantize="int8")`` runs) calibrated on the first N training images, then the file's top-1
against the Keras model's on the first ``--test`` test images (LiteRT). Writes ``--out``.{json,md}.

With ``--qat-epochs E`` each model is also put through quantisation-aware training (``kerascomp.quantize_aware``, tfmot
through the tf_keras bridge): ``E`` epochs of augmented training images, Adam at ``--qat-lr``, then its int8 file (the
ranges QAT learned; no calibration rows). QAT changes the model, so that row reports the int8 file's agreement with
the QAT Keras model it was exported from (the parity of that export) *and* with the model before QAT, and the top-1
against the labels of all three.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.common import DATA_HELP, command_line, cpu_model, load_cifar, write_results

RESULTS = Path(__file__).resolve().parent / "results"
LOW_MARGIN = 0.5  # top-1 minus top-2 output below this: an image the int8 rounding noise can flip


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras files (CIFAR-10 classifiers)")
    parser.add_argument("--rows", default="500,2000", help="calibration sizes, comma-separated")
    parser.add_argument("--test", type=int, default=2000, help="test images compared")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--qat-epochs", type=int, default=0, help="also quantisation-aware training, this many epochs")
    parser.add_argument("--qat-lr", type=float, default=1e-5, help="Adam learning rate of the QAT epochs")
    parser.add_argument("--out", default=str(RESULTS / "int8_calibration"))
    args = parser.parse_args(argv)
    if args.qat_epochs < 0 or args.qat_lr <= 0:
        parser.error("--qat-epochs must be >= 0 and --qat-lr > 0")

    import keras

    import kerascomp
    from kerascomp.export.tflite import convert, run_tflite

    data = load_cifar(args.data)
    if data is None:
        return 2
    x_train, x_test = data["x_train"].astype("float32"), data["x_test"][:args.test].astype("float32")
    sizes = [int(n) for n in args.rows.split(",")]
    record = {"command": command_line("benchmarks.int8_calibration"), "cpu": cpu_model(), "test_images": len(x_test),
              "rows": []}
    labels = data["y_test"][:args.test].reshape(-1)
    for path in args.models:
        stripped = kerascomp.strip(keras.models.load_model(path, compile=False))
        logits = stripped.predict(x_test, batch_size=500, verbose=0)
        reference = logits.argmax(-1)
        top2 = np.sort(logits, axis=-1)[:, -2:]
        facts = {"top1_keras": float((reference == labels).mean()),
                 "low_margin_share": float((top2[:, 1] - top2[:, 0] < LOW_MARGIN).mean())}
        for size in sizes:
            flat = convert(stripped, "int8", [x_train[:size]], False)
            quantised = run_tflite(flat, [x_test])[0]
            agreement = float((quantised.argmax(-1) == reference).mean())
            error = quantised - logits
            record["rows"].append({"model": path, "calibration_rows": size, "top1_agreement": agreement,
                                   "top1_int8": float((quantised.argmax(-1) == labels).mean()),
                                   "output_error_mean": float(np.abs(error.mean(axis=0)).max()),
                                   "output_error_std": float(error.std(axis=0).mean()), **facts})
            print(f"{path} {size:6d} rows: agreement {agreement:.4f}", flush=True)
        if args.qat_epochs:
            row = quantisation_aware(stripped, data, x_test, labels, reference, args)
            record["rows"].append({"model": path, **row, **facts})
            print(f"{path} QAT: agreement {row['top1_agreement']:.4f} with the QAT model, "
                  f"{row['agreement_before_qat']:.4f} with the model before", flush=True)
    write_results(Path(args.out), record, markdown(record, sizes))
    return 0


def quantisation_aware(stripped, data: dict, x_test: np.ndarray, labels: np.ndarray, reference: np.ndarray,
                       args) -> dict:
    """QAT ``stripped`` for ``args.qat_epochs`` epochs and compare its int8 file with the QAT and the original model."""
    import time

    import tf_keras

    import kerascomp
    from kerascomp.data import augmented_dataset
    from kerascomp.export.tflite import convert, run_tflite

    started = time.time()
    qat = kerascomp.quantize_aware(stripped)
    qat.compile(tf_keras.optimizers.Adam(args.qat_lr),
                tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    train = augmented_dataset(data["x_train"], data["y_train"].reshape(-1), 128)
    history = qat.fit(train, epochs=args.qat_epochs, verbose=0)
    qat_prediction = qat.predict(x_test, batch_size=500, verbose=0).argmax(-1)
    quantised = run_tflite(convert(qat, "int8", None, False, quantize_aware=True), [x_test])[0].argmax(-1)
    return {"calibration_rows": "qat", "qat_epochs": args.qat_epochs, "qat_lr": args.qat_lr,
            "qat_loss": [float(v) for v in history.history["loss"]],
            "top1_agreement": float((quantised == qat_prediction).mean()),
            "agreement_before_qat": float((quantised == reference).mean()),
            "top1_qat_keras": float((qat_prediction == labels).mean()),
            "top1_int8": float((quantised == labels).mean()), "seconds": round(time.time() - started, 1)}


def markdown(record: dict, sizes: list[int]) -> str:
    lines = ["# int8 PTQ: top-1 agreement with the Keras model by calibration size", "",
             f"{record['test_images']} test images; CPU {record['cpu']}. Made with `{record['command']}`. "
             "Bold: at least 0.98 (the parity bar).", "",
             "| model | " + " | ".join(f"{n} rows" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    by_model: dict[str, dict[int, dict]] = {}
    for row in record["rows"]:
        by_model.setdefault(row["model"], {})[row["calibration_rows"]] = row
    for model, found in by_model.items():
        cells = [f"**{found[n]['top1_agreement']:.4f}**" if found.get(n, {}).get("top1_agreement", 0) >= 0.98
                 else f"{found[n]['top1_agreement']:.4f}" if n in found else "" for n in sizes]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    detailed = [(model, found[n]) for model, found in by_model.items() for n in sizes
                if n in found and "top1_int8" in found[n]]
    if detailed:
        lines += ["", "Where the disagreements come from (rows since 2026-12-07): top-1 against the labels of the Keras "
                  "model and of the int8 file; the share of test images whose two best outputs differ by less "
                  f"than {LOW_MARGIN}; the int8 output error per class, its largest mean (a bias) against its mean "
                  "standard deviation (rounding noise).", "",
                  "| model | rows | top-1 Keras | top-1 int8 | agreement | low-margin share | error: largest mean | "
                  "error: mean std |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {model} | {row['calibration_rows']} | {row['top1_keras']:.4f} | {row['top1_int8']:.4f} | "
                  f"{row['top1_agreement']:.4f} | {row['low_margin_share']:.4f} | {row['output_error_mean']:.3f} | "
                  f"{row['output_error_std']:.3f} |" for model, row in detailed]
    qat = [row for row in record["rows"] if row["calibration_rows"] == "qat"]
    if qat:
        lines += ["", "Quantisation-aware training (`--qat-epochs`): the int8 file exported from the QAT model, its top-1 "
                  "agreement with that QAT Keras model (the export's parity; bold at 0.98 or more) and with the model "
                  "before QAT, and top-1 against the labels of the model before QAT, of the QAT Keras model and of the "
                  "int8 file.", "",
                  "| model | QAT epochs, lr | agreement with the QAT model | agreement with the model before | "
                  "top-1 before QAT | top-1 QAT Keras | top-1 int8 | seconds |", "|---|---|---|---|---|---|---|---|"]
        lines += [f"| {row['model']} | {row['qat_epochs']}, {row['qat_lr']:g} | "
                  + (f"**{row['top1_agreement']:.4f}**" if row["top1_agreement"] >= 0.98 else f"{row['top1_agreement']:.4f}")
                  + f" | {row['agreement_before_qat']:.4f} | {row['top1_keras']:.4f} | {row['top1_qat_keras']:.4f} | "
                  f"{row['top1_int8']:.4f} | {row['seconds']} |" for row in qat]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

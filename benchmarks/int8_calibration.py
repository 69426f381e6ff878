"""How many calibration rows int8 post-training quantisation needs: top-1 agreement of the int8 .tflite with
the Keras model, per calibration size, on kept CIFAR models.

    KERASCOMP_DATA=../shared/data python -m benchmarks.int8_calibration \\
        benchmarks/models/compressed/cifar_resnet20_e40/tucker_0.25.keras ... --rows 500,2000

For each model and each ``--rows`` N: the TF converter's full-integer PTQ (``kerascomp.export.tflite.convert``,
what ``export_tflite(quantize="int8")`` runs) calibrated on the first N training images, then the file's top-1
against the Keras model's on the first ``--test`` test images (LiteRT). Writes ``--out``.{json,md}.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import DATA_HELP, command_line, cpu_model, load_cifar, write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help=".keras files (CIFAR-10 classifiers)")
    parser.add_argument("--rows", default="500,2000", help="calibration sizes, comma-separated")
    parser.add_argument("--test", type=int, default=2000, help="test images compared")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--out", default=str(RESULTS / "int8_calibration"))
    args = parser.parse_args(argv)

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
    for path in args.models:
        stripped = kerascomp.strip(keras.models.load_model(path, compile=False))
        reference = stripped.predict(x_test, batch_size=500, verbose=0).argmax(-1)
        for size in sizes:
            flat = convert(stripped, "int8", [x_train[:size]], False)
            agreement = float((run_tflite(flat, [x_test])[0].argmax(-1) == reference).mean())
            record["rows"].append({"model": path, "calibration_rows": size, "top1_agreement": agreement})
            print(f"{path} {size:6d} rows: agreement {agreement:.4f}", flush=True)
    write_results(Path(args.out), record, markdown(record, sizes))
    return 0


def markdown(record: dict, sizes: list[int]) -> str:
    lines = ["# int8 PTQ: top-1 agreement with the Keras model by calibration size", "",
             f"{record['test_images']} test images; CPU {record['cpu']}. Made with `{record['command']}`. "
             "Bold: at least 0.98 (the parity bar).", "",
             "| model | " + " | ".join(f"{n} rows" for n in sizes) + " |", "|---|" + "---|" * len(sizes)]
    by_model: dict[str, dict[int, float]] = {}
    for row in record["rows"]:
        by_model.setdefault(row["model"], {})[row["calibration_rows"]] = row["top1_agreement"]
    for model, found in by_model.items():
        cells = [f"**{found[n]:.4f}**" if found.get(n, 0) >= 0.98 else f"{found[n]:.4f}" if n in found else ""
                 for n in sizes]
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())

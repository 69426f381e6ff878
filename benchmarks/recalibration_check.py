"""What BN recalibration does to a trained model that was *not* compressed: top-1 of the shipped ResNet-20
with its BatchNormalization statistics re-estimated (``kerascomp.methods.calibrate.recalibrate_batchnorm``,
what ``recalibrate=True`` runs) on plain and on augmented training images.

    KERASCOMP_DATA=../shared/data python -m benchmarks.recalibration_check

Writes benchmarks/results/recalibration_check.{json,md}: why ``recalibrate="auto"`` skips the step after
reconstruction (benchmarks/RESULTS.md, "BN recalibration only where nothing was refit").
"""
from __future__ import annotations

import argparse
from pathlib import Path

from benchmarks.common import DATA_HELP, command_line, cpu_model, load_cifar, write_results

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--out", default=str(RESULTS / "recalibration_check"))
    args = parser.parse_args(argv)

    import numpy as np

    from kerascomp.data import augmented_dataset
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.loading import load_demo_model
    from kerascomp.methods.calibrate import recalibrate_batchnorm

    data = load_cifar(args.data)
    if data is None:
        return 2
    x, y = data["x_train"][:2000].astype("float32"), data["y_train"][:2000]
    augmented = np.concatenate([batch[0].numpy() for batch in augmented_dataset(x, y, 500)])
    model = load_demo_model()
    graph = read_model(model)

    def top1(candidate) -> float:
        scores = candidate.predict(data["x_test"].astype("float32"), batch_size=500, verbose=0)
        return float(np.mean(scores.argmax(-1) == data["y_test"].ravel()))

    rows = [{"statistics": "as trained (stored)", "top1": top1(model)}]
    for label, images, count in (("re-estimated on 256 plain training images", x, 256),
                                 ("re-estimated on 2,000 plain training images", x, 2000),
                                 ("re-estimated on 2,000 augmented training images", augmented, 2000)):
        rows.append({"statistics": label, "top1": top1(write_model(recalibrate_batchnorm(graph, images, count)[0]))})
        print(rows[-1], flush=True)
    record = {"command": command_line("benchmarks.recalibration_check"), "cpu": cpu_model(), "model": model.name,
              "rows": rows}
    lines = ["# BN recalibration of the uncompressed shipped ResNet-20", "",
             f"Top-1 on the 10,000 test images. Made with `{record['command']}`.", "",
             "| BN statistics | top-1 |", "|---|---|"] + [f"| {r['statistics']} | {r['top1']:.4f} |" for r in rows]
    write_results(Path(args.out), record, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

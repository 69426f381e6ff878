"""Does FGA's data-driven 1x1 refit beat the plain group-wise SVD, before and after finetuning?

    python -m benchmarks.fga_refinement --data ../shared/data/cifar10.npz   # or KERASCOMP_DATA

Shipped CIFAR ResNet-20, target_flops 0.5 (and --targets), same finetuning for both variants
(SGD momentum 0.9, cosine from 0.01, batch 128, standard augmentation, same seed). Top-1 on the
first --eval-images test images. Writes benchmarks/results/fga_refinement.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data")
    parser.add_argument("--targets", default="0.5")
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--eval-images", type=int, default=5000)
    parser.add_argument("--calibration-images", type=int, default=256)
    parser.add_argument("--out", default=str(RESULTS / "fga_refinement"))
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

    import numpy as np

    import kerascomp
    from kerascomp.data import augmented_dataset, find_data, load_npz
    from kerascomp.graph.flavour import keras_of
    from kerascomp.loading import load_demo_model
    from kerascomp.report import table

    path = find_data(args.data)
    if path is None:
        raise SystemExit("pass --data or set KERASCOMP_DATA")
    data = load_npz(path)
    x_test = data["x_test"][: args.eval_images].astype("float32")
    y_test = data["y_test"][: args.eval_images]
    calibration = data["x_train"][: args.calibration_images].astype("float32")
    model = load_demo_model()
    keras = keras_of(model)

    def accuracy(m) -> float:
        return float(np.mean(np.argmax(m.predict(x_test, batch_size=250, verbose=0), 1) == y_test))

    baseline = accuracy(model)
    records, rows = [], []
    for target in [float(t) for t in args.targets.split(",")]:
        for variant, data_arg in (("svd", None), ("refined", calibration)):
            started = time.perf_counter()
            small = kerascomp.compress(model, target_flops=target, data=data_arg, verbose=0).model
            seconds = time.perf_counter() - started
            before = accuracy(small)
            keras.utils.set_random_seed(0)
            small.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, args.steps),
                                                         momentum=0.9),
                          loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), jit_compile=False)
            small.fit(augmented_dataset(data["x_train"], data["y_train"], 128, seed=0).repeat().take(args.steps),
                      verbose=0)
            after = accuracy(small)
            record = {"target_flops": target, "variant": variant, "top1_original": baseline,
                      "top1_compressed": before, "top1_finetuned": after, "finetune_steps": args.steps,
                      "compress_seconds": round(seconds, 2)}
            records.append(record)
            print(json.dumps(record), flush=True)
            rows.append([target, variant, f"{baseline:.4f}", f"{before:.4f}", f"{after:.4f}", f"{after - baseline:+.4f}"])
    command = "python -m benchmarks.fga_refinement " + " ".join(argv if argv is not None else sys.argv[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps({"command": command.strip(), "eval_images": len(x_test),
                                                    "results": records}, indent=2) + "\n")
    headers = ["target", "variant", "top-1 original", "top-1 compressed", f"top-1 after {args.steps} steps", "drop"]
    out.with_suffix(".md").write_text(
        f"# FGA: plain SVD vs data-driven 1x1 refit\n\nCommand: `{command.strip()}`  \n"
        f"Shipped ResNet-20, first {len(x_test)} test images of the shared (JPEG-degraded) CIFAR-10.\n\n"
        + table(headers, rows, markdown=True) + "\n")
    print(table(headers, rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export the trained CIFAR ResNets pruned by one method, to time code versions against each other.

    python -m benchmarks.export_pruned --out /tmp/ab --tag base          # the originals and the thin anchors (width 8)
    python -m benchmarks.export_pruned --out /tmp/ab --tag new           # this checkout's l1 at 0.25, stream="uniform"
    (cd OLD_CHECKOUT && python -m benchmarks.export_pruned --out /tmp/ab --tag old)
    kerascomp bench /tmp/ab/r20_original.tflite /tmp/ab/r20_anchor8.tflite /tmp/ab/r20_old.tflite /tmp/ab/r20_new.tflite --runs 100

Run from a checkout (``python -m`` puts the current folder first on the path, so an older checkout's
``kerascomp`` is the one used). The files of one model are then timed in one interleaved ``kerascomp bench``
call, so their ratios compare (a ratio from one run is not compared with another run's).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from benchmarks.common import DATA_HELP, load_cifar

MODELS = {"r20": ("kerascomp/assets/resnet20_cifar10.keras", 20),
          "r56": ("benchmarks/models/resnet56_cifar10.keras", 56)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--tag", required=True, help="'base': the originals and the width-8 thin anchors; "
                                                     "anything else names this checkout's files")
    parser.add_argument("--method", default="l1")
    parser.add_argument("--target", type=float, default=0.25, help="fraction of the MACs kept")
    parser.add_argument("--options", default='{"stream": "uniform"}', help="the method's options, JSON")
    parser.add_argument("--calibration", type=int, default=0,
                        help="labelled training images passed as data= (collaborative needs them; 0: none)")
    parser.add_argument("--data", default=None, help=DATA_HELP)
    parser.add_argument("--root", default=".", help="the checkout holding the trained models (default: this one; "
                                                    "point an older checkout that lacks them at a newer one)")
    args = parser.parse_args(argv)

    import keras

    import kerascomp
    from kerascomp.zoo import cifar_resnet

    data = None
    if args.calibration:
        cifar = load_cifar(args.data)
        if cifar is None:
            raise SystemExit(2)
        data = (cifar["x_train"][:args.calibration].astype("float32"), cifar["y_train"][:args.calibration])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for key, (path, depth) in MODELS.items():
        model = keras.models.load_model(Path(args.root) / path)
        if args.tag == "base":
            kerascomp.export_tflite(model, out / f"{key}_original.tflite")
            kerascomp.export_tflite(cifar_resnet(depth, 8), out / f"{key}_anchor8.tflite")
            continue
        result = kerascomp.compress(model, args.method, target_flops=args.target, verbose=0, data=data,
                                    **json.loads(args.options))
        widths = [layer.filters for layer in kerascomp.strip(result.model).layers if type(layer).__name__ == "Conv2D"]
        print(key, args.tag, f"MACs {result.report.macs_ratio:.4f}", "conv widths", widths)
        kerascomp.export_tflite(result.model, out / f"{key}_{args.tag}.tflite")


if __name__ == "__main__":
    main()

"""Copy freshly exported .tflite models and a sample image into the demo app's assets.

    python android_demo/copy_models.py ORIGINAL.tflite COMPRESSED.tflite --data ../shared/data/cifar10.npz

writes app/src/main/assets/{original,compressed}.tflite, sample.png (a test image from the
.npz, or --image) and meta.json (input size, labels, true label, run counts) for the app.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent / "app" / "src" / "main" / "assets"
CIFAR10_LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def input_shape(path: Path) -> list[int]:
    """Height, width, channels of a .tflite's float32 image input."""
    from ai_edge_litert.interpreter import Interpreter

    detail = Interpreter(model_path=str(path)).get_input_details()[0]
    if detail["dtype"] != np.float32:
        raise SystemExit(f"{path.name} takes {np.dtype(detail['dtype']).name} inputs; the app feeds float32 RGB. "
                         "Export it without --int8-io.")
    shape = [int(d) for d in detail["shape"][1:]]
    if len(shape) != 3 or shape[2] != 3:
        raise SystemExit(f"{path.name} has input shape {shape}; the app needs an RGB image (height, width, 3).")
    return shape


def sample_image(arguments) -> tuple[np.ndarray, str | None]:
    if arguments.image:
        import tensorflow as tf

        return tf.io.decode_image(Path(arguments.image).read_bytes(), channels=3).numpy(), None
    with np.load(arguments.data) as archive:
        image = archive["x_test"][arguments.index]
        label = int(np.ravel(archive["y_test"][arguments.index])[0])
    labels = arguments.labels.split(",") if arguments.labels else CIFAR10_LABELS
    return image.astype(np.uint8), labels[label] if label < len(labels) else str(label)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("original", type=Path, help="the uncompressed model (.tflite, float32 input)")
    parser.add_argument("compressed", type=Path, help="the kerascomp-compressed model (.tflite, float32 input)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="an .npz with x_test/y_test (e.g. cifar10.npz) to take the sample image from")
    source.add_argument("--image", help="any PNG/JPEG to classify instead")
    parser.add_argument("--index", type=int, default=0, help="which x_test image (with --data)")
    parser.add_argument("--labels", help="comma-separated class names (default: CIFAR-10's)")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--warmup-runs", type=int, default=10)
    parser.add_argument("--assets", type=Path, default=ASSETS, help="the app's assets folder")
    arguments = parser.parse_args(argv)

    for path in (arguments.original, arguments.compressed):
        if path.suffix != ".tflite" or not path.is_file():
            raise SystemExit(f"{path} is not a .tflite file.")
    shape = input_shape(arguments.original)
    if input_shape(arguments.compressed) != shape:
        raise SystemExit("the two models take different input shapes.")
    image, true_label = sample_image(arguments)

    import tensorflow as tf

    arguments.assets.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(arguments.original, arguments.assets / "original.tflite")
    shutil.copyfile(arguments.compressed, arguments.assets / "compressed.tflite")
    (arguments.assets / "sample.png").write_bytes(tf.io.encode_png(image).numpy())
    labels = arguments.labels.split(",") if arguments.labels else CIFAR10_LABELS
    meta = {"models": ["original.tflite", "compressed.tflite"], "input_shape": shape, "labels": labels,
            "true_label": true_label, "runs": arguments.runs, "warmup_runs": arguments.warmup_runs}
    (arguments.assets / "meta.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {', '.join(sorted(p.name for p in arguments.assets.iterdir()))} to {arguments.assets}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

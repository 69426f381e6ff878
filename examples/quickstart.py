"""The README's story in code: load a trained CNN, compress it, fit it, export it, time it.

    python examples/quickstart.py --data ../shared/data/cifar10.npz      # or set KERASCOMP_DATA
    python examples/quickstart.py --method joint_svd --target-params 0.2 --data ../shared/data/cifar10.npz
    python examples/quickstart.py --int8 qat --data ../shared/data/cifar10.npz   # also an int8 file, via QAT

Uses the CIFAR-10 ResNet-20 shipped in the package; pass --model for your own .keras file.
"""
import argparse
import tempfile
from pathlib import Path

import numpy as np

import kerascomp
from kerascomp.data import augmented_dataset, find_data, load_npz
from kerascomp.graph.flavour import keras_of
from kerascomp.loading import load_demo_model, load_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="cifar10.npz (default: $KERASCOMP_DATA)")
    parser.add_argument("--model", help="a .keras model (default: the shipped ResNet-20)")
    parser.add_argument("--method", default="fga", choices=["fga", "correlation", "l1", "svd", "joint_svd"])
    parser.add_argument("--target-flops", type=float, default=0.5)
    parser.add_argument("--target-params", type=float, default=None, help="a params budget instead (joint_svd's natural one)")
    parser.add_argument("--steps", type=int, default=200, help="finetuning steps (batch 128)")
    parser.add_argument("--int8", choices=["ptq", "qat"], help="also export int8: post-training, or after one QAT epoch")
    args = parser.parse_args()
    path = find_data(args.data)
    if path is None:
        raise SystemExit("pass --data path/to/cifar10.npz or set KERASCOMP_DATA")
    data = load_npz(path)
    x_test, y_test = data["x_test"][:2000].astype("float32"), data["y_test"][:2000]

    # 1. Load a trained Keras model (Keras 3 here; a tf_keras model works the same way).
    model = load_model(args.model) if args.model else load_demo_model()
    keras = keras_of(model)

    # 2. Compress: half the MACs by default, using 256 training images (FGA refits each layer's
    #    1x1 conv on them; pruning and SVD re-estimate BatchNormalization statistics).
    result = kerascomp.compress(model, method=args.method,
                                target_flops=None if args.target_params else args.target_flops,
                                target_params=args.target_params, data=data["x_train"][:256].astype("float32"))
    small = result.model

    # 3. Fit it as usual.
    small.compile(optimizer=keras.optimizers.SGD(keras.optimizers.schedules.CosineDecay(0.01, args.steps), momentum=0.9),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    small.fit(augmented_dataset(data["x_train"], data["y_train"], 128).repeat().take(args.steps), verbose=2)

    def accuracy(m):
        return float(np.mean(np.argmax(m.predict(x_test, verbose=0), 1) == y_test))

    print(f"top-1 on 2000 test images: original {accuracy(model):.4f}, compressed+finetuned {accuracy(small):.4f}")

    # 4. Export both to .tflite (checked against Keras in LiteRT) and 5. time them side by side.
    out = Path(tempfile.mkdtemp(prefix="kerascomp-quickstart-"))
    original = kerascomp.export_tflite(model, out / "original.tflite")
    compressed = kerascomp.export_tflite(small, out / f"{args.method}.tflite")
    print(compressed)
    files = [original.path, compressed.path]

    # 6. Optionally int8: post-training from 500 training images, or quantisation-aware training
    #    (tfmot; a Keras 3 model is moved to tf_keras with identical weights) and then export.
    calibration = data["x_train"][-500:].astype("float32")
    if args.int8 == "ptq":
        files.append(kerascomp.export_tflite(small, out / "int8.tflite", quantize="int8",
                                             representative_data=calibration).path)
    elif args.int8 == "qat":
        import tf_keras

        qat = kerascomp.quantize_aware(small)
        qat.compile(tf_keras.optimizers.Adam(1e-5), tf_keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        qat.fit(data["x_train"][:5000].astype("float32"), data["y_train"][:5000].ravel(), batch_size=64, verbose=2)
        files.append(kerascomp.export_tflite(qat, out / "int8_qat.tflite", representative_data=calibration).path)
    if args.int8:
        from kerascomp.export.tflite import run_tflite

        int8_top1 = float(np.mean(run_tflite(files[-1], [x_test])[0].argmax(1) == y_test.ravel()))
        print(f"int8 ({args.int8}) .tflite top-1 on 2000 test images, run in LiteRT: {int8_top1:.4f}")
    timings = kerascomp.compare_tflite(files, num_threads=1, runs=100)
    print(f"MACs x{result.report.macs_ratio:.3f}; params x{result.report.params_ratio:.3f}; size x{compressed.size_bytes / original.size_bytes:.3f}; "
          f"latency x{timings[1].median_ms / timings[0].median_ms:.3f} (LiteRT, 1 thread)")
    if args.int8:
        print(f"int8: size x{Path(files[-1]).stat().st_size / original.size_bytes:.3f}, "
              f"latency x{timings[2].median_ms / timings[0].median_ms:.3f}")


if __name__ == "__main__":
    main()

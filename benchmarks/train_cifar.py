"""Train a CIFAR-10 baseline (the demo model shipped in kerascomp/assets is made with this).

    python -m benchmarks.train_cifar --depth 20 --epochs 15 -o kerascomp/assets/resnet20_cifar10.keras
    python -m benchmarks.train_cifar --depth 20 --epochs 40 -o out/resnet20.keras --resume   # continue a stopped run

With ``--resume`` the model and optimizer state are backed up every epoch (Keras' ``BackupAndRestore``)
under ``<output>.backup/``, and a rerun of the same command continues from the last finished epoch.

Recipe: SGD(momentum 0.9, nesterov), batch 128, one-cycle LR (linear warm-up to 0.1 over the
first 15% of steps, cosine to 0), L2 weight decay 5e-4 via kernel regularisers, standard
augmentation (pad 4, random crop, flip). Writes a JSON summary next to the model.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path


def one_cycle(keras, peak_lr: float, total_steps: int, warmup_fraction: float = 0.15):
    warmup = max(1, int(total_steps * warmup_fraction))

    class OneCycle(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            import tensorflow as tf

            step = tf.cast(step, tf.float32)
            up = peak_lr * step / warmup
            progress = tf.clip_by_value((step - warmup) / max(1, total_steps - warmup), 0.0, 1.0)
            down = 0.5 * peak_lr * (1.0 + tf.cos(math.pi * progress))
            return tf.where(step < warmup, up, down)

        def get_config(self):
            return {}

    return OneCycle()


def recipe(args) -> dict:
    """The training recipe, as this script applies it."""
    shape = {"alpha": args.alpha} if args.arch == "mobilenetv2" else {"depth": args.depth, "width": args.width}
    return {"arch": args.arch, **shape, "epochs": args.epochs, "batch_size": args.batch_size,
            "optimizer": "SGD momentum 0.9 nesterov", "schedule": "one-cycle: linear warm-up over 15% of the steps "
            f"to {args.lr}, cosine to 0", "weight_decay": args.weight_decay,
            "augmentation": "kerascomp.data.augmented_dataset (random crop with 4-pixel padding, horizontal flip)",
            "seed": args.seed, "train_images": "all of x_train in the data file", "loss": "cross-entropy from logits"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="cifar10.npz (default: $KERASCOMP_DATA)")
    parser.add_argument("--arch", choices=["resnet", "mobilenetv2"], default="resnet",
                        help="resnet: kerascomp.zoo.cifar_resnet (--depth, --width); mobilenetv2: "
                             "kerascomp.zoo.cifar_mobilenetv2 (--alpha)")
    parser.add_argument("--alpha", type=float, default=1.0, help="mobilenetv2 width multiplier")
    parser.add_argument("--depth", type=int, default=20)
    parser.add_argument("--width", type=int, default=16)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--weight-decay", type=float, default=5e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("-o", "--output", required=True)
    parser.add_argument("--resume", action="store_true",
                        help="back up every epoch to <output>.backup/ and continue from there when rerun")
    args = parser.parse_args(argv)

    import tensorflow as tf

    from kerascomp.data import augmented_dataset, find_data, load_npz
    from kerascomp.graph.flavour import default_keras
    from kerascomp.zoo import cifar_mobilenetv2, cifar_resnet

    def build(weight_decay: float = 0.0):
        if args.arch == "mobilenetv2":
            return cifar_mobilenetv2(args.alpha, weight_decay=weight_decay, keras_module=keras)
        return cifar_resnet(args.depth, args.width, weight_decay=weight_decay, keras_module=keras)

    keras = default_keras()
    keras.utils.set_random_seed(args.seed)
    path = find_data(args.data)
    if path is None:
        raise SystemExit("no data: pass --data or set KERASCOMP_DATA")
    data = load_npz(path)
    model = build(args.weight_decay / 2)
    steps = args.epochs * math.ceil(len(data["x_train"]) / args.batch_size)
    model.compile(optimizer=keras.optimizers.SGD(one_cycle(keras, args.lr, steps), momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    output = Path(args.output)
    callbacks = []
    if args.resume:
        callbacks.append(keras.callbacks.BackupAndRestore(str(output.with_suffix(".backup")), delete_checkpoint=False))
    start = time.time()
    model.fit(augmented_dataset(data["x_train"], data["y_train"], args.batch_size, args.seed),
              epochs=args.epochs, verbose=2, callbacks=callbacks)
    seconds = time.time() - start
    _, accuracy = model.evaluate(data["x_test"].astype("float32"), data["y_test"].astype("int32"), verbose=0)
    # Ship the model without regularisers or optimizer state: users compile it their own way.
    clean = build()
    clean.set_weights(model.get_weights())
    output.parent.mkdir(parents=True, exist_ok=True)
    clean.save(output)
    summary = {"model": clean.name, "epochs": args.epochs, "test_accuracy": float(accuracy),
               "train_seconds": round(seconds, 1), "params": int(clean.count_params()),
               "data": str(path), "command": "python -m benchmarks.train_cifar " + " ".join(argv or __import__("sys").argv[1:]),
               "tf_version": tf.__version__, "keras_version": keras.__version__,
               "resumed": bool(args.resume), "recipe": recipe(args)}  # with --resume, train_seconds covers the last (resumed) run only
    output.with_suffix(".json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()

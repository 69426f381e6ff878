"""Locating and loading the image-classification archives (never shipped with the package)."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kerascomp.errors import InvalidArgumentError

ENV_VAR = "KERASCOMP_DATA"


def find_data(path: str | os.PathLike | None = None, name: str = "cifar10.npz") -> Path | None:
    """Return the archive path from ``path``, else ``$KERASCOMP_DATA``, else ``None``.

    Either may name the ``.npz`` file itself or a folder that holds ``name``.
    """
    candidate = path if path is not None else os.environ.get(ENV_VAR)
    if not candidate:
        return None
    candidate = Path(candidate)
    if candidate.is_dir():
        candidate = candidate / name
    if not candidate.is_file():
        source = "the --data argument" if path is not None else f"${ENV_VAR}"
        raise InvalidArgumentError(f"{source} points at {candidate}, which is not a file. "
                                   f"Pass a .npz archive with x_train/y_train/x_test/y_test, or a folder holding {name}.")
    return candidate


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load x_train, y_train, x_test, y_test (and nothing else) from an archive."""
    with np.load(path) as archive:
        missing = {"x_train", "y_train", "x_test", "y_test"} - set(archive.files)
        if missing:
            raise InvalidArgumentError(f"{path} lacks the arrays {sorted(missing)}; "
                                       "expected x_train, y_train, x_test and y_test.")
        return {key: archive[key] for key in ("x_train", "y_train", "x_test", "y_test")}


def augmented_dataset(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int = 0):
    """Standard CIFAR augmentation (pad 4, random 32x32 crop, horizontal flip) as a tf.data pipeline."""
    import tensorflow as tf

    height, width = x.shape[1:3]

    def augment(image, label):
        image = tf.cast(image, tf.float32)
        image = tf.image.pad_to_bounding_box(image, 4, 4, height + 8, width + 8)
        image = tf.image.random_crop(image, (height, width, image.shape[-1]))
        image = tf.image.random_flip_left_right(image)
        return image, label

    ds = tf.data.Dataset.from_tensor_slices((x, y.astype("int32")))
    ds = ds.shuffle(len(x), seed=seed, reshuffle_each_iteration=True)
    return ds.map(augment, num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size).prefetch(tf.data.AUTOTUNE)

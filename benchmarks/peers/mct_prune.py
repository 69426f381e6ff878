"""Sony MCT structured pruning of a Keras .h5 model, for the benchmark's ``mct`` rows.

Runs inside the MCT venv (TF 2.15 + model-compression-toolkit 2.6.1; see setup_mct.sh), not in
kerascomp's: MCT's Keras pruning refuses newer TensorFlow. Prints one JSON line with what MCT did.

    .venv-mct/bin/python benchmarks/peers/mct_prune.py in.h5 out.h5 calibration.npy 0.5

The budget is ``target`` of the model's prunable kernel memory (MCT's ``weights_memory``, float32
bytes), with MCT's defaults otherwise: LFH importance, greedy filtering, the default TPC (SIMD 32).
"""
import json
import sys
import time

import numpy as np
import tensorflow as tf


def main(source: str, destination: str, calibration: str, target: float) -> None:
    import model_compression_toolkit as mct

    model = _load_h5(source)
    images = np.load(calibration).astype("float32")
    kernel_bytes = 4 * sum(int(np.prod(layer.kernel.shape)) for layer in model.layers
                           if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)))

    def representative_data():
        for start in range(0, len(images), 32):
            yield [images[start:start + 32]]

    started = time.perf_counter()
    pruned, info = mct.pruning.keras_pruning_experimental(
        model, mct.core.ResourceUtilization(weights_memory=target * kernel_bytes), representative_data)
    seconds = time.perf_counter() - started
    pruned.save(destination)
    kept = 4 * sum(int(np.prod(layer.kernel.shape)) for layer in pruned.layers
                   if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)))
    print(json.dumps({"mct_version": mct.__version__, "tf_version": tf.__version__, "prune_seconds": seconds,
                      "kernel_bytes_before": kernel_bytes, "kernel_bytes_after": kept,
                      "budget_bytes": target * kernel_bytes}))


def _load_h5(path: str):
    """Load a tf_keras 2.21 .h5 in Keras 2.15, which does not know InputLayer's newer ``optional`` argument."""
    import h5py

    with h5py.File(path, "r") as archive:
        config = json.loads(archive.attrs["model_config"])
    for layer in config["config"]["layers"]:
        layer["config"].pop("optional", None)
    model = tf.keras.models.model_from_json(json.dumps(config))
    model.load_weights(path)
    return model


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]))

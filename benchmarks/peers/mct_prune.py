"""Sony MCT structured pruning of a Keras .h5 model, for the benchmark's ``mct`` rows.

Runs inside the MCT venv (TF 2.15 + model-compression-toolkit 2.6.1; see setup_mct.sh), not in
kerascomp's: MCT's Keras pruning refuses newer TensorFlow. Prints one JSON line with what MCT did.

    .venv-mct/bin/python benchmarks/peers/mct_prune.py in.h5 out.h5 calibration.npy 0.5 [simd]

The budget is ``target`` of the model's prunable kernel memory (MCT's ``weights_memory``, float32
bytes), with MCT's defaults otherwise: LFH importance, greedy filtering, the default TPC, whose ops
prune in SIMD groups of 32 channels. With ``simd`` (e.g. 1), every op config of that TPC is cloned
with ``simd_size=simd``: on a 16/32/64-channel ResNet-20 the default refuses 0.5 of the params.
"""
import json
import sys
import time

import numpy as np
import tensorflow as tf


def with_simd(value, size: int):
    """``value`` (a TPC or any part of it: frozen pydantic models) with every ``simd_size`` set to ``size``."""
    from pydantic import BaseModel

    if isinstance(value, BaseModel):
        updates = {}
        for name in type(value).model_fields:
            field = getattr(value, name)
            changed = with_simd(field, size)
            if changed is not field:
                updates[name] = changed
        if "simd_size" in type(value).model_fields and value.simd_size is not None:
            updates["simd_size"] = size
        return value.model_copy(update=updates) if updates else value
    if isinstance(value, (list, tuple)):
        items = [with_simd(item, size) for item in value]
        return type(value)(items) if any(a is not b for a, b in zip(items, value)) else value
    return value


def main(source: str, destination: str, calibration: str, target: float, simd: int | None = None) -> None:
    import model_compression_toolkit as mct
    from model_compression_toolkit.pruning.keras.pruning_facade import DEFAULT_KERAS_TPC

    model = _load_h5(source)
    images = np.load(calibration).astype("float32")
    kernel_bytes = 4 * sum(int(np.prod(layer.kernel.shape)) for layer in model.layers
                           if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)))

    def representative_data():
        for start in range(0, len(images), 32):
            yield [images[start:start + 32]]

    started = time.perf_counter()
    tpc = DEFAULT_KERAS_TPC if simd is None else with_simd(DEFAULT_KERAS_TPC, simd)
    pruned, info = mct.pruning.keras_pruning_experimental(
        model, mct.core.ResourceUtilization(weights_memory=target * kernel_bytes), representative_data,
        target_platform_capabilities=tpc)
    seconds = time.perf_counter() - started
    pruned.save(destination)
    kept = 4 * sum(int(np.prod(layer.kernel.shape)) for layer in pruned.layers
                   if isinstance(layer, (tf.keras.layers.Conv2D, tf.keras.layers.Dense)))
    print(json.dumps({"mct_version": mct.__version__, "tf_version": tf.__version__, "prune_seconds": seconds,
                      "kernel_bytes_before": kernel_bytes, "kernel_bytes_after": kept,
                      "budget_bytes": target * kernel_bytes, "simd_size": simd or "default (32)"}))


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
    main(sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), int(sys.argv[5]) if len(sys.argv) > 5 else None)

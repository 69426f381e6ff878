"""Record what MCT's Keras pruning does in kerascomp's own environment (TF 2.21, Keras 3 and tf_keras).

    pip install --target /tmp/mct221 "model-compression-toolkit==2.6.1"
    python -m benchmarks.peers.mct_tf221 /tmp/mct221
    TF_USE_LEGACY_KERAS=1 python -m benchmarks.peers.mct_tf221 /tmp/mct221

The MCT packages are appended to ``sys.path`` (after this venv's own TF). Each run adds its flavour's
outcome, with the exact message, to ``benchmarks/results/mct_tf221.json``.
"""
import json
import sys
import traceback
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "results" / "mct_tf221.json"


def main(mct_path: str) -> None:
    sys.path.append(mct_path)
    import numpy as np
    import tensorflow as tf

    from kerascomp.graph.flavour import default_keras
    from kerascomp.loading import load_demo_model

    keras = default_keras()
    model = load_demo_model()
    record = {"tensorflow": tf.__version__, "keras": f"{keras.__name__} {keras.__version__}"}
    try:
        import model_compression_toolkit as mct

        record["mct"] = mct.__version__
        images = np.random.default_rng(0).uniform(0, 255, (32, 32, 32, 3)).astype("float32")
        kernel_bytes = 4 * sum(int(np.prod(w.shape)) for w in model.trainable_weights if len(w.shape) > 1)
        mct.pruning.keras_pruning_experimental(model, mct.core.ResourceUtilization(weights_memory=0.75 * kernel_bytes),
                                               lambda: iter([[images]]))
        record["outcome"] = "ran"
    except Exception as error:  # the point is to record whatever MCT raises
        record["outcome"] = "error"
        record["error"] = f"{type(error).__name__}: {error}"
        record["where"] = traceback.format_exc(limit=-2)
    state = json.loads(OUT.read_text()) if OUT.exists() else {}
    state[record["keras"].split()[0]] = record
    OUT.write_text(json.dumps(state, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main(sys.argv[1])

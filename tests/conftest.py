import hashlib
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# latency tables cache their timings on disk; the tests measure afresh, in a folder of their own
os.environ["KERASCOMP_CACHE"] = tempfile.mkdtemp(prefix="kerascomp-test-cache-")

from kerascomp.graph.flavour import default_keras, legacy_requested  # noqa: E402
from kerascomp.zoo import cifar_resnet  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

# The fuzz tests explore: a fresh seed per run unless KERASCOMP_FUZZ_SEED replays one (printed in the header).
FUZZ_SEED = int(os.environ.get("KERASCOMP_FUZZ_SEED") or random.SystemRandom().randrange(2**31))
# pytest-xdist workers start after this module is loaded in the controller and inherit its environment,
# so every worker explores from the seed the summary prints
os.environ["KERASCOMP_FUZZ_SEED"] = str(FUZZ_SEED)


def _seed_line() -> str:
    return f"kerascomp fuzz seed: {FUZZ_SEED} (replay a failure with KERASCOMP_FUZZ_SEED={FUZZ_SEED})"


def pytest_report_header(config):
    return _seed_line()


def pytest_terminal_summary(terminalreporter):  # also under -q, where the header is not shown
    terminalreporter.write_line(_seed_line())

# For tests whose subject does not depend on the Keras flavour (.tflite files, logs, the shipped
# Keras 3 demo path): they run in the Keras 3 pass of the README command only, to keep CI short.
flavour_independent = pytest.mark.skipif(legacy_requested(), reason="flavour-independent; runs in the Keras 3 pass")


@pytest.fixture(scope="session")
def keras():
    """The Keras flavour under test: tf_keras when TF_USE_LEGACY_KERAS=1, else Keras 3."""
    return default_keras()


def weights_hash(model) -> str:
    digest = hashlib.sha256()
    for weight in model.get_weights():
        digest.update(np.ascontiguousarray(weight).tobytes())
    return digest.hexdigest()


def model_fingerprint(model) -> tuple:
    return (weights_hash(model), repr(model.get_config()), tuple(layer.trainable for layer in model.layers))


def rewritten_in(report) -> set[str]:
    """The layers a compression report says were rewritten to fewer MACs."""
    return {d.layer for d in report.layers if d.action not in ("kept", "dense", "unchanged")
            and d.macs_after != d.macs_before}


@pytest.fixture
def small_resnet(keras):
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    _randomise_bn(model)
    return model


def _randomise_bn(model, seed=0):
    """Give BN layers non-trivial statistics so equivalence tests are not vacuous."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if type(layer).__name__ == "BatchNormalization":
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([rng.uniform(0.5, 1.5, gamma.shape), rng.normal(0, 0.1, beta.shape),
                               rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, var.shape)])


@pytest.fixture(scope="module")
def module_resnet(keras):
    """A ResNet-8 on 16x16 inputs with non-trivial BN statistics, shared by a module's tests (do not modify it)."""
    keras.utils.set_random_seed(0)
    model = cifar_resnet(depth=8, width=16, input_shape=(16, 16, 3), keras_module=keras)
    _randomise_bn(model)
    return model


@pytest.fixture(scope="module")
def labelled():
    rng = np.random.default_rng(0)
    return rng.uniform(0, 255, (32, 16, 16, 3)).astype("float32"), np.arange(32) % 10


@pytest.fixture
def images():
    return np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype("float32")


@pytest.fixture(scope="session")
def cifar_path():
    """``$KERASCOMP_DATA`` (a folder or the .npz), else ../shared/data/cifar10.npz; skip when absent."""
    folder = Path(os.environ.get("KERASCOMP_DATA", SHARED_DATA))
    path = folder if folder.suffix == ".npz" else folder / "cifar10.npz"
    if not path.is_file():
        pytest.skip(f"{path} is not present")
    return path


def squeeze_excite_model(keras):
    """An EfficientNet block: the expansion's 32 channels are read by the squeeze-and-excite reduce conv (through
    the pooling) and by the projection, and written by the expansion and by the gate (through the multiply)."""
    layers = keras.layers
    keras.utils.set_random_seed(2)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(8, 3, padding="same", name="stem")(inputs)
    x = layers.ReLU()(layers.BatchNormalization(name="expand_bn")(layers.Conv2D(32, 1, name="expand")(x)))
    x = layers.ReLU()(layers.BatchNormalization(name="dw_bn")(layers.DepthwiseConv2D(3, padding="same", name="dw")(x)))
    gate = layers.GlobalAveragePooling2D(keepdims=True, name="squeeze")(x)
    gate = layers.Conv2D(8, 1, activation="relu", name="se_reduce")(gate)
    gate = layers.Conv2D(32, 1, activation="sigmoid", name="se_expand")(gate)
    x = layers.Conv2D(16, 1, name="project")(layers.Multiply(name="excite")([x, gate]))
    return keras.Model(inputs, layers.Dense(10, name="head")(layers.GlobalAveragePooling2D()(x)))


def pointwise_net(keras, width: int = 64, seed: int = 4):
    """A 3x3 stem, then two 1x1 convs of ``width`` filters holding most of the MACs (the second prunable through
    the first's outputs), and no depthwise conv."""
    layers = keras.layers
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(16, 3, padding="same", activation="relu", name="stem")(inputs)
    x = layers.Conv2D(width, 1, activation="relu", name="wide")(x)
    x = layers.Conv2D(width, 1, activation="relu", name="mix")(x)
    return keras.Model(inputs, layers.Dense(10, name="head")(layers.GlobalAveragePooling2D()(x)))


def zero_input_slices(model, channels: dict) -> None:
    """Zero the input slices ``channels[name]`` (a slice or index list) of each named conv's kernel, in place:
    channels that conv then ignores."""
    for name, cut in channels.items():
        conv = model.get_layer(name)
        kernel = conv.get_weights()[0]
        kernel[:, :, cut, :] = 0.0
        conv.set_weights([kernel] + conv.get_weights()[1:])


def proportional_table(model):
    """A constructed latency table of ``model``'s convs: every form at 1 ns per MAC, the rest 20% on top."""
    from kerascomp.bench.latency import LatencyTable, conv_macs

    macs = conv_macs(model)
    return LatencyTable({n: [{"form": "dense", "macs": m, "ms": m * 1e-6}] for n, m in macs.items()},
                        sum(macs.values()) * 1.2e-6, "constructed for a test", 1, macs)

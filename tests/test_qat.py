"""Quantisation-aware training (tfmot) and the Keras 3 -> tf_keras bridge."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import kerascomp
from kerascomp.errors import InvalidArgumentError, UnsupportedModelError
from kerascomp.export.tflite import run_tflite
from kerascomp.graph.flavour import legacy_requested
from tests.conftest import flavour_independent, model_fingerprint

keras3_only = pytest.mark.skipif(legacy_requested(), reason="the bridge is for Keras 3 models")


@pytest.fixture
def grouped(small_resnet):
    """A compressed ResNet whose stripped form holds grouped convs (FGA)."""
    return kerascomp.clone_compressed(small_resnet, method="fga", target_flops=0.4, min_channels_per_group=4,
                                      verbose=0)


@keras3_only
def test_bridge_gives_identical_outputs_on_grouped_resnet(grouped, images):
    import tf_keras

    from kerascomp.graph.bridge import to_tf_keras
    from kerascomp.graph.keras_io import read_model, write_model
    from kerascomp.methods.strip import strip_graph

    stripped = strip_graph(read_model(grouped))
    assert any(spec.config.get("groups", 1) > 1 for spec in stripped.layers.values())
    moved = write_model(to_tf_keras(stripped))
    assert isinstance(moved, tf_keras.Model)
    assert all(type(layer).__module__.startswith("tf_keras") for layer in moved.layers)
    np.testing.assert_allclose(moved.predict(images, verbose=0), grouped.predict(images, verbose=0), atol=1e-5)
    assert moved.count_params() == grouped.count_params()


@flavour_independent  # after quantize_aware every model is tf_keras; the Keras 3 pass also covers the bridge
def test_qat_fits_one_epoch_and_exports_int8(grouped, images, tmp_path):
    before = model_fingerprint(grouped)
    qat = kerascomp.quantize_aware(grouped)
    assert model_fingerprint(grouped) == before
    assert type(qat).__module__.startswith("tf_keras")
    labels = np.argmax(grouped.predict(images, verbose=0), 1)
    qat.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    history = qat.fit(images, labels, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    result = kerascomp.export_tflite(qat, tmp_path / "qat.tflite", representative_data=images, int8_io=True)
    assert result.quantize == "int8" and result.quantize_aware
    assert result.samples == len(images)
    # The file really is integer: its weights take about a byte each, and so do its inputs.
    assert result.size_bytes < 0.5 * 4 * grouped.count_params() + 40_000
    from ai_edge_litert.interpreter import Interpreter

    assert Interpreter(model_path=result.path).get_input_details()[0]["dtype"] == np.int8
    produced = run_tflite(result.path, [images])[0]
    expected = qat.predict(images, verbose=0)
    assert np.linalg.norm(produced - expected) / np.linalg.norm(expected) < 0.1
    assert result.top1_agreement >= 0.85


def test_qat_model_only_exports_as_int8(grouped, tmp_path):
    qat = kerascomp.quantize_aware(grouped)
    with pytest.raises(InvalidArgumentError, match="quantisation-aware.*float16"):
        kerascomp.export_tflite(qat, tmp_path / "q.tflite", quantize="float16")
    with pytest.raises(InvalidArgumentError, match="already quantisation-aware"):
        kerascomp.quantize_aware(qat)


def test_keep_float_is_checked(grouped):
    with pytest.raises(InvalidArgumentError, match="keep_float.*'nope'"):
        kerascomp.quantize_aware(grouped, keep_float=["nope"])
    with pytest.raises(InvalidArgumentError, match="list of layer names"):
        kerascomp.quantize_aware(grouped, keep_float="logits")


def test_shared_factor_layers_are_refused(small_resnet):
    shared = kerascomp.clone_compressed(small_resnet, method="joint_svd", variant="left", target_params=0.5,
                                        grouping="shape", allocation="uniform", verbose=0)  # ResNet-8: 1 block/stage
    with pytest.raises(UnsupportedModelError, match="called more than once.*quantize='int8'"):
        kerascomp.quantize_aware(shared)


@keras3_only
def test_bridge_refuses_custom_layers_and_changed_arguments(keras):
    @keras.saving.register_keras_serializable("kerascomp_tests")
    class Doubler(keras.layers.Layer):
        def call(self, x):
            return 2 * x

    inputs = keras.Input((8,))
    custom = keras.Model(inputs, keras.layers.Dense(4)(Doubler(name="doubler")(inputs)))
    with pytest.raises(UnsupportedModelError, match="'doubler'.*no tf_keras counterpart"):
        kerascomp.quantize_aware(custom)
    lora = keras.layers.Dense(4, name="adapted")
    model = keras.Model(inputs, lora(inputs))
    lora.enable_lora(2)
    with pytest.raises(UnsupportedModelError, match="'adapted'.*lora_rank=2"):
        kerascomp.quantize_aware(model)


@pytest.mark.skipif(legacy_requested(), reason="checks a Keras 3 session; run once")
def test_tfmot_never_switches_a_keras3_session_to_legacy(tmp_path):
    script = textwrap.dedent(f"""
        import os, sys
        import numpy as np
        import kerascomp
        from kerascomp.zoo import cifar_resnet
        model = cifar_resnet(depth=8, width=8, input_shape=(16, 16, 3))
        small = kerascomp.clone_compressed(model, method="l1", target_flops=0.6, verbose=0)
        kerascomp.export_tflite(small, {str(tmp_path / 'm.tflite')!r})
        assert "TF_USE_LEGACY_KERAS" not in os.environ
        assert "tensorflow_model_optimization" not in sys.modules
        qat = kerascomp.quantize_aware(small)
        assert "tensorflow_model_optimization" in sys.modules
        assert "TF_USE_LEGACY_KERAS" not in os.environ, os.environ["TF_USE_LEGACY_KERAS"]
        import tensorflow as tf
        assert tf.keras.__name__.startswith("keras"), tf.keras.__name__
        again = kerascomp.clone_compressed(model, method="l1", target_flops=0.6, verbose=0)
        assert type(again).__module__.startswith("keras."), type(again).__module__
        print("SESSION OK")
        """)
    environment = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environment,
                         cwd=os.path.dirname(os.path.dirname(__file__)), timeout=300)
    assert "SESSION OK" in run.stdout, run.stderr[-3000:]


@flavour_independent  # the tf_keras int8 path is exercised in test_export_bench
def test_int8_keeps_top1_of_the_shipped_trained_model(cifar_path, tmp_path):
    from kerascomp.data import load_npz
    from kerascomp.loading import load_demo_model

    calibration = load_npz(cifar_path)["x_train"][:200].astype("float32")
    result = kerascomp.export_tflite(load_demo_model(), tmp_path / "int8.tflite", quantize="int8",
                                     representative_data=calibration)
    assert result.samples == 200
    assert result.top1_agreement >= 0.98
    assert result.relative_error < 0.1

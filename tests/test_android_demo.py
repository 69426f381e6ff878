"""The Android demo's asset script, and that the app reads exactly what the script writes."""
import importlib.util
import json
import re
from pathlib import Path

import numpy as np
import pytest

import kerascomp
from tests.conftest import flavour_independent

pytestmark = flavour_independent
DEMO = Path(__file__).resolve().parents[1] / "android_demo"


def _copy_models():
    spec = importlib.util.spec_from_file_location("copy_models", DEMO / "copy_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_copy_models_fills_the_assets(small_resnet, tmp_path):
    original = kerascomp.export_tflite(small_resnet, tmp_path / "original.tflite").path
    pruned = kerascomp.clone_compressed(small_resnet, method="l1", target_flops=0.5, verbose=0)
    compressed = kerascomp.export_tflite(pruned, tmp_path / "small.tflite").path
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "data.npz", x_test=rng.integers(0, 255, (4, 16, 16, 3), dtype=np.uint8),
             y_test=np.array([[3], [1], [2], [0]]))
    assets = tmp_path / "assets"
    assert _copy_models().main([original, compressed, "--data", str(tmp_path / "data.npz"), "--index", "0",
                                "--assets", str(assets), "--runs", "20"]) == 0
    assert sorted(p.name for p in assets.iterdir()) == ["compressed.tflite", "meta.json", "original.tflite",
                                                         "sample.png"]
    meta = json.loads((assets / "meta.json").read_text())
    assert meta["input_shape"] == [16, 16, 3] and meta["true_label"] == "cat" and meta["runs"] == 20
    assert (assets / "compressed.tflite").read_bytes() == Path(compressed).read_bytes()
    assert (assets / "sample.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_copy_models_refuses_int8_inputs(small_resnet, images, tmp_path):
    original = kerascomp.export_tflite(small_resnet, tmp_path / "original.tflite").path
    int8 = kerascomp.export_tflite(small_resnet, tmp_path / "int8.tflite", quantize="int8",
                                   representative_data=images, int8_io=True).path
    with pytest.raises(SystemExit, match="int8 inputs.*without --int8-io"):
        _copy_models().main([original, int8, "--image", "x.png", "--assets", str(tmp_path / "a")])


def test_app_reads_the_keys_the_script_writes():
    kotlin = (DEMO / "app/src/main/java/dev/kerascomp/demo/ModelBenchmark.kt").read_text()
    script = (DEMO / "copy_models.py").read_text()
    read = set(re.findall(r'(?:getJSONArray|optString|optInt|getString)\("([a-z_]+)"', kotlin))
    assert read == {"input_shape", "models", "labels", "true_label", "runs", "warmup_runs"}
    # copy_models.py --image writes "true_label": null; optString would read that as the text "null"
    assert 'optString("true_label")' not in kotlin and 'isNull("true_label")' in kotlin
    for key in read:
        assert f'"{key}"' in script
    for asset in ("meta.json", "sample.png"):
        assert f'"{asset}"' in kotlin and asset in script

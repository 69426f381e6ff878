import json

import numpy as np
import pytest

from kerascomp.cli import main
from kerascomp.loading import demo_model_path
from tests.conftest import flavour_independent


@pytest.fixture
def model_file(small_resnet, tmp_path):
    path = tmp_path / "model.keras"
    small_resnet.save(path)
    return path


def test_compress_export_bench(model_file, tmp_path, images, capsys):
    np.savez(tmp_path / "calib.npz", x=images)
    out = tmp_path / "small.keras"
    assert main(["compress", str(model_file), "--target-flops", "0.5", "-o", str(out), "--quiet",
                 "--report-json", str(tmp_path / "report.json")]) == 0
    table = capsys.readouterr().out
    assert "MACs before" in table and "fga g=" in table and "rel. error" in table
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs_ratio"] <= 0.5
    assert main(["export", str(out), "-o", str(tmp_path / "small.tflite")]) == 0
    assert main(["export", str(model_file), "-o", str(tmp_path / "big.tflite")]) == 0
    assert main(["export", str(out), "-o", str(tmp_path / "q.tflite"), "--quantize", "int8",
                 "--calibration", str(tmp_path / "calib.npz")]) == 0
    capsys.readouterr()
    assert main(["bench", str(tmp_path / "big.tflite"), str(tmp_path / "small.tflite"), "--runs", "5",
                 "--json", str(tmp_path / "bench.json"), "--markdown", str(tmp_path / "bench.md")]) == 0
    printed = capsys.readouterr().out
    assert "speedup vs first" in printed and "1.00x" in printed
    record = json.loads((tmp_path / "bench.json").read_text())
    assert record["runner"] == "host" and len(record["results"]) == 2
    assert record["command"].startswith("kerascomp bench ") and "--runs 5" in record["command"]
    assert (tmp_path / "bench.md").read_text().startswith("| model |")


def test_cli_reports_errors(model_file, tmp_path, capsys):
    assert main(["compress", str(model_file), "--target-flops", "2", "-o", str(tmp_path / "x.keras")]) == 2
    assert "target_flops=2.0 is outside (0, 1]" in capsys.readouterr().err
    assert main(["bench", str(tmp_path / "absent.tflite")]) == 2


def test_shipped_demo_model_exists_and_is_small():
    path = demo_model_path()
    assert path.is_file()
    assert path.stat().st_size < 5 * 2**20


@pytest.mark.slow
@flavour_independent  # the README's demo command runs in a default (Keras 3) session
def test_demo_runs_offline(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("KERASCOMP_DATA", raising=False)
    assert main(["demo", "--runs", "5", "--output-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "realised fraction" in printed and "LiteRT median ms" in printed
    assert (tmp_path / "fga.tflite").stat().st_size < (tmp_path / "original.tflite").stat().st_size


def test_compress_prunes_with_data(model_file, tmp_path, images, capsys):
    np.savez(tmp_path / "calib.npz", x=images)
    out = tmp_path / "pruned.keras"
    assert main(["compress", str(model_file), "--method", "correlation", "--target-flops", "0.6", "--allocation",
                 "global", "--data", str(tmp_path / "calib.npz"), "-o", str(out), "--quiet",
                 "--report-json", str(tmp_path / "report.json")]) == 0
    printed = capsys.readouterr().out
    assert "pruned in" in printed and "recalibrated batchnorms" in printed
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["macs_ratio"] <= 0.6 and report["method"] == "correlation"
    assert main(["compress", str(model_file), "--method", "l1", "--max-fraction", "1.5", "-o", str(out)]) == 2
    assert "max_fraction" in capsys.readouterr().err


def test_compress_joint_svd(model_file, tmp_path, capsys):
    out = tmp_path / "joint.keras"
    assert main(["compress", str(model_file), "--method", "joint_svd", "--variant", "bi", "--target-params", "0.5",
                 "--groups", "s1b1_conv[12]", "--allocation", "uniform", "-o", str(out), "--quiet",
                 "--report-json", str(tmp_path / "r.json")]) == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["params_ratio"] <= 0.5 and report["notes"]["joint groups"] == "jsvd0: 2 convs"
    assert main(["compress", str(model_file), "--method", "joint_svd", "--groups", "nothing", "-o", str(out)]) == 2
    assert "matches no eligible" in capsys.readouterr().err


@flavour_independent
def test_plan_then_compress_with_the_plan(model_file, tmp_path, images, capsys):
    np.savez(tmp_path / "val.npz", x_val=images, y_val=(np.arange(len(images)) % 10).reshape(-1, 1))
    plan_path, out = tmp_path / "plan.json", tmp_path / "small.keras"
    assert main(["plan", str(model_file), "--data", str(tmp_path / "val.npz"), "--target-flops", "0.6", "-o",
                 str(plan_path), "-q"]) == 0
    assert "collaborative plan" in capsys.readouterr().out
    assert json.loads(plan_path.read_text())["target"] == 0.6
    assert main(["compress", str(model_file), "--plan", str(plan_path), "-o", str(out), "-q",
                 "--report-json", str(tmp_path / "report.json")]) == 0
    assert json.loads((tmp_path / "report.json").read_text())["macs_ratio"] <= 0.6
    np.savez(tmp_path / "inputs.npz", x=images)
    assert main(["plan", str(model_file), "--data", str(tmp_path / "inputs.npz"), "-o", str(plan_path)]) == 2
    assert "no labelled pair" in capsys.readouterr().err

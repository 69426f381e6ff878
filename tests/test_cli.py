import json

import numpy as np
import pytest

from kerascomp.bench.host import host_cpu
from kerascomp.cli import main
from kerascomp.loading import demo_model_path, load_model
from tests.conftest import flavour_independent, proportional_table


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
    assert f"CPU: {host_cpu()}" in record["conditions"] and host_cpu() in (tmp_path / "bench.md").read_text()


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


@pytest.mark.parametrize("method,flags,named", [
    ("l1", ["--pointwise"], "--pointwise is used by auto, collaborative, fga, joint_svd, svd, tucker"),
    ("svd", ["--groups", "s1.*"], "--groups is used by joint_svd"),
    ("fga", ["--max-fraction", "0.5"], "--max-fraction is used by correlation, l1"),
    ("tucker", ["--variant", "left"], "--variant is used by joint_svd"),
    ("correlation", ["--min-channels-per-group", "8"], "--min-channels-per-group is used by auto, fga"),
    ("fga", ["--sensitivity", "taylor"], "--sensitivity is used by collaborative"),
    ("fga", ["--allocation", "global"], "--allocation is used by collaborative, correlation, joint_svd, l1, svd, tucker"),
    ("collaborative", ["--max-fraction", "0.5", "--groups", "s1.*"], "does not use --groups, --max-fraction"),
    ("l1", ["--rank-multiple", "8"], "--rank-multiple is used by auto, collaborative, fga, joint_svd, svd, tucker"),
    ("svd", ["--channel-multiple", "auto"], "--channel-multiple is used by auto, collaborative, correlation, l1"),
    ("tucker", ["--stream", "uniform"], "--stream is used by collaborative, correlation, l1"),
])
def test_compress_refuses_a_flag_the_method_does_not_use(model_file, tmp_path, capsys, method, flags, named):
    out = tmp_path / "x.keras"
    assert main(["compress", str(model_file), "--method", method, "-o", str(out), *flags]) == 2
    error = capsys.readouterr().err
    assert f"method {method!r} does not use" in error and named in error
    assert not out.exists()


def test_stream_reaches_the_method_and_bad_rules_are_refused(model_file, tmp_path, images, capsys):
    """--stream: l1 with "last" keeps the residual stream (the stem's 16 filters) where "uniform" cuts it; a rule
    the method lacks ("keep" is collaborative's) and a word that is no rule are refused with exit code 2;
    collaborative's plan takes a fraction and "auto" stays "auto" (not the tile policy's None)."""
    from kerascomp.loading import load_model

    widths = {}
    for rule in ("last", "uniform"):
        out = tmp_path / f"{rule}.keras"
        assert main(["compress", str(model_file), "--method", "l1", "--target-flops", "0.6", "--stream", rule, "-o",
                     str(out), "-q"]) == 0
        widths[rule] = load_model(out).get_layer("stem_conv").filters
    assert widths["last"] == 16 and widths["uniform"] < 16
    capsys.readouterr()
    assert main(["compress", str(model_file), "--method", "l1", "--stream", "keep", "-o", str(tmp_path / "k.keras")]) == 2
    assert "stream must be one of" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main(["compress", str(model_file), "--method", "l1", "--stream", "wide", "-o", str(tmp_path / "w.keras")])
    assert exited.value.code == 2 and "expected one of auto, keep, last, uniform or a fraction" in capsys.readouterr().err
    np.savez(tmp_path / "val.npz", x_val=images, y_val=np.arange(len(images)) % 10)
    for rule, setting in (("0.75", 0.75), ("auto", "auto")):
        plan_path = tmp_path / f"plan_{rule}.json"
        assert main(["plan", str(model_file), "--data", str(tmp_path / "val.npz"), "--target-flops", "0.5",
                     "--stream", rule, "-o", str(plan_path), "-q"]) == 0
        assert json.loads(plan_path.read_text())["settings"]["stream"] == setting


def test_tile_steps_reach_the_method_and_bad_steps_are_refused(model_file, tmp_path, monkeypatch, capsys):
    import kerascomp

    seen = []
    real = kerascomp.compress
    monkeypatch.setattr(kerascomp, "compress", lambda *args, **kwargs: seen.append(kwargs) or real(*args, **kwargs))
    report = tmp_path / "report.json"
    for step, expected in (("4", 4), ("auto", None)):
        assert main(["compress", str(model_file), "--method", "tucker", "--rank-multiple", step, "-q",
                     "--target-flops", "0.6", "-o", str(tmp_path / "x.keras"), "--report-json", str(report)]) == 0
        assert seen[-1]["rank_multiple"] == expected
        notes = json.loads(report.read_text())["notes"]
        assert notes["tile_step"] in (8, 4, 1) if expected is None else "tile_step" not in notes  # fixed: no search
    assert main(["compress", str(model_file), "--method", "l1", "--channel-multiple", "2", "-q",
                 "--target-flops", "0.6", "-o", str(tmp_path / "x.keras")]) == 0
    assert seen[-1]["channel_multiple"] == 2
    for bad in ("0", "eight"):
        with pytest.raises(SystemExit) as exit_:
            main(["compress", str(model_file), "--method", "l1", "--channel-multiple", bad, "-o", str(tmp_path / "y.keras")])
        assert exit_.value.code == 2 and "expected a positive integer or 'auto'" in capsys.readouterr().err


@pytest.mark.parametrize("method, target, note, said", [
    ("svd", "0.7", "latency_front", "constructed for a test"),  # the forms on each layer's latency front
    ("l1", "0.5", "stream", "estimated by the latency table constructed for a test"),  # the faster stream rule
])
def test_a_latency_table_steers_a_flops_target(model_file, tmp_path, method, target, note, said):
    proportional_table(load_model(model_file)).save(tmp_path / "table.json")
    report = tmp_path / "report.json"
    assert main(["compress", str(model_file), "--method", method, "-o", str(tmp_path / "x.keras"), "-q",
                 "--latency-table", str(tmp_path / "table.json"), "--target-flops", target,
                 "--report-json", str(report)]) == 0
    assert said in json.loads(report.read_text())["notes"][note]


def test_latency_table_host_asks_compress_to_measure_here(model_file, tmp_path, monkeypatch, capsys):
    import kerascomp
    from kerascomp.errors import BudgetError

    seen = {}

    def compress(model, **kwargs):  # stands in for the measurement, which test_latency_front runs
        seen.update(kwargs)
        raise BudgetError("stopped by the test")
    monkeypatch.setattr(kerascomp, "compress", compress)
    assert main(["compress", str(model_file), "--method", "tucker", "-o", str(tmp_path / "x.keras"),
                 "--latency-table", "host", "--target-flops", "0.6"]) == 1
    assert seen["latency"] == "host" and seen["target_flops"] == 0.6
    assert "stopped by the test" in capsys.readouterr().err


def test_plan_with_method_flags_is_refused(model_file, tmp_path, images, capsys):
    np.savez(tmp_path / "val.npz", x_val=images, y_val=(np.arange(len(images)) % 10).reshape(-1, 1))
    plan_path = tmp_path / "plan.json"
    assert main(["plan", str(model_file), "--data", str(tmp_path / "val.npz"), "-o", str(plan_path), "-q"]) == 0
    capsys.readouterr()
    assert main(["compress", str(model_file), "--plan", str(plan_path), "-o", str(tmp_path / "x.keras"),
                 "--allocation", "uniform"]) == 2
    assert "--plan fixes the method, targets and options, so --allocation would be ignored" in capsys.readouterr().err


def test_exit_codes_tell_refusals_from_bad_arguments(model_file, tmp_path, capsys):
    assert main(["compress", str(model_file), "--method", "tucker", "--target-flops", "0.01",
                 "-o", str(tmp_path / "x.keras")]) == 1
    assert capsys.readouterr().err.startswith("kerascomp: refused: method='tucker' cannot reach")
    assert main(["bench", str(tmp_path / "absent.tflite")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_export_strict_fails_and_parity_warnings_are_visible(model_file, tmp_path, capsys, monkeypatch):
    import warnings

    from kerascomp.export import tflite as tflite_module
    from kerascomp.export.tflite import ParityWarning

    original = tflite_module.strip_graph

    def corrupted(graph):  # a fault between the user's model and the converted copy
        stripped = original(graph)
        spec = next(s for s in stripped.layers.values() if s.class_name == "Conv2D")
        spec.weights[0] = spec.weights[0] + 0.5
        return stripped

    monkeypatch.setattr(tflite_module, "strip_graph", corrupted)
    strict = tmp_path / "strict.tflite"
    assert main(["export", str(model_file), "-o", str(strict), "--strict"]) == 1
    assert "PARITY CHECK" in capsys.readouterr().err and not strict.exists()
    with warnings.catch_warnings(record=True) as caught:  # the filters pytest installed from pyproject stay
        assert main(["export", str(model_file), "-o", str(tmp_path / "warned.tflite")]) == 0
    assert any(issubclass(w.category, ParityWarning) for w in caught)
    assert "PARITY FAILED" in capsys.readouterr().out


def test_cli_process_detection():
    from kerascomp.startup import is_cli_process, startup_noise

    assert is_cli_process(["/venv/bin/kerascomp", "compress"], ["python", "/venv/bin/kerascomp", "compress"])
    assert is_cli_process(["/x/kerascomp/cli.py"], ["python", "-m", "kerascomp.cli", "export"])
    assert is_cli_process(["/x/kerascomp/__main__.py"], ["python", "-m", "kerascomp"])
    assert not is_cli_process(["train.py"], ["python", "train.py"])
    assert not is_cli_process(["/venv/bin/pytest"], ["python", "-m", "pytest"])
    assert startup_noise("I0000 00:00:1796175669.026766   10249 cudart_stub.cc:31] Could not find cuda drivers\n")
    assert startup_noise("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.\n")
    assert not startup_noise("kerascomp: error: method 'l1' does not use --pointwise\n")


@flavour_independent
def test_compress_prints_no_tensorflow_native_lines(model_file, tmp_path):
    import os
    import subprocess
    import sys

    from kerascomp.startup import startup_noise

    def run(**env):
        environment = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
        command = [sys.executable, "-m", "kerascomp", "compress", str(model_file), "-o", str(tmp_path / "s.keras"),
                   "--target-flops", "0.6"]
        done = subprocess.run(command, capture_output=True, text=True, env={**environment, **env}, timeout=600)
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines() + done.stderr.splitlines()

    quiet = run()
    assert not [line for line in quiet if startup_noise(line)], quiet
    assert any(line.startswith("saved ") for line in quiet)
    loud = run(KERASCOMP_NATIVE_LOGS="1")  # the same command with the filter off shows what it removes
    assert [line for line in loud if startup_noise(line)]

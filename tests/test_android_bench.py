"""The adb + benchmark_model runner: command construction and log parsing, without a phone."""
import json
from pathlib import Path

import pytest

import kerascomp
from kerascomp.bench import android
from kerascomp.bench.android import (
    DeviceSettings,
    benchmark_on_device,
    commands_for,
    layer_latency_table,
    parse_benchmark_output,
)
from kerascomp.cli import main
from kerascomp.errors import BenchmarkError, InvalidArgumentError
from kerascomp.loading import load_demo_model
from tests.conftest import flavour_independent

pytestmark = flavour_independent

DATA = Path(__file__).parent / "data"
CPU_LOG = (DATA / "benchmark_model_cpu_op_profile.txt").read_text()
XNNPACK_LOG = (DATA / "benchmark_model_xnnpack_info_prefixed.txt").read_text()


def test_parses_timings_memory_and_run_statistics():
    parsed = parse_benchmark_output(CPU_LOG)
    assert (parsed["init_us"], parsed["first_inference_us"]) == (3412, 9120)
    assert (parsed["warmup_avg_us"], parsed["inference_avg_us"]) == (5032.45, 4951.8)
    runs = parsed["runs"]  # the regular runs' line, not the warm-up one before it
    assert (runs.count, runs.first_us, runs.min_us, runs.max_us, runs.avg_us, runs.std_us) == (
        143, 4990, 4788, 5402, 4951.8, 97)
    assert (parsed["memory_init_mb"], parsed["memory_overall_mb"], parsed["peak_memory_mb"]) == (3.26172, 4.53125,
                                                                                                 9.16406)


def test_parses_the_regular_run_order_table_only():
    rows = parse_benchmark_output(CPU_LOG)["op_profile"]
    assert len(rows) == 34  # not the initialisation table, not the "Top by Computation Time" repeats
    assert [r.node_type for r in rows[:3]] == ["MUL", "ADD", "CONV_2D"]
    stem = rows[2]
    assert (stem.first_ms, stem.avg_ms, stem.percent, stem.times_called) == (0.285, 0.233, 5.161, 1)
    assert stem.name.startswith("[resnet20_w16_1/stem_relu_1/Relu;") and stem.name.endswith("]:2")
    assert sum(r.avg_ms for r in rows) == pytest.approx(4.515, abs=1e-9)
    assert rows[-1].node_type == "FULLY_CONNECTED"


def test_parses_info_prefixed_xnnpack_output():
    parsed = parse_benchmark_output(XNNPACK_LOG)
    assert parsed["inference_avg_us"] == 1212.5 and parsed["runs"].count == 824
    assert (parsed["memory_init_mb"], parsed["memory_overall_mb"], parsed["peak_memory_mb"]) == (2.5, 7.75, None)
    rows = parsed["op_profile"]
    assert [r.node_type for r in rows] == ["Multiply (ND, F32)", "Add (ND, F32)", "Convolution (NHWC, F32) IGEMM",
                                           "Convolution (NHWC, F32) GEMM", "Global Average Pooling (NWC, F32)"]
    assert (rows[3].avg_ms, rows[3].times_called, rows[3].name) == (0.084, 2, "Delegate/Convolution (NHWC, F32) GEMM:3")


def test_failed_run_raises_with_the_tools_own_reason():
    with pytest.raises(BenchmarkError, match="FULLY_CONNECTED.*version '12'"):
        parse_benchmark_output((DATA / "benchmark_model_old_binary_error.txt").read_text())


def test_layer_latency_table_attributes_fused_ops_to_layers(tmp_path):
    rows = parse_benchmark_output(CPU_LOG)["op_profile"]
    names = ["stem_conv", "s1b1_conv1", "s1b1_conv2", "logits"]
    names_only = layer_latency_table(rows, names)
    assert names_only["stem_conv"] == pytest.approx(rows[2].avg_ms)
    assert names_only["s1b1_conv1"] == pytest.approx(rows[3].avg_ms)
    # The classifier's op writes the model output, named after the signature, not the layer...
    assert rows[-1].name == "[StatefulPartitionedCall_1:0]:33" and names_only["logits"] == 0.0
    assert sum(names_only.values()) == pytest.approx(sum(r.avg_ms for r in rows))
    # ...but with the profiled file at hand its weights name the layer.
    exported = kerascomp.export_tflite(load_demo_model(), tmp_path / "resnet20.tflite")
    table = layer_latency_table(rows, names, tflite=exported.path)
    assert table["logits"] == pytest.approx(rows[-1].avg_ms)
    assert table["stem_conv"] == pytest.approx(rows[2].avg_ms)
    assert sum(table.values()) == pytest.approx(sum(r.avg_ms for r in rows))
    with pytest.raises(InvalidArgumentError, match="layer_names"):
        layer_latency_table(rows, "stem_conv")


def test_command_construction():
    settings = DeviceSettings(num_threads=4, use_xnnpack=False, use_gpu=True, num_runs=30, warmup_runs=3,
                              enable_op_profiling=True, serial="R58M123", device_dir="/data/local/tmp/kc")
    prepare, push, run, remove = commands_for(settings, "/tmp/my models/small.tflite")
    assert prepare == ["adb", "-s", "R58M123", "shell", "mkdir", "-p", "/data/local/tmp/kc"]
    assert push == ["adb", "-s", "R58M123", "push", "/tmp/my models/small.tflite", "/data/local/tmp/kc/small.tflite"]
    assert run == ["adb", "-s", "R58M123", "shell",
                   "/data/local/tmp/benchmark_model --graph=/data/local/tmp/kc/small.tflite --num_threads=4 "
                   "--use_xnnpack=false --use_gpu=true --num_runs=30 --warmup_runs=3 "
                   "--report_peak_memory_footprint=true --enable_op_profiling=true"]
    assert remove == ["adb", "-s", "R58M123", "shell", "rm", "-f", "/data/local/tmp/kc/small.tflite"]
    default_run = commands_for(DeviceSettings(), "m.tflite")[2]
    assert default_run[:2] == ["adb", "shell"] and "--num_threads=1 --use_xnnpack=true --use_gpu=false" in default_run[2]


@pytest.mark.parametrize("arguments,message", [
    ({"num_threads": 0}, "num_threads"), ({"num_runs": 2.5}, "num_runs"), ({"warmup_runs": -1}, "warmup_runs"),
    ({"binary": "benchmark_model"}, "binary must be an absolute path"),
])
def test_settings_are_validated(arguments, message):
    with pytest.raises(InvalidArgumentError, match=message):
        DeviceSettings(**arguments)


def _fake_phone(log):
    issued = []

    def runner(command):
        issued.append(command)
        return log if "--graph=" in command[-1] else ""

    return runner, issued


def test_benchmark_on_device_pushes_runs_and_cleans_up(tmp_path):
    model = tmp_path / "small.tflite"
    model.write_bytes(b"\0" * 1234)
    runner, issued = _fake_phone(CPU_LOG)
    result, = benchmark_on_device([model], DeviceSettings(enable_op_profiling=True), runner=runner)
    assert [c[1] for c in issued] == ["shell", "push", "shell", "shell"]
    assert issued[-1][-2:] == ["-f", "/data/local/tmp/kerascomp/small.tflite"]
    assert result.size_bytes == 1234 and result.avg_ms == pytest.approx(4.9518)
    assert len(result.op_profile) == 34 and result.settings["num_threads"] == 1
    json.dumps(result.to_dict())


def test_failed_run_still_removes_the_model(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"x")
    issued = []

    def runner(command):
        issued.append(command)
        if "--graph=" in command[-1]:
            raise BenchmarkError("device offline")
        return ""

    with pytest.raises(BenchmarkError, match="device offline"):
        benchmark_on_device([model], runner=runner)
    assert issued[-1][-1] == "/data/local/tmp/kerascomp/m.tflite"
    with pytest.raises(InvalidArgumentError, match="no such file"):
        benchmark_on_device([tmp_path / "absent.tflite"], runner=runner)


def test_cli_bench_adb_writes_json_markdown_and_layer_table(tmp_path, monkeypatch, capsys, small_resnet):
    big = kerascomp.export_tflite(small_resnet, tmp_path / "big.tflite").path
    pruned = kerascomp.clone_compressed(small_resnet, method="l1", target_flops=0.5, verbose=0)
    small = kerascomp.export_tflite(pruned, tmp_path / "small.tflite").path
    small_resnet.save(tmp_path / "model.keras")
    logs = iter([CPU_LOG, XNNPACK_LOG])
    monkeypatch.setattr(android, "_adb_runner", lambda command: next(logs) if "--graph=" in command[-1] else "")
    assert main(["bench", str(big), str(small), "--adb", "--serial", "X1", "--layers-from",
                 str(tmp_path / "model.keras"), "--json", str(tmp_path / "b.json"),
                 "--markdown", str(tmp_path / "b.md")]) == 0
    printed = capsys.readouterr().out
    assert "avg ms" in printed and "4.08x" in printed  # 4951.8 us / 1212.5 us
    record = json.loads((tmp_path / "b.json").read_text())
    assert record["runner"] == "adb" and record["command"].startswith("kerascomp bench ")
    assert [r["inference_avg_us"] for r in record["results"]] == [4951.8, 1212.5]
    assert set(record["layer_latency_ms"]) == {"big.tflite", "small.tflite"}
    layers = record["layer_latency_ms"]["big.tflite"]
    assert "(other)" in layers and "stem_conv" in layers
    markdown = (tmp_path / "b.md").read_text()
    assert markdown.startswith("| model |") and "Made with `kerascomp bench" in markdown


def test_cli_bench_phone_flags_need_adb(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "a.tflite"), "--use-gpu"]) == 2
    assert "--use-gpu only apply with --adb" in capsys.readouterr().err


def test_cli_bench_without_adb_installed(tmp_path, capsys):
    model = tmp_path / "a.tflite"
    model.write_bytes(b"x")
    assert main(["bench", str(model), "--adb", "--adb-path", "/nonexistent/adb"]) == 1  # could not run: 1
    error = capsys.readouterr().err
    assert error.startswith("kerascomp: refused:") and "was not found" in error

"""benchmarks/zoo.py and benchmarks/fuzz.py: their reports and the resume guard, on made-up records."""
import json

import pytest

zoo = pytest.importorskip("benchmarks.zoo")
fuzz = pytest.importorskip("benchmarks.fuzz")


def _zoo_record(*cases):
    return {"cases": list(cases), "command": "python -m benchmarks.zoo", "keras": "3.15.1", "target_flops": 0.5,
            "flavour": "tf_keras", "cpu": "AMD EPYC (2 logical cores; avx2 fma)"}


def test_the_zoo_report_counts_cases_over_the_time_limit_and_names_the_slowest():
    text = zoo.markdown(_zoo_record(
        {"model": "MobileNetV2", "method": "fga", "status": "ok", "macs_ratio": 0.499, "case_s": 12.5},
        {"model": "MobileNetV2", "method": "auto", "status": "ok", "macs_ratio": 0.5, "case_s": zoo.CASE_LIMIT_S + 1},
        {"model": "ResNet50", "method": "l1", "status": "failed", "stage": "export", "message": "parity 0.2",
         "case_s": 3.0},
    ))
    assert "**2 ok, 0 refused, 1 failed, 0 timed out** of 3 cases on 2 models (tf_keras; AMD EPYC" in text
    assert f"3 timed, **1 over {zoo.CASE_LIMIT_S} s**; slowest: MobileNetV2/auto {zoo.CASE_LIMIT_S + 1} s, " \
           "MobileNetV2/fga 12.5 s" in text
    assert "| model | fga | l1 | auto |" in text and "| MobileNetV2 | ok 0.50 |  | ok 0.50 |" in text
    assert "- ResNet50 / l1 (failed at export): ` parity 0.2`" in text
    quick = zoo.markdown(_zoo_record({"model": "VGG16", "method": "l1", "status": "ok", "macs_ratio": 0.5,
                                      "case_s": 1.0}))
    assert f"**0 over {zoo.CASE_LIMIT_S} s**" in quick


def test_a_fuzz_run_resumes_only_with_the_settings_it_was_made_with(tmp_path):
    run = {"seed": 3, "generator": 2, "methods": ["l1"], "all_methods": False, "export": True,
           "flavour": "tf_keras", "target_flops": 0.5}
    path = tmp_path / "fuzz.json"
    path.write_text(json.dumps({**run, "command": "old", "graphs": 4, "seconds": 9.0, "checks": [], "failures": []}))
    resumed = fuzz._resumed(path, run, "python -m benchmarks.fuzz --resume")
    assert (resumed["graphs"], resumed["seconds"], resumed["command"]) == (4, 9.0, "python -m benchmarks.fuzz --resume")
    with pytest.raises(SystemExit, match="generator: recorded 2, now 3"):
        fuzz._resumed(path, {**run, "generator": 3}, "x")
    with pytest.raises(SystemExit, match="seed: recorded 3, now 4"):
        fuzz._resumed(path, {**run, "seed": 4}, "x")


def test_the_zoo_report_names_every_host_its_cases_ran_on():
    one = zoo.markdown(_zoo_record({"model": "VGG16", "method": "l1", "status": "ok", "macs_ratio": 0.5,
                                    "cpu": "Intel Xeon (2 logical cores; avx512f)"}))
    assert "(tf_keras; Intel Xeon (2 logical cores; avx512f))" in one
    two = zoo.markdown(_zoo_record(
        {"model": "VGG16", "method": "l1", "status": "ok", "macs_ratio": 0.5},
        {"model": "VGG16", "method": "fga", "status": "timeout", "stage": "worker", "message": "timed out after 9 s",
         "cpu": "Intel Xeon (2 logical cores; avx512f)"}))
    assert ("cases on several hosts, compare their times only within one: 1 on AMD EPYC (2 logical cores; "
            "avx2 fma), 1 on Intel Xeon (2 logical cores; avx512f)") in two
    assert "**1 ok, 0 refused, 0 failed, 1 timed out** of 2 cases" in two


def test_a_zoo_case_that_runs_past_its_limit_is_a_timeout_of_that_case_alone(monkeypatch):
    calls = []

    def fake_run(command, timeout):
        calls.append((command, timeout))
        if "--original-error" not in command:
            return "ORIGINAL 0.00025\n", "", 0
        if "l1" in command:
            return "", f"timed out after {timeout} s", None
        return 'CASE {"model": "VGG16", "method": "fga", "status": "ok"}\n', "", 0

    monkeypatch.setattr(zoo, "_run", fake_run)
    args = type("Args", (), {"target": 0.5, "timeout": 7})()
    original = zoo._original_error("VGG16", args)
    assert original == "0.00025"
    slow, fast = zoo._run_worker("VGG16", "l1", original, args), zoo._run_worker("VGG16", "fga", original, args)
    assert (slow["status"], slow["message"], fast["status"]) == ("timeout", "timed out after 7 s", "ok")
    assert calls[1][0][-2:] == ["--original-error", "0.00025"] and {t for _, t in calls} == {7}


def test_the_fuzz_report_says_why_each_kind_of_check_was_refused():
    checks = [{"graph": 0, "method": "l1", "stage": "compress", "status": "refused",
               "reason": "BudgetError: method='l1' cannot reach target_flops=0.25 (at best 0.31)"},
              {"graph": 1, "method": "l1", "stage": "compress", "status": "refused",
               "reason": "BudgetError: method='l1' cannot reach target_flops=0.25 (at best 0.40)"},
              {"graph": 2, "method": "l1", "stage": "lossless", "status": "refused"},  # an old record: no reason
              {"graph": 3, "method": "svd", "stage": "compress", "status": "ok", "macs_ratio": 0.25}]
    record = {"flavour": "keras 3.15.1", "command": "python -m benchmarks.fuzz", "graphs": 4, "seconds": 1.0,
              "target_flops": 0.25, "checks": checks, "failures": []}
    text = fuzz.markdown(record)
    assert "## Refusals" in text
    assert "- l1, compress, BudgetError: 2, e.g. `BudgetError: method='l1' cannot reach target_flops=0.25 (at best " \
           "0.31)`" in text
    assert "- l1, lossless, not recorded: 1\n" in text + "\n" and "svd" not in text.split("## Refusals")[1]
    assert fuzz.refusals({"checks": checks[3:]}) == "None."


def test_a_refused_fuzz_check_carries_the_kerascomp_error(keras):
    from kerascomp.testing import check_graph

    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, keras.layers.Dense(4)(keras.layers.GlobalAveragePooling2D()(
        keras.layers.Conv2D(4, 3)(inputs))))  # one conv whose outputs only feed the head: nothing to cut to 0.1
    refused = [o for o in check_graph(model, "l1", 0.1, export=False) if o.status == "refused"]
    assert refused and all(o.detail.split(":", 1)[0].endswith("Error") for o in refused), refused

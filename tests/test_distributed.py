"""Finetuning a compressed model (plain fit, prune_in_rounds, kerascomp.distiller) under
tf.distribute.MirroredStrategy gives the single-device result."""
import json
import os
import subprocess
import sys
from pathlib import Path


def test_mirrored_strategy_matches_single_device():
    script = Path(__file__).with_name("mirrored_fit.py")
    # oneDNN picks its conv algorithm by batch size, so one replica's half batch is computed another way
    # than the whole batch: on an Intel Xeon host (2026-12-03) that alone moved the FGA case's weights by
    # 1.1e-3 after 8 steps (losses equal to 3e-5), and by 1e-7 with oneDNN off. The check is about the
    # distribution, so it runs with TensorFlow's own (Eigen) kernels.
    completed = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600,
                               env={**os.environ, "PYTHONPATH": str(script.parents[1]), "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert completed.returncode == 0, completed.stderr[-3000:]
    report = json.loads(completed.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2
    assert "FilterGroupConv2D" in report["fga"]["classes"]  # the training-time wrapper is what was fitted
    for case in ("fga", "rounds", "distill"):
        assert report[case]["params"][0] == report[case]["params"][1]
        assert report[case]["relative_difference"] < 1e-5, report
    assert len(report["rounds"]["per_fit_difference"]) == 2  # the regularised fit and the pruned model's fit
    assert abs(report["fga"]["single_loss"] - report["fga"]["mirrored_loss"]) < 1e-4
    single, mirrored = report["distill"]["losses"]
    assert abs(single - mirrored) < 1e-4 * max(1.0, abs(single))  # the distiller's loss is a global-batch mean

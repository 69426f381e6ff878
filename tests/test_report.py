"""kerascomp.report / ``kerascomp report``: per-layer forms, MACs, params and measured latency."""
import json

import numpy as np
import pytest

import kerascomp
from kerascomp.cli import main
from kerascomp.errors import InvalidArgumentError


@pytest.fixture(scope="module")
def factored(module_resnet):
    images = np.random.default_rng(0).uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    return kerascomp.compress(module_resnet, method="svd", target_flops=0.5, data=images, verbose=0)


def _layers_with_macs(model):
    return {layer.name: layer for layer in kerascomp.cost(model).layers if layer.macs > 0}


def test_rows_follow_each_layer_and_match_the_costs(module_resnet, factored):
    rep = kerascomp.report(module_resnet, factored, runs=3, verbose=0)
    before, after = kerascomp.cost(module_resnet), kerascomp.cost(factored.model)
    assert (rep.macs_before, rep.macs_after) == (before.macs, after.macs)
    assert (rep.params_before, rep.params_after) == (before.params, after.params)
    rows = {row.layer: row for row in rep.rows}
    assert set(rows) == set(_layers_with_macs(module_resnet))
    decided = {record.layer: record for record in factored.report.layers}
    rewritten = [name for name, record in decided.items() if record.action not in ("dense", "kept")]
    assert rewritten
    for name, row in rows.items():
        record = decided[name]
        assert (row.macs_before, row.macs_after) == (record.macs_before, record.macs_after), name
        assert (row.params_before, row.params_after) == (record.params_before, record.params_after), name
        if name in rewritten:  # a kxk(r) + 1x1 pair, or a kx1 + 1xk pair: two convs
            assert row.form_after.count(" + ") == 1 and row.form_after != row.form_before, row.form_after
            assert len(row.parts) == 2
        else:
            assert row.form_after == row.form_before
    convs = [row for row in rep.rows if row.form_before.startswith("Conv2D 3x3")]
    # a 16x16 conv takes a few microseconds, about the invoke overhead subtracted, so on a busy host
    # one may read 0: the check is on most of them
    assert convs and sum(row.ms_before > 0 for row in convs) >= len(convs) / 2
    assert sum(row.ms_before for row in convs) > 0 and sum(row.ms_after for row in convs) > 0
    assert rep.ms_before > 0 and rep.ms_after > 0
    assert rep.macs_ratio == pytest.approx(after.macs / before.macs)
    assert rep.num_threads == 1 and rep.runs == 3 and rep.cpu and rep.cached_timings == 0
    first = rows["stem_conv"]
    assert first.form_before == "Conv2D 3x3 3->16", first.form_before


def test_a_shared_factor_counts_its_params_once(module_resnet):
    images = np.random.default_rng(1).uniform(0, 255, (32, 16, 16, 3)).astype("float32")
    small = kerascomp.compress(module_resnet, method="joint_svd", target_params=0.5, data=images, verbose=0)
    rep = kerascomp.report(module_resnet, small, runs=2, verbose=0)
    with_macs = _layers_with_macs(small.model)
    assert sum(row.params_after for row in rep.rows) == sum(layer.params for layer in with_macs.values())
    assert sum(row.macs_after for row in rep.rows) == sum(layer.macs for layer in with_macs.values())
    assert all(row.layer != "(added)" for row in rep.rows)


def test_layers_that_match_nothing_are_listed_as_added(keras):
    def tiny(name):
        start = keras.Input((8, 8, 3))
        tensor = keras.layers.Conv2D(8, 3, name=name)(start)
        tensor = keras.layers.GlobalAveragePooling2D()(tensor)
        return keras.Model(start, keras.layers.Dense(4, name="head")(tensor))

    rep = kerascomp.report(tiny("conv"), tiny("other"), runs=2, verbose=0)
    rows = {row.layer: row for row in rep.rows}
    assert rows["conv"].form_after == "removed" and rows["head"].form_after == "Dense 8->4"
    assert rows["(added)"].form_before == "-" and rows["(added)"].form_after == "Conv2D 3x3 3->8"
    assert rep.rows[-1].layer == "(added)"


def test_save_writes_markdown_json_and_png(module_resnet, factored, tmp_path):
    rep = kerascomp.report(module_resnet, factored, runs=2, verbose=0, names=("big.keras", "small.keras"))
    written = rep.save(tmp_path / "out" / "rep", command="kerascomp report big.keras small.keras -o rep")
    assert [path.name for path in written] == ["rep.md", "rep.json", "rep.png"]
    markdown = written[0].read_text()
    assert markdown.startswith("### Per-layer report: small.keras vs big.keras")
    assert "| layer | form before | form after |" in markdown and rep.cpu in markdown
    assert "Made by: `kerascomp report big.keras small.keras -o rep`" in markdown
    assert markdown.count("\n| s1b1_conv1 |") == 1
    payload = json.loads(written[1].read_text())
    assert len(payload["rows"]) == len(rep.rows) and payload["cpu"] == rep.cpu
    assert payload["latency_ratio"] == pytest.approx(payload["ms_after"] / payload["ms_before"])
    assert payload["macs_ratio"] == pytest.approx(rep.macs_after / rep.macs_before)
    png = written[2].read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000


def test_bad_arguments_are_refused(module_resnet, keras, tmp_path):
    with pytest.raises(InvalidArgumentError, match="compressed must be a Keras model"):
        kerascomp.report(module_resnet, 3)
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        kerascomp.report(module_resnet, tmp_path / "missing.keras")
    with pytest.raises(InvalidArgumentError, match="runs must be"):
        kerascomp.report(module_resnet, module_resnet, runs=0)
    start = keras.Input((8, 8, 3))
    other = keras.Model(start, keras.layers.Conv2D(4, 3)(start))
    with pytest.raises(InvalidArgumentError, match="different inputs"):
        kerascomp.report(module_resnet, other)


def test_cli_compress_report_and_report_command(module_resnet, tmp_path, capsys):
    original, small = tmp_path / "model.keras", tmp_path / "small.keras"
    module_resnet.save(original)
    assert main(["compress", str(original), "-o", str(small), "--method", "l1", "--target-flops", "0.5", "-q",
                 "--report", str(tmp_path / "during")]) == 0
    printed = capsys.readouterr().out
    assert f"measured per-layer report: {tmp_path / 'during.md'}" in printed
    assert (tmp_path / "during.png").is_file()
    assert "small.keras vs model.keras" in (tmp_path / "during.md").read_text()
    assert main(["report", str(original), str(small), "-o", str(tmp_path / "after"), "--runs", "2", "-q"]) == 0
    printed = capsys.readouterr().out
    assert "latency ratio" in printed and f"saved {tmp_path / 'after.md'}" in printed
    payload = json.loads((tmp_path / "after.json").read_text())
    assert payload["macs_ratio"] <= 0.5 and payload["runs"] == 2
    assert main(["report", str(original), str(tmp_path / "absent.keras"), "-o", str(tmp_path / "x")]) == 2
    assert "absent.keras does not exist" in capsys.readouterr().err
    assert main(["compress", str(original), "-o", str(small), "--method", "l1", "-q"]) == 0
    assert f"kerascomp report {original} {small} -o PREFIX" in capsys.readouterr().out

"""benchmarks/cifar_report.py: the RESULTS.md tables and the targets check, on made-up rows."""
import json

import numpy as np
import pytest

report = pytest.importorskip("benchmarks.cifar_report")


def _row(method, target, after, macs, latency=None, kind="macs", status="ok"):
    row = {"method": method, "target": target, "target_kind": kind, "status": status,
           "baseline": {"accuracy": 0.80}, "accuracy_before_finetune": after - 0.1, "accuracy_after_finetune": after,
           "macs_ratio": macs, "params_ratio": macs, "tflite_bytes_fp32": 1000 * 1024 * macs,
           "tflite_bytes_int8": 300 * 1024 * macs, "compress_seconds": 1.0}
    latency = macs if latency is None else latency
    for mode in ("fp32", "int8"):
        row[f"latency_ratio_{mode}"] = latency
        row[f"realised_fraction_{mode}"] = macs / latency
    return row


def _state(*rows):
    return {"setup": {"model": "resnet20", "epochs": 2, "train_samples": 100, "lr": 0.01, "data": None},
            "rows": {f"{r['method']}@{r['target']:g}": r for r in rows}}


def test_drops_are_read_against_the_better_of_baseline_and_control():
    state = _state(_row("none", 1.0, 0.82, 1.0), _row("fga", 0.5, 0.81, 0.5))
    table = report.model_table(state)
    assert "| fga | 0.5 macs | 0.7100 | 0.8100 | -0.0100 | 0.500 |" in table
    assert "minus 0.8200" in table


def test_targets_met_and_missed():
    state = _state(_row("none", 1.0, 0.81, 1.0),  # the reference: the control, above the 0.80 baseline
                   _row("collaborative", 0.25, 0.792, 0.25, latency=0.3),  # -1.8 pt at 0.25 MACs, realised 0.83
                   _row("fga", 0.5, 0.806, 0.5),                            # -0.4 pt at 0.5
                   _row("l1", 0.5, 0.815, 0.5), _row("tfmot", 0.5, 0.70, 1.0),
                   _row("l1", 0.25, 0.70, 0.25),
                   _row("svd", 0.5, 0.80, 0.5, kind="params"), _row("mct", 0.5, 0.775, 0.6, kind="params"))
    lines = {line.split("|")[1].strip(): line for line in report.claims(state)}
    assert "| met |" in lines["≤ 0.5 pt below the reference at 0.5 MACs"]
    assert "-0.40 pt" in lines["≤ 0.5 pt below the reference at 0.5 MACs"]
    assert "| met |" in lines["≤ 2.0 pt below the reference at 0.25 MACs"]
    assert "| met |" in lines["≥ 2 pt above mct at 0.5 params"] and "+2.50 pt" in lines["≥ 2 pt above mct at 0.5 params"]
    assert "| not met |" in lines["≥ 1 pt ahead of the best peer at 0.5 MACs"]  # fga 0.806 vs l1 0.815
    assert "not counted: tfmot 0.7000, which keeps 1.000 of the MACs" in lines[
        "≥ 1 pt ahead of the best peer at 0.5 MACs"]
    assert "| met |" in lines["≥ 1 pt ahead of the best peer at 0.25 MACs"]
    assert "| not met |" in lines["realised speed-up ≥ 0.9 of ideal (fp32)"]
    assert "collaborative@0.25 0.83" in lines["realised speed-up ≥ 0.9 of ideal (fp32)"]
    # one point more lost at 0.5 and the target fails
    state["rows"]["fga@0.5"]["accuracy_after_finetune"] = 0.796
    lines = {line.split("|")[1].strip(): line for line in report.claims(state)}
    assert "| not met |" in lines["≤ 0.5 pt below the reference at 0.5 MACs"]


def test_a_peer_that_keeps_the_macs_is_not_the_best_peer_at_a_macs_target():
    """tfmot's masks remove no MACs: however accurate, its row is not a peer *at* 0.25 MACs (named, not counted)."""
    state = _state(_row("none", 1.0, 0.81, 1.0), _row("svd", 0.25, 0.79, 0.25), _row("l1", 0.25, 0.77, 0.25),
                   _row("tfmot", 0.25, 0.805, 1.0))
    line = next(line for line in report.claims(state) if "best peer at 0.25 MACs" in line)
    assert "| met |" in line and "svd 0.7900 vs l1 0.7700: +2.00 pt" in line
    assert "not counted: tfmot 0.8050, which keeps 1.000 of the MACs" in line
    state["rows"]["tfmot@0.25"]["macs_ratio"] = 0.26  # within the slack: counted, and ahead of svd
    line = next(line for line in report.claims(state) if "best peer at 0.25 MACs" in line)
    assert "| not met |" in line and "vs tfmot 0.8050" in line


def test_refused_rows_are_listed_and_ignored_by_the_checks():
    refused = {"method": "mct", "target": 0.5, "target_kind": "params", "status": "refused",
               "baseline": {"accuracy": 0.8}, "error": "CompressionError: MCT Exception: Insufficient memory\nmore"}
    state = _state(_row("fga", 0.5, 0.7, 0.5), refused)
    assert "| mct | 0.5 params | refused: CompressionError: MCT Exception: Insufficient memory |" in \
        report.model_table(state)
    assert all("mct" not in line for line in report.claims(state))


def test_write_report_keeps_the_hand_written_text(tmp_path, monkeypatch):
    results = tmp_path / "results"
    results.mkdir()
    (results / "cifar_resnet20_e40.json").write_text(json.dumps(_state(_row("none", 1.0, 0.8, 1.0),
                                                                       _row("fga", 0.5, 0.78, 0.5))))
    (results / "cifar_resnet20.json").write_text(json.dumps(_state(_row("l1", 0.5, 0.6, 0.5))))  # an archived file
    target = tmp_path / "RESULTS.md"
    target.write_text(f"intro\n{report.BEGIN}\nold\n{report.END}\noutro\n")
    monkeypatch.setattr(report, "HERE", tmp_path)
    monkeypatch.setattr(report, "RESULTS", results)
    monkeypatch.setattr(report, "REPORT", target)
    monkeypatch.setattr(report, "PLOT", results / "plot.png")
    report.write_report()
    text = target.read_text()
    assert text.startswith("intro\n") and text.endswith("outro\n") and "old" not in text
    assert "| fga | 0.5 macs |" in text and (results / "plot.png").stat().st_size > 1000
    current, archive = text.split("## Archive")
    assert "| fga | 0.5 macs |" in current and "| l1 | 0.5 macs |" in archive and "Targets on" not in archive


def test_every_benchmark_variant_and_preset_is_valid():
    """Each named row of the CIFAR grid is a registered method with options it accepts, and each preset
    names only known rows (an option renamed in kerascomp would fail here, not hours into a grid)."""
    from benchmarks.cifar import CALL_ARGUMENTS, LEGACY, PRESETS, VARIANTS
    from kerascomp.methods import registry

    for name, (how, method, options, kind) in VARIANTS.items():
        assert how in ("clone", "plan", "rounds") and kind in ("macs", "params", "latency"), name
        registry.get(method).make_options({k: v for k, v in options.items() if k not in CALL_ARGUMENTS})
    assert {"latency": "host"} == VARIANTS["auto"][2]  # the exclusion above is needed, not vacuous
    for preset in PRESETS.values():
        assert set(preset["methods"].split(",")) <= {"none", *VARIANTS, *LEGACY}


def test_every_cifar_baseline_loads_in_this_flavour_with_the_trained_outputs(keras):
    """``benchmarks.cifar --model M`` finetunes the committed baseline in the flavour under test: under tf_keras
    a twin of the architecture gets the Keras 3 file's weights, and must compute what that file computes."""
    import keras as keras3

    import kerascomp
    from benchmarks.cifar import MODELS, load_baseline

    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    for name, (_, path) in MODELS.items():
        if path is None:  # the shipped demo model (tests/test_demo_model.py)
            continue
        model = load_baseline(name)
        assert type(model).__module__.split(".")[0] == keras.__name__.split(".")[0], name
        stored = keras3.models.load_model(path, custom_objects=kerascomp.custom_objects(keras3), compile=False)
        expected = np.asarray(stored(images, training=False))
        assert expected.std(axis=0).mean() > 1e-2, name  # outputs that vary with the image: the check can fail
        np.testing.assert_allclose(np.asarray(model(images, training=False)), expected, rtol=1e-4, atol=1e-4,
                                   err_msg=name)


def test_params_variants_count_for_their_method_and_ablations_get_their_own_table():
    state = _state(_row("none", 1.0, 0.81, 1.0), _row("fga", 0.5, 0.805, 0.5),
                   _row("fga_no_reconstruct", 0.5, 0.795, 0.5), _row("fga_no_distill", 0.5, 0.80, 0.5),
                   _row("fga_params", 0.5, 0.80, 0.55, kind="params"), _row("l1_params", 0.5, 0.775, 0.5, kind="params"),
                   _row("mct_simd1", 0.5, 0.79, 0.5, kind="params"))
    lines = {line.split("|")[1].strip(): line for line in report.claims(state)}
    assert "| met |" in lines["≥ 2 pt above l1 at 0.5 params"] and "fga_params 0.8000 vs l1 0.7750" in \
        lines["≥ 2 pt above l1 at 0.5 params"]
    assert "| not met |" in lines["≥ 2 pt above mct_simd1 at 0.5 params"]  # +1.0 pt only
    # an ablation is no candidate for "our best": the full-recipe fga is (-0.5 pt, met)
    assert "best: fga at 0.500 MACs, -0.50 pt" in lines["≤ 0.5 pt below the reference at 0.5 MACs"]
    table = report.ablation_table(state)
    assert "| fga_no_reconstruct (without reconstruction) | 0.5 macs | 0.6950 | 0.7950 | -0.0150 | +1.00 pt" in table
    assert "| fga_no_distill (without distillation) |" in table and "+0.50 pt after finetuning" in table
    assert "without both" not in table  # not measured, not shown
    assert report.ablation_table(_state(_row("fga", 0.5, 0.8, 0.5))) == ""


def test_latency_realization_rows_read_against_the_thin_anchor():
    realization = pytest.importorskip("benchmarks.latency_realization")
    at = realization._anchor_curve([(1.0, 1.0), (0.25, 0.4), (0.5, 0.7)])
    assert at(0.375) == pytest.approx(0.55)   # interpolated between the 0.25 and 0.5 anchors
    assert at(0.1) is None                      # below the thinnest anchor: no extrapolation
    entry = {"latency_ratio": 0.6, "realised_fraction": 0.5 / 0.6, "anchor_latency_ratio": 0.7, "vs_anchor": 0.6 / 0.7,
             "parity_relative_error": 0.02, "parity_top1_agreement": 0.99, "parity_passed": True}
    slow = {**entry, "latency_ratio": 0.8, "vs_anchor": 0.8 / 0.7, "parity_passed": False}
    record = {"model": "resnet20", "method": "l1", "target_flops": 0.5, "macs_ratio": 0.5, "fp32": entry,
              "int8": slow, "compress_seconds": 3}
    fp32, int8 = realization.table_rows(record)
    assert fp32[5:9] == ["0.600", "0.83", "0.700", "0.857 ok"]
    assert int8[5] == "0.800 (parity failed)" and int8[8].startswith("1.143 slower")
    assert "FAILED" in int8[9]
    old = {"model": "resnet50_224", "target_flops": 0.5, "macs_ratio": 0.5, "compress_seconds": 1,
           "fp32": {"latency_ratio": 0.55, "realised_fraction": 0.91, "parity_relative_error": 1e-6}}
    (row,) = realization.table_rows(old)        # a record from before the method column: FGA, no anchor
    assert row[1] == "fga" and row[7] == "" and row[8] == ""


def test_latency_realization_method_specs_carry_options():
    realization = pytest.importorskip("benchmarks.latency_realization")
    assert realization.parse_method("l1") == ("l1", {})
    assert realization.parse_method("l1:stream=uniform;max_fraction=0.9") == (
        "l1", {"stream": "uniform", "max_fraction": 0.9})
    with pytest.raises(SystemExit, match="name=value"):
        realization.parse_method("l1:uniform")


def test_latency_realization_mobile_nets_get_thin_anchors_and_images_in_their_range(keras):
    realization = pytest.importorskip("benchmarks.latency_realization")
    import kerascomp

    original, depth = realization._model(keras, "mobilenetv3small")
    thin = realization._thin_models(keras, "mobilenetv3small", depth)
    assert sorted(thin) == [f"alpha{a}" for a in realization.ALPHAS]
    ratios = [kerascomp.cost(thin[f"alpha{a}"]).macs / kerascomp.cost(original).macs for a in realization.ALPHAS]
    assert 0.1 < ratios[0] < ratios[1] < ratios[2] < 1.0, ratios  # dense, the same architecture, thinner
    assert realization._thin_models(keras, "resnet50", None) == {}
    tiny = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(5)])
    x, y = realization._data(tiny, "mobilenetv2", None, 16, None)
    assert x.shape == (16, 4, 4, 3) and -1.0 <= x.min() < -0.5 and 0.5 < x.max() <= 1.0 and y.max() < 5
    x, _ = realization._data(tiny, "efficientnetb0", None, 16, None)
    assert x.max() > 100  # EfficientNet rescales 0..255 inside


def test_benchmark_random_weight_models_get_batchnorm_statistics_from_the_images(keras):
    common = pytest.importorskip("benchmarks.common")
    import numpy as np

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")(inputs)
    outputs = keras.layers.BatchNormalization(name="bn")(conv)
    model = keras.Model(inputs, outputs)
    x = np.random.default_rng(0).uniform(0, 255, (16, 8, 8, 3)).astype("float32")
    calibrated = common.calibrated(model, x)
    features = np.asarray(model.get_layer("conv")(x)).reshape(-1, 4)
    np.testing.assert_allclose(calibrated.get_layer("bn").moving_mean.numpy(), features.mean(0), rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(calibrated.get_layer("bn").moving_variance.numpy(), features.var(0), rtol=1e-3)
    assert np.all(model.get_layer("bn").moving_mean.numpy() == 0)  # the model passed in keeps its own
    normalised = np.asarray(calibrated(x, training=False)).reshape(-1, 4)
    assert np.all(np.abs(normalised.mean(0)) < 1e-2) and np.all(np.abs(normalised.std(0) - 1) < 1e-2)


def test_results_stems_with_a_dot_keep_it(tmp_path):
    """--out cifar_0.25 and --out cifar_0.5 write two files (Path.with_suffix took ".25" for a suffix: both
    wrote cifar_0.json)."""
    from benchmarks.common import result_file, write_results

    for stem, rows in (("cifar_0.25", 1), ("cifar_0.5", 2)):
        write_results(tmp_path / stem, {"rows": rows}, f"{rows} rows\n")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["cifar_0.25.json", "cifar_0.25.md", "cifar_0.5.json",
                                                                "cifar_0.5.md"]
    assert json.loads(result_file(tmp_path / "cifar_0.25", ".json").read_text()) == {"rows": 1}
    assert result_file(tmp_path / "cifar.json", ".md") == tmp_path / "cifar.md"

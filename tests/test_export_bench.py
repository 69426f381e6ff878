import numpy as np
import pytest

import kerascomp
from kerascomp.errors import BenchmarkError, InvalidArgumentError


@pytest.fixture
def compressed(small_resnet):
    return kerascomp.clone_compressed(small_resnet, target_flops=0.4, verbose=0)


def test_fp32_export_matches_keras(compressed, tmp_path, images):
    result = kerascomp.export_tflite(compressed, tmp_path / "m.tflite", representative_data=images)
    assert result.size_bytes == (tmp_path / "m.tflite").stat().st_size
    assert result.max_abs_error < 1e-4
    produced = kerascomp.export.tflite.run_tflite(result.path, [images[:4]])[0]
    np.testing.assert_allclose(produced, np.asarray(compressed(images[:4])), atol=1e-4)


def test_compressed_file_is_smaller(small_resnet, compressed, tmp_path):
    original = kerascomp.export_tflite(small_resnet, tmp_path / "a.tflite")
    small = kerascomp.export_tflite(compressed, tmp_path / "b.tflite")
    ratio = compressed.count_params() / small_resnet.count_params()
    assert small.size_bytes < original.size_bytes
    assert small.size_bytes / original.size_bytes == pytest.approx(ratio, abs=0.1)


@pytest.mark.parametrize("mode,int8_io", [("float16", False), ("dynamic", False), ("int8", False), ("int8", True)])
def test_quantised_exports_run(compressed, tmp_path, images, mode, int8_io):
    result = kerascomp.export_tflite(compressed, tmp_path / f"{mode}.tflite", quantize=mode,
                                     representative_data=images, int8_io=int8_io)
    assert result.quantize == mode
    assert np.isfinite(result.max_abs_error)
    assert result.top1_agreement is not None and result.top1_agreement >= 0.5
    timing = kerascomp.benchmark_tflite(result.path, runs=5)
    assert timing.median_ms > 0


def test_int8_needs_calibration(compressed, tmp_path):
    with pytest.raises(InvalidArgumentError, match="representative_data"):
        kerascomp.export_tflite(compressed, tmp_path / "q.tflite", quantize="int8")


def test_int8_calibrates_on_up_to_2000_rows_and_checks_500(compressed, tmp_path, monkeypatch):
    """The converter's representative dataset gets the first 2,000 rows (500 until 2026-12-07), the parity check
    the first 500."""
    from kerascomp.export import tflite

    seen = []
    real = tflite.convert

    def spy(model, quantize, calibration, *args, **kwargs):
        seen.append(None if calibration is None else len(calibration[0]))
        return real(model, None, None, *args, **kwargs)  # fp32: the rows seen are what this test is about

    monkeypatch.setattr(tflite, "convert", spy)
    images = np.random.default_rng(2).uniform(0, 255, (2100, 16, 16, 3)).astype("float32")
    result = kerascomp.export_tflite(compressed, tmp_path / "c.tflite", quantize="int8", representative_data=images)
    assert seen == [tflite.CALIBRATION_ROWS] == [2000]
    assert result.samples == 500


def test_bad_quantize_mode(compressed, tmp_path):
    with pytest.raises(InvalidArgumentError, match="quantize='int4'"):
        kerascomp.export_tflite(compressed, tmp_path / "q.tflite", quantize="int4")


def test_unwritable_path_and_no_partial_file(compressed, tmp_path):
    with pytest.raises(InvalidArgumentError, match="does not exist"):
        kerascomp.export_tflite(compressed, tmp_path / "missing" / "m.tflite")
    assert not (tmp_path / "missing").exists()


def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    from kerascomp.export import tflite

    target = tmp_path / "m.tflite"

    def broken_replace(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr(tflite.os, "replace", broken_replace)
    with pytest.raises(KeyboardInterrupt):
        tflite._atomic_write(target, b"x" * 100)
    assert list(tmp_path.iterdir()) == []


def test_bench_compares_interleaved(small_resnet, compressed, tmp_path):
    a = kerascomp.export_tflite(small_resnet, tmp_path / "a.tflite").path
    b = kerascomp.export_tflite(compressed, tmp_path / "b.tflite").path
    results = kerascomp.compare_tflite([a, b], runs=10, rounds=2)
    assert [r.runs for r in results] == [10, 10]
    assert all(r.p90_ms >= r.median_ms > 0 for r in results)
    no_xnnpack = kerascomp.benchmark_tflite(b, runs=3, xnnpack=False)
    assert no_xnnpack.xnnpack is False and no_xnnpack.median_ms > 0


def test_bench_rejects_corrupt_and_missing_files(tmp_path):
    corrupt = tmp_path / "corrupt.tflite"
    corrupt.write_bytes(b"this is not a flatbuffer" * 10)
    with pytest.raises(BenchmarkError, match="corrupt.tflite"):
        kerascomp.benchmark_tflite(corrupt)
    with pytest.raises(InvalidArgumentError, match="no such file"):
        kerascomp.benchmark_tflite(tmp_path / "absent.tflite")
    with pytest.raises(InvalidArgumentError, match="num_threads"):
        kerascomp.benchmark_tflite(corrupt, num_threads=0)


def test_parity_warning_on_low_top1_agreement(compressed, tmp_path, monkeypatch):
    from kerascomp.export import tflite

    monkeypatch.setitem(tflite._MIN_AGREEMENT, "float16", 1.01)  # no file can agree more than 100%
    images = np.random.default_rng(1).uniform(0, 255, (64, 16, 16, 3)).astype("float32")
    with pytest.warns(kerascomp.ParityWarning, match="top-1 agreement"):
        result = kerascomp.export_tflite(compressed, tmp_path / "h.tflite", quantize="float16",
                                         representative_data=images)
    assert result.samples == 64  # the check runs on every calibration input


def test_latency_ratio_is_the_median_of_fresh_interleaved_timings(monkeypatch, tmp_path):
    import kerascomp.bench.host as host

    answers = iter([(1.0, 0.5), (1.0, 0.9), (2.0, 1.2)])  # ratios 0.5, 0.9, 0.6: median 0.6, mean 0.667
    calls = []

    def fake_compare(paths, **kw):
        calls.append((list(paths), kw))
        base, other = next(answers)
        return [host.BenchmarkResult(str(p), 1, ms, ms, ms, kw["runs"], 1, True) for p, ms in zip(paths, (base, other))]

    monkeypatch.setattr(host, "compare_tflite", fake_compare)
    assert host.latency_ratio("a.tflite", "b.tflite", runs=40, rounds=4) == pytest.approx(0.6)
    assert len(calls) == 3 and all(c == (["a.tflite", "b.tflite"], dict(num_threads=1, runs=40, rounds=4))
                                   for c in calls)
    with pytest.raises(InvalidArgumentError, match="repeats must be a positive int"):
        host.latency_ratio("a.tflite", "b.tflite", repeats=0)


def test_latency_ratio_of_a_file_against_itself_is_near_one(small_resnet, tmp_path):
    from kerascomp.bench.host import latency_ratio

    path = kerascomp.export_tflite(small_resnet, tmp_path / "a.tflite").path
    assert 0.7 < latency_ratio(path, path, runs=20, rounds=4) < 1.4

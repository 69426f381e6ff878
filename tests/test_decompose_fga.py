import numpy as np
import pytest

from kerascomp.decompose import fga


@pytest.mark.parametrize("shape,groups", [((3, 3, 16, 8), 1), ((3, 3, 16, 32), 4), ((5, 5, 8, 12), 2),
                                          ((1, 1, 32, 16), 2), ((3, 1, 6, 9), 3)])
def test_full_rank_is_exact(shape, groups):
    kernel = np.random.default_rng(0).normal(size=shape)
    rank = fga.max_rank(shape, groups)
    grouped, pointwise = fga.fga_factors(kernel, groups, rank)
    assert grouped.shape == (shape[0], shape[1], shape[2] // groups, groups * rank)
    assert pointwise.shape == (1, 1, groups * rank, shape[3])
    np.testing.assert_allclose(fga.reconstruct(grouped, pointwise, groups), kernel, atol=1e-10)
    assert fga.relative_error_curve(kernel, groups)[rank] == pytest.approx(0.0, abs=1e-12)


def test_error_curve_matches_reconstruction_and_falls_with_rank():
    kernel = np.random.default_rng(1).normal(size=(3, 3, 32, 24))
    curve = fga.relative_error_curve(kernel, 2)
    assert curve[0] == pytest.approx(1.0)
    assert np.all(np.diff(curve) <= 1e-12)
    for rank in (1, 5, 13):
        approx = fga.reconstruct(*fga.fga_factors(kernel, 2, rank), groups=2)
        measured = np.sum((approx - kernel) ** 2) / np.sum(kernel**2)
        assert measured == pytest.approx(curve[rank], rel=1e-9)


def test_more_groups_at_equal_rank_fit_better():
    # g groups of rank r have g*r filters in total; each group matrix is fitted independently.
    kernel = np.random.default_rng(2).normal(size=(3, 3, 32, 32))
    assert fga.relative_error_curve(kernel, 4)[4] < fga.relative_error_curve(kernel, 1)[4]


def test_costs():
    assert fga.fga_macs((3, 3, 32, 64), 2, 8, output_pixels=100) == 100 * 16 * (9 * 16 + 64)
    assert fga.fga_params((3, 3, 32, 64), 2, 8, use_bias=True) == 16 * (9 * 16 + 64) + 64


def test_bad_arguments():
    kernel = np.zeros((3, 3, 10, 4))
    with pytest.raises(ValueError, match="groups=3 must divide"):
        fga.fga_factors(kernel, 3, 1)
    with pytest.raises(ValueError, match="rank=99"):
        fga.fga_factors(kernel, 2, 99)


@pytest.mark.parametrize("fit_bias", [True, False])
def test_ridge_refit_recovers_linear_map(fit_bias):
    rng = np.random.default_rng(3)
    features = rng.normal(size=(2000, 6))
    weights = rng.normal(size=(6, 4))
    bias = rng.normal(size=4) if fit_bias else np.zeros(4)
    fitted, fitted_bias = fga.ridge_refit(features, features @ weights + bias, ridge=1e-9, fit_bias=fit_bias)
    np.testing.assert_allclose(fitted, weights, atol=1e-6)
    np.testing.assert_allclose(fitted_bias, bias, atol=1e-6)

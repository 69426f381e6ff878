"""kerascomp.decompose.selection: the contribution Gram and ThiNet's greedy, against explicit sums."""
import itertools

import numpy as np
import pytest

from kerascomp.decompose.selection import (
    contribution_gram,
    greedy_removal,
    group_gram,
    joint_surgeon_order,
    removal_error,
    surgeon_order,
)


def test_contribution_gram_is_the_gram_of_per_channel_contributions():
    rng = np.random.default_rng(0)
    taps, inputs, outputs, rows = 3, 4, 5, 200
    x = rng.normal(size=(rows, taps * inputs)) + rng.normal(size=taps * inputs)  # not centred
    kernel = rng.normal(size=(taps * inputs, outputs))
    centred = x - x.mean(axis=0)
    gram = contribution_gram(centred.T @ centred, kernel, taps)
    columns = [[t * inputs + i for t in range(taps)] for i in range(inputs)]
    z = [centred[:, c] @ kernel[c] for c in columns]  # channel i's share of the output
    explicit = np.array([[np.sum(z[a] * z[b]) for b in range(inputs)] for a in range(inputs)])
    np.testing.assert_allclose(gram, explicit, rtol=1e-10, atol=1e-9)
    assert removal_error(gram, [0, 2]) == pytest.approx(np.sum((z[0] + z[2]) ** 2))
    with pytest.raises(ValueError, match="does not fit"):
        contribution_gram(centred.T @ centred, kernel[:-1], taps)


def test_group_gram_sums_positions_of_one_channel_and_ignores_other_groups():
    position = np.arange(16, dtype=float).reshape(4, 4)
    gram = group_gram(position, np.array([1, -1, 1, 0]), 2)  # positions 0 and 2 hold channel 1
    assert gram[1, 1] == position[0, 0] + position[0, 2] + position[2, 0] + position[2, 2]
    assert gram[0, 1] == position[3, 0] + position[3, 2] and gram[0, 0] == position[3, 3]


def test_greedy_uses_the_coupling_and_not_only_the_diagonal():
    # channel 1 alone costs most, but it cancels channel 0: {0, 1} changes the output less than {0, 2}
    gram = np.array([[0.5, -0.5, 0.0], [-0.5, 1.0, 0.0], [0.0, 0.0, 0.6]])
    assert greedy_removal(gram, 2, np.arange(3)) == [0, 1]
    assert removal_error(gram, [0, 1]) < removal_error(gram, [0, 2])
    best = min(itertools.combinations(range(3), 2), key=lambda pair: removal_error(gram, list(pair)))
    assert sorted(best) == [0, 1]
    # a diagonal Gram: smallest first; only candidates are picked
    assert greedy_removal(np.diag([3.0, 1.0, 2.0, 0.5]), 2, np.array([0, 1, 2])) == [1, 2]
    with pytest.raises(ValueError, match="cannot remove 4 of 3"):
        greedy_removal(gram, 4, np.arange(3))


def _surgeon_full(moments, rows):
    """The Optimal-Brain-Surgeon greedy written plainly: full matrices updated at every step."""
    precision, refit = np.linalg.inv(moments), rows.astype(np.float64).copy()
    alive = np.ones(len(rows), bool)
    order, costs = [], []
    for _ in range(len(rows) - 1):
        cost = np.full(len(rows), np.inf)
        cost[alive] = (refit[alive] ** 2).sum(axis=1) / np.diag(precision)[alive]
        cut = int(np.argmin(cost))
        column = precision[:, cut].copy()
        refit -= np.outer(column, refit[cut]) / precision[cut, cut]
        precision -= np.outer(column, column) / precision[cut, cut]
        alive[cut] = False
        order.append(cut)
        costs.append(cost[cut])
    return np.array(order + [int(np.flatnonzero(alive)[0])]), np.array(costs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_surgeon_order_matches_the_full_matrix_greedy(seed):
    rng = np.random.default_rng(seed)
    size, width = 40, 24
    inputs = rng.normal(size=(400, size)) @ rng.normal(size=(size, size))  # correlated channels
    moments = inputs.T @ inputs / 400 + 1e-3 * np.eye(size)
    rows = rng.normal(size=(size, width))
    rows[[3, 11, 29]] = 0.0  # three channels the consumer ignores: equal (zero) costs, cut first, lowest first
    order, costs = surgeon_order(moments, rows)
    expected, expected_costs = _surgeon_full(moments, rows)
    assert order[:3].tolist() == [3, 11, 29]
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_allclose(costs[:-1], expected_costs, rtol=1e-9, atol=1e-12)
    assert np.isnan(costs[-1]) and sorted(order.tolist()) == list(range(size))


@pytest.mark.parametrize("fold", [1, 7, 64, 500])
def test_lazy_surgeon_updates_give_the_eager_greedy_across_folds(fold):
    """The pending rank-one terms are folded into ``P`` and the refit Gram every ``fold`` cuts: 150 channels
    cross several folds at 1 and 7, none at 500; the order and costs stay those of the eager greedy, with
    two consumers as with one."""
    rng = np.random.default_rng(9)
    size = 150
    inputs = rng.normal(size=(600, size)) @ rng.normal(size=(size, size))
    moments = inputs.T @ inputs / 600 + 1e-3 * np.eye(size)
    rows = rng.normal(size=(size, 20))
    rows[[5, 70, 149]] = 0.0
    expected, expected_costs = _surgeon_full(moments, rows)
    order, costs = joint_surgeon_order([(moments, rows, 1.0)], fold=fold)
    np.testing.assert_array_equal(order, expected)
    np.testing.assert_allclose(costs[:-1], expected_costs, rtol=1e-8, atol=1e-12)
    other = (moments + np.diag(rng.uniform(0.0, 1.0, size)), rng.normal(size=(size, 3)), 0.5)
    joint = joint_surgeon_order([(moments, rows, 1.0), other], fold=fold)
    reference = joint_surgeon_order([(moments, rows, 1.0), other], fold=size)  # no fold before the end
    np.testing.assert_array_equal(joint[0], reference[0])
    np.testing.assert_allclose(joint[1][:-1], reference[1][:-1], rtol=1e-8, atol=1e-12)
    with pytest.raises(ValueError, match="fold must be at least 1"):
        joint_surgeon_order([(moments, rows, 1.0)], fold=0)


def test_surgeon_cost_is_the_error_left_after_the_refit():
    """Cutting one channel of two perfectly correlated ones costs (almost) nothing: the refit moves its
    weight onto its twin; a plain norm criterion would not see that."""
    rng = np.random.default_rng(3)
    signal = rng.normal(size=(500, 3))
    inputs = np.column_stack([signal, signal[:, 0]])  # channel 3 copies channel 0
    moments = inputs.T @ inputs / 500 + 1e-6 * np.eye(4)
    rows = np.array([[5.0, 1.0], [0.3, 0.1], [0.2, 0.4], [4.0, -2.0]])  # the twins carry the largest weights
    order, costs = surgeon_order(moments, rows)
    assert order[0] in (0, 3) and costs[0] < 1e-3 * costs[1]
    with pytest.raises(ValueError, match="do not fit"):
        surgeon_order(moments[:3, :3], rows)


def _refit_error(moments, rows, kept):
    """The squared output error left when only ``kept`` channels are read and the consumer's rows are refit by
    least squares: ``tr(W^T (M - M[:, K] M[K, K]^-1 M[K, :]) W)``, written from its definition."""
    kept = np.asarray(sorted(kept), int)
    residual = moments.copy()
    if len(kept):
        residual -= moments[:, kept] @ np.linalg.solve(moments[np.ix_(kept, kept)], moments[kept, :])
    return float(np.trace(rows.T @ residual @ rows))


def test_joint_surgeon_order_cuts_what_the_summed_refit_errors_of_all_consumers_miss_least():
    """Two consumers of one group (an expansion read by its squeeze-and-excite conv and its projection): each
    step's cut is the channel whose removal raises the weighted sum of both consumers' refit errors least, and
    the cumulative costs are that sum; with one consumer it is :func:`surgeon_order`."""
    rng = np.random.default_rng(4)
    size = 12
    problems = []
    for width, rows_count in ((6, 300), (3, 40)):
        inputs = rng.normal(size=(rows_count, size)) @ rng.normal(size=(size, size))
        moments = inputs.T @ inputs / rows_count + 1e-3 * np.eye(size)
        rows = rng.normal(size=(size, width))
        problems.append((moments, rows, 1.0 / _refit_error(moments, rows, [])))
    order, costs = joint_surgeon_order(problems)
    kept = set(range(size))
    for step, cut in enumerate(order[:-1]):
        options = {c: sum(w * _refit_error(m, r, kept - {c}) for m, r, w in problems) for c in kept}
        assert options[cut] == pytest.approx(min(options.values()), rel=1e-6, abs=1e-9), step
        kept.discard(cut)
        assert np.sum(costs[:step + 1]) == pytest.approx(options[cut], rel=1e-6, abs=1e-9)
    # the joint order differs from either consumer's own order here: the check can fail
    assert any(not np.array_equal(order, surgeon_order(m, r)[0]) for m, r, _ in problems)
    single_order, single_costs = joint_surgeon_order([problems[0][:2] + (1.0,)])
    np.testing.assert_array_equal(single_order, surgeon_order(*problems[0][:2])[0])
    with pytest.raises(ValueError, match="do not fit"):
        joint_surgeon_order([problems[0], (problems[1][0][:5, :5], problems[1][1], 1.0)])

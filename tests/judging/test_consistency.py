"""Kendall's tau-b against scipy and a hand count, and CREAM's consistency rate."""

import pytest

from judging import consistency_rate, kendall_tau


def test_tau_b_by_hand():
    assert kendall_tau([1, 2, 3], [1, 2, 3]) == 1.0
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == -1.0
    # pairs (a, b): (1,2) concordant, (1,3) concordant, (2,3) tied in b: (2 - 0) / sqrt(3 * 2)
    assert kendall_tau([1, 2, 3], [0, 1, 1]) == pytest.approx(2 / 6 ** 0.5)
    assert kendall_tau([1, 1, 1], [1, 2, 3]) is None


def test_tau_b_matches_scipy():
    from scipy import stats  # a dependency of mlflow
    a, b = [3, 1, 4, 1, 5, 9, 2, 6], [2, 7, 1, 8, 2, 8, 1, 8]
    assert kendall_tau(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_consistency_rate_averages_prompts_that_both_judges_ranked():
    current = [[1, 2, 3], [2, 2, 2], [1, None, 3]]
    previous = [[3, 2, 1], [1, 2, 3], [1, 5, 3]]
    # prompt 1: tau -1 -> 0; prompt 2: current all tied -> left out; prompt 3: tau over two scored -> 1
    assert consistency_rate(current, previous) == (0.5, 2)
    assert consistency_rate([[1]], [[2]]) == (None, 0)

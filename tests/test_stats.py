"""Paired significance tests against scipy (and Holm's adjustment by hand), on known inputs."""
import numpy as np
import pytest
import scipy.stats

from gclcore import stats

RNG = np.random.default_rng(7)
BASE = RNG.random(40)
BETTER = BASE + 0.03 + RNG.normal(0, 0.05, 40)


def test_paired_t_equals_scipy():
    t, p = stats.paired_t(BETTER, BASE)
    reference = scipy.stats.ttest_rel(BETTER, BASE)
    assert t == pytest.approx(reference.statistic) and p == pytest.approx(reference.pvalue)
    assert stats.paired_t([1, 2, 3], [1, 2, 3]) == (0.0, 1.0)
    assert stats.paired_t([2, 3, 4], [1, 2, 3]) == (float("inf"), 0.0)     # a constant gain
    with pytest.raises(ValueError, match="same length"):
        stats.paired_t([1, 2], [1, 2, 3])


def test_exact_randomization_equals_scipy_permutation_test():
    a, b = BETTER[:10], BASE[:10]
    reference = scipy.stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                             n_resamples=np.inf, alternative="two-sided")
    assert stats.randomization_p(a, b) == pytest.approx(reference.pvalue)


def test_sampled_randomization_is_close_to_the_exact_value():
    a, b = BETTER[:16], BASE[:16]
    exact = stats.randomization_p(a, b)                           # 2^16 assignments
    sampled = stats.randomization_p(a, b, n_resamples=20_000, exact_below=0)
    assert sampled == pytest.approx(exact, abs=0.01) and sampled > 0


def test_bootstrap_interval_matches_scipy_percentile_bootstrap():
    low, high = stats.bootstrap_ci(BETTER, BASE, n_resamples=20_000)
    reference = scipy.stats.bootstrap((BETTER - BASE,), np.mean, method="percentile", n_resamples=20_000,
                                      random_state=1).confidence_interval
    assert low == pytest.approx(reference.low, abs=0.003) and high == pytest.approx(reference.high, abs=0.003)
    assert low < np.mean(BETTER - BASE) < high


def test_holm_by_hand():
    # sorted 0.01, 0.02, 0.03, 0.5 -> x4, x3, x2, x1 = 0.04, 0.06, 0.06, 0.5 (monotone), back in input order
    assert stats.holm([0.03, 0.01, 0.5, 0.02]).tolist() == pytest.approx([0.06, 0.04, 0.5, 0.06])
    assert stats.holm([0.4, 0.3]).tolist() == pytest.approx([0.6, 0.6])
    assert stats.holm([0.9, 0.8]).max() == 1.0

"""Paired significance over queries: is method A's per-query metric higher than baseline B's?

Both runs are evaluated on the same sampled queries, so the comparison is paired: the per-query
differences ``d_i = a_i - b_i`` (i = 1..n) carry the evidence.

- :func:`paired_t`: Student's paired t-test, ``t = mean(d) / (sd(d) / sqrt(n))`` with n - 1 degrees of
  freedom, two-sided p (as ``scipy.stats.ttest_rel``).
- :func:`randomization_p`: the paired randomisation (sign-flip) test: under "no difference" each ``d_i`` is
  as likely to be ``-d_i``; p is the share of sign assignments whose ``|mean|`` reaches the observed one,
  exact (all 2^n) for n <= ``exact_below``, else ``n_resamples`` random ones plus the observed (so p > 0).
- :func:`bootstrap_ci`: the percentile bootstrap interval of ``mean(d)`` (queries resampled with
  replacement).
- :func:`holm`: Holm's step-down adjustment of several p-values (family-wise error rate), for tables
  that test many differences at once.
"""

from __future__ import annotations

import itertools
import math

import numpy as np


def _differences(a, b) -> np.ndarray:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1 or len(a) < 2:
        raise ValueError(f"need two paired 1-d samples of the same length >= 2, got shapes {a.shape} and {b.shape}")
    return a - b


def paired_t(a, b) -> tuple[float, float]:
    """``(t, two-sided p)`` of the paired t-test of ``a`` against ``b``."""
    from scipy.special import stdtr

    d = _differences(a, b)
    mean, sd = d.mean(), d.std(ddof=1)
    if sd == 0:
        return (0.0, 1.0) if mean == 0 else (math.copysign(math.inf, mean), 0.0)
    t = mean / (sd / math.sqrt(len(d)))
    return float(t), float(2 * stdtr(len(d) - 1, -abs(t)))


def randomization_p(a, b, n_resamples: int = 10_000, seed: int = 0, exact_below: int = 16) -> float:
    """Two-sided p of the paired sign-flip randomisation test (see the module docstring)."""
    d = _differences(a, b)
    observed = abs(d.mean())
    tolerance = 1e-12 * max(1.0, observed)  # equal means up to rounding count as reaching the observed one
    if len(d) <= exact_below:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=len(d))))
        return float(np.mean(np.abs(signs @ d / len(d)) >= observed - tolerance))
    signs = np.random.default_rng(seed).choice((1.0, -1.0), size=(n_resamples, len(d)))
    reached = int(np.sum(np.abs(signs @ d / len(d)) >= observed - tolerance))
    return (reached + 1) / (n_resamples + 1)


def bootstrap_ci(a, b, level: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval of ``mean(a - b)`` at ``level``."""
    d = _differences(a, b)
    rows = np.random.default_rng(seed).integers(0, len(d), size=(n_resamples, len(d)))
    means = d[rows].mean(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(means, [tail, 1 - tail])
    return float(low), float(high)


def holm(pvalues) -> np.ndarray:
    """Holm-adjusted p-values, in the given order: the k-th smallest of m is multiplied by (m - k + 1),
    made non-decreasing in that order and capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * (len(p) - np.arange(len(p)))
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted

"""The project's one confidence interval (core/stats.py): the t quantile against published values, the
interval against a hand computation, and its use by the claims' verdicts and the evaluation."""
import math
from statistics import mean, stdev

import numpy as np
import pytest

from pftlab.core import stats
from pftlab.reporting import claims

# t_{0.975, df}, two-sided 95% critical values (e.g. scipy.stats.t.ppf(0.975, df), printed tables)
T975 = {1: 12.706205, 2: 4.302653, 4: 2.776445, 10: 2.228139, 29: 2.045230, 30: 2.042272, 100: 1.983972,
        1000: 1.962339}


@pytest.mark.parametrize("df,expected", sorted(T975.items()))
def test_t_quantile_matches_published_values(df, expected):
    assert stats.t_quantile(0.975, df) == pytest.approx(expected, abs=1e-6)


def test_t_quantile_other_levels_and_closed_forms():
    assert stats.t_quantile(0.995, 5) == pytest.approx(4.032143, abs=1e-6)
    assert stats.t_quantile(0.95, 20) == pytest.approx(1.724718, abs=1e-6)
    assert stats.t_quantile(0.9, 3) == pytest.approx(1.637744, abs=1e-6)
    for p in (0.6, 0.9, 0.975, 0.9999):
        assert stats.t_quantile(p, 1) == pytest.approx(math.tan(math.pi * (p - 0.5)), rel=1e-12)  # Cauchy
        assert stats.t_quantile(p, 2) == pytest.approx((2 * p - 1) / math.sqrt(2 * p * (1 - p)), rel=1e-10)
        assert stats.t_quantile(1 - p, 7) == -stats.t_quantile(p, 7)  # symmetric
    assert stats.t_quantile(0.5, 3) == 0.0
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(1.959966, abs=1e-6)  # the normal's 1.96 in the limit
    qs = [stats.t_quantile(0.975, df) for df in range(1, 200)]
    assert all(a > b for a, b in zip(qs, qs[1:]))  # heavier tails with fewer degrees of freedom
    with pytest.raises(ValueError):
        stats.t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_t_central_is_the_cdf_minus_one_half():
    assert stats.t_central(0.0, 5) == 0.0
    assert stats.t_central(2.570582, 5) == pytest.approx(0.475, abs=1e-7)
    assert stats.t_central(1.0, 1) == pytest.approx(0.25, rel=1e-12)  # Cauchy: atan(1) / pi


def test_t_quantile_against_scipy_where_installed():
    scipy_stats = pytest.importorskip("scipy.stats")
    for df in (1, 2, 3, 4, 5, 9, 29, 30, 31, 64, 500, 1000, 10**5, 2.5):
        for p in (0.6, 0.9, 0.95, 0.975, 0.99, 0.9995):
            assert stats.t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), rel=1e-9)


def test_mean_ci_by_hand():
    values = [1.0, 2.0, 3.0, 4.0, 6.0]
    m, half = stats.mean_ci(values)
    assert m == mean(values)
    assert half == pytest.approx(2.776445 * stdev(values) / math.sqrt(5), rel=1e-6)
    assert stats.mean_ci([1.0, 2.0, 3.0]) == (2.0, pytest.approx(4.302653 / math.sqrt(3), rel=1e-6))
    _, half90 = stats.mean_ci(values, level=0.90)
    assert half90 == pytest.approx(2.131847 * stdev(values) / math.sqrt(5), rel=1e-6)
    assert stats.mean_ci([3.0]) == (3.0, math.inf)  # one value: no interval
    m, half = stats.mean_ci([])
    assert math.isnan(m) and half == math.inf
    assert stats.t_half_width(2.0, 30) == pytest.approx(2.045230 * 2.0 / math.sqrt(30), rel=1e-6)
    assert stats.t_half_width(2.0, 1) == math.inf


def test_claims_and_evaluation_use_the_same_interval():
    """A check's interval is mean ± the t half-width; check_from_summary gives the same from (mean, sd, n);
    the evaluation's gold-reward ± is the same half-width over prompts (no normal 1.96)."""
    diffs = [0.3, -0.1, 0.5, 0.2, 0.4, 0.1]
    m, half = stats.mean_ci(diffs)
    c = claims.check("q", "c", diffs)
    assert c["mean"] == m and c["ci95"] == [m - half, m + half]
    s = claims.check_from_summary("q", "c", m, stdev(diffs), len(diffs), over="pairs")
    assert s["ci95"] == pytest.approx(c["ci95"], rel=1e-12) and s["verdict"] == c["verdict"]
    per_prompt = np.array(diffs)
    assert stats.t_half_width(float(per_prompt.std(ddof=1)), len(per_prompt)) == pytest.approx(half, rel=1e-12)
    assert claims.check_from_summary("q", "c", 1.0, 0.1, 1, over="pairs")["ci95"] == [-math.inf, math.inf]
    assert claims.check_from_summary("q", "c", 1.0, math.nan, 5, over="pairs")["verdict"] == claims.INCONCLUSIVE

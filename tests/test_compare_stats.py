"""The statistics compare relies on, against values worked out independently of the code."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from analysis.compare.samples import IMPROVEMENT, REGRESSION, SAME, UNDECIDED, SamplePair, compare_samples
from analysis.compare.stats import bootstrap_delta_ci, decide, holm, mann_whitney, rankdata


def brute_u(a, b) -> float:
    """U by its definition: pairs with a > b, ties counting one half."""
    return sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in a for y in b)


def brute_exact_p(a, b) -> float:
    """Two-sided exact p by enumerating every split of the pooled values (no ties)."""
    pooled = list(a) + list(b)
    u_obs = brute_u(a, b)
    us = []
    for idx in itertools.combinations(range(len(pooled)), len(a)):
        left = [pooled[i] for i in idx]
        right = [pooled[i] for i in range(len(pooled)) if i not in idx]
        us.append(brute_u(left, right))
    us = np.array(us)
    return min(1.0, 2 * min((us <= u_obs).mean(), (us >= u_obs).mean()))


def test_rankdata_gives_ties_their_mean_rank():
    assert rankdata(np.array([10, 20, 20, 5, 20])).tolist() == [2.0, 4.0, 4.0, 1.0, 4.0]


def test_complete_separation_three_a_side_is_one_tenth():
    # 20 equally likely splits of 6 values; U = 0 and U = 9 are one each: p = 2/20.
    result = mann_whitney([1, 2, 3], [4, 5, 6])
    assert result.u == 0 and result.method == "exact"
    assert result.p == pytest.approx(0.1)


def test_published_example_unequal_sizes():
    # The two-sample example of R's wilcox.test documentation (Hollander & Wolfe):
    # W = 35, one-sided p = 0.1272, so two-sided 0.2544.
    x = [0.80, 0.83, 1.89, 1.04, 1.45, 1.38, 1.91, 1.64, 0.73, 1.46]
    y = [1.15, 0.88, 0.90, 0.74, 1.21]
    result = mann_whitney(x, y)
    assert result.u == 35
    assert result.p == pytest.approx(0.2544, abs=5e-5)


@pytest.mark.parametrize("seed", range(6))
def test_exact_p_matches_enumeration(seed):
    rng = np.random.default_rng(seed)
    n1, n2 = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    a = rng.normal(size=n1)
    b = rng.normal(0.5, size=n2)
    result = mann_whitney(a, b)
    assert result.u == brute_u(a, b)
    assert result.p == pytest.approx(brute_exact_p(a, b))


def test_normal_approximation_with_ties_by_hand():
    # a = [1,1,2,2,3,3,4,4,5,5,6,6,7,7,8,8] (16), b = [5..12] each twice (16): ties -> normal.
    a = [v for v in range(1, 9) for _ in range(2)]
    b = [v for v in range(5, 13) for _ in range(2)]
    # U: a's 1..4 beat nothing (0); a's 5 ties two 5s (1 each); 6 beats 5,5 and ties 6,6 (3);
    # 7: 4 + 1 = 5; 8: 6 + 1 = 7. Each value twice: U = 2 * (1 + 3 + 5 + 7) = 32.
    # mu = 128; ties: 4 values (5..8) four times each, 8 values twice:
    # sum(t^3 - t) = 4*60 + 8*6 = 288; n = 32;
    # var = 16*16/12 * (33 - 288/(32*31)) = 21.3333 * 32.70968 = 697.8065
    # z = (|32 - 128| - 0.5) / sqrt(697.8065) = 95.5 / 26.41603 = 3.61523
    # p = erfc(3.61523 / sqrt 2) = 0.00030016
    result = mann_whitney(a, b)
    assert result.method == "normal"
    assert result.u == 32 == brute_u(a, b)
    assert result.p == pytest.approx(math.erfc(95.5 / math.sqrt(697.8064516) / math.sqrt(2)), rel=1e-9)
    assert result.p == pytest.approx(3.0016e-4, rel=1e-3)


def test_normal_approximation_close_to_exact_for_moderate_samples():
    rng = np.random.default_rng(7)
    a, b = rng.normal(size=14), rng.normal(0.8, size=15)
    exact = mann_whitney(a, b)  # n = 29 <= EXACT_MAX_N
    assert exact.method == "exact"
    shifted = mann_whitney(np.r_[a, 100.0], b)  # n = 30: still exact
    assert shifted.method == "exact"
    mu, sigma = 14 * 15 / 2, math.sqrt(14 * 15 * 30 / 12)
    approx = math.erfc((abs(exact.u - mu) - 0.5) / sigma / math.sqrt(2))
    assert exact.p == pytest.approx(approx, abs=0.01)


def test_all_equal_values_are_no_evidence():
    assert mann_whitney([5.0] * 40, [5.0] * 30).p == 1.0


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 times 4, 3, 2, 1 = 0.02, 0.03, 0.06, 0.04 -> running max.
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([0.2, math.nan])[1])


def test_decide_holm_then_direction():
    # Holm over the three in the family (None is outside it): 0.01*3, 0.02*2, 0.2*1.
    verdicts = decide([(0.01, 10.0, 12.0), (0.02, 10.0, 8.0), None, (0.2, 10.0, 30.0)], alpha=0.05)
    assert [change for _, change in verdicts] == [REGRESSION, IMPROVEMENT, UNDECIDED, SAME]
    assert [p for p, _ in verdicts][:2] == pytest.approx([0.03, 0.04])
    assert math.isnan(verdicts[2][0])
    # Significant p, equal values: no direction to call.
    assert decide([(0.001, 5.0, 5.0)]) == [(0.001, SAME)]


def test_bootstrap_ci_covers_known_shift():
    rng = np.random.default_rng(3)
    base = rng.normal(1000, 20, 400)
    new = rng.normal(1100, 20, 300)  # medians 10% apart
    lo, hi = bootstrap_delta_ci(base, new)
    assert lo < 10.0 < hi
    assert hi - lo < 2.0
    assert bootstrap_delta_ci(base, new) == (lo, hi)  # a fixed seed: same input, same interval


def test_shift_flagged_in_the_right_direction_with_unequal_sizes():
    rng = np.random.default_rng(11)
    base = rng.lognormal(7, 0.2, 500)
    pairs = [
        SamplePair("g", "slower", base, rng.lognormal(7, 0.2, 37) * 1.3),
        SamplePair("g", "faster", base, rng.lognormal(7, 0.2, 37) * 0.7),
        SamplePair("g", "same", base, rng.lognormal(7, 0.2, 37)),
        SamplePair("g", "few", base, rng.lognormal(7, 0.2, 4) * 2),
    ]
    rows = {r.metric: r for r in compare_samples(pairs)}
    assert rows["slower"].change == REGRESSION and rows["slower"].delta_pct > 0
    assert rows["faster"].change == IMPROVEMENT and rows["faster"].delta_pct < 0
    assert rows["same"].change == SAME
    assert rows["few"].change == UNDECIDED and rows["few"].new_n == 4
    assert math.isnan(rows["few"].p_adjusted)  # not part of the family


def test_unequal_sizes_keep_the_false_positive_rate():
    """2000 values against 25 of one skewed distribution: still about 5% called significant."""
    hits = 0
    for seed in range(100):
        rng = np.random.default_rng(seed)
        rows = compare_samples([SamplePair("g", "m", rng.exponential(1.0, 2000), rng.exponential(1.0, 25))], resamples=50)
        hits += rows[0].change != SAME
    # Binomial(100, 0.05): mean 5, sd 2.2.
    assert hits <= 12, hits


def test_false_positive_rate_near_alpha():
    """200 pairs from one distribution: about 5% significant, within a binomial tolerance."""
    hits = 0
    trials = 200
    for seed in range(trials):
        rng = np.random.default_rng(1000 + seed)
        a = rng.lognormal(9, 0.3, 40)
        b = rng.lognormal(9, 0.3, 60)
        hits += mann_whitney(a, b).p < 0.05
    # Binomial(200, 0.05): mean 10, sd 3.08; [2, 20] is beyond +-3 sd on both sides.
    assert 2 <= hits <= 20, hits

"""The statistics compare applies to two samples: Mann-Whitney U, a bootstrap CI, Holm.

Implemented in numpy because the project takes no scipy. Why these:

- Fork latencies are skewed and multi-modal (interrupts, cache misses), so a
  rank test is used, as benchstat does, not a t-test; it also treats samples
  of unequal size correctly.
- The effect is reported as the change of the median in percent with a
  bootstrap 95% confidence interval: a reviewer sees the size of the change
  and how sure we are of it, not only a p-value.
- Many phases and groups are tested at once, so p-values are adjusted with
  Holm's step-down method (family-wise error at alpha), which is never less
  powerful than Bonferroni and needs no independence between the tests (the
  phases are not independent: dup_mmap contains the others).
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import NamedTuple, Sequence

import numpy as np

__all__ = [
    "ALPHA",
    "MIN_SAMPLES",
    "EXACT_MAX_N",
    "MannWhitney",
    "mann_whitney",
    "rankdata",
    "bootstrap_delta_ci",
    "holm",
    "decide",
    "REGRESSION",
    "IMPROVEMENT",
    "SAME",
    "UNDECIDED",
]

ALPHA = 0.05

# A row's verdict, benchstat-style.
REGRESSION = "regression"  # significantly slower (larger values)
IMPROVEMENT = "improvement"  # significantly faster
SAME = "~"  # no significant change
UNDECIDED = "?"  # too few values on a side to decide

# Fewer values than this on a side: no verdict, a warning. With 5 a side the
# smallest two-sided U-test p-value is 2/252 = 0.008, so a change can be
# "significant" from a handful of forks that all happened to hit (or miss) one
# cache state; and a bootstrap interval of a median from fewer than ~10 values
# is too coarse to mean much (it can only take a few distinct values). 10 is
# the smallest sample for which both are usable; forks are cheap, so asking for
# more costs the user nothing.
MIN_SAMPLES = 10

# Exact null distribution of U when both sides together have at most this many
# values and there are no ties; the normal approximation beyond.
EXACT_MAX_N = 30


class MannWhitney(NamedTuple):
    u: float  # U of the first sample: pairs (a, b) with a > b, plus half the ties
    p: float  # two-sided p-value
    method: str  # 'exact' or 'normal'


def rankdata(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, ties given the mean of the ranks they span."""
    values = np.asarray(values, dtype=float)
    order = np.argsort(values, kind="mergesort")
    sorted_values = values[order]
    # Start index of each run of equal values, and the run's mean rank.
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    mean_rank = (starts + 1 + ends) / 2.0
    ranks = np.empty(len(values))
    ranks[order] = np.repeat(mean_rank, ends - starts)
    return ranks


@lru_cache(maxsize=256)
def _u_counts(n1: int, n2: int) -> np.ndarray:
    """Number of arrangements giving each U = 0..n1*n2 under the null (no ties).

    The classic recursion on the largest value: it belongs to sample 1 (adding
    n2 to U) or to sample 2 (adding nothing).
    """
    # table[j][u] for the current m (sample-1 size) and j = sample-2 size.
    prev = [np.ones(1, dtype=object) for _ in range(n2 + 1)]  # m = 0: U = 0 only
    for m in range(1, n1 + 1):
        cur = [np.ones(1, dtype=object)]  # j = 0: U = 0 only
        for j in range(1, n2 + 1):
            size = m * j + 1
            counts = np.zeros(size, dtype=object)
            a = prev[j]  # largest in sample 1: U shifts by j
            counts[j : j + len(a)] += a
            b = cur[j - 1]  # largest in sample 2
            counts[: len(b)] += b
            cur.append(counts)
        prev = cur
    return prev[n2]


def _norm_sf(z: float) -> float:
    """P(Z > z) for a standard normal."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def mann_whitney(a: Sequence[float], b: Sequence[float]) -> MannWhitney:
    """Two-sided Mann-Whitney U test of `a` against `b` (NaN values dropped).

    Exact for small samples without ties; otherwise the normal approximation
    with the tie correction of the variance and a continuity correction of 0.5.
    """
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    a, b = a[~np.isnan(a)], b[~np.isnan(b)]
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney needs at least one value on each side")
    ranks = rankdata(np.concatenate([a, b]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    n = n1 + n2
    _, tie_sizes = np.unique(np.concatenate([a, b]), return_counts=True)
    ties = bool((tie_sizes > 1).any())
    if n <= EXACT_MAX_N and not ties:
        counts = _u_counts(n1, n2)
        total = sum(counts)
        k = int(round(u))
        below = sum(counts[: k + 1]) / total
        above = sum(counts[k:]) / total
        return MannWhitney(u, float(min(1.0, 2.0 * min(below, above))), "exact")
    mu = n1 * n2 / 2.0
    tie_term = float((tie_sizes**3 - tie_sizes).sum()) / (n * (n - 1))
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0:  # every value equal: no evidence of any difference
        return MannWhitney(u, 1.0, "normal")
    z = max(abs(u - mu) - 0.5, 0.0) / math.sqrt(var)
    return MannWhitney(u, float(min(1.0, 2.0 * _norm_sf(z))), "normal")


def bootstrap_delta_ci(
    base: Sequence[float],
    new: Sequence[float],
    *,
    resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    max_batch_values: int = 4_000_000,
) -> tuple[float, float]:
    """Percentile bootstrap interval of 100 * (median(new) / median(base) - 1).

    Each side is resampled on its own (they are independent runs). The seed is
    fixed so that the same inputs print the same interval. NaN if a resampled
    base median can be 0 (the percentage is undefined there).
    """
    base = np.asarray(base, dtype=float)
    new = np.asarray(new, dtype=float)
    base, new = base[~np.isnan(base)], new[~np.isnan(new)]
    if len(base) == 0 or len(new) == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)

    def medians(x: np.ndarray) -> np.ndarray:
        out = np.empty(resamples)
        batch = max(1, max_batch_values // len(x))
        for start in range(0, resamples, batch):
            stop = min(resamples, start + batch)
            idx = rng.integers(0, len(x), size=(stop - start, len(x)))
            out[start:stop] = np.median(x[idx], axis=1)
        return out

    mb, mn = medians(base), medians(new)
    if (mb <= 0).any():
        return (math.nan, math.nan)
    deltas = 100.0 * (mn / mb - 1.0)
    tail = (1.0 - confidence) / 2.0 * 100.0
    lo, hi = np.percentile(deltas, [tail, 100.0 - tail])
    return (float(lo), float(hi))


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values, in the input's order (NaN stays NaN and is not counted).

    Reject hypothesis i at family-wise level alpha iff adjusted[i] < alpha.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(len(p), np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    m = len(valid)
    if m == 0:
        return out.tolist()
    order = valid[np.argsort(p[valid], kind="mergesort")]
    adjusted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out[order] = adjusted
    return out.tolist()


def decide(tests: Sequence[tuple[float, float, float] | None], alpha: float = ALPHA) -> list[tuple[float, str]]:
    """Holm over a family of tests, then each one's verdict: (adjusted p, change).

    tests: per row, (p, base, new): its own p-value and the two values it
    compared (medians, per-unit costs; smaller is better); None for a row
    outside the family (too few values), which gets no verdict. A change
    needs the adjusted p below alpha and the two values to differ.
    """
    adjusted = holm([t[0] if t is not None else math.nan for t in tests])
    out: list[tuple[float, str]] = []
    for test, p_adj in zip(tests, adjusted):
        if test is None:
            change = UNDECIDED
        elif p_adj < alpha and test[2] != test[1]:
            change = REGRESSION if test[2] > test[1] else IMPROVEMENT
        else:
            change = SAME
        out.append((p_adj, change))
    return out

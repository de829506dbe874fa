"""One family of two-sample tests: each row a metric of one group, base against new.

Phases of recordings and pyperf benchmarks both end up here, so every number
`tracer compare` prints about a distribution comes from the same few lines:
medians, delta %, bootstrap 95% CI, Mann-Whitney p, Holm-adjusted p, and the
benchstat-style decision ("~" when not significant, "?" when a side has too few
values to decide).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from analysis.compare.stats import (
    ALPHA,
    IMPROVEMENT,
    MIN_SAMPLES,
    REGRESSION,
    SAME,
    UNDECIDED,
    bootstrap_delta_ci,
    decide,
    mann_whitney,
)

__all__ = ["SampleRow", "SamplePair", "compare_samples", "REGRESSION", "IMPROVEMENT", "SAME", "UNDECIDED"]

@dataclass(frozen=True)
class SamplePair:
    """The input of one row: a metric of one group, values on both sides (smaller is better)."""

    group: str
    metric: str
    base: np.ndarray
    new: np.ndarray


@dataclass
class SampleRow:
    group: str
    metric: str
    base_n: int
    new_n: int
    base_median: float
    new_median: float
    delta_pct: float  # 100 * (new median / base median - 1); NaN when the base median is 0
    ci95_pct: tuple[float, float]  # bootstrap interval of delta_pct
    p: float  # Mann-Whitney U, two-sided, this test alone
    p_adjusted: float  # Holm over the family; decisions use this
    decided: bool  # both sides have at least min_samples values
    change: str  # REGRESSION, IMPROVEMENT, SAME or UNDECIDED
    # Recordings: runs a side (the unit tested), the spread the test used
    # ('runs': between the runs themselves; 'calibration': the host's A/A),
    # and why a row is undecided.
    base_runs: int = 0
    new_runs: int = 0
    spread: str = ""
    reason: str = ""
    noise_pct: float = math.nan  # the calibrated 95% range of one run against another, when known
    detectable_pct: float = math.nan  # the change these runs detect at 80% power (analysis.compare.across)
    runs_for_10: int | None = None  # runs a side that would detect 10% 90% of the time at the spread seen

    @property
    def significant(self) -> bool:
        return self.change in (REGRESSION, IMPROVEMENT)

    @property
    def delta(self) -> float:
        """new median - base median, in the values' unit."""
        return self.new_median - self.base_median


def _clean(values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    return arr[~np.isnan(arr)]


def compare_samples(
    pairs: Sequence[SamplePair],
    *,
    alpha: float = ALPHA,
    min_samples: int = MIN_SAMPLES,
    resamples: int = 2000,
) -> list[SampleRow]:
    """Test every pair, adjust the p-values together (Holm), decide each row.

    Rows with too few values on a side are still tested and shown, but are not
    part of the family and get no verdict (UNDECIDED).
    """
    rows: list[SampleRow] = []
    for pair in pairs:
        base, new = _clean(pair.base), _clean(pair.new)
        decided = len(base) >= min_samples and len(new) >= min_samples
        if len(base) and len(new):
            p = mann_whitney(base, new).p
            bm, nm = float(np.median(base)), float(np.median(new))
            delta_pct = 100.0 * (nm / bm - 1.0) if bm > 0 else math.nan
            ci = bootstrap_delta_ci(base, new, resamples=resamples) if bm > 0 else (math.nan, math.nan)
        else:
            p, bm, nm, delta_pct, ci = math.nan, math.nan, math.nan, math.nan, (math.nan, math.nan)
            bm = float(np.median(base)) if len(base) else math.nan
            nm = float(np.median(new)) if len(new) else math.nan
            decided = False
        rows.append(SampleRow(pair.group, pair.metric, len(base), len(new), bm, nm, delta_pct, ci, p, math.nan, decided, UNDECIDED))
    verdicts = decide([(r.p, r.base_median, r.new_median) if r.decided else None for r in rows], alpha)
    for row, (p_adjusted, change) in zip(rows, verdicts):
        row.p_adjusted, row.change = p_adjusted, change
    return rows

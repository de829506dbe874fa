"""The test across runs: each run one value per phase (its median), Welch's t on their logs.

Why this test (docs/runs.md has the measurements):

- The unit is the run (Kalibera & Jones, "Rigorous benchmarking in reasonable
  time", 2013: the variance that matters is between the highest level of
  repetition, here workload processes). Testing forks answers "are these two
  runs different", which two runs almost always are.
- A run is reduced to its per-phase median (robust to the interrupt-hit
  forks); the between-run variation of those medians is multiplicative (a run
  on slower memory is slower by a factor), so they are compared as logs and
  the change reported as a ratio, as pyperf and benchstat report ratios.
- Welch's t on the log medians, not a rank test: with the few runs a user
  records (3 to 10 a side) Mann-Whitney cannot reach significance after Holm
  (5 vs 5 runs: smallest two-sided p 0.008, times 5 phases). benchstat uses
  Mann-Whitney because it gets 10+ values a side; pyperf compare_to uses a
  two-sample t-test on its per-process values, as here. Welch rather than
  Student: the two sides need not have the same spread.
- The interval is the t interval of the same log difference, so it excludes
  0 exactly when the unadjusted test rejects, and its coverage is nominal for
  normal log medians (tests/test_runs_stats.py checks both). A percentile
  bootstrap of 3 to 10 runs under-covers (it cannot produce t's tails), and
  resampling forks within runs again would count the within-run noise twice
  (a run's median already carries it).

Arms of one interleaved series (record --runs with A/B arms) are paired
round by round: the log ratio of each round's two runs, tested with the 20%
trimmed mean of those ratios (Tukey & McLaughlin's one-sample trimmed t, as
in Yuen's test for dependent samples; Wilcox, "Introduction to Robust
Estimation and Hypothesis Testing", ch. 4-5). Rounds share the drift of the
machine during the series, which the ratio removes. What they do not share
is a host state that makes a whole run 30-40% slower and comes and goes on a
scale of seconds (docs/runs.md): one run of a round in it, the other not,
gives an outlying ratio. Trimming the 20% most extreme ratios each side
removes them from the estimate and the variance; on 1600 rounds of this
host it found a +8% change in 95% of 80-run comparisons where the paired t
on the mean found 80%, with no more A/A flags. Below MIN_TRIM_ROUNDS rounds
nothing is trimmed and it is the paired t.

With one run a side there is no between-run spread in the data: the row is
"?" unless the host has a calibration (tracer calibrate), whose A/A spread of
the same phase is then used with its own degrees of freedom.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

from analysis.compare.runs import Run
from analysis.compare.samples import UNDECIDED, SampleRow
from analysis.compare.stats import ALPHA, decide
from analysis.compare.tdist import t_quantile, t_two_sided_p

__all__ = ["MIN_RUNS", "MIN_FORKS", "TARGET_PCT", "TARGET_POWER", "TRIM", "MIN_TRIM_ROUNDS", "Spread", "RunTest", "run_test", "paired_test", "trimmed_spread", "RunPair", "compare_runs",
           "aa_range_pct", "detectable_pct", "runs_needed"]

# Runs a side for the data's own between-run spread (Welch needs a variance on each side).
MIN_RUNS = 2
# A run whose phase had fewer usable forks than this has no trustworthy median: it is left out.
MIN_FORKS = 10


@dataclass(frozen=True)
class Spread:
    """A calibrated between-run spread of one phase: SD of log per-run medians, and its df."""

    sigma: float
    df: int
    source: str  # what it came from, for the reader


@dataclass(frozen=True)
class RunTest:
    base_value: float  # geometric mean of the per-run medians, ns
    new_value: float
    delta_pct: float  # 100 * (new / base - 1) of those
    ci95_pct: tuple[float, float]
    p: float
    spread: str  # 'runs', 'calibration', or '' (undecided)
    reason: str  # why undecided, else ''
    sd_log: float = math.nan  # the between-run SD the test used (paired: of the rounds' log ratios)
    paired: bool = False


def _t_test(d: float, se: float, df: float, confidence: float) -> tuple[float, float, float]:
    """(p, lower, upper) of an estimate d with standard error se on df degrees of freedom."""
    if se <= 0.0:  # every run gave the same value
        return (1.0 if d == 0.0 else 0.0), d, d
    half = t_quantile(0.5 + confidence / 2.0, df) * se
    return t_two_sided_p(d / se, df), d - half, d + half


def _welch(base: np.ndarray, new: np.ndarray, confidence: float) -> tuple[float, float, float]:
    """(p, lower, upper) of mean(new) - mean(base), Welch."""
    vb, vn = base.var(ddof=1) / len(base), new.var(ddof=1) / len(new)
    se2 = vb + vn
    df = se2 * se2 / (vb * vb / (len(base) - 1) + vn * vn / (len(new) - 1)) if se2 > 0.0 else math.inf
    return _t_test(float(new.mean() - base.mean()), math.sqrt(se2), df, confidence)


# The share of rounds trimmed from each end of the sorted log ratios (paired arms), from this many
# rounds on. With fewer the trimmed t is liberal on normal ratios (7% at 5 rounds, 1 trimmed a side;
# 5-6% from 20 on, tests/test_runs_stats.py) and the paired t is used.
TRIM = 0.2
MIN_TRIM_ROUNDS = 20


def _trimmed(n: int) -> int:
    """Rounds trimmed from each end of n."""
    return int(TRIM * n) if n >= MIN_TRIM_ROUNDS else 0


def trimmed_spread(diffs: np.ndarray) -> tuple[float, float, int]:
    """(trimmed mean, effective SD, df) of per-round log ratios.

    The effective SD is the winsorized SD over (1 - 2 x TRIM): the standard
    error of the trimmed mean is it over sqrt(n), as a plain SD is for a mean,
    so power and runs-needed figures use it unchanged. With no round trimmed
    these are the mean, the SD and n - 1.
    """
    n, k = len(diffs), _trimmed(len(diffs))
    if k == 0:
        return float(diffs.mean()), float(diffs.std(ddof=1)), n - 1
    ordered = np.sort(diffs)
    winsorized = np.clip(diffs, ordered[k], ordered[n - k - 1])
    return (float(ordered[k:n - k].mean()), float(winsorized.std(ddof=1)) / (1.0 - 2.0 * k / n), n - 2 * k - 1)


def paired_test(base: Sequence[float], new: Sequence[float], confidence: float = 0.95) -> RunTest:
    """Per-round values of two interleaved arms (base[i] and new[i] from round i): the trimmed mean of
    their log ratios, tested (module docstring: why trimmed).

    Rounds share the series' drift (frequency, co-tenants, memory state), so
    the ratio within a round removes it; the test is then of the ratios alone.
    The change is the trimmed mean ratio; the values beside it are each arm's
    geometric mean.
    """
    b, n = np.asarray(base, dtype=float), np.asarray(new, dtype=float)
    keep = np.isfinite(b) & np.isfinite(n) & (b > 0) & (n > 0)
    b, n = np.log(b[keep]), np.log(n[keep])
    if len(b) < MIN_RUNS:
        return run_test(np.exp(b), np.exp(n), None, confidence)
    d, sd, df = trimmed_spread(n - b)
    p, lo, hi = _t_test(d, sd / math.sqrt(len(b)), df, confidence)
    return RunTest(math.exp(b.mean()), math.exp(n.mean()), _pct(d), (_pct(lo), _pct(hi)), p, "paired", "", sd, True)


def _calibrated(base: np.ndarray, new: np.ndarray, spread: Spread, confidence: float) -> tuple[float, float, float]:
    se = spread.sigma * math.sqrt(1.0 / len(base) + 1.0 / len(new))
    return _t_test(float(new.mean() - base.mean()), se, spread.df, confidence)


def _pct(log_ratio: float) -> float:
    return 100.0 * math.expm1(log_ratio)


def run_test(
    base: Sequence[float], new: Sequence[float], calibrated: Spread | None = None, confidence: float = 0.95
) -> RunTest:
    """Per-run values (medians, ns) of two sides: the change of their geometric mean, tested across runs."""
    b = np.asarray(base, dtype=float)
    n = np.asarray(new, dtype=float)
    b, n = np.log(b[np.isfinite(b) & (b > 0)]), np.log(n[np.isfinite(n) & (n > 0)])
    if len(b) == 0 or len(n) == 0:
        return RunTest(math.nan, math.nan, math.nan, (math.nan, math.nan), math.nan, "", "no run timed it on one side")
    bv, nv = math.exp(b.mean()), math.exp(n.mean())
    delta = _pct(float(n.mean() - b.mean()))
    if len(b) >= MIN_RUNS and len(n) >= MIN_RUNS:
        p, lo, hi = _welch(b, n, confidence)
        spread = "runs"
        sd = math.sqrt(((len(b) - 1) * b.var(ddof=1) + (len(n) - 1) * n.var(ddof=1)) / (len(b) + len(n) - 2))
    elif calibrated is not None:
        p, lo, hi = _calibrated(b, n, calibrated, confidence)
        spread = "calibration"
        sd = calibrated.sigma
    else:
        reason = (
            f"{len(b)} base and {len(n)} new run{'s' if len(n) != 1 else ''}: the between-run spread is unknown "
            f"with fewer than {MIN_RUNS} runs a side (record --runs N, or tracer calibrate)"
        )
        return RunTest(bv, nv, delta, (math.nan, math.nan), math.nan, "", reason)
    return RunTest(bv, nv, delta, (_pct(lo), _pct(hi)), p, spread, "", sd)


# The change the runs-needed figure is for ("a real +10% in one phase"), found this often.
TARGET_PCT = 10.0
TARGET_POWER = 0.9
POWER = 0.8  # the detectable change is quoted at the usual 80%
MAX_RUNS_NEEDED = 1000


def detectable_pct(sd_log: float, n_base: int, n_new: int, paired: bool = False,
                   alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest change (in %) these runs detect with `power` at two-sided `alpha`, at this spread.

    sd_log: the between-run SD of the log per-run values (paired: of each
    round's log ratio). The usual normal-theory bound with t quantiles,
    (t(1-alpha/2) + t(power)) * standard error, before Holm's adjustment over
    the phases: a reviewer's "could these runs have seen it at all".
    """
    if not math.isfinite(sd_log) or n_base < MIN_RUNS or n_new < MIN_RUNS:
        return math.nan
    if paired:  # sd_log: trimmed_spread's effective SD
        se, df = sd_log / math.sqrt(n_base), n_base - 2 * _trimmed(n_base) - 1
    else:
        se, df = sd_log * math.sqrt(1.0 / n_base + 1.0 / n_new), n_base + n_new - 2
    return _pct((t_quantile(1.0 - alpha / 2.0, df) + t_quantile(power, df)) * se)


def runs_needed(sd_log: float, target_pct: float, paired: bool = False,
                alpha: float = ALPHA, power: float = POWER) -> int | None:
    """Runs a side that detect `target_pct` at this spread (None: more than MAX_RUNS_NEEDED, or unknown)."""
    if not math.isfinite(sd_log):
        return None
    if sd_log == 0.0:
        return MIN_RUNS
    def enough(n: int) -> bool:
        return detectable_pct(sd_log, n, n, paired, alpha, power) <= target_pct

    # The normal-theory count is a lower bound (t quantiles exceed z's); scan up from it, since the
    # detectable change is not monotone where the paired test starts trimming a round more.
    z = NormalDist().inv_cdf(1.0 - alpha / 2.0) + NormalDist().inv_cdf(power)
    n = max(MIN_RUNS, math.ceil((z * sd_log / math.log1p(target_pct / 100.0)) ** 2 * (1 if paired else 2)))
    while n <= MAX_RUNS_NEEDED:
        if enough(n):
            return n
        n += 1
    return None


def aa_range_pct(spread: Spread, confidence: float = 0.95) -> float:
    """How far apart two single runs of the same thing fall, in %, `confidence` of the time."""
    return _pct(t_quantile(0.5 + confidence / 2.0, spread.df) * spread.sigma * math.sqrt(2.0))


@dataclass(frozen=True)
class RunPair:
    """The input of one row: a phase of one matched group, runs on both sides."""

    group: str
    metric: str
    base: Sequence[Run]
    new: Sequence[Run]
    calibrated: Spread | None = None
    paired: bool = False  # arms of one interleaved series: test round by round (runs.paired_rounds)
    statistic: str = "median"  # runs.STATISTICS: what each run is reduced to


def _rounds(pair: RunPair) -> tuple[list[float], list[float], int, int]:
    """Per-round medians of both arms, rounds where both timed the phase in MIN_FORKS forks."""
    def by_round(runs):
        out = {}
        for run in runs:
            s = run.summary.get(pair.metric)
            if s is not None and s.n >= MIN_FORKS and math.isfinite(getattr(s, pair.statistic)):
                out[run.index] = (getattr(s, pair.statistic), s.n)
        return out

    b, n = by_round(pair.base), by_round(pair.new)
    rounds = sorted(set(b) & set(n))
    return ([b[r][0] for r in rounds], [n[r][0] for r in rounds],
            sum(b[r][1] for r in rounds), sum(n[r][1] for r in rounds))


def _medians(runs: Sequence[Run], metric: str, statistic: str = "median") -> tuple[list[float], int]:
    """The per-run values of the runs that timed this phase in at least MIN_FORKS forks, and the forks."""
    values, forks = [], 0
    for run in runs:
        s = run.summary.get(metric)
        if s is not None and s.n >= MIN_FORKS and math.isfinite(getattr(s, statistic)):
            values.append(getattr(s, statistic))
            forks += s.n
    return values, forks


def compare_runs(pairs: Sequence[RunPair], *, alpha: float = ALPHA, confidence: float = 0.95) -> list[SampleRow]:
    """Test every row across runs, adjust the p-values together (Holm), decide each row."""
    rows: list[SampleRow] = []
    tests: list[RunTest] = []
    for pair in pairs:
        if pair.paired:
            base, new, base_forks, new_forks = _rounds(pair)
            t = paired_test(base, new, confidence)
        else:
            base, base_forks = _medians(pair.base, pair.metric, pair.statistic)
            new, new_forks = _medians(pair.new, pair.metric, pair.statistic)
            t = run_test(base, new, pair.calibrated, confidence)
        rows.append(
            SampleRow(
                pair.group, pair.metric, base_forks, new_forks, t.base_value, t.new_value, t.delta_pct, t.ci95_pct,
                t.p, math.nan, bool(t.spread), UNDECIDED, len(base), len(new), t.spread, t.reason,
            )
        )
        tests.append(t)
    # What each row could have detected, at the level Holm's first step holds the smallest p to.
    level = alpha / max(1, sum(1 for r in rows if r.decided))
    for row, t in zip(rows, tests):
        if row.decided:
            row.detectable_pct = detectable_pct(t.sd_log, row.base_runs, row.new_runs, t.paired, level)
            row.runs_for_10 = runs_needed(t.sd_log, TARGET_PCT, t.paired, level, TARGET_POWER)
    # The direction is the tested change's (paired: the trimmed mean ratio, not the arms' means).
    verdicts = decide([(r.p, 1.0, 1.0 + r.delta_pct / 100.0) if r.decided else None for r in rows], alpha)
    for row, (p_adjusted, change) in zip(rows, verdicts):
        row.p_adjusted, row.change = p_adjusted, change
    return rows

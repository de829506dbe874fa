"""The test across runs on synthetic runs with a known between-run spread: false alarms and coverage."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.compare.across import MIN_FORKS, Spread, aa_range_pct, paired_test, run_test
from analysis.compare.calibration import calibrate_runs, find_calibration, load_calibration
from analysis.compare.runs import PhaseSummary, Run, paired_rounds, run_info, runs_of, summarize_run
from analysis.compare.tdist import t_quantile, t_two_sided_p
from analysis.errors import TracerError


def test_t_distribution_against_tables():
    # Two-sided 95% critical values (any statistics table) and a tail by Simpson's rule on the density.
    for df, t in ((1, 12.7062047), (2, 4.3026527), (4, 2.7764451), (10, 2.2281389), (30, 2.0422725), (1000, 1.9623391)):
        assert t_quantile(0.975, df) == pytest.approx(t, rel=1e-6)
        assert t_two_sided_p(t, df) == pytest.approx(0.05, rel=1e-6)
    df, t = 3.5, 1.7
    xs = np.linspace(t, 400, 400_001)
    dens = math.gamma((df + 1) / 2) / (math.sqrt(df * math.pi) * math.gamma(df / 2)) * (1 + xs**2 / df) ** (-(df + 1) / 2)
    h = xs[1] - xs[0]
    tail = h / 3 * (dens[0] + dens[-1] + 4 * dens[1:-1:2].sum() + 2 * dens[2:-1:2].sum())
    assert t_two_sided_p(t, df) == pytest.approx(2 * tail, rel=1e-4)


def run_medians(rng, runs, *, level=1000.0, run_sd=0.08, forks=60, fork_sd=0.3, drift=None):
    """Each run's median of `forks` lognormal forks, the run's level moved by exp(N(0, run_sd)) (+ drift)."""
    effects = rng.normal(0.0, run_sd, runs) + (drift if drift is not None else 0.0)
    return np.array([np.median(level * np.exp(e + rng.normal(0.0, fork_sd, forks))) for e in effects])


@pytest.mark.parametrize("runs", [3, 5, 10])
def test_false_alarms_and_coverage_at_the_nominal_level(runs):
    """2000 comparisons a case: rejections of a true null near 5%, intervals covering the true change near 95%."""
    rng = np.random.default_rng(runs)
    trials, rejections, covered = 2000, 0, 0
    true = 7.0  # % change of the new side
    for _ in range(trials):
        a = run_medians(rng, runs)
        b = run_medians(rng, runs)
        rejections += run_test(a, b).p < 0.05
        shifted = run_medians(rng, runs, level=1000.0 * (1 + true / 100))
        lo, hi = run_test(a, shifted).ci95_pct
        covered += lo <= true <= hi
    # Binomial(2000, 0.05): sd 0.5 percentage points; Welch is slightly conservative for equal sizes.
    assert 0.03 <= rejections / trials <= 0.065, rejections / trials
    assert 0.935 <= covered / trials <= 0.97, covered / trials


def test_forks_as_the_unit_would_cry_wolf():
    """The same runs, forks pooled: a fork-level test flags most A/A pairs (why runs are the unit)."""
    from analysis.compare.stats import mann_whitney

    rng = np.random.default_rng(1)
    flagged = 0
    for _ in range(100):
        ea, eb = rng.normal(0, 0.08), rng.normal(0, 0.08)
        a = 1000 * np.exp(ea + rng.normal(0, 0.3, 300))
        b = 1000 * np.exp(eb + rng.normal(0, 0.3, 300))
        flagged += mann_whitney(a, b).p < 0.05
    assert flagged > 50


def test_paired_rounds_remove_shared_drift():
    """Arms of one series share each round's drift: paired, the A/A rate stays nominal and the power high."""
    rng = np.random.default_rng(7)
    trials, aa, hits, covered = 1500, 0, 0, 0
    for _ in range(trials):
        drift = rng.normal(0, 0.15, 5)  # large: the round's conditions
        a = run_medians(rng, 5, run_sd=0.02, drift=drift, forks=300)
        b = run_medians(rng, 5, run_sd=0.02, drift=drift, forks=300)
        c = run_medians(rng, 5, run_sd=0.02, drift=drift, forks=300, level=1100.0)
        aa += paired_test(a, b).p < 0.05
        t = paired_test(a, c)
        hits += t.p < 0.05
        covered += t.ci95_pct[0] <= 10.0 <= t.ci95_pct[1]
        assert t.spread == "paired"
    assert 0.035 <= aa / trials <= 0.065
    assert 0.935 <= covered / trials <= 0.965
    assert hits / trials > 0.85
    # Unpaired, the same data's drift swamps the 10% change.
    rng = np.random.default_rng(8)
    unpaired = 0
    for _ in range(300):
        drift = rng.normal(0, 0.15, 5)
        unpaired += run_test(run_medians(rng, 5, run_sd=0.02, drift=drift, forks=300),
                             run_medians(rng, 5, run_sd=0.02, drift=drift, forks=300, level=1100.0)).p < 0.05
    assert unpaired / 300 < 0.5


def test_one_run_a_side_needs_a_calibration():
    t = run_test([1000.0], [1200.0])
    assert t.spread == "" and math.isnan(t.p) and "between-run spread is unknown" in t.reason
    assert t.delta_pct == pytest.approx(20.0)
    # A spread estimated from 13 A/A runs (df 12): false alarms near 5% for one run a side.
    rng = np.random.default_rng(3)
    sigma, rejections = 0.1, 0
    for _ in range(3000):
        spread = Spread(float(np.std(rng.normal(0, sigma, 13), ddof=1)), 12, "test")
        rejections += run_test([1000 * math.exp(rng.normal(0, sigma))], [1000 * math.exp(rng.normal(0, sigma))], spread).p < 0.05
    assert 0.04 <= rejections / 3000 <= 0.062
    spread = Spread(sigma, 12, "test")
    # Two single runs of the same thing fall within aa_range_pct 95% of the time.
    assert aa_range_pct(spread) == pytest.approx(100 * math.expm1(t_quantile(0.975, 12) * sigma * math.sqrt(2)))


def frame(values, usable=None):
    df = pd.DataFrame({f"{p}_ns": values for p in ("dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail")})
    df["usable"] = usable if usable is not None else True
    return df


def test_summarize_run_counts_usable_forks_only():
    s = summarize_run(frame([1.0, 2.0, 3.0, 100.0, np.nan], usable=[True, True, True, False, True]))
    assert s["vma_loop"] == PhaseSummary(3, 2.0, 1.2)
    assert set(s) == {"dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail"}


def test_run_identity_and_pairing():
    assert run_info({}, "a.parquet")["id"] == "file:a.parquet"
    assert run_info({"run": {"id": "x", "series": "s"}}, "a.parquet")["id"] == "x"

    def run(i, arm, series="s"):
        return Run(f"{arm}{i}", arm, series, i, summary={"vma_loop": PhaseSummary(MIN_FORKS, 1.0)})

    a, b = [run(1, "A"), run(2, "A")], [run(1, "B"), run(2, "B")]
    assert paired_rounds(a, b)
    assert not paired_rounds(a, [run(1, "B"), run(3, "B")])  # other rounds
    assert not paired_rounds(a, [run(1, "B", "t"), run(2, "B", "t")])  # another series
    assert not paired_rounds(a, [run(1, "A"), run(2, "A")])  # the same arm


def test_calibration_round_trip_and_lookup(tmp_path):
    runs = {100: [Run(str(i), "", "s", i, summary={"vma_loop": PhaseSummary(50, 1000.0 * (1 + 0.05 * (i % 2)))}) for i in range(6)],
            1000: [Run(str(i), "", "s", i, summary={"vma_loop": PhaseSummary(50, 9000.0 * (1 + 0.1 * (i % 2)))}) for i in range(6)]}
    cal = calibrate_runs(runs, "h", "k", "t")
    assert set(cal.spreads) == {100, 1000} and cal.spreads[100]["vma_loop"]["df"] == 5
    path = tmp_path / "calibration.json"
    import json

    path.write_text(json.dumps(cal.to_dict()))
    back = load_calibration(path)
    assert back.spread("vma_loop", 800).source.endswith("at 1000 VMAs")
    assert back.spread("vma_loop", 150).sigma == pytest.approx(cal.spreads[100]["vma_loop"]["sigma"])
    assert back.spread("mt_dup", 100) is None
    assert back.matches("h", "k") == "" and "host" in back.matches("other", "k")
    assert find_calibration([tmp_path / "x.parquet"]) == path and find_calibration([tmp_path]) == path
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(TracerError, match="not a forktrace calibration"):
        load_calibration(tmp_path / "bad.json")


@pytest.mark.parametrize("paired", [False, True])
def test_the_detectable_change_is_detected_80_percent_of_the_time(paired):
    """At the change detectable_pct() names, the test (unadjusted) rejects in about 80% of
    simulated comparisons of runs with a known between-run spread; at half of it, far less."""
    from analysis.compare.across import detectable_pct

    rng = np.random.default_rng(7)
    sd, n, sims = 0.08, 6, 1500
    mde = detectable_pct(sd, n, n, paired=paired)
    assert 5.0 < mde < 40.0

    def power(pct: float) -> float:
        hits = 0
        for _ in range(sims):
            if paired:  # per-round log ratios with SD sd, as paired_test sees them
                base = np.exp(rng.normal(0.0, 0.3, n))
                new = base * np.exp(rng.normal(math.log1p(pct / 100), sd, n))
                t = paired_test(base, new)
            else:
                base = np.exp(rng.normal(0.0, sd, n))
                new = np.exp(rng.normal(math.log1p(pct / 100), sd, n))
                t = run_test(base, new)
            hits += t.p < 0.05 and t.delta_pct > 0
        return hits / sims

    assert 0.74 <= power(mde) <= 0.86
    assert power(mde / 2) < 0.45
    assert run_test(np.exp(rng.normal(0, sd, n)), np.exp(rng.normal(0, sd, n))).sd_log > 0


def test_runs_needed_is_the_first_count_that_detects_the_target():
    from analysis.compare.across import MIN_RUNS, detectable_pct, runs_needed

    for sd in (0.01, 0.05, 0.15):
        n = runs_needed(sd, 10.0)
        assert n is not None and n >= MIN_RUNS
        assert detectable_pct(sd, n, n) <= 10.0
        assert n == MIN_RUNS or detectable_pct(sd, n - 1, n - 1) > 10.0
    assert runs_needed(0.15, 10.0) > runs_needed(0.05, 10.0)
    assert runs_needed(0.05, 10.0, paired=True) < runs_needed(0.05, 10.0)  # the same SD of round ratios
    assert runs_needed(5.0, 1.0) is None  # beyond any sensible series
    assert runs_needed(float("nan"), 10.0) is None


def test_trimmed_rounds_resist_a_slow_state_that_hits_one_run_of_a_round():
    """A host state that slows a whole run by 40% in one run of ten, independently per run (the
    bimodal runs of docs/runs.md): the trimmed paired test keeps A/A nominal and finds a 5%
    change far more often than the paired t on the mean ratio, which the outlying rounds blur."""
    from analysis.compare.across import MIN_TRIM_ROUNDS
    from analysis.compare.tdist import t_two_sided_p

    def mean_t(a, b):
        d = np.log(b) - np.log(a)
        return t_two_sided_p(d.mean() / (d.std(ddof=1) / math.sqrt(len(d))), len(d) - 1)

    rng = np.random.default_rng(11)
    rounds, trials = 40, 600
    assert rounds >= MIN_TRIM_ROUNDS

    def arm(drift, change=0.0):
        slow = 0.35 * (rng.random(len(drift)) < 0.1)
        return 1000.0 * np.exp(math.log1p(change) + drift + slow + rng.normal(0, 0.05, len(drift)))

    aa = found = found_by_mean = covered = 0
    for _ in range(trials):
        drift = rng.normal(0, 0.1, rounds)
        a, b, c = arm(drift), arm(drift), arm(drift, 0.05)
        aa += paired_test(a, b).p < 0.05
        t = paired_test(a, c)
        found += t.p < 0.05
        covered += t.ci95_pct[0] <= 5.0 <= t.ci95_pct[1]
        found_by_mean += mean_t(a, c) < 0.05
    assert 0.02 <= aa / trials <= 0.07
    assert found / trials > 0.75 and found / trials > found_by_mean / trials + 0.2
    assert covered / trials > 0.9


def test_the_trimmed_paired_test_is_near_nominal_on_normal_ratios():
    """No slow state: from MIN_TRIM_ROUNDS on, the A/A rate stays within 5-6.5% (the trimmed t is
    a little liberal, as Wilcox reports); below it the paired t is used and is exact."""
    from analysis.compare.across import MIN_TRIM_ROUNDS

    rng = np.random.default_rng(5)
    for rounds in (MIN_TRIM_ROUNDS - 1, MIN_TRIM_ROUNDS, 60):
        trials = 3000
        aa = sum(paired_test(np.exp(rng.normal(0, 0.1, rounds)), np.exp(rng.normal(0, 0.1, rounds))).p < 0.05
                 for _ in range(trials))
        assert 0.035 <= aa / trials <= 0.068, rounds

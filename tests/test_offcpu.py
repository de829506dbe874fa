"""Off-CPU time inside dup_mmap: its own component, taken out of the sampled windows, and a phase column."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from analysis.attribution.components import COMPONENTS
from collections import Counter

from analysis.attribution.functions import Cell
from analysis.attribution.samples import WINDOWS, SampleCounts, sample_estimate, window_times
from analysis.recording.phases import derive_phases

# Wall-clock window lengths of every fork, ns: gap, mt_dup, vma_loop, tail.
GAP, MT_DUP, LOOP, TAIL = 1_000, 20_000, 300_000, 4_000


def forks(offcpu: dict[str, list[int]], unplaced: list[int] | None = None) -> pd.DataFrame:
    """Brackets of fixed windows, with per-window off-CPU time (and some placed in no window)."""
    n = len(next(iter(offcpu.values())))
    t0 = np.arange(n, dtype="int64") * 10_000_000 + 1_000_000
    rows = {
        "ts_parent_lock": t0,
        "ts_child_lock": t0 + GAP,
        "ts_first_store": t0 + GAP + MT_DUP,
        "ts_last_store": t0 + GAP + MT_DUP + LOOP - 500,
        "ts_child_unlock": t0 + GAP + MT_DUP + LOOP,
        "ts_parent_unlock": t0 + GAP + MT_DUP + LOOP + TAIL,
        "stores": np.full(n, 100),
        "failed": np.zeros(n, dtype=bool),
    }
    for w in WINDOWS:
        rows[f"offcpu_{w}_ns"] = np.asarray(offcpu.get(w, [0] * n), dtype="uint64")
    extra = np.asarray(unplaced or [0] * n, dtype="uint64")
    rows["offcpu_ns"] = sum(rows[f"offcpu_{w}_ns"] for w in WINDOWS) + extra
    return pd.DataFrame(rows)


def counts(per_window: dict[str, dict[str, int]]) -> SampleCounts:
    """One run's samples, one cell per component (named after the component: the split is by share)."""
    run = Counter({(w, Cell(c, "own code", c)): n for w, per in per_window.items() for c, n in per.items()})
    assert set(c for per in per_window.values() for c in per) <= set(COMPONENTS)
    return SampleCounts(runs=[run], hz=[999])


SAMPLES = counts({"mt_dup": {"copy": 10, "traversal": 10}, "vma_loop": {"other": 60, "replace": 30, "tracer": 10},
                  "tail": {"fixed": 5}})


def test_offcpu_is_its_own_component_and_shares_sum_to_one():
    off_loop = [200_000, 0, 100_000, 0]  # preempted in the loop in two of four forks
    est = sample_estimate(forks({"vma_loop": off_loop}), SAMPLES, boot=50)
    wall = GAP + MT_DUP + LOOP + TAIL
    assert est.total_ns == pytest.approx(wall)
    assert est.ns_per_fork["offcpu"] == pytest.approx(np.mean(off_loop))
    assert math.isclose(sum(est.ns_per_fork.values()), est.total_ns, rel_tol=1e-9)
    # The loop's samples split its on-CPU time only: other gets 60% of (LOOP - mean off-CPU).
    assert est.ns_per_fork["other"] == pytest.approx(0.6 * (LOOP - np.mean(off_loop)))
    # Windows without off-CPU time keep their wall time.
    assert est.ns_per_fork["copy"] == pytest.approx(0.5 * MT_DUP)
    lo, hi = est.ci95["offcpu"]
    assert lo <= est.ns_per_fork["offcpu"] <= hi


def test_without_offcpu_the_split_is_the_wall_clock_one():
    est = sample_estimate(forks({"vma_loop": [0, 0, 0]}), SAMPLES, boot=10)
    assert est.ns_per_fork["offcpu"] == 0
    assert est.ns_per_fork["other"] == pytest.approx(0.6 * LOOP)


def test_offcpu_known_only_as_a_total_comes_out_of_the_windows_proportionally():
    total = [32_400]  # 10% of the on-CPU windows (no per-VMA program: no window known)
    t = window_times(forks({"vma_loop": [0]}, unplaced=total)).iloc[0]
    assert t["offcpu"] == pytest.approx(total[0])
    for w, wall in (("mt_dup", MT_DUP), ("vma_loop", LOOP), ("tail", TAIL)):
        assert t[w] == pytest.approx(0.9 * wall)
    assert t.sum() == pytest.approx(GAP + MT_DUP + LOOP + TAIL)


def test_dup_mmap_oncpu_is_dup_mmap_less_offcpu():
    df = derive_phases(forks({"mt_dup": [5_000, 0], "tail": [0, 3_000]}))
    assert list(df["dup_mmap_oncpu_ns"]) == pytest.approx(list(df["dup_mmap_ns"] - [5_000, 3_000]))
    old = derive_phases(forks({"tail": [0]}).drop(columns=["offcpu_ns"]))  # a recording before the column
    assert old["dup_mmap_oncpu_ns"].iloc[0] == old["dup_mmap_ns"].iloc[0]

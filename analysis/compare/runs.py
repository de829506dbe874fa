"""Runs, the unit of replication: which recordings are one run, and a run's per-phase summary.

A run is one workload process traced once. The forks of one run share its
conditions (where the parent's VMAs, anon_vmas and tree nodes landed, CPU
frequency, co-tenants), so they are not independent draws of "fork on this
kernel"; a comparison replicates runs, not forks (Kalibera & Jones 2013).

`tracer record` writes `run` into the metadata: {id, series, index, of, arm}.
A recording without it (older ones) is its own run, identified by its path.
Recordings are grouped into runs by that id, never by file name.

summarize_run() is the one place a run is reduced to numbers: compare only
reads its result, so the representation (today each phase's median and count)
can later become a mergeable streamed summary without touching the tests.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.recording import PHASES, Recording

# What a run is reduced to per phase (compare --per-run): the median by default.
STATISTICS = ("median", "p10")

__all__ = ["STATISTICS", "PhaseSummary", "Run", "run_info", "summarize_run", "runs_of", "paired_rounds"]


@dataclass(frozen=True)
class PhaseSummary:
    """One phase of one run: how many usable forks timed it, and their median (ns)."""

    n: int
    median: float  # NaN when n == 0
    p10: float = float("nan")  # the 10th percentile: steadier under co-tenant load (docs/runs.md)


@dataclass
class Run:
    id: str
    arm: str  # the A/B arm it was recorded as ('' when none)
    series: str  # the id shared by runs recorded together ('' when unknown)
    index: int | None = None  # its round in the series (record --runs), if known
    files: list[str] = field(default_factory=list)
    summary: dict[str, PhaseSummary] = field(default_factory=dict)

    @property
    def forks(self) -> int:
        return max((s.n for s in self.summary.values()), default=0)


def run_info(meta: Mapping[str, Any], path: str) -> dict[str, Any]:
    """The recording's `run` entry, or one that makes the file its own run."""
    run = meta.get("run")
    if isinstance(run, dict) and isinstance(run.get("id"), str) and run["id"]:
        return run
    return {"id": f"file:{path}", "series": "", "index": None, "of": None, "arm": ""}


def summarize_run(forks: pd.DataFrame) -> dict[str, PhaseSummary]:
    """A run's fork table (derived phases, `usable` column) as its per-phase summary."""
    usable = forks[forks["usable"]] if "usable" in forks else forks
    out: dict[str, PhaseSummary] = {}
    for phase in PHASES:
        values = usable[phase.column].to_numpy(float) if phase.column in usable else np.array([])
        values = values[~np.isnan(values)]
        out[phase.name] = PhaseSummary(
            len(values),
            float(np.median(values)) if len(values) else float("nan"),
            float(np.percentile(values, 10)) if len(values) else float("nan"),
        )
    return out


def runs_of(recordings: Sequence[Recording]) -> list[Run]:
    """The runs among these recordings (one group's), in first-seen order, each summarised."""
    tables: dict[str, list[pd.DataFrame]] = {}
    runs: dict[str, Run] = {}
    for rec in recordings:
        info = run_info(rec.meta, str(rec.path))
        index = info.get("index") if isinstance(info.get("index"), int) else None
        run = runs.setdefault(info["id"], Run(info["id"], str(info.get("arm") or ""), str(info.get("series") or ""), index))
        run.files.append(str(rec.path))
        tables.setdefault(info["id"], []).append(rec.forks)
    for rid, run in runs.items():
        frames = tables[rid]
        run.summary = summarize_run(frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True))
    return list(runs.values())


def paired_rounds(base: Sequence[Run], new: Sequence[Run]) -> bool:
    """Whether the two sides are arms of one interleaved series, round for round (record --runs
    with A/B arms): the same series, each round once a side, the same rounds on both."""
    runs = [*base, *new]
    if not base or not new or any(not r.series or r.index is None for r in runs):
        return False
    if len({r.series for r in runs}) != 1:
        return False
    b, n = [r.index for r in base], [r.index for r in new]
    return len(set(b)) == len(b) and len(set(n)) == len(n) and set(b) == set(n) and {r.arm for r in base}.isdisjoint({r.arm for r in new})

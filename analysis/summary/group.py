"""Summaries of forks, per group, that merge exactly: one run's, a host's, a fleet's.

A FleetSummary maps a group key -- (workload, layout, VMAs) and the values of
any `--by` metadata keys -- to a GroupSummary: counts of forks (usable,
failed, partial, out of order), one ColumnSummary per phase and column, the
sampled stacks with their counts, the methods runs used per phase, the
columns runs lacked (older format versions), and one Unit per run: the run's
own medians, which is what a comparison of runs as units tests.

Everything held is an integer count, a min/max, or keyed by run, so merge()
is associative and commutative: summaries of parts merged in any order equal
the summary of the whole, number for number. Memory grows with the groups
and the runs, never with the forks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from analysis.summary.column import ColumnSummary

__all__ = ["COLUMNS", "COUNTS", "Unit", "GroupSummary", "FleetSummary", "GroupKey"]

# What is summarized, in report order: the phases, on-CPU time, the spawn cycle, and per-fork counts.
COLUMNS: tuple[str, ...] = (
    "dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail", "dup_mmap_oncpu", "clone", "exit_mmap", "wait",
    "stores", "leaves",
)
COUNTS: tuple[str, ...] = ("forks", "usable", "failed", "partial", "unordered", "no_stores", "mt_dup_clamped")

# (workload, layout, vmas, *by values): layout '' and by value None where unknown.
GroupKey = tuple


@dataclass
class Unit:
    """One run as a unit of replication: where it ran and its own median per column."""

    run: str  # the run's id, or its file where the recording names none
    path: str
    host: str | None
    kernel: str | None
    usable: int
    medians: dict[str, float | None]

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class GroupSummary:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    columns: dict[str, ColumnSummary] = field(default_factory=lambda: {c: ColumnSummary() for c in COLUMNS})
    stacks: dict[tuple[str, str], int] = field(default_factory=dict)  # (phase, folded stack) -> samples
    sample_hz: dict[int, int] = field(default_factory=dict)  # sampling rate -> runs
    methods: dict[str, dict[str, int]] = field(default_factory=dict)  # phase -> {method: runs}
    lacks: dict[str, int] = field(default_factory=dict)  # column -> runs without it
    levels: dict[str, int] = field(default_factory=dict)  # level -> runs
    units: dict[str, Unit] = field(default_factory=dict)  # recording file -> its run's Unit

    def merge(self, other: "GroupSummary") -> "GroupSummary":
        clash = self.units.keys() & other.units.keys()
        if clash:
            raise ValueError(f"{sorted(clash)[0]} summarized twice")
        return GroupSummary(
            counts=_add(self.counts, other.counts),
            columns={c: self.columns[c].merge(other.columns[c]) for c in COLUMNS},
            stacks=_add(self.stacks, other.stacks),
            sample_hz=_add(self.sample_hz, other.sample_hz),
            methods={p: _add(self.methods.get(p, {}), other.methods.get(p, {})) for p in self.methods.keys() | other.methods.keys()},
            lacks=_add(self.lacks, other.lacks),
            levels=_add(self.levels, other.levels),
            units={**self.units, **other.units},
        )

    @property
    def runs(self) -> int:
        return len(self.units)

    @property
    def hosts(self) -> set[str]:
        return {u.host for u in self.units.values() if u.host}

    @property
    def kernels(self) -> set[str]:
        return {u.kernel for u in self.units.values() if u.kernel}

    def canonical(self) -> dict[str, Any]:
        """Plain, ordered data: two summaries are equal number for number iff these are equal."""
        return {
            "counts": dict(sorted(self.counts.items())),
            "columns": {c: self.columns[c].as_dict() for c in COLUMNS},
            "stacks": sorted((p, s, n) for (p, s), n in self.stacks.items()),
            "sample_hz": sorted(self.sample_hz.items()),
            "methods": {p: sorted(m.items()) for p, m in sorted(self.methods.items())},
            "lacks": sorted(self.lacks.items()),
            "levels": sorted(self.levels.items()),
            "units": [self.units[r].as_dict() for r in sorted(self.units)],
        }


@dataclass
class FleetSummary:
    """Groups of many runs, and the files that could not be read (file -> one-line reason)."""

    by: tuple[str, ...] = ()
    groups: dict[GroupKey, GroupSummary] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    files: int = 0

    def merge(self, other: "FleetSummary") -> "FleetSummary":
        if self.by != other.by:
            raise ValueError(f"summaries grouped by {self.by} and {other.by} do not merge")
        groups = dict(self.groups)
        for key, g in other.groups.items():
            groups[key] = groups[key].merge(g) if key in groups else g
        return FleetSummary(self.by, groups, {**self.skipped, **other.skipped}, self.files + other.files)

    def canonical(self) -> dict[str, Any]:
        return {
            "by": list(self.by),
            "files": self.files,
            "skipped": sorted(self.skipped.items()),
            "groups": [[list(map(str, k)), self.groups[k].canonical()] for k in sorted(self.groups, key=_sort_key)],
        }

    def ordered_groups(self) -> list[tuple[GroupKey, GroupSummary]]:
        return [(k, self.groups[k]) for k in sorted(self.groups, key=_sort_key)]


def _sort_key(key: GroupKey) -> tuple:
    return tuple((0, v, "") if isinstance(v, int) else (1, 0, str(v)) for v in key)


def _add(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = out.get(k, 0) + v
    return out

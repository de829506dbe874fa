"""Runs as units: two values of a --by key (two kernels) compared over their runs' medians.

Each run contributes one value per phase, its own median (from its sketch,
within the sketch's relative error), so a host that forked a million times
weighs as much as one that forked a thousand: the run is the unit of
replication, not the fork. Per group and phase the test is compare's own
(analysis.compare.across.run_test): the change of the geometric mean of the
runs' medians, Welch's t on their logs with its 95% interval, Holm over
every row, and benchstat's verdicts ("~": not significant; "?": fewer than
MIN_UNITS runs on a side, whose spread is then unknown).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

import numpy as np

from analysis.compare.across import MIN_RUNS, run_test
from analysis.compare.stats import SAME, UNDECIDED, decide
from analysis.errors import UsageError
from analysis.summary.fleet import LATENCIES, format_ns, group_label, table_lines
from analysis.summary.group import FleetSummary
from analysis.summary.run import GROUP_KEYS

__all__ = ["MIN_UNITS", "UnitRow", "UnitComparison", "compare_units", "render_units", "natural_key"]

MIN_UNITS = MIN_RUNS  # runs a side: below, the between-run spread is unknown and there is no verdict


@dataclass
class UnitRow:
    group: str
    phase: str
    base_runs: int
    new_runs: int
    base: float | None  # geometric mean of the runs' medians, ns
    new: float | None
    delta_pct: float | None
    ci: tuple[float, float] | None
    p: float | None  # Welch t on log per-run medians, before Holm
    p_holm: float | None
    change: str


@dataclass
class UnitComparison:
    key: str
    base_value: str
    new_value: str
    rows: list[UnitRow]
    lacks: dict[str, int]
    skipped: dict[str, str]
    unmatched: list[str]  # groups with runs on one side only


def natural_key(value: Any) -> tuple:
    """'6.1.0' < '6.12.0' < '6.18.0': digits compare as numbers."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", str(value)) if t)


def compare_units(summary: FleetSummary, key: str, base_value: str | None = None, new_value: str | None = None) -> UnitComparison:
    """Split `summary`'s groups by the value of `key` (its last --by key) and compare the two sides run by run."""
    if not summary.by or summary.by[-1] != key or key in GROUP_KEYS:
        raise UsageError(f"compare --by needs a metadata key other than {', '.join(GROUP_KEYS)}, not {key!r}")
    sides: dict[str, dict[tuple, Any]] = {}
    for gkey, g in summary.groups.items():
        sides.setdefault(str(gkey[-1]), {})[tuple(gkey[:-1])] = g
    values = sorted(sides, key=natural_key)
    if (base_value is None) != (new_value is None):
        raise UsageError("give both --by-base VALUE and --by-new VALUE, or neither")
    if base_value is None:
        if len(values) != 2:
            raise UsageError(
                f"the recordings hold {len(values)} values of {key} ({', '.join(values[:6])}{', ...' if len(values) > 6 else ''}): "
                "compare --by needs two, or --by-base VALUE --by-new VALUE"
            )
        base_value, new_value = values
    for v in (base_value, new_value):
        if v not in sides:
            raise UsageError(f"no readable recording has {key} = {v!r} (found: {', '.join(values)})")
    base, new = sides[str(base_value)], sides[str(new_value)]
    rows: list[UnitRow] = []
    tests: list[tuple[float, float, float] | None] = []
    lacks: dict[str, int] = {}
    for g in [*base.values(), *new.values()]:
        for c, n in g.lacks.items():
            lacks[c] = lacks.get(c, 0) + n
    unmatched = [group_label(summary.by[:-1], k) for k in sorted(base.keys() ^ new.keys(), key=str)]
    for gkey in sorted(base.keys() & new.keys(), key=str):
        label = group_label(summary.by[:-1], gkey)
        for phase in LATENCIES:
            a = _medians(base[gkey], phase)
            b = _medians(new[gkey], phase)
            if not a and not b:
                continue
            t = run_test(a, b)
            base_ns, new_ns = _finite(t.base_value), _finite(t.new_value)
            row = UnitRow(label, phase, len(a), len(b), base_ns, new_ns, _finite(t.delta_pct), None, None, None, UNDECIDED)
            test = None
            if t.spread == "runs":
                row.p = t.p
                row.ci = t.ci95_pct
                test = (row.p, row.base, row.new)
            rows.append(row)
            tests.append(test)
    for row, (p_adj, change) in zip(rows, decide(tests)):
        row.p_holm = None if math.isnan(p_adj) else p_adj
        row.change = change
    return UnitComparison(key, str(base_value), str(new_value), rows, lacks, dict(summary.skipped), unmatched)


def _medians(g: Any, phase: str) -> list[float]:
    return [u.medians[phase] for _, u in sorted(g.units.items()) if u.medians.get(phase) is not None]


def _finite(value: float) -> float | None:
    return None if value is None or math.isnan(value) else float(value)


def render_units(cmp: UnitComparison, fmt: str = "text") -> str:
    if fmt == "json":
        import json

        return json.dumps(
            {
                "by": cmp.key, "base": cmp.base_value, "new": cmp.new_value, "min_units": MIN_UNITS,
                "rows": [r.__dict__ for r in cmp.rows], "lacks": cmp.lacks, "unmatched": cmp.unmatched,
                "skipped": [{"file": f, "reason": r} for f, r in sorted(cmp.skipped.items())],
            },
            indent=2, allow_nan=False, default=str,
        )
    md = fmt == "markdown"
    out = [
        ("# " if md else "") + f"forktrace compare by {cmp.key}: {cmp.base_value} (base) -> {cmp.new_value} (new), each run a unit",
        "",
        f"per run: its median; per side: their geometric mean; Welch t on log medians over runs, Holm over rows; "
        f"\"~\" not significant, \"?\" fewer than {MIN_UNITS} runs a side",
    ]
    for column, n in sorted(cmp.lacks.items()):
        out.append(f"{n} runs lack {column} (older recording format)")
    if cmp.skipped:
        out.append(f"skipped {len(cmp.skipped)} unreadable files (each named on stderr)")
    for label in cmp.unmatched:
        out.append(f"no counterpart on the other side: {label}")
    out.append("")
    header = ("group", "phase", "runs", "base", "new", "delta", "95% CI", "p (Holm)", "")
    rows = []
    for r in cmp.rows:
        delta = f"{r.delta_pct:+.1f}%" if r.delta_pct is not None else "-"
        ci = f"[{r.ci[0]:+.1f}, {r.ci[1]:+.1f}]" if r.ci else "-"
        p = f"{r.p_holm:.3g}" if r.p_holm is not None else "-"
        verdict = r.change if r.change in (SAME, UNDECIDED) else r.change.upper()
        rows.append((r.group, r.phase, f"{r.base_runs}/{r.new_runs}", format_ns(r.base), format_ns(r.new), delta, ci, p, verdict))
    out += table_lines(header, rows, md)
    return "\n".join(out)

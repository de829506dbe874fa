"""A comparison's result as plain data, and the one verdict line drawn from it."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from analysis.compare.components import SHAPE_NAMES, ComponentRow, ShapeChange
from analysis.compare.context import ContextItem
from analysis.compare.samples import REGRESSION, UNDECIDED, SampleRow
from analysis.compare.stats import ALPHA, MIN_SAMPLES
from analysis.recording.phases import WINDOWS

__all__ = ["Comparison", "MIXED", "Verdict", "verdict", "regressions_beyond"]

# The phases a verdict names first: those that add up to dup_mmap. dup_mmap is
# their sum and vma_step a ratio, so they are named only when no part moved.
PARTS = WINDOWS


@dataclass
class Verdict:
    change: str  # REGRESSION, IMPROVEMENT, MIXED, '~' or '?'
    text: str
    group: str | None = None
    metric: str | None = None  # the phase (or benchmark) that moved most
    component: str | None = None  # the per-unit cost that moved most, if attributed


@dataclass
class Comparison:
    kind: str  # 'recordings' or 'pyperf'
    unit: str  # of the medians: 'ns' (recordings) or 's' (pyperf, time per fork)
    base_files: list[str]
    new_files: list[str]
    context: list[ContextItem]
    rows: list[SampleRow]
    components: list[ComponentRow] = field(default_factory=list)
    shapes: list[ShapeChange] = field(default_factory=list)
    unmatched_base: list[str] = field(default_factory=list)
    unmatched_new: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)  # loud ones: printed first
    notes: list[str] = field(default_factory=list)
    alpha: float = ALPHA
    min_samples: int = MIN_SAMPLES
    groups: list[str] = field(default_factory=list)  # matched groups, in order
    algorithm: Any = None  # analysis.compare.algorithm.AlgorithmChange, for recordings
    calibration: str | None = None  # the calibration file used for single-run sides, if any
    # (group, metric) -> (base values, new values): what the rows were computed from, for plots.
    values: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict, repr=False)

    @property
    def tests(self) -> int:
        """The size of the family Holm adjusted over."""
        return sum(1 for r in self.rows if r.decided)

    @property
    def verdict(self) -> Verdict:
        return verdict(self)


MIXED = "mixed"  # a Verdict.change: significant regressions and improvements both


def _magnitude(r: SampleRow) -> float:
    return abs(r.delta_pct) if not math.isnan(r.delta_pct) else -1.0


def _main_group(c: Comparison) -> str | None:
    """The group a verdict is about: the one with the largest regression, else the largest change."""
    significant = [r for r in c.rows if r.significant]
    if not significant:
        return None
    regressions = [r for r in significant if r.change == REGRESSION]
    return max(regressions or significant, key=_magnitude).group


def _named(c: Comparison, group: str) -> list[SampleRow]:
    """A group's significant rows as a verdict names them: regressions first, then improvements,
    the largest first (recordings: in ns); for recordings the parts of dup_mmap, then dup_mmap itself (vma_step
    only when vma_loop did not move: it is vma_loop per store)."""
    rows = [r for r in c.rows if r.group == group and r.significant]
    if c.kind == "recordings":
        metrics = {r.metric for r in rows}
        rows = [r for r in rows if not (r.metric == "vma_step" and "vma_loop" in metrics)]
        parts = [r for r in rows if r.metric in PARTS or r.metric == "vma_step"]
        total = [r for r in rows if r not in parts]
    else:
        parts, total = rows, []
    # Where the time went: within regressions (then improvements) the part that moved most in ns
    # for recordings (the phases add up to dup_mmap), in % for benchmarks.
    size = (lambda r: abs(r.delta) if not math.isnan(r.delta) else -1.0) if c.kind == "recordings" else _magnitude
    ordered = sorted(parts, key=lambda r: (r.change != REGRESSION, -size(r)))
    return ordered + total if ordered else total


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.1f}%"


def _runs(c: Comparison, group: str) -> str:
    rows = [r for r in c.rows if r.group == group]
    b = max((r.base_runs for r in rows), default=0)
    n = max((r.new_runs for r in rows), default=0)
    paired = ", paired" if any(r.spread == "paired" for r in rows) else ""
    return f"{b} vs {n} run{'s' if n != 1 else ''}{paired}" if c.kind == "recordings" else ""


def verdict(c: Comparison) -> Verdict:
    """Regressions first, then improvements, the group's runs a side, the calibrated spread."""
    v = _verdict(c)
    if c.algorithm is not None and c.algorithm.differs:
        v.text += f"; the kernels run different algorithms ({c.algorithm.base} -> {c.algorithm.new}): an algorithm change"
    return v


def _verdict(c: Comparison) -> Verdict:
    group = _main_group(c)
    undecided = [r for r in c.rows if r.change == UNDECIDED]
    if group is None and c.tests == 0 and undecided:
        if c.kind == "recordings":
            reason = next((r.reason for r in undecided if r.reason), "no run timed the phases")
            return Verdict("?", f"undecided: {reason}")
        return Verdict("?", f"undecided: too few values to decide (fewer than {c.min_samples} a side)")
    if group is None:
        test = "t-test across runs" if c.kind == "recordings" else "Mann-Whitney U"
        text = f"no significant change ({test}, alpha {c.alpha:g}, Holm over {c.tests} tests)"
        runs = sorted({_runs(c, g) for g in c.groups if _runs(c, g)})
        if runs:
            text += "; " + ", ".join(runs)
        if undecided:
            text += f"; {len(undecided)} row{'s' if len(undecided) != 1 else ''} undecided"
        blind = _sensitivity(c)
        if blind:  # "no change" is only as good as what the runs could have seen
            text += "; these runs could miss changes below " + ", ".join(
                f"{r.metric} {r.detectable_pct:.0f}%" for r in blind) + " (80% power)"
        return Verdict("~", text)
    named = _named(c, group)
    changes = {r.change for r in named}
    change = MIXED if len(changes) > 1 else named[0].change
    word = {MIXED: "MIXED", REGRESSION: "REGRESSION"}.get(change, "IMPROVEMENT")
    main = named[0]
    lo, hi = main.ci95_pct
    items = [f"{main.metric} {_pct(main.delta_pct)} [{_pct(lo)}, {_pct(hi)}]" + (
        f" {'slower' if main.change == REGRESSION else 'faster'}" if change == MIXED else "")]
    for r in named[1:]:
        slower = "slower" if r.change == REGRESSION else "faster"
        items.append(f"{r.metric} {_pct(r.delta_pct)}" + (f" {slower}" if change == MIXED and r.metric != "dup_mmap" else ""))
    text = f"{word}: " + "; ".join(items)
    where = [x for x in (group, _runs(c, group)) if x]
    if where:
        text += " (" + ", ".join(where) + ")"
    if not math.isnan(main.noise_pct):
        beyond = abs(main.delta_pct) > main.noise_pct
        text += f"; {'beyond' if beyond else 'within'} the calibrated run-to-run spread of {main.metric} (+-{main.noise_pct:.1f}%)"
    components = [r for r in c.components if r.group == group and r.significant]
    component = None
    if components:
        top = max(components, key=lambda r: abs(r.delta_pct) if not math.isnan(r.delta_pct) else -1.0)
        component = top.component
        text += f"; cost {top.unit} ({top.component}) {_pct(top.delta_pct)}"
    shape = next((s for s in c.shapes if s.group == group and s.any), None)
    if shape is not None:
        text += "; the tree's shape changed (" + ", ".join(SHAPE_NAMES[m] for m in shape.changed) + ")"
    others = sum(1 for r in c.rows if r.significant and r.group != group)
    if others > 0:
        text += f"; {others} more significant in other groups"
    return Verdict(change, text, group, main.metric, component)


def _sensitivity(c: Comparison) -> list[SampleRow]:
    """The decided rows of dup_mmap's parts whose detectable change is known, least sensitive first
    (with several groups, each part's least sensitive group)."""
    worst: dict[str, SampleRow] = {}
    for r in c.rows:
        if r.metric in PARTS and r.change != UNDECIDED and not math.isnan(r.detectable_pct):
            if r.metric not in worst or r.detectable_pct > worst[r.metric].detectable_pct:
                worst[r.metric] = r
    return sorted(worst.values(), key=lambda r: -r.detectable_pct)


def regressions_beyond(c: Comparison, pct: float) -> list[SampleRow]:
    """Significant regressions whose median grew by more than pct percent (for CI gating)."""
    return [r for r in c.rows if r.change == REGRESSION and not math.isnan(r.delta_pct) and r.delta_pct > pct]


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

__all__ = ["Comparison", "Verdict", "verdict", "regressions_beyond"]

# The phases a verdict names first: those that add up to dup_mmap. dup_mmap is
# their sum and vma_step a ratio, so they are named only when no part moved.
PARTS = WINDOWS


@dataclass
class Verdict:
    change: str  # REGRESSION, IMPROVEMENT or '~'
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
    # (group, metric) -> (base values, new values): what the rows were computed from, for plots.
    values: dict[tuple[str, str], tuple[Any, Any]] = field(default_factory=dict, repr=False)

    @property
    def tests(self) -> int:
        """The size of the family Holm adjusted over."""
        return sum(1 for r in self.rows if r.decided)

    @property
    def verdict(self) -> Verdict:
        return verdict(self)


def _main_row(c: Comparison) -> SampleRow | None:
    significant = [r for r in c.rows if r.significant]
    if not significant:
        return None
    if c.kind == "recordings":
        parts = [r for r in significant if r.metric in PARTS]
        if parts:  # where the time went: the part whose median moved most, in ns
            return max(parts, key=lambda r: abs(r.delta))
    return max(significant, key=lambda r: abs(r.delta_pct) if not math.isnan(r.delta_pct) else -1.0)


def _pct(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:+.1f}%"


def verdict(c: Comparison) -> Verdict:
    """Name the phase (and component) that moved most, or say that nothing moved."""
    main = _main_row(c)
    undecided = sum(1 for r in c.rows if r.change == UNDECIDED)
    if main is None and c.tests == 0 and undecided:
        what = "forks" if c.kind == "recordings" else "values"
        return Verdict("?", f"undecided: too few {what} to decide (fewer than {c.min_samples} a side)")
    if main is None:
        text = f"no significant change (Mann-Whitney U, alpha {c.alpha:g}, Holm over {c.tests} tests)"
        if undecided:
            text += f"; {undecided} row{'s' if undecided != 1 else ''} had too few values to decide"
        return Verdict("~", text)
    word = "REGRESSION" if main.change == REGRESSION else "IMPROVEMENT"
    lo, hi = main.ci95_pct
    text = f"{word}: {main.metric} {_pct(main.delta_pct)} [{_pct(lo)}, {_pct(hi)}]"
    if main.group:
        text += f" in {main.group}"
    total = next((r for r in c.rows if r.group == main.group and r.metric == "dup_mmap" and r is not main), None)
    if total is not None and total.significant:
        text += f" (dup_mmap {_pct(total.delta_pct)})"
    components = [r for r in c.components if r.group == main.group and r.significant]
    component = None
    if components:
        top = max(components, key=lambda r: abs(r.delta_pct) if not math.isnan(r.delta_pct) else -1.0)
        component = top.component
        text += f"; cost {top.unit} ({top.component}) {_pct(top.delta_pct)}"
    shape = next((s for s in c.shapes if s.group == main.group and s.any), None)
    if shape is not None:
        text += "; the tree's shape changed (" + ", ".join(SHAPE_NAMES[m] for m in shape.changed) + ")"
    others = sum(1 for r in c.rows if r.significant) - 1 - (1 if total is not None and total.significant else 0)
    if others > 0:
        text += f"; {others} more significant"
    if c.algorithm is not None and c.algorithm.differs:
        text += f"; the kernels run different algorithms ({c.algorithm.base} -> {c.algorithm.new}): an algorithm change"
    return Verdict(main.change, text, main.group, main.metric, component)


def regressions_beyond(c: Comparison, pct: float) -> list[SampleRow]:
    """Significant regressions whose median grew by more than pct percent (for CI gating)."""
    return [r for r in c.rows if r.change == REGRESSION and not math.isnan(r.delta_pct) and r.delta_pct > pct]


"""A Comparison as text (fits an 80-column mail), Markdown (review threads, CI), or JSON."""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from typing import Any

from analysis.compare.algorithm import ALGORITHM_NAMES, table
from analysis.compare.algorithm import to_dict as algorithm_dict
from analysis.compare.components import SHAPE_NAMES, ComponentRow
from analysis.compare.result import Comparison
from analysis.compare.samples import IMPROVEMENT, REGRESSION, SAME, UNDECIDED, SampleRow

__all__ = ["FORMATS", "render", "render_text", "render_markdown", "render_json"]

FORMATS = ("text", "markdown", "json")
WIDTH = 80
MARKS = {REGRESSION: "slower", IMPROVEMENT: "faster", SAME: "~", UNDECIDED: "?"}


def render(c: Comparison, fmt: str) -> str:
    return {"text": render_text, "markdown": render_markdown, "json": render_json}[fmt](c)


def fmt_time(value: float, unit: str) -> str:
    """A median as ns/us/ms/s with 3 significant figures (ASCII: mail clients mangle 'µ')."""
    if value is None or math.isnan(value):
        return "-"
    ns = value * 1e9 if unit == "s" else value
    for scale, name in ((1e9, "s"), (1e6, "ms"), (1e3, "us")):
        if abs(ns) >= scale:
            return f"{ns / scale:.3g}{name}"
    return f"{ns:.3g}ns"


def _pct(x: float) -> str:
    return "n/a" if math.isnan(x) else f"{x:+.1f}%"


def _ci(ci: tuple[float, float]) -> str:
    lo, hi = ci
    return "" if math.isnan(lo) or math.isnan(hi) else f"[{lo:+.1f}, {hi:+.1f}]"


def _p(p: float) -> str:
    if math.isnan(p):
        return "-"
    return "<0.001" if p < 0.001 else f"{p:.3f}"


def _clip(text: str, width: int = WIDTH) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."


def _wrap(text: str, indent: str = "", width: int = WIDTH) -> list[str]:
    """Greedy word wrap (the verdict can be long; a mail must not be); the text's own indent is kept."""
    lead = text[: len(text) - len(text.lstrip(" "))]
    lines, line = [], lead
    for word in text.split():
        candidate = f"{line} {word}" if line.strip() else line + word
        if line and len(indent) + len(candidate) > width:
            lines.append(indent + line if lines else line)
            line = word
        else:
            line = candidate
    if line:
        lines.append(indent + line if lines else line)
    return lines


def _cells(r: SampleRow | ComponentRow, unit: str) -> tuple[str, str, str, str, str, str]:
    """A row's numbers as both text and Markdown print them: base, new, delta, 95% CI, p, mark.

    A sample row outside the Holm family (too few values) shows its own p.
    """
    if isinstance(r, ComponentRow):
        base, new, p = r.base_ns, r.new_ns, r.p_adjusted
    else:
        base, new, p = r.base_median, r.new_median, r.p_adjusted if r.decided else r.p
    return fmt_time(base, unit), fmt_time(new, unit), _pct(r.delta_pct), _ci(r.ci95_pct), _p(p), MARKS[r.change]


def _unmatched(c: Comparison) -> list[str]:
    """What one side has and the other lacks, a line a side."""
    sides = (("base", c.unmatched_base), ("new", c.unmatched_new))
    return [f"only in {side} (not compared): " + "; ".join(labels) for side, labels in sides if labels]


def _sides(c: Comparison) -> str:
    what = "recording" if c.kind == "recordings" else "benchmark file"
    nb, nn = len(c.base_files), len(c.new_files)
    return f"base {nb} {what}{'s' if nb != 1 else ''}, new {nn} {what}{'s' if nn != 1 else ''}"


def render_text(c: Comparison) -> str:
    out: list[str] = []
    for warning in c.warnings:
        out += _wrap("!!! " + warning, "    ")
    out += _wrap("verdict: " + c.verdict.text, "    ")
    out.append(_clip(f"tracer compare: {_sides(c)}"))
    out.append("")
    out.append("context (* differs)")
    for item in c.context:
        if item.differs:
            out.append(_clip(f"* {item.key:<12}base: {item.base}"))
            out.append(_clip(f"  {'':<12}new:  {item.new}"))
        else:
            out.append(_clip(f"  {item.key:<12}{item.base}"))
    name_width = max([9] + [len(r.metric) for r in c.rows])
    name_width = min(name_width, 22)
    for group in c.groups:
        rows = [r for r in c.rows if r.group == group]
        out.append("")
        if group:
            out.append(_clip(group))
        out.append(_clip("  " + _counts(c, rows)))
        label = "phase" if c.kind == "recordings" else "benchmark"
        out.append(f"  {label:<{name_width}} {'base':>8} {'new':>8} {'delta':>8}  {'95% CI':<16} {'p-adj':>6}")
        for r in rows:
            out.append(_row_text(r, c.unit, name_width))
        sensitivity = _sensitivity(c, rows)
        if sensitivity:
            out += _wrap("  " + sensitivity, "    ")
        for s in c.shapes:
            if s.group == group:
                out += _wrap("  tree " + _shape_text(s), "    ")
        out += _tree_work_text(c, group)
        comps = [r for r in c.components if r.group == group]
        if comps:
            out.append(f"  {'per-unit cost':<20} {'base':>8} {'new':>8} {'delta':>8}  {'95% CI':<16} {'p-adj':>6}")
            for r in comps:
                base, new, delta, ci, p, mark = _cells(r, "ns")
                name = f"{r.component} ({r.unit})"
                out.append(_clip(f"  {name:<20.20} {base:>8} {new:>8} {delta:>8}  {ci:<16} {p:>6}  {mark}"))
    if c.unmatched_base or c.unmatched_new:
        out.append("")
        for line in _unmatched(c):
            out += _wrap(line, "  ")
    if c.notes:
        out.append("")
        for note in c.notes:
            out += _wrap("note: " + note, "  ")
    out.append("")
    out += _wrap(_footer(c))
    return "\n".join(out)


def _counts(c: Comparison, rows: list[SampleRow]) -> str:
    """Runs (the unit tested) and forks a side for recordings; values for pyperf."""
    n_base = max((r.base_n for r in rows), default=0)
    n_new = max((r.new_n for r in rows), default=0)
    if c.kind != "recordings":
        return f"values: base {n_base}, new {n_new}"
    runs_b = max((r.base_runs for r in rows), default=0)
    runs_n = max((r.new_runs for r in rows), default=0)
    paired = ", paired by round" if any(r.spread == "paired" for r in rows) else ""
    return f"runs: base {runs_b} ({n_base} forks), new {runs_n} ({n_new} forks){paired}"


def _sensitivity(c: Comparison, rows: list[SampleRow]) -> str:
    """What these runs could have detected (80% power, at Holm's first-step level), and the runs a 10% change needs (90%)."""
    if c.kind != "recordings":
        return ""
    known = [r for r in rows if not math.isnan(r.detectable_pct) and r.metric != "vma_step"]
    if not known:
        return ""
    seen = ", ".join(f"{r.metric} {r.detectable_pct:.0f}%" for r in known)
    need = ", ".join(f"{r.metric} {r.runs_for_10 if r.runs_for_10 is not None else '>1000'}" for r in known)
    return f"detectable at 80% power: {seen}; runs a side for 10% at 90% power: {need}"


def _footer(c: Comparison) -> str:
    if c.kind == "recordings":
        spread = "between the runs" + (f", or the host's calibration for single runs ({c.calibration})" if c.calibration else "")
        return (
            f"base/new: geometric mean of the per-run medians; delta and its 95% CI in % of base; "
            f"p-adj: Welch t on the log per-run medians (spread {spread}; arms of one interleaved "
            f"series: paired t on each round's log ratio, 20%-trimmed from 20 rounds on, and delta its "
            f"trimmed mean), two-sided, Holm-adjusted "
            f"over {c.tests} tests; ~: not significant at alpha {c.alpha:g}; ?: undecided (see the notes)."
        )
    return (
        f"medians; delta and its bootstrap 95% CI in % of base; p-adj: Mann-Whitney U, "
        f"two-sided, Holm-adjusted over {c.tests} tests; ~: not significant at alpha {c.alpha:g}; "
        f"?: fewer than {c.min_samples} values a side, no verdict."
    )


def _tree_work(c: Comparison, group: str):
    """The group's (base, new) TreeWork when the two sides run different algorithms, else None."""
    change = c.algorithm
    if change is None or not change.differs:
        return None
    return next(((b, n) for label, b, n in change.groups if label == group), None)


def _tree_work_text(c: Comparison, group: str) -> list[str]:
    work = _tree_work(c, group)
    if work is None:
        return []
    b, n = work
    out = [
        _clip(f"  tree work per fork: base {ALGORITHM_NAMES.get(b.algorithm, b.algorithm)}"),
        _clip(f"  {'':<20}new  {ALGORITHM_NAMES.get(n.algorithm, n.algorithm)}"),
        f"  {'':<26} {'--------- base ---------':>24} {'---------- new ---------':>24}",
        f"  {'per fork (median)':<26} {'seen':>7} {'bulk':>8} {'mt_dup':>7} {'seen':>7} {'bulk':>8} {'mt_dup':>7}",
    ]
    for quantity, cells in table(b, n):
        out.append(_clip(f"  {quantity:<26.26} " + " ".join(f"{cell:>{w}}" for cell, w in zip(cells, (7, 8, 7, 7, 8, 7)))))
    out += _wrap(
        "  seen: the bracket's counts; bulk, mt_dup: the replay model's for each path on that side's layout "
        "(other ma_write: v6.1's mas_wr_node_store and mas_wr_bnode events)",
        "    ",
    )
    return out


def _row_text(r: SampleRow, unit: str, width: int) -> str:
    base, new, delta, ci, p, mark = _cells(r, unit)
    return _clip(f"  {r.metric:<{width}.{width}} {base:>8} {new:>8} {delta:>8}  {ci:<16} {p:>6}  {mark}")


def _shape_text(s) -> str:
    parts = []
    for key, name in SHAPE_NAMES.items():
        b, n = s.base.get(key), s.new.get(key)
        if b is None and n is None:
            continue
        fb = "?" if b is None else f"{b:g}"
        fn = "?" if n is None else f"{n:g}"
        parts.append(f"{name} {fb}" if fb == fn else f"{name} {fb} -> {fn}")
    verdict = "CHANGED" if s.any else "same"
    return f"{verdict}: " + ", ".join(parts) if parts else "unknown"


def render_markdown(c: Comparison) -> str:
    out: list[str] = []
    for warning in c.warnings:
        out.append(f"> **{warning}**")
    if c.warnings:
        out.append("")
    out.append(f"**verdict:** {c.verdict.text}")
    out.append("")
    out.append(f"`tracer compare`: {_sides(c)}")
    out.append("")
    out.append("| context | base | new |")
    out.append("|---|---|---|")
    for item in c.context:
        key = f"**{item.key}**" if item.differs else item.key
        out.append(f"| {key} | {item.base} | {item.new} |")
    for group in c.groups:
        rows = [r for r in c.rows if r.group == group]
        out.append("")
        if group:
            out.append(f"### {group}")
            out.append("")
        label = "phase" if c.kind == "recordings" else "benchmark"
        if c.kind == "recordings":
            out.append(f"| {label} | runs base | runs new | base | new | delta | 95% CI | p-adj | |")
            out.append("|---|---:|---:|---:|---:|---:|---|---:|---|")
            for r in rows:
                out.append(_md_row(r.metric, str(r.base_runs), str(r.new_runs), *_cells(r, c.unit)))
            sensitivity = _sensitivity(c, rows)
            if sensitivity:
                out += ["", sensitivity]
        else:
            out.append(f"| {label} | n base | n new | base | new | delta | 95% CI | p-adj | |")
            out.append("|---|---:|---:|---:|---:|---:|---|---:|---|")
            for r in rows:
                out.append(_md_row(r.metric, str(r.base_n), str(r.new_n), *_cells(r, c.unit)))
        for s in c.shapes:
            if s.group == group:
                out.append("")
                out.append(f"tree {_shape_text(s)}")
        work = _tree_work(c, group)
        if work is not None:
            b, n = work
            out.append("")
            out.append(f"Tree work per fork (medians; model = replay model on that side's layout). "
                       f"Base {ALGORITHM_NAMES.get(b.algorithm, b.algorithm)}; new {ALGORITHM_NAMES.get(n.algorithm, n.algorithm)}.")
            out.append("")
            out.append("| per fork | base seen | base model: bulk | base model: mt_dup | new seen | new model: bulk | new model: mt_dup |")
            out.append("|---|---:|---:|---:|---:|---:|---:|")
            for quantity, cells in table(b, n):
                out.append(f"| {quantity} | " + " | ".join(cells) + " |")
        comps = [r for r in c.components if r.group == group]
        if comps:
            out.append("")
            out.append("| component | unit | base | new | delta | 95% CI | p-adj | |")
            out.append("|---|---|---:|---:|---:|---|---:|---|")
            for r in comps:
                out.append(_md_row(r.component, r.unit, *_cells(r, "ns")))
    if c.unmatched_base or c.unmatched_new:
        out.append("")
        out += [f"- {line}" for line in _unmatched(c)]
    for note in c.notes:
        out.append(f"- note: {note}")
    out.append("")
    out.append(_footer(c))
    return "\n".join(out)


def _md_row(*cells: str) -> str:
    return "| " + " | ".join(cells) + " |"


def _clean(x: Any) -> Any:
    """NaN/inf -> null, tuples -> lists: strict JSON."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def to_dict(c: Comparison) -> dict[str, Any]:
    v = c.verdict
    doc = {
        "kind": c.kind,
        "unit": c.unit,
        "alpha": c.alpha,
        "min_samples": c.min_samples,
        "correction": "holm",
        "test": "welch-t on log per-run medians" if c.kind == "recordings" else "mann-whitney-u",
        "calibration": c.calibration,
        "tests": c.tests,
        "verdict": asdict(v),
        "warnings": c.warnings,
        "base": {"files": c.base_files},
        "new": {"files": c.new_files},
        "context": [{"key": i.key, "base": i.base, "new": i.new, "differs": i.differs, "loud": i.loud} for i in c.context],
        "groups": [
            {
                "group": g,
                "rows": [{**asdict(r), "significant": r.significant} for r in c.rows if r.group == g],
                "shape": next(({**asdict(s), "any": s.any} for s in c.shapes if s.group == g), None),
                "components": [{**asdict(r), "significant": r.significant} for r in c.components if r.group == g],
            }
            for g in c.groups
        ],
        "algorithm": algorithm_dict(c.algorithm) if c.algorithm is not None else None,
        "unmatched": {"base": c.unmatched_base, "new": c.unmatched_new},
        "notes": c.notes,
    }
    return _clean(doc)


def render_json(c: Comparison) -> str:
    return json.dumps(to_dict(c), indent=2, allow_nan=False)

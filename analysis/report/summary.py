"""The `tracer report` summary: computed once as plain data, rendered as text or JSON.

summarize() turns a Recording into a JSON-ready dict (pyperf style: results are
data; rendering is separate). Latency figures use only `usable` rows (fork
completed, bracket in order); failed, partial (in flight when tracing started
or stopped) and out-of-order forks are counted, and
every phase carries its n and the method the recording says produced it.
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.attribution.attribute import Attribution, attribute_groups
from analysis.attribution.attribute import predict as predict_costs
from analysis.frame import group_recordings, load_recordings
from analysis.recording import PHASES, Recording
from analysis.recording.algorithm import PHASE_LABELS
from analysis.recording.exact import EXACT_PHASE_COLUMNS
from analysis.recording.stacks import sampled_stacks, stack_frames
from analysis.report.answer import answer_doc, render_answer
from analysis.report.attribution import (
    _clean, fit_doc, group_doc, render_fit, render_group, render_prediction, render_sweep, render_sweep_functions, sweep_doc,
)
from analysis.report.stats import Log2Histogram, choose_unit, format_log2_histogram, log2_histogram, percentiles
from analysis.errors import TracerError

__all__ = ["FORMATS", "summarize", "render_text", "render_json", "render_folded", "render_report", "build_report",
           "report_doc", "render_doc", "ReportInput"]

PHASE_DOC: dict[str, str] = {p.name: p.spans for p in PHASES}

TOP_FUNCTIONS = 5
SMALL_N = 100  # below this, p99 sits between the two largest values


def summarize(rec: Recording) -> dict[str, Any]:
    """Everything the report shows, as plain JSON-ready data (None where unknown)."""
    meta, df = rec.meta, rec.forks
    usable = df[df["usable"]]
    failed = int(df["failed"].sum())
    partial = int(df["partial"].sum())
    unordered = int((~df["bracket_ok"] & ~df["failed"] & ~df["partial"]).sum())
    copied = usable[usable["stores"] > 0]
    methods = meta.get("methods") if isinstance(meta.get("methods"), dict) else {}

    phases: dict[str, Any] = {}
    histograms: dict[str, Any] = {}
    for phase in (p.name for p in PHASES):
        method = methods.get(phase)
        column = f"{phase}_ns"
        if str(method or "").startswith("exact") and EXACT_PHASE_COLUMNS.get(phase) in usable:
            column = EXACT_PHASE_COLUMNS[phase]  # the exact probe's figure; the bracket's stays in the file
        values = usable[column].to_numpy(dtype="float64")
        entry = percentiles(values).as_dict("_ns")
        if phase == "vma_step" and not method and methods.get("vma_loop"):
            method = f"vma_loop / (stores - 1); vma_loop: {methods['vma_loop']}"
        entry["method"] = method or "unknown"
        phases[phase] = entry
        hist = log2_histogram(values, choose_unit(values))
        histograms[phase] = {"unit": hist.unit, "buckets": [list(b) for b in hist.buckets()]}

    lost = meta.get("lost") if isinstance(meta.get("lost"), dict) else {}
    lost_counts = {k: lost.get(k) for k in ("ringbuf", "unpaired")}
    known = [v for v in lost_counts.values() if isinstance(v, int)]

    return {
        "recording": str(rec.path),
        "format_version": meta.get("format_version"),
        "tool_version": meta.get("tool_version"),
        "kernel": _field(meta, "kernel", "release"),
        "kernel_version": _field(meta, "kernel", "version"),
        "machine": _field(meta, "kernel", "machine"),
        "host": meta.get("host") if isinstance(meta.get("host"), dict) else None,
        "backend": meta.get("backend"),
        "per_vma_program": _field(meta, "per_vma_program", "type"),
        "algorithm": meta.get("algorithm") if isinstance(meta.get("algorithm"), dict) else None,
        # Recordings made before levels existed are what `phase` records now.
        "level": meta.get("level") or "phase (not recorded)",
        "targets": meta.get("targets"),
        "workload": meta.get("workload"),
        "start": _field(meta, "start", "wall"),
        "duration_s": _duration_s(meta),
        "forks": int(len(df)),
        "failed": failed,
        "partial": partial,
        "unordered": unordered,
        "usable": int(len(usable)),
        "lost_events": sum(known) if known else None,
        "lost": {**lost_counts, "samples": _field(meta, "sample", "lost")},
        "vmas": _spread(copied["stores"]),
        "map_count": _spread(usable["parent_map_count"][usable["parent_map_count"] >= 0]),
        "leaves": _spread(copied["leaves"]),
        "no_stores": int((usable["stores"] == 0).sum()),
        "null_stores": int(usable["null_stores"].sum()),
        "dontcopy_vmas": _spread(usable["dontcopy_vmas"].dropna()) if "dontcopy_vmas" in usable else None,
        "mt_dup_clamped": int(usable["mt_dup_clamped"].sum()),
        "phases": phases,
        "histograms": histograms,
        "samples": _top_functions(rec),
    }


def _field(meta: Mapping[str, Any], key: str, sub: str) -> Any:
    value = meta.get(key)
    return value.get(sub) if isinstance(value, dict) else None


def _duration_s(meta: Mapping[str, Any]) -> float | None:
    start, end = _field(meta, "start", "mono_ns"), _field(meta, "end", "mono_ns")
    if isinstance(start, int) and isinstance(end, int) and end >= start:
        return (end - start) / 1e9
    return None


def _spread(column: Any) -> dict[str, float | int | None]:
    values = column.to_numpy(dtype="float64")
    if values.size == 0:
        return {"min": None, "median": None, "max": None}
    median = float(np.median(values))
    return {
        "min": int(values.min()),
        "median": int(median) if median.is_integer() else median,
        "max": int(values.max()),
    }


def _top_functions(rec: Recording) -> dict[str, Any] | None:
    """Self samples per kernel function and phase, from folded stacks (root first, leaf last)."""
    stacks = sampled_stacks(rec.meta, str(rec.path))
    if stacks is None:
        return None
    sample = rec.meta["sample"]
    per_phase: dict[str, Counter[str]] = defaultdict(Counter)
    for (stack, phase), count in stacks.items():
        frames = stack_frames(stack)
        per_phase[phase][frames[-1] if frames else "[unknown]"] += count
    names = [p.name for p in PHASES]
    order = [p for p in names if p in per_phase] + sorted(p for p in per_phase if p not in names)
    top = {}
    for phase in order:
        counts = per_phase[phase]
        total = sum(counts.values())
        top[phase] = {
            "samples": total,
            "top": [
                {"function": fn, "self": n, "share": n / total if total else None}
                for fn, n in counts.most_common(TOP_FUNCTIONS)
            ],
        }
    return {"hz": sample.get("hz"), "lost": sample.get("lost"), "phases": top}


# ---------------------------------------------------------------- rendering


def format_ns(value: float | None) -> str:
    """A latency with a unit that keeps 3 significant digits; '-' when not measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value < 1e3:
        return f"{value:.0f} ns"
    if value < 1e6:
        return f"{value / 1e3:.3g} us" if value < 1e5 else f"{value / 1e3:.0f} us"
    if value < 1e9:
        return f"{value / 1e6:.3g} ms" if value < 1e8 else f"{value / 1e6:.0f} ms"
    return f"{value / 1e9:.3g} s"


def _or_unknown(value: Any) -> str:
    return "unknown" if value in (None, "") else str(value)


def _header(s: Mapping[str, Any]) -> list[str]:
    host = s["host"] or {}
    kernel = " ".join(str(x) for x in (s["kernel"], s["machine"]) if x) or "unknown"
    host_line = ", ".join(
        x
        for x in (
            host.get("hostname"),
            f"{host['cpus']} CPUs" if host.get("cpus") else None,
            host.get("cpu_model"),
            f"lockdown={host['lockdown']}" if host.get("lockdown") else None,
        )
        if x
    )
    wl = _workload_line(s["workload"], s["targets"])
    duration = f"{s['duration_s']:.2f} s" if s["duration_s"] is not None else "unknown"
    if s["start"]:
        duration += f" from {s['start']}"
    lost = s["lost"]
    lost_line = (
        f"{_or_unknown(lost['ringbuf'])} ring buffer records dropped, "
        f"{_or_unknown(lost['unpaired'])} unpaired brackets"
    )
    if lost["samples"] is not None:
        lost_line += f", {lost['samples']} stack samples not saved"
    if s["lost_events"]:
        lost_line += "  (!) forks are missing from these figures"
    forks = f"{s['forks']} traced, {s['usable']} used for latencies"
    failed = f"{s['failed']} (excluded from latencies)" if s["failed"] else "0"
    if s.get("partial"):
        failed += f"; partial {s['partial']} (in flight when tracing started or stopped; excluded)"
    lines = [
        f"forktrace report: {s['recording']}",
        f"  kernel    {kernel}",
        f"  backend   {_or_unknown(s['backend'])}"
        + (f" (per-VMA program: {s['per_vma_program']})" if s.get("per_vma_program") else ""),
        f"  algorithm {_algorithm_line(s.get('algorithm'))}",
        f"  level     {s['level']}",
        f"  host      {host_line or 'unknown'}",
        f"  workload  {wl}",
        f"  duration  {duration}",
        f"  forks     {forks}",
        f"  failed    {failed}",
        f"  lost      {lost_line}",
    ]
    if s["unordered"]:
        lines.append(f"  anomaly   {s['unordered']} forks with out-of-order bracket timestamps (excluded)")
    if s["vmas"]["median"] is not None:
        v, lv = s["vmas"], s["leaves"]
        lines.append(f"  VMAs      copied per fork: min {v['min']}, median {v['median']}, max {v['max']}")
        lines.append(f"  leaves    distinct child leaves written: median {lv['median']}")
    elif s["map_count"]["median"] is not None:
        m = s["map_count"]
        lines.append(f"  VMAs      parent map_count per fork: min {m['min']}, median {m['median']}, max {m['max']}")
    return lines


def _workload_line(workload: Any, targets: Any) -> str:
    """One line whatever the target mode: spawn parameters, the command, or the pids."""
    workload = workload if isinstance(workload, dict) else {}
    targets = targets if isinstance(targets, dict) else {}
    kind = workload.get("kind") or targets.get("mode") or "unknown"
    if kind == "spawn":
        parts = [f"{workload.get('extra_vmas', '?')} extra VMAs", f"{workload.get('forks', '?')} forks"]
        if workload.get("cpu") is not None:
            parts.append(f"cpu {workload['cpu']}")
        return "spawn: " + ", ".join(parts)
    command = workload.get("command") or targets.get("command")
    if command:
        text = " ".join(str(c) for c in command) if isinstance(command, list) else str(command)
        text = " ".join(text.split())  # one line, even for `python3 -c '<script>'`
        return f"{kind}: {text[:70]}{'...' if len(text) > 70 else ''}"
    if targets.get("pids"):
        return f"{kind}: pid {', '.join(str(p) for p in targets['pids'])}"
    return str(kind)


def _algorithm_line(algorithm: Mapping[str, Any] | None) -> str:
    """'bulk_append (__mt_dup not in kallsyms; ...)': what built the child's tree, and why we think so."""
    if not algorithm:
        return "unknown (not recorded)"
    evidence = "; ".join(str(e) for e in algorithm.get("evidence") or [])
    return f"{algorithm.get('name', 'unknown')}" + (f" ({evidence})" if evidence else "")


def _phase_label(phase: str, s: Mapping[str, Any]) -> str:
    """mt_dup is the 'bulk build' on kernels before __mt_dup (v6.8)."""
    if phase != "mt_dup":
        return phase
    return PHASE_LABELS.get((s.get("algorithm") or {}).get("name", "unknown"), phase)


def _phase_table(s: Mapping[str, Any]) -> list[str]:
    cols = ("phase", "p50", "p90", "p99", "mean", "n", "method")
    rows = []
    small = False
    for phase, p in s["phases"].items():
        p99 = format_ns(p["p99_ns"])
        if 0 < p["n"] < SMALL_N:
            p99 += "*"
            small = True
        rows.append(
            (_phase_label(phase, s), format_ns(p["p50_ns"]), format_ns(p["p90_ns"]), p99, format_ns(p["mean_ns"]), str(p["n"]), p["method"])
        )
    widths = [max(len(r[i]) for r in (cols, *rows)) for i in range(len(cols))]
    right = {1, 2, 3, 4, 5}

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()

    out = [line(cols)] + [line(r) for r in rows]
    notes = [
        f"{_phase_label(name, s)}: "
        + ("entry -> return (exact probe)" if str(s["phases"][name]["method"]).startswith("exact") else doc)
        for name, doc in PHASE_DOC.items()
    ]
    out.append("")
    out.extend("  " + n for n in notes)
    if s["mt_dup_clamped"]:
        out.append(f"  mt_dup clamped to 0 in {s['mt_dup_clamped']} forks (first VMA cost more than the mean step)")
    if s["no_stores"]:
        out.append(f"  {s['no_stores']} forks stored no VMA: no store-based phases for them")
    dontcopy = s.get("dontcopy_vmas") or {}
    if dontcopy.get("max"):
        out.append(
            f"  VM_DONTCOPY (MADV_DONTFORK) VMAs not copied: {dontcopy['median']:g} per fork (median; max {dontcopy['max']:g});"
            " their clearing is inside the VMA steps"
        )
    if small:
        out.append(f"  * fewer than {SMALL_N} values: p99 is interpolated between the largest ones")
    return out


def _histograms(s: Mapping[str, Any]) -> list[str]:
    out = []
    for phase, h in s["histograms"].items():
        if not h["buckets"]:
            continue
        p = s["phases"][phase]
        out.append("")
        out.append(f"{phase}: {PHASE_DOC[phase]} (n={p['n']})")
        out.append(format_log2_histogram(Log2Histogram.from_buckets(h["unit"], h["buckets"])))
    return out


def _samples(s: Mapping[str, Any]) -> list[str]:
    samples = s["samples"]
    if not samples or not samples["phases"]:
        return []
    out = [
        "",
        f"top kernel functions by self samples ({_or_unknown(samples['hz'])} Hz;"
        " sample windows follow the bracket, so mt_dup here is child lock -> first mas_store):",
    ]
    for phase, entry in samples["phases"].items():
        out.append(f"  {phase} ({entry['samples']} samples):")
        for f in entry["top"]:
            out.append(f"    {f['self']:>8}  {100 * f['share']:5.1f}%  {f['function']}")
    return out


def render_text(summary: Mapping[str, Any]) -> str:
    """The human report: header, phase table, log2 histograms, sampled functions."""
    lines = _header(summary)
    lines.append("")
    if summary["forks"] == 0:
        lines.append("no forks were traced: nothing to report")
        return "\n".join(lines)
    if summary["usable"] == 0:
        lines.append(f"no usable forks: all {summary['forks']} traced forks failed, were partial or were out of order")
        return "\n".join(lines + _samples(summary))
    lines += _phase_table(summary)
    lines += _histograms(summary)
    lines += _samples(summary)
    return "\n".join(lines)


def render_json(summary: Mapping[str, Any]) -> str:
    """The summary as JSON; NaN never appears (unmeasured values are null)."""
    return json.dumps(summary, indent=2, allow_nan=False, default=str)


FORMATS = ("text", "json", "markdown", "folded")


def render_folded(rec: Recording) -> str:
    """Sampled kernel stacks as folded lines ("a;b;c count"), for flamegraph.pl.

    Phases are merged; each stack's phase is its first frame, as
    "dup_mmap[mt_dup]", so a flame graph still separates them.
    """
    sample = rec.meta.get("sample") or {}
    stacks = sample.get("stacks") or []
    if not stacks:
        raise TracerError(f"{rec.path}: no sampled stacks in this recording (record with --sample HZ)")
    counts: dict[str, int] = {}
    for s in stacks:
        line = f"dup_mmap[{s.get('phase', '?')}];{s['stack']}"
        counts[line] = counts.get(line, 0) + int(s["count"])
    return "\n".join(f"{line} {n}" for line, n in sorted(counts.items()))


@dataclass
class ReportInput:
    """What a report is made from: the recordings, their groups' attribution, and an optional prediction."""

    recordings: list[Recording]
    attribution: Attribution
    prediction: dict[str, Any] | None = None

    @property
    def single(self) -> bool:
        return len(self.recordings) == 1


def build_report(paths: Sequence[Path | str] | Path | str, predict: Sequence[Path | str] | None = None) -> ReportInput:
    """Load FILE... or a directory, group, attribute; with `predict`, apply these costs to those recordings."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    recs = load_recordings(paths)
    att = attribute_groups(group_recordings(recs))
    prediction = None
    if predict:
        target = attribute_groups(group_recordings(load_recordings(predict)))
        prediction = predict_costs(att, target)
    return ReportInput(recs, att, prediction)


def report_doc(inp: ReportInput) -> dict[str, Any]:
    """The JSON document: one recording's summary with the attribution keys, or a sweep over groups."""
    fit = fit_doc(inp.attribution)
    groups = [group_doc(g, inp.attribution.fit.missing) for g in inp.attribution.groups]
    if inp.single:
        doc = summarize(inp.recordings[0])
        g = groups[0]
        if doc["samples"] is not None and g["samples_by_component"]:
            doc["samples"]["components"] = g["samples_by_component"]["components"]
        for key in ("attribution", "attribution_estimate", "attribution_notes", "disagreements", "estimates_missing",
                    "model_check", "cycle", "cycle_note", "functions"):
            doc[key] = g[key]
        doc["fit"] = fit
    else:
        first = inp.recordings[0].meta
        doc = {
            "recordings": [str(r.path) for r in inp.recordings],
            "kernels": sorted({str(_field(r.meta, "kernel", "release")) for r in inp.recordings}),
            "host": first.get("host") if isinstance(first.get("host"), dict) else None,
            "groups": groups,
            "table": sweep_doc(inp.attribution),
            "fit": fit,
        }
    doc["prediction"] = inp.prediction
    doc["answer"] = _clean(answer_doc(inp.attribution, [r.meta for r in inp.recordings]))
    return doc


def render_doc(inp: ReportInput, doc: Mapping[str, Any], fmt: str) -> str:
    if fmt == "json":
        return render_json(doc)
    answer = render_answer(doc["answer"], fmt) + [""] if doc.get("answer") else []
    if inp.single and fmt == "text":
        title, _, rest = render_text(doc).partition("\n")
        lines = [title, "", *answer, rest] if doc["usable"] else [title, rest]
        if doc["usable"]:
            lines += render_group({**doc, "group": inp.attribution.groups[0].key.label(),
                                   "samples_by_component": group_doc(inp.attribution.groups[0], None)["samples_by_component"]})
            lines += render_fit(doc["fit"])
    else:
        groups = doc["groups"] if not inp.single else [group_doc(g, inp.attribution.fit.missing) for g in inp.attribution.groups]
        rows = doc["table"] if not inp.single else sweep_doc(inp.attribution)
        kernels = ", ".join(doc.get("kernels") or [str(doc.get("kernel"))])
        head = f"forktrace report: {len(inp.recordings)} recordings in {len(groups)} groups (kernel {kernels})"
        lines = [("# " if fmt == "markdown" else "") + head, "", *answer]
        lines += ["## The evidence" if fmt == "markdown" else "the evidence"]
        lines += render_sweep(rows, groups, fmt)
        lines += render_sweep_functions(groups, fmt)
        lines += render_fit(doc["fit"], fmt)
        for g in groups:
            lines += render_group(g, fmt)
    if doc.get("prediction"):
        lines += render_prediction(doc["prediction"], fmt)
    return "\n".join(lines)


def render_report(
    paths: Sequence[Path | str] | Path | str, fmt: str, predict: Sequence[Path | str] | None = None
) -> str:
    """Load and render a report as `fmt` ('text', 'json', 'markdown' or 'folded')."""
    if fmt not in FORMATS:
        raise TracerError(f"report format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "folded":
        recs = load_recordings([paths] if isinstance(paths, (str, Path)) else paths)
        return "\n".join(render_folded(rec) for rec in recs)
    inp = build_report(paths, predict)
    return render_doc(inp, report_doc(inp), fmt)

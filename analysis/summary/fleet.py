"""The fleet report: a FleetSummary as a JSON-ready document, rendered as text or markdown.

Per group (workload, layout, VMAs, and the `--by` keys): runs, hosts and
kernels, fork counts (failed, partial, out of order: excluded from latencies),
per phase the percentiles from the sketch, mean, stdev, min and max, the log2
histograms, and the kernel functions sampled most, by self samples. What runs
lack (older recording formats) is said once, above the groups.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from typing import Any, Mapping

from analysis.recording import PHASES
from analysis.report.stats import format_log2_histogram
from analysis.summary.group import COLUMNS, FleetSummary, GroupKey, GroupSummary
from analysis.summary.run import GROUP_KEYS, LACKABLE
from analysis.summary.sketch import ALPHA

__all__ = ["FLEET_FORMATS", "fleet_doc", "render_fleet", "group_label"]

FLEET_FORMATS = ("text", "json", "markdown")
TOP_FUNCTIONS = 5
COLUMN_DOC: dict[str, str] = {
    **{p.name: p.spans for p in PHASES},
    "dup_mmap_oncpu": "dup_mmap less its off-CPU time",
    "clone": "clone syscall entry -> exit in the parent",
    "exit_mmap": "the child's exit_mmap",
    "wait": "the parent's wait for the child",
    "stores": "VMAs copied per fork (a count, not ns)",
    "leaves": "child leaves written per fork (a count, not ns)",
}
LATENCIES = tuple(c for c in COLUMNS if c not in ("stores", "leaves"))
_OFFSET = re.compile(r"\+0x[0-9a-f]+(/0x[0-9a-f]+)?$")


def group_key_doc(by: tuple[str, ...], key: GroupKey) -> dict[str, Any]:
    names = (*GROUP_KEYS, *(b for b in by if b not in GROUP_KEYS))
    return dict(zip(names, key))


def group_label(by: tuple[str, ...], key: GroupKey) -> str:
    workload, layout, vmas, *rest = key
    label = f"spawn {vmas} extra VMAs" + (f", {layout}" if layout else "") if workload == "spawn" else f"{workload}, {vmas} VMAs"
    extra = [b for b in by if b not in GROUP_KEYS]
    return label + "".join(f", {name}={value if value is not None else '(none)'}" for name, value in zip(extra, rest))


def _column_doc(g: GroupSummary, name: str) -> dict[str, Any]:
    c = g.columns[name]
    return {
        "n": c.n, "missing": c.missing,
        "p50": c.quantile(0.5) if c.n else None, "p90": c.quantile(0.9) if c.n else None,
        "p99": c.quantile(0.99) if c.n else None,
        "mean": c.mean, "stdev": c.stdev, "min": c.min, "max": c.max,
    }


def _unit(c: Any) -> str:
    p50 = c.quantile(0.5) if c.n else None
    return "usecs" if p50 is not None and p50 >= 10_000 else "nsecs"


def _top_functions(g: GroupSummary) -> dict[str, Any] | None:
    if not g.stacks:
        return None
    per_phase: dict[str, Counter[str]] = defaultdict(Counter)
    for (phase, stack), count in g.stacks.items():
        leaf = _OFFSET.sub("", stack.split(";")[-1].strip()) or "[unknown]"
        per_phase[phase][leaf] += count
    names = [p.name for p in PHASES]
    order = [p for p in names if p in per_phase] + sorted(p for p in per_phase if p not in names)
    out = {}
    for phase in order:
        counts = per_phase[phase]
        total = sum(counts.values())
        out[phase] = {
            "samples": total,
            "top": [{"function": fn, "self": n, "share": n / total} for fn, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:TOP_FUNCTIONS]],
        }
    return {"hz": sorted(g.sample_hz), "distinct_stacks": len(g.stacks), "phases": out}


def fleet_doc(summary: FleetSummary, units: bool = True) -> dict[str, Any]:
    """Everything the fleet report shows, as plain JSON-ready data (ns; None where unknown)."""
    groups = []
    lacks: Counter[str] = Counter()
    runs = hosts = 0
    all_hosts: set[str] = set()
    kernels: set[str] = set()
    for key, g in summary.ordered_groups():
        lacks.update(g.lacks)
        all_hosts |= g.hosts
        kernels |= g.kernels
        runs += g.runs
        doc = {
            "key": group_key_doc(summary.by, key),
            "label": group_label(summary.by, key),
            "runs": g.runs,
            "hosts": len(g.hosts),
            "kernels": sorted(g.kernels),
            "levels": dict(sorted(g.levels.items())),
            "counts": dict(g.counts),
            "methods": {p: dict(sorted(m.items())) for p, m in sorted(g.methods.items())},
            "lacks": dict(sorted(g.lacks.items())),
            "columns": {c: _column_doc(g, c) for c in COLUMNS},
            "histograms": {
                c: {"unit": (u := _unit(g.columns[c])), "buckets": [list(b) for b in g.columns[c].histogram(u).buckets()]}
                for c in LATENCIES if g.columns[c].n
            },
            "samples": _top_functions(g),
        }
        if units:
            doc["units"] = [g.units[r].as_dict() for r in sorted(g.units)]
        groups.append(doc)
    hosts = len(all_hosts)
    return {
        "report": "fleet",
        "by": list(summary.by),
        "files": summary.files,
        "runs": runs,
        "hosts": hosts,
        "kernels": sorted(kernels),
        "forks": sum(g["counts"]["forks"] for g in groups),
        "skipped": [{"file": f, "reason": r} for f, r in sorted(summary.skipped.items())],
        "lacks": {c: {"runs": n, "effect": LACKABLE[c]} for c, n in sorted(lacks.items())},
        "quantiles": {"relative_error": ALPHA, "rank": "floor(q * (n - 1)) of the values (numpy method='lower')"},
        "groups": groups,
    }


def format_ns(value: float | None) -> str:
    from analysis.report.summary import format_ns as fmt

    return fmt(value)


def render_fleet(doc: Mapping[str, Any], fmt: str = "text") -> str:
    if fmt == "json":
        return json.dumps(doc, indent=2, allow_nan=False, default=str)
    md = fmt == "markdown"
    kernels = ", ".join(doc["kernels"]) or "unknown"
    head = (
        f"forktrace fleet report: {doc['runs']} runs in {doc['files']} files on {doc['hosts']} hosts, "
        f"{doc['forks']:,} forks (kernel {kernels})"
    )
    lines = [("# " if md else "") + head, ""]
    by = ", ".join(["workload", "layout", "VMAs", *[b for b in doc["by"] if b not in GROUP_KEYS]])
    lines.append(
        f"{len(doc['groups'])} groups by {by}; percentiles from log sketches, within "
        f"{100 * doc['quantiles']['relative_error']:g}% of the value of rank floor(q (n-1))"
    )
    if doc["skipped"]:
        lines.append(f"skipped {len(doc['skipped'])} unreadable files (each named on stderr)")
    for column, lack in doc["lacks"].items():
        lines.append(f"{lack['runs']} runs lack {column} (older recording format): {lack['effect']}")
    for g in doc["groups"]:
        lines += [""] + _render_group(g, md)
    return "\n".join(lines)


def _render_group(g: Mapping[str, Any], md: bool) -> list[str]:
    c = g["counts"]
    levels = ", ".join(f"{lvl} ({n})" if len(g["levels"]) > 1 else lvl for lvl, n in g["levels"].items())
    excluded = ", ".join(f"{k} {c[k]:,}" for k in ("failed", "partial", "unordered") if c[k])
    out = [
        ("## " if md else "== ") + g["label"] + ("" if md else " =="),
        "",
        f"runs {g['runs']} on {g['hosts']} hosts, kernel {', '.join(g['kernels']) or 'unknown'}, level {levels}",
        f"forks {c['forks']:,} traced, {c['usable']:,} used for latencies" + (f" (excluded: {excluded})" if excluded else ""),
    ]
    if c["mt_dup_clamped"]:
        out.append(f"mt_dup clamped to 0 in {c['mt_dup_clamped']:,} forks")
    stores, leaves = g["columns"]["stores"], g["columns"]["leaves"]
    if stores["n"]:
        out.append(f"VMAs copied per fork: min {stores['min']:.0f}, p50 ~{stores['p50']:.0f}, max {stores['max']:.0f}; "
                   f"leaves written: p50 ~{leaves['p50']:.0f}")
    out.append("")
    header = ("phase", "p50", "p90", "p99", "mean", "stdev", "max", "n", "method")
    rows = []
    for name in LATENCIES:
        col = g["columns"][name]
        if not col["n"]:
            continue
        methods = g["methods"].get(name, {})
        method = ", ".join(methods) if methods else ("cycle" if name in ("clone", "exit_mmap", "wait") else "derived")
        rows.append((name, *(format_ns(col[k]) for k in ("p50", "p90", "p99", "mean", "stdev", "max")), f"{col['n']:,}", method))
    out += table_lines(header, rows, md)
    hist = g["histograms"].get("dup_mmap")
    if hist and hist["buckets"]:
        from analysis.report.stats import Log2Histogram

        out += ["", f"dup_mmap: parent lock -> parent unlock (n={g['columns']['dup_mmap']['n']:,})"]
        text = format_log2_histogram(Log2Histogram.from_buckets(hist["unit"], hist["buckets"]))
        out += ["```", text, "```"] if md else [text]
    samples = g["samples"]
    if samples:
        out += ["", f"top kernel functions by self samples ({', '.join(map(str, samples['hz'])) or '?'} Hz, "
                f"{samples['distinct_stacks']:,} distinct stacks):"]
        for phase, entry in samples["phases"].items():
            out.append(f"  {phase} ({entry['samples']:,} samples):")
            for f in entry["top"]:
                out.append(f"    {f['self']:>9,}  {100 * f['share']:5.1f}%  {f['function']}")
    return out


def table_lines(header: tuple[str, ...], rows: list[tuple[str, ...]], md: bool) -> list[str]:
    if md:
        return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"] + [
            "| " + " | ".join(r) + " |" for r in rows
        ]
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]

    def line(r: tuple[str, ...]) -> str:
        return "  ".join(x.ljust(w) if i in (0, len(r) - 1) else x.rjust(w) for i, (x, w) in enumerate(zip(r, widths))).rstrip()

    return [line(header)] + [line(r) for r in rows]

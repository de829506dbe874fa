"""The attribution part of `tracer report`: JSON-ready data and its text/Markdown rendering.

Built from analysis.attribution (pure data); this module only arranges and
formats. Every figure carries the estimate it came from, and a missing
estimate carries its reason.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.attribution.attribute import Attribution, GroupAttribution
from analysis.attribution.components import COMPONENTS, UNIT_DOC, COMPONENT_UNITS
from analysis.attribution.cycle import CYCLE_PARTS
from analysis.attribution.functions import MEASURED, UNLISTED, work_doc
from analysis.recording import PHASES
from analysis.report.tables import render_table

__all__ = ["group_doc", "fit_doc", "sweep_doc", "functions_doc", "render_group", "render_functions", "render_fit",
           "render_sweep", "render_sweep_functions", "render_prediction", "format_ns"]

SWEEP_PHASES = tuple(p.name for p in PHASES if not p.derived)


def format_ns(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    a = abs(value)
    if a < 1e3:
        return f"{value:.0f} ns"
    if a < 1e6:
        return f"{value / 1e3:.3g} us" if a < 1e5 else f"{value / 1e3:.0f} us"
    return f"{value / 1e6:.3g} ms"


def _num(v: float | None, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:.{digits}g}" if abs(v) < 10 ** digits else f"{v:,.0f}"


def _rate(per_sec: float | None) -> str:
    if per_sec is None or not math.isfinite(per_sec):
        return "-"
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if per_sec >= div:
            return f"{per_sec / div:.3g}{suffix}"
    return f"{per_sec:.3g}"


def _clean(x: Any) -> Any:
    """NaN/inf -> None, numpy scalars -> Python, recursively: JSON without NaN."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(x) else None
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def group_doc(ga: GroupAttribution, fit_missing: str | None) -> dict[str, Any]:
    """The per-group keys: attribution, samples (components), model_check, cycle, estimates."""
    est = ga.sample_est
    samples = None
    if est is not None and ga.samples is not None:
        samples = {
            "samples": est.samples,
            "hz": ga.samples.hz[0] if len(set(map(str, ga.samples.hz))) == 1 else ga.samples.hz,
            "components": {c: est.shares[c] for c in COMPONENTS},
            "windows": est.window_samples,
        }
    return _clean({
        "group": ga.key.label(),
        "workload": ga.key.workload,
        "layout": ga.key.layout,
        "vmas": ga.key.vmas,
        "recordings": ga.paths,
        "attribution": ga.components or None,
        "attribution_estimate": ga.estimate,
        "attribution_notes": ga.corrections,
        "disagreements": ga.disagreements,
        "estimates_missing": {
            "fit": fit_missing,
            "samples": ga.samples_missing,
            "counts": ga.counts_missing,
        },
        "counts": ga.counts,
        "model_check": ga.model_check,
        "samples_by_component": samples,
        "cycle": ga.cycle,
        "cycle_note": ga.cycle_note,
        "functions": functions_doc(ga),
    })


SHOWN_SHARE = 0.005  # functions below this share of dup_mmap are summed in the text (all are in the JSON)
HOWS_SHOWN = 6  # what the time is spent on, over all functions, in the text
UNNAMED_LIMIT = 0.20  # a bucket without a function's name above this share of dup_mmap is flagged


def functions_doc(ga: GroupAttribution) -> dict[str, Any] | None:
    """The samples' split by kernel function (analysis.attribution.functions): ns per VMA copied, intervals."""
    est = ga.sample_est
    if est is None:
        return None
    total, vmas = est.total_ns, est.vmas
    per_vma = (lambda ns: ns / vmas) if vmas and math.isfinite(vmas) else (lambda ns: None)
    components = est.aggregate(lambda k: f"{k[1]}\0{k[3]}")
    rows = []
    for name, a in est.functions().items():
        w = work_doc(name)
        how = {h: b.ns_per_fork / a.ns_per_fork for h, b in est.within(name).items() if a.ns_per_fork > 0}
        comps = {key.split("\0")[1]: c.ns_per_fork for key, c in components.items() if key.split("\0")[0] == name}
        rows.append({
            "function": name,
            "doc": w.doc,
            "per": w.per,
            "components": {c: ns / a.ns_per_fork for c, ns in comps.items()} if a.ns_per_fork > 0 else {},
            "measured": name in MEASURED,
            "samples": a.samples,
            "share": a.ns_per_fork / total if total else None,
            "ns_per_fork": a.ns_per_fork,
            "ci95": list(a.ci95),
            "ns_per_vma": per_vma(a.ns_per_fork),
            "ci95_per_vma": [per_vma(a.ci95[0]), per_vma(a.ci95[1])],
            "how": how,
        })
    hows = [{"how": h, "ns_per_vma": per_vma(a.ns_per_fork), "ci95_per_vma": [per_vma(a.ci95[0]), per_vma(a.ci95[1])],
             "share": a.ns_per_fork / total if total else None, "samples": a.samples} for h, a in est.hows().items()]
    unnamed = [r for r in rows if r["function"].startswith(UNLISTED) or r["function"] in ("unwound short", "unsampled window")]
    largest = max(unnamed, key=lambda r: r["share"] or 0.0, default=None)
    return {
        "vmas": vmas,
        "total_ns": total,
        "samples": est.samples,
        "runs": est.runs,
        "interval": est.interval,
        "functions": rows,
        "how": hows,
        "largest_unnamed": {"function": largest["function"], "share": largest["share"]} if largest else None,
        "unnamed_over_limit": bool(largest and (largest["share"] or 0.0) > UNNAMED_LIMIT),
    }


def fit_doc(a: Attribution) -> dict[str, Any]:
    return _clean(a.fit.as_dict())


def _phase_mean(ga: GroupAttribution, phase: str) -> float | None:
    col = f"{phase}_ns"
    if not len(ga.forks) or col not in ga.forks:
        return None
    v = ga.forks[col].to_numpy(dtype="float64")
    v = v[np.isfinite(v)]
    return float(v.mean()) if v.size else None


def _phase_p50(ga: GroupAttribution, phase: str) -> float | None:
    col = f"{phase}_ns"
    if not len(ga.forks):
        return None
    v = ga.forks[col].to_numpy(dtype="float64")
    v = v[np.isfinite(v)]
    return float(np.median(v)) if v.size else None


def sweep_doc(a: Attribution) -> list[dict[str, Any]]:
    """Per group: the seed's table measured here and the reviewer's VMAs-per-second normalisation."""
    rows = []
    for ga in a.groups:
        stores = float(ga.forks["stores"].median()) if len(ga.forks) else None
        fps = ga.forks_per_sec
        per_phase = {}
        for p in SWEEP_PHASES:
            mean = _phase_mean(ga, p)
            per_phase[p] = stores / (mean * 1e-9) if stores and mean else None
        per_component = {}
        for c in COMPONENTS:
            ns = (ga.components.get(c) or {}).get("ns_per_fork")
            per_component[c] = stores / (ns * 1e-9) if stores and ns else None
        rows.append(_clean({
            "group": ga.key.label(),
            "vmas": stores,
            "forks": int(len(ga.forks)),
            "forks_per_10s": 10 * fps if fps else None,
            "vmas_per_sec": fps * stores if fps and stores else None,
            "p50_ns": {p: _phase_p50(ga, p) for p in SWEEP_PHASES},
            "mean_ns": {p: _phase_mean(ga, p) for p in SWEEP_PHASES},
            "vmas_per_sec_of_phase": per_phase,
            "vmas_per_sec_of_component": per_component,
            "leaves": {"observed": ga.model_check.get("observed_leaves"), "model": ga.model_check.get("predicted_leaves")},
        }))
    return rows


# ------------------------------------------------------------------ rendering

WIDTH = 100


def _wrap(text: str) -> list[str]:
    return textwrap.wrap(text, WIDTH, initial_indent="  ", subsequent_indent="    ")


def render_group(g: Mapping[str, Any], fmt: str = "text") -> list[str]:
    """One group's attribution table and notes."""
    out = [""]
    mc = g["model_check"]
    title = f"attribution: {g['group']}" if fmt == "text" else f"### Attribution: {g['group']}"
    out.append(title)
    if mc.get("source") == "bulk_append":
        out += _wrap(f"model     child tree from bulk appends (before v6.8); leaves observed "
                     f"{_num(mc['observed_leaves'])}, model {_num(mc['predicted_leaves'])} (the node changes a "
                     "per-VMA probe sees)")
        out += _wrap(f"no component counts: {mc.get('reason')}") if mc.get("reason") else []
    elif mc.get("source"):
        line = (f"  model     parent tree from {mc['source'].replace('_', ' ')}; leaves observed "
                f"{_num(mc['observed_leaves'])}, model {_num(mc['predicted_leaves'])}")
        if mc.get("assumed_history_leaves") is not None:
            line += f" (a top-down mmap history would give {mc['assumed_history_leaves']})"
        out.append(line)
    else:
        out.append(f"  model     no counts: {mc.get('reason')}")
    missing = g["estimates_missing"]
    sbc = g["samples_by_component"]
    if sbc:
        out.append(f"  samples   {sbc['samples']} inside dup_mmap at {sbc['hz']} Hz (windows: "
                   + ", ".join(f"{w} {n}" for w, n in sbc["windows"].items()) + ")")
    else:
        out.append(f"  samples   missing: {missing['samples']}")
    if missing["fit"]:
        out.append(f"  fit       missing: {missing['fit']}")
    comps = g["attribution"]
    if not comps:
        out.append("  no attribution: neither estimate is available for this group")
        return out
    out.append(f"  estimate  {g['attribution_estimate']}" + (" (the fit's per-group split is under 'fit')"
                                                         if g["attribution_estimate"] == "samples" else ""))
    header = ["component", "share", "untraced", "ns/fork", "95% CI", "ns/unit", "unit"]
    rows = []
    for c in COMPONENTS:
        e = comps.get(c) or {}
        if e.get("ns_per_fork") is None:
            note = f"inseparable: {e['inseparable']}" if e.get("inseparable") else (e.get("note") or "-")
            rows.append([c, "-", "-", "-", "-", "-", note[:40]])
            continue
        ci = e.get("ci95")
        rows.append([
            c,
            f"{100 * e['share']:.1f}%" if e.get("share") is not None else "-",
            f"{100 * e['share_untraced']:.1f}%" if e.get("share_untraced") is not None else "-",
            format_ns(e["ns_per_fork"]),
            f"{format_ns(ci[0])}-{format_ns(ci[1])}" if ci else "-",
            _num(e.get("ns_per_unit")) if e.get("ns_per_unit") is not None else "-",
            UNIT_DOC.get(COMPONENT_UNITS[c], COMPONENT_UNITS[c]).split(" (")[0] if COMPONENT_UNITS[c] != "forks" else "fork",
        ])
    out += ["  " + line for line in render_table(header, rows, fmt)] if fmt == "text" else render_table(header, rows, fmt)
    for note in g["attribution_notes"] + g["disagreements"]:
        out += _wrap(f"note: {note}")
    if g["cycle"]:
        out.append("  cycle     " + ", ".join(f"{p} {format_ns(g['cycle'].get(p))}" for p in CYCLE_PARTS)
                   + f" (p50; from {g['cycle_note']})")
    out += render_functions(g.get("functions"), fmt)
    return out


def _how_text(how: Mapping[str, float], limit: int = 2) -> str:
    top = sorted(how.items(), key=lambda kv: -kv[1])[:limit]
    return ", ".join(f"{h} {100 * share:.0f}%" for h, share in top if share >= 0.05)


def render_functions(f: Mapping[str, Any] | None, fmt: str = "text") -> list[str]:
    """One group's split by kernel function: what the component table calls `other`, named."""
    if not f:
        return []
    out = ["", "  by function (samples):" if fmt == "text" else "#### By function (samples)"]
    out += _wrap(f"ns per VMA copied ({_num(f['vmas'], 6)} VMAs per fork) and share of dup_mmap; 95% CI: {f['interval']}")
    header = ["function", "ns/VMA", "95% CI", "share", "component", "spent on"]
    rows, rest, rest_share = [], 0, 0.0
    for r in f["functions"]:
        if (r["share"] or 0.0) < SHOWN_SHARE:
            rest += 1
            rest_share += r["share"] or 0.0
            continue
        ci = r["ci95_per_vma"]
        comps = "+".join(c for c, _ in sorted(r["components"].items(), key=lambda kv: -kv[1]))
        rows.append([r["function"], _num(r["ns_per_vma"]), f"{_num(ci[0], 2)}-{_num(ci[1], 2)}" if ci[0] is not None else "-",
                     f"{100 * r['share']:.1f}%" if r["share"] is not None else "-", comps,
                     "measured" if r["measured"] else _how_text(r["how"])])
    if rest:
        rows.append([f"({rest} more)", "-", "-", f"{100 * rest_share:.1f}%", "", f"each under {100 * SHOWN_SHARE:g}%"])
    table = render_table(header, rows, fmt, left=(0, 4, 5))
    out += ["  " + line for line in table] if fmt == "text" else table
    hows = [h for h in f["how"] if h["ns_per_vma"] is not None][:HOWS_SHOWN]
    if hows:
        out += _wrap("spent on, over all functions (ns/VMA, 95% CI): " + ", ".join(
            f"{h['how']} {_num(h['ns_per_vma'])} ({_num(h['ci95_per_vma'][0], 2)}-{_num(h['ci95_per_vma'][1], 2)})"
            for h in hows))
    if f["unnamed_over_limit"]:
        u = f["largest_unnamed"]
        out += _wrap(f"note: {u['function']} is {100 * u['share']:.0f}% of dup_mmap without a function's name: "
                     "extend the tables in analysis/attribution/functions.py")
    return out


SWEEP_FUNCTIONS = 10  # rows of the functions-vs-VMAs table
SWEEP_COLUMNS = 9  # groups per table (a sweep's VMA counts, per layout)


def render_sweep_functions(groups: Sequence[Mapping[str, Any]], fmt: str = "text") -> list[str]:
    """ns per VMA of the largest functions vs the VMA count: how each one's cost moves (the curve's bend)."""
    docs = [(g, g["functions"]) for g in groups if g.get("functions")]
    if not docs:
        return []
    weight: dict[str, float] = {}
    for _, f in docs:
        for r in f["functions"]:
            if not r["measured"]:
                weight[r["function"]] = weight.get(r["function"], 0.0) + (r["share"] or 0.0)
    top = sorted(weight, key=lambda n: -weight[n])[:SWEEP_FUNCTIONS]
    out = ["", "ns per VMA copied, by function, vs VMAs copied per fork (samples; 95% CI in the JSON)" if fmt == "text"
           else "### ns per VMA copied, by function (samples)"]
    layouts: dict[str, list] = {}
    for g, f in docs:
        layouts.setdefault(g.get("layout") or "", []).append((g, f))
    for layout, members in layouts.items():
        members.sort(key=lambda gf: gf[1]["vmas"] or 0)
        for i in range(0, len(members), SWEEP_COLUMNS):
            chunk = members[i : i + SWEEP_COLUMNS]
            header = ["function" + (f" ({layout})" if layout else ""), *(_num(f["vmas"], 6) for _, f in chunk)]
            body = []
            for name in top:
                cells = []
                for _, f in chunk:
                    r = next((r for r in f["functions"] if r["function"] == name), None)
                    cells.append(_num(r["ns_per_vma"]) if r else "-")
                body.append([name, *cells])
            body.append(["runs", *(str(f["runs"]) for _, f in chunk)])
            out += render_table(header, body, fmt)
    return out


def render_fit(fit: Mapping[str, Any], fmt: str = "text") -> list[str]:
    out = ["", "fit: on-CPU dup_mmap per fork on the model's counts, across layouts" if fmt == "text" else "### Fit"]
    if fit.get("missing"):
        out.append(f"  missing: {fit['missing']}")
        return out
    terms = []
    for name, c in fit["costs"].items():
        ci = c["ci95"] or [None, None]
        value = f"{format_ns(c['ns_per_unit'])} ({format_ns(ci[0])}-{format_ns(ci[1])})"
        terms.append(value if name == "fixed" else f"{value} x {c['unit']}")
    out.append("  dup_mmap = " + " + ".join(terms))
    r2 = f"{fit['r2']:.3f}" if fit.get("r2") is not None else "-"
    r2c = f"{fit['r2_cells']:.4f}" if fit.get("r2_cells") is not None else "-"
    out += _wrap(f"R2 {r2} over {fit['n']} forks, {r2c} over the {fit['cells']} layouts' means; {fit['method']}")
    for m in fit["inseparable"]:
        out += _wrap(f"inseparable: {', '.join(m['members'])} move together ({m['reason']}): one cost per "
                     f"{m['unit']} covers them all; the fit cannot split it")
    for f in fit["folded_into_fixed"]:
        out.append(f"  folded into fixed: {f['count']} ({f['reason']})")
    header = ["VMAs", "forks", "measured", "fitted", "residual", "misfit"]
    rows = [[_num(r["vmas"], 6), str(r["forks"]), format_ns(r["measured_ns"]), format_ns(r["fitted_ns"]),
             f"{r['residual_pct']:+.1f}%" if r["residual_pct"] is not None else "-", "yes" if r["misfit"] else ""]
            for r in fit["residuals"]]
    out += ["  " + line for line in render_table(header, rows, fmt)] if fmt == "text" else render_table(header, rows, fmt)
    for n in fit["notes"]:
        out += _wrap(f"note: {n}")
    return out


def _short(label: str) -> str:
    """'spawn 1600 extra VMAs, gapped' -> 'spawn 1600, gapped': the tables' first column stays narrow."""
    return label.replace(" extra VMAs", "")


def render_sweep(rows: Sequence[Mapping[str, Any]], groups: Sequence[Mapping[str, Any]], fmt: str = "text") -> list[str]:
    """Several groups: the seed's table, VMAs/s per phase and component, shares, per-unit costs."""
    out = ["", "the seed's table measured here (dup_mmap per fork; forks/10 s from the workload's own rate)"
           if fmt == "text" else "### The seed's table, measured here"]
    header = ["group", "forks", "forks/10s", "VMAs/s", *SWEEP_PHASES, "leaves"]
    body = []
    for r in rows:
        p = r["p50_ns"]
        lv = r["leaves"]
        body.append([_short(r["group"]), str(r["forks"]), _num(r["forks_per_10s"], 6) if r["forks_per_10s"] else "-",
                     _rate(r["vmas_per_sec"]), *(format_ns(p[x]) for x in SWEEP_PHASES),
                     f"{_num(lv['observed'])}/{_num(lv['model'])}"])
    out += render_table(header, body, fmt)
    out.append("  (phases: p50; the attribution below splits the mean; leaves: observed/model)")
    out += ["", "VMAs copied per second of each phase and component (the reviewer's normalisation)"
            if fmt == "text" else "### VMAs copied per second of each phase and component"]
    header = ["group", *SWEEP_PHASES, *[c for c in COMPONENTS if c != "fixed"]]
    body = [[_short(r["group"]), *(_rate(r["vmas_per_sec_of_phase"][p]) for p in SWEEP_PHASES),
             *(_rate(r["vmas_per_sec_of_component"][c]) for c in COMPONENTS if c != "fixed")] for r in rows]
    out += render_table(header, body, fmt)
    out += ["", "share of dup_mmap per component (estimate)" if fmt == "text" else "### Share per component"]
    header = ["group", *COMPONENTS, "estimate"]
    body = []
    for g in groups:
        a = g["attribution"] or {}
        body.append([_short(g["group"]), *(f"{100 * a[c]['share']:.1f}%" if a.get(c) and a[c].get("share") is not None else "-"
                                   for c in COMPONENTS), g["attribution_estimate"] or "-"])
    out += render_table(header, body, fmt)
    out += ["", "ns per unit of work (95% CI)" if fmt == "text" else "### ns per unit of work (95% CI)"]
    per_unit = [c for c in COMPONENTS if COMPONENT_UNITS[c] != "forks"]
    out += _wrap("units: " + "; ".join(f"{c} per {UNIT_DOC[COMPONENT_UNITS[c]].split(' (')[0]}" for c in per_unit))
    header = ["group", *per_unit]
    body = []
    for g in groups:
        a = g["attribution"] or {}
        cells = []
        for c in per_unit:
            e = a.get(c) or {}
            ci = e.get("ci95_per_unit")
            cells.append(f"{_num(e['ns_per_unit'])} ({_num(ci[0], 2)}-{_num(ci[1], 2)})" if e.get("ns_per_unit") is not None
                         and ci else "-")
        body.append([_short(g["group"]), *cells])
    out += render_table(header, body, fmt)
    return out


def render_prediction(pred: Mapping[str, Any], fmt: str = "text") -> list[str]:
    out = ["", "prediction: the source's costs applied to these layouts" if fmt == "text" else "### Prediction"]
    if pred.get("missing"):
        return out + [f"  missing: {pred['missing']}"]
    out.append(f"  costs: {pred['method']}")
    header = ["group", "measured", "predicted", "95% CI", "error"]
    body = [[r["group"], format_ns(r["measured_ns"]), format_ns(r["predicted_ns"]),
             f"{format_ns(r['ci95'][0])}-{format_ns(r['ci95'][1])}" if r.get("ci95") else "-",
             f"{r['error_pct']:+.1f}%" if r.get("error_pct") is not None else (r.get("why") or "-")]
            for r in pred["groups"]]
    return out + render_table(header, body, fmt)

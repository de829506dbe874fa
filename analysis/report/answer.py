"""The report's first screen: the answer, then the evidence (tables and per-group detail follow it).

What dominates dup_mmap (named kernel functions, ns per VMA, intervals), what
dominates the spawn cycle, how the per-VMA cost moves with the VMA count and
which functions move it, and how sure each statement is. A change between two
VMA counts is "measured" when its bootstrap interval excludes 0 ("~" when it
does not); a cause is a "hypothesis" unless the recordings carry a designed
experiment (metadata key `experiment`) that varied it.

answer_doc() is plain data (the JSON's `answer` key); render_answer() is text
or Markdown.
"""

from __future__ import annotations

import math
import textwrap
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.attribution.attribute import Attribution, GroupAttribution
from analysis.attribution.functions import MEASURED

__all__ = ["answer_doc", "render_answer", "TOP", "MOVERS", "CAUSES"]

TOP = 5  # functions named in the answer
MOVERS = 4  # functions whose per-VMA cost moved most, per direction
LOADED = 0.05  # off-CPU share of dup_mmap above which the answer warns of a loaded host
NOT_WORK = ("tracer", "off CPU", "lock gap", "unsampled window", "interrupts")


def _sampled(att: Attribution) -> list[GroupAttribution]:
    return [g for g in att.groups if g.sample_est is not None and len(g.forks)]


def _vmas(g: GroupAttribution) -> float:
    return float(g.sample_est.vmas) if g.sample_est is not None else float(g.forks["stores"].mean())


def _ci(draws: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(draws, [2.5, 97.5]) if len(draws) else (math.nan, math.nan)
    return float(lo), float(hi)


def _work_ns(g: GroupAttribution) -> tuple[float, np.ndarray]:
    """On-CPU dup_mmap without the tracer: what an untraced kernel would run, per fork, with draws."""
    est = g.sample_est
    fn = est.functions()
    keep = [a for name, a in fn.items() if name not in ("tracer", "off CPU")]
    point = sum(a.ns_per_fork for a in keep)
    n = min(len(a.draws) for a in keep) if keep else 0
    draws = np.sum([a.draws[:n] for a in keep], axis=0) if keep else np.zeros(0)
    return point, draws


def _phases(g: GroupAttribution) -> dict[str, Any]:
    """Where dup_mmap's time goes by phase (the bracket's timestamps, no sampling needed): shares of its mean."""
    f = g.forks
    total = float(f["dup_mmap_ns"].mean())
    shares = {p: float(f[f"{p}_ns"].mean()) / total if total > 0 and f"{p}_ns" in f else None
              for p in ("mt_dup", "vma_loop", "tail")}
    return {"group": g.key.label(), "vmas": float(f["stores"].median()), "dup_mmap_p50_ns": float(f["dup_mmap_ns"].median()),
            "shares_of_mean": shares, "vma_step_p50_ns": float(f["vma_step_ns"].median()) if "vma_step_ns" in f else None}


def _dominant(g: GroupAttribution) -> dict[str, Any]:
    est = g.sample_est
    vmas = _vmas(g)
    work, _ = _work_ns(g)
    fn = est.functions()
    rows = []
    for name, a in fn.items():
        if name in NOT_WORK or name in MEASURED:
            continue
        how = sorted(((h, b.ns_per_fork / a.ns_per_fork) for h, b in est.within(name).items() if a.ns_per_fork > 0),
                     key=lambda kv: -kv[1])
        rows.append({
            "function": name,
            "ns_per_vma": a.ns_per_fork / vmas,
            "ci95_per_vma": [a.ci95[0] / vmas, a.ci95[1] / vmas],
            "share_of_work": a.ns_per_fork / work if work else None,
            "spent_on": [{"how": h, "share": s} for h, s in how[:2] if s >= 0.1],
        })
    rows = rows[:TOP]
    named = sum(r["share_of_work"] or 0.0 for r in rows)
    tracer = fn.get("tracer")
    off = fn.get("off CPU")
    return {
        "group": g.key.label(),
        "vmas": vmas,
        "work_ns_per_vma": work / vmas,
        "top": rows,
        "top_share": named,
        "tracer_ns_per_vma": tracer.ns_per_fork / vmas if tracer else 0.0,
        "tracer_share": tracer.ns_per_fork / est.total_ns if tracer and est.total_ns else 0.0,
        "offcpu_share": off.ns_per_fork / est.total_ns if off and est.total_ns else 0.0,
        "interval": est.interval,
    }


def _curve(small: GroupAttribution, large: GroupAttribution) -> dict[str, Any]:
    """Per-VMA cost at the fewest and the most VMAs, and the functions whose per-VMA cost moved most."""
    vs, vl = _vmas(small), _vmas(large)
    ws, ds = _work_ns(small)
    wl, dl = _work_ns(large)
    n = min(len(ds), len(dl))
    change = (dl[:n] / vl) / (ds[:n] / vs) - 1 if n else np.zeros(0)
    fs, fl = small.sample_est.functions(), large.sample_est.functions()
    moves = []
    for name in set(fs) | set(fl):
        if name in NOT_WORK or name in MEASURED:
            continue
        a, b = fs.get(name), fl.get(name)
        pa = a.ns_per_fork / vs if a else 0.0
        pb = b.ns_per_fork / vl if b else 0.0
        da = a.draws / vs if a else np.zeros(len(b.draws))
        db = b.draws / vl if b else np.zeros(len(a.draws))
        m = min(len(da), len(db))
        lo, hi = _ci(db[:m] - da[:m])
        moves.append({"function": name, "from_ns_per_vma": pa, "to_ns_per_vma": pb, "delta_ns_per_vma": pb - pa,
                      "ci95": [lo, hi], "measured": bool(lo > 0 or hi < 0)})
    grew = sorted((m for m in moves if m["delta_ns_per_vma"] > 0), key=lambda m: -m["delta_ns_per_vma"])[:MOVERS]
    fell = sorted((m for m in moves if m["delta_ns_per_vma"] < 0), key=lambda m: m["delta_ns_per_vma"])[:MOVERS]
    lo, hi = _ci(change)
    return {
        "layout": small.key.layout,
        "from_vmas": vs,
        "to_vmas": vl,
        "from_ns_per_vma": ws / vs,
        "to_ns_per_vma": wl / vl,
        "change": (wl / vl) / (ws / vs) - 1 if ws else None,
        "change_ci95": [lo, hi],
        "measured": bool(lo > 0 or hi < 0),
        "grew": grew,
        "fell": fell,
    }


def _experiments(metas: Sequence[Mapping[str, Any]]) -> list[str]:
    """What designed experiments the recordings carry (metadata key `experiment`), as 'factor=value' labels."""
    out = []
    for meta in metas:
        exp = meta.get("experiment")
        if isinstance(exp, dict):
            label = ", ".join(f"{k}={v}" for k, v in sorted(exp.items()) if not isinstance(v, (dict, list)))
            out.append(label or "unnamed")
        elif exp:
            out.append(str(exp))
    return sorted(set(out))


# Candidate explanations, by the direction the per-VMA cost moved: hypotheses until an experiment varies the factor.
CAUSES = {
    "up": ("the functions that grew read or write each parent VMA or tree node once; they cost more once the "
           "parent's VMAs and the copied nodes no longer fit in the caches"),
    "down": ("the program's own VMAs (libraries, heap, stack) carry work the extra one-page VMAs do not "
             "(copy_page_range, anon_vma_fork) and per-fork costs; both spread over more VMAs as they are added"),
    "flat": ("the total per-VMA cost did not move beyond its interval here; the functions listed moved time "
             "between them"),
}


def _cause(c: Mapping[str, Any], experiments: Sequence[str]) -> dict[str, Any]:
    direction = "flat" if not c["measured"] else "up" if (c["change"] or 0.0) > 0 else "down"
    return {
        "label": "hypothesis" if not experiments else "tested by the designed experiments listed",
        "direction": direction,
        "text": CAUSES[direction],
        "tested_by": list(experiments) or None,
    }


def answer_doc(att: Attribution, metas: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The first screen as data: dominant functions, the cycle, the per-VMA curve, how sure."""
    groups = sorted(att.groups, key=lambda g: (g.key.layout, _vmas(g) if len(g.forks) else 0))
    sampled = _sampled(att)
    out: dict[str, Any] = {"groups": len(att.groups), "recordings": len(metas)}
    if not sampled:
        out["missing"] = ("no group was sampled (record with --level full or --sample HZ): "
                          "the report can time the phases but not name the functions")
    else:
        largest = max(sampled, key=_vmas)
        out["dominant"] = _dominant(largest)
    timed = [g for g in groups if len(g.forks)]
    if timed:
        out["phases"] = _phases(max(timed, key=lambda g: float(g.forks["stores"].mean())))
    with_cycle = [g for g in groups if g.cycle]
    if with_cycle:
        g = max(with_cycle, key=lambda g: _vmas(g) if len(g.forks) else 0)
        c = g.cycle
        out["cycle"] = {
            "group": g.key.label(),
            "p50_ns": c,
            "dup_mmap_of_clone": c["dup_mmap"] / c["clone"] if c.get("dup_mmap") and c.get("clone") else None,
        }
    experiments = _experiments(metas)
    out["experiments"] = experiments
    curves = []
    for layout in sorted({g.key.layout for g in sampled}):
        members = sorted((g for g in sampled if g.key.layout == layout), key=_vmas)
        if len(members) < 2 or _vmas(members[-1]) <= _vmas(members[0]):
            continue
        points = [_work_ns(g)[0] / _vmas(g) for g in members]
        # Where the per-VMA cost turns: the cheapest count splits the curve in a falling and a rising part.
        turn = int(np.argmin(points))
        ends = [0, turn, len(members) - 1] if 0 < turn < len(members) - 1 else [0, len(members) - 1]
        segments = [_curve(members[i], members[j]) for i, j in zip(ends, ends[1:])]
        for seg in segments:
            seg["cause"] = _cause(seg, experiments)
        curves.append({"layout": layout, "points": [{"vmas": _vmas(g), "ns_per_vma": p} for g, p in zip(members, points)],
                       "segments": segments})
    out["curves"] = curves
    disagree = [g for g in att.groups if g.disagreements]
    misfit = [r for r in (att.fit.residuals or []) if r.get("misfit")]
    runs = sorted({g.sample_est.runs for g in sampled}) if sampled else []
    off = [g.sample_est.ns_per_fork["offcpu"] / g.sample_est.total_ns for g in sampled if g.sample_est.total_ns]
    out["sureness"] = {
        "runs_per_group": runs,
        "fit": att.fit.missing is None,
        "fit_missing": att.fit.missing,
        "groups_where_fit_and_samples_disagree": len(disagree),
        "groups_compared": sum(1 for g in att.groups if g.sample_est is not None and g.counts is not None) if att.fit.missing is None else 0,
        "fit_misfit_groups": len(misfit),
        "offcpu_share_range": [min(off), max(off)] if off else None,
    }
    return out


# ---------------------------------------------------------------- rendering


def _ns(v: float | None) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    a = abs(v)
    if a < 1e3:
        return f"{v:.3g} ns" if a < 100 else f"{v:.0f} ns"
    if a < 1e6:
        return f"{v / 1e3:.3g} us"
    return f"{v / 1e6:.3g} ms"


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    return f"{100 * v:+.0f}%" if signed else f"{100 * v:.0f}%"


def _move(m: Mapping[str, Any]) -> str:
    mark = "" if m["measured"] else " ~"
    return f"{m['function']} {m['delta_ns_per_vma']:+.0f}{mark}"


WIDTH = 100


def render_answer(a: Mapping[str, Any], fmt: str = "text") -> list[str]:
    """About one screen: the answer first; '~' marks a change whose interval includes 0."""
    md = fmt == "markdown"
    lines = _answer_lines(a, md)
    if md:
        return lines
    out = []
    for line in lines:
        indent = len(line) - len(line.lstrip())
        out += textwrap.wrap(line.strip(), WIDTH, initial_indent=" " * indent, subsequent_indent=" " * (indent + 4),
                             break_on_hyphens=False) or [""]
    return out


def _answer_lines(a: Mapping[str, Any], md: bool) -> list[str]:
    out = ["## The answer" if md else "the answer (details follow)"]
    bullet = "- " if md else "  "
    sub = "  - " if md else "      "
    ph = a.get("phases")
    if ph:
        sh = ph["shares_of_mean"]
        out.append(bullet + f"dup_mmap at {ph['vmas']:.0f} VMAs ({ph['group']}): p50 {_ns(ph['dup_mmap_p50_ns'])}; of its mean, "
                   f"vma_loop {_pct(sh['vma_loop'])} ({_ns(ph['vma_step_p50_ns'])} a VMA, p50), "
                   f"mt_dup {_pct(sh['mt_dup'])}, tail {_pct(sh['tail'])} (phases, from the bracket)")
    d = a.get("dominant")
    if d is None:
        out.append(bullet + str(a.get("missing")))
    else:
        out.append(bullet + f"dup_mmap at {d['vmas']:.0f} VMAs ({d['group']}): {_ns(d['work_ns_per_vma'])} per VMA "
                   f"on CPU without the tracer; the top {len(d['top'])} functions are {_pct(d['top_share'])} of it "
                   "(samples; ns per VMA, 95% CI):")
        for r in d["top"]:
            lo, hi = r["ci95_per_vma"]
            spent = ", ".join(f"{s['how']} {_pct(s['share'])}" for s in r["spent_on"])
            out.append(sub + f"{r['function']:<18} {r['ns_per_vma']:6.0f} ({lo:.0f}-{hi:.0f})  "
                       f"{_pct(r['share_of_work']):>4}" + (f"  {spent}" if spent else ""))
        out.append(bullet + f"not dup_mmap's work: forktrace's own programs {_ns(d['tracer_ns_per_vma'])} per VMA "
                   f"({_pct(d['tracer_share'])} of the traced time), off CPU {_pct(d['offcpu_share'])} (the host's load)")
    c = a.get("cycle")
    if c:
        p = c["p50_ns"]
        out.append(bullet + f"spawn cycle at {c['group']} (p50): clone {_ns(p.get('clone'))}, of which dup_mmap "
                   f"{_ns(p.get('dup_mmap'))} ({_pct(c['dup_mmap_of_clone'])}); the child's exit_mmap "
                   f"{_ns(p.get('exit_mmap'))}; the parent's wait {_ns(p.get('wait'))}")
    for cv in a.get("curves") or []:
        layout = f" ({cv['layout']})" if cv["layout"] else ""
        out.append(bullet + f"per-VMA curve{layout}, on CPU without the tracer: "
                   + ", ".join(f"{_ns(p['ns_per_vma'])} at {p['vmas']:.0f}" for p in cv["points"]) + " VMAs")
        for seg in cv["segments"]:
            lo, hi = seg["change_ci95"]
            verdict = "measured" if seg["measured"] else "~"
            out.append(sub + f"{seg['from_vmas']:.0f} -> {seg['to_vmas']:.0f} VMAs: {_pct(seg['change'], True)} "
                       f"(95% CI {_pct(lo, True)} to {_pct(hi, True)}, {verdict})"
                       + (f"; grew: {', '.join(_move(m) for m in seg['grew'])}" if seg["grew"] else "")
                       + (f"; fell: {', '.join(_move(m) for m in seg['fell'])}" if seg["fell"] else "")
                       + " (ns per VMA)")
            cause = seg["cause"]
            out.append(sub + ("" if md else "  ") + f"why ({cause['label']}): {cause['text']}"
                       + (f" ({', '.join(cause['tested_by'])})" if cause["tested_by"] else
                          "; no designed experiment in these recordings tests it"))
    if not a.get("curves") and d is not None:
        out.append(bullet + "per-VMA curve: one VMA count only (record a sweep to see how the cost moves)")
    s = a["sureness"]
    parts = []
    if s["runs_per_group"]:
        runs = s["runs_per_group"]
        if min(runs) > 1:
            span = f"{min(runs)}-{max(runs)}" if len(runs) > 1 else str(runs[0])
            parts.append(f"intervals over runs ({span} runs per group)")
        else:
            parts.append("intervals within one run per group (forks and samples; no run-to-run variation)"
                         if max(runs) == 1 else f"intervals over runs where a group has several ({min(runs)}-{max(runs)})")
    if s["fit"]:
        parts.append(f"fit and samples disagree beyond their intervals in {s['groups_where_fit_and_samples_disagree']} of "
                     f"{s['groups_compared']} groups; the fit misses the mean of {s['fit_misfit_groups']} group(s) beyond its noise")
    else:
        parts.append(f"no fit ({s['fit_missing']})")
    if s["offcpu_share_range"]:
        lo, hi = s["offcpu_share_range"]
        span = _pct(lo) if _pct(lo) == _pct(hi) else f"{_pct(lo)}-{_pct(hi)}"
        parts.append(f"off CPU {span} of dup_mmap" + (" (a loaded host: compare on-CPU figures)" if hi > LOADED else ""))
    out.append(bullet + "how sure: " + "; ".join(parts))
    out.append(bullet + "'~': interval includes 0; ns per VMA are per VMA copied; details below")
    return out

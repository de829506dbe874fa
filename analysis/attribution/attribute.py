"""Both estimates per group, side by side, their disagreements, and predictions.

attribute_groups() is the entry point: groups (analysis.frame) in, plain data
out. The primary split per group is the samples' (they can separate what a
fit over these layouts cannot, and they see the tracer); without samples it is
the fit's, where the fit separates components, and says where it cannot.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.attribution.components import COMPONENT_UNITS, COMPONENTS
from analysis.attribution.counts import COUNT_COLUMNS, CountSource, recording_counts
from analysis.attribution.cycle import cycle_summary
from analysis.attribution.fit import FitResult, fit_costs
from analysis.attribution.samples import SampleCounts, SampleEstimate, sample_counts, sample_estimate
from analysis.frame import Group, GroupKey

__all__ = ["GroupAttribution", "Attribution", "attribute_groups", "predict"]


@dataclass
class GroupAttribution:
    key: GroupKey
    paths: list[str]
    forks: pd.DataFrame  # usable forks that stored VMAs, with model counts joined
    counts: dict[str, float] | None  # median model counts of the group's forks
    sources: list[CountSource]
    counts_missing: str | None
    samples: SampleCounts | None
    sample_est: SampleEstimate | None
    samples_missing: str | None
    components: dict[str, dict[str, Any]] = field(default_factory=dict)
    estimate: str | None = None  # 'samples' or 'fit' (which one `components` comes from)
    corrections: list[str] = field(default_factory=list)
    disagreements: list[str] = field(default_factory=list)
    cycle: dict[str, float | None] | None = None
    cycle_note: str = ""
    forks_per_sec: float | None = None

    @property
    def model_check(self) -> dict[str, Any]:
        if not self.sources:
            return {"observed_leaves": _median(self.forks, "leaves"), "predicted_leaves": None,
                    "source": None, "reason": self.counts_missing}
        s = self.sources[0]
        out = {
            "observed_leaves": s.observed_leaves,
            "predicted_leaves": s.predicted_leaves,
            "source": s.source,
            "reason": s.reason,
        }
        if s.assumed_history_leaves is not None:
            out["assumed_history_leaves"] = s.assumed_history_leaves
        if len(self.sources) > 1:
            out["layouts"] = [x.as_dict() for x in self.sources]
        return out


@dataclass
class Attribution:
    groups: list[GroupAttribution]
    fit: FitResult


def _median(df: pd.DataFrame, col: str) -> float | None:
    return float(df[col].median()) if len(df) else None


def _group_forks(group: Group) -> tuple[pd.DataFrame, list[CountSource], str | None]:
    frames, sources, missing = [], [], None
    for i, rec in enumerate(group.recordings):
        counts = recording_counts(rec)
        df = rec.forks.join(counts.per_fork.add_prefix("model_"))
        df.insert(0, "recording", i)
        frames.append(df[df["usable"] & (df["stores"] > 0)])
        sources += counts.sources
        missing = missing or counts.missing
    forks = pd.concat(frames, ignore_index=True)
    if sources and forks[f"model_{COUNT_COLUMNS[0]}"].notna().any():
        missing = None
    return forks, sources, missing


def attribute_groups(groups: Sequence[Group], boot: int = 400, seed: int = 0) -> Attribution:
    """Counts, fit across all groups, samples per group, and the split per group."""
    out: list[GroupAttribution] = []
    for g in groups:
        forks, sources, missing = _group_forks(g)
        has_counts = bool(len(forks)) and forks[f"model_{COUNT_COLUMNS[0]}"].notna().any()
        counts = (
            {c: float(forks[f"model_{c}"].median()) for c in COUNT_COLUMNS} if has_counts else None
        )
        if not len(forks):
            missing = missing or "no usable fork copied a VMA"
        metas = [r.meta for r in g.recordings]
        sc = sample_counts(metas, where=", ".join(str(r.path) for r in g.recordings))
        est, smissing = None, None
        if sc is None:
            smissing = "not sampled (record with --sample HZ)"
        elif sc.total == 0:
            smissing = "sampled, but no sample landed inside dup_mmap"
        elif not len(forks):
            smissing = "no usable fork to scale the samples by"
        else:
            est = sample_estimate(forks, sc, boot=boot, seed=seed)
        cyc, note = cycle_summary(pd.concat([r.forks for r in g.recordings], ignore_index=True), metas)
        fps = [m.get("workload", {}).get("forks_per_sec") for m in metas if isinstance(m.get("workload"), dict)]
        fps = [float(x) for x in fps if isinstance(x, (int, float))]
        out.append(
            GroupAttribution(
                key=g.key, paths=[str(r.path) for r in g.recordings], forks=forks, counts=counts,
                sources=sources, counts_missing=missing, samples=sc, sample_est=est, samples_missing=smissing,
                cycle=cyc, cycle_note=note, forks_per_sec=float(np.mean(fps)) if fps else None,
            )
        )
    all_forks = pd.concat([ga.forks for ga in out], ignore_index=True) if out else pd.DataFrame()
    model_cols = {f"model_{c}": c for c in COUNT_COLUMNS}
    if len(all_forks):
        fit = fit_costs(_oncpu(all_forks), all_forks[list(model_cols)].rename(columns=model_cols),
                        response="dup_mmap_oncpu_ns", boot=boot, seed=seed)
    else:
        fit = fit_costs(np.array([]), pd.DataFrame(columns=list(COUNT_COLUMNS)))
    if fit.missing is None and any(ga.counts_missing for ga in out):
        fit.notes.append("groups without a saved layout are not in the fit")
    for ga in out:
        _split(ga, fit)
    return Attribution(out, fit)


def _oncpu(forks: pd.DataFrame) -> np.ndarray:
    """dup_mmap time on a CPU per fork: what the model's counts can explain (off-CPU time is load)."""
    col = "dup_mmap_oncpu_ns" if "dup_mmap_oncpu_ns" in forks else "dup_mmap_ns"
    return forks[col].to_numpy(dtype="float64")


def _offcpu_mean(forks: pd.DataFrame) -> float:
    return float(forks["offcpu_ns"].astype("float64").mean()) if "offcpu_ns" in forks and len(forks) else 0.0


def _unit_count(ga: GroupAttribution, component: str) -> float | None:
    if ga.counts is None:
        return None
    unit = COMPONENT_UNITS[component]
    return 1.0 if unit == "forks" else ga.counts.get(unit)


def _entry(ns: float, total: float, unit_count: float | None, ci: tuple[float, float] | None, **extra: Any) -> dict:
    per_unit = ns / unit_count if unit_count else None
    return {
        "share": ns / total if total else None,
        "ns_per_fork": ns,
        "ns_per_unit": per_unit,
        "ci95": list(ci) if ci is not None else None,
        "ci95_per_unit": [ci[0] / unit_count, ci[1] / unit_count] if ci is not None and unit_count else None,
        **extra,
    }


def _split(ga: GroupAttribution, fit: FitResult) -> None:
    if ga.sample_est is not None:
        est = ga.sample_est
        total = est.total_ns
        tracer = est.ns_per_fork["tracer"]
        untraced = total - tracer
        for c in COMPONENTS:
            e = _entry(est.ns_per_fork[c], total, _unit_count(ga, c), est.ci95[c], unit=COMPONENT_UNITS[c])
            e["share_untraced"] = None if c == "tracer" or untraced <= 0 else est.ns_per_fork[c] / untraced
            ga.components[c] = e
        ga.estimate = "samples"
        off = est.ns_per_fork["offcpu"]
        if off > 0:
            ga.corrections.append(
                f"offcpu: {100 * off / total:.1f}% of the dup_mmap time ({off / 1e3:.1f} us per fork) the thread "
                f"was switched out; sample shares split only the on-CPU time"
            )
        ga.corrections.append(
            f"tracer: {100 * tracer / total:.1f}% of the traced dup_mmap time ({tracer / 1e3:.1f} us of "
            f"{total / 1e3:.1f} us per fork) ran in forktrace's BPF programs; share_untraced gives the rest as "
            f"if untraced (an untraced dup_mmap of ~{untraced / 1e3:.1f} us)"
        )
        gap = float((ga.forks["ts_child_lock"].astype("int64") - ga.forks["ts_parent_lock"].astype("int64")).mean())
        ga.corrections.append(
            f"the parent lock -> child lock gap ({gap / 1e3:.2f} us per fork) is not sampled: counted as fixed"
        )
        if fit.missing is None and ga.counts is not None:
            ga.disagreements = _disagreements(ga, fit)
        return
    if fit.missing is not None or ga.counts is None or not len(ga.forks):
        return
    ga.estimate = "fit"
    total = float(ga.forks["dup_mmap_ns"].mean())
    contrib = fit.contributions(ga.counts)
    for c in COMPONENTS:
        ga.components[c] = {"share": None, "ns_per_fork": None, "ns_per_unit": None, "ci95": None,
                            "ci95_per_unit": None, "unit": COMPONENT_UNITS[c]}
    for reg in [None] + fit.regressors:
        name = "fixed" if reg is None else reg.name
        comps = ["fixed"] if reg is None else reg.components
        point, lo, hi = contrib[name]
        if len(comps) == 1:
            ga.components[comps[0]] = _entry(point, total, _unit_count(ga, comps[0]), (lo, hi), unit=COMPONENT_UNITS[comps[0]])
        else:
            for c in comps:
                ga.components[c]["inseparable"] = name
    off = _offcpu_mean(ga.forks)
    ga.components["offcpu"] = _entry(off, total, 1.0, None, unit=COMPONENT_UNITS["offcpu"],
                                     note="measured (sched_switch), not fitted")
    ga.components["tracer"]["note"] = "a fit cannot separate the tracer: its per-store cost is inside the per-store coefficient"
    ga.corrections.append("no samples: the split is the fit's, and includes the tracer's own cost (not separable)")


def _disagreements(ga: GroupAttribution, fit: FitResult) -> list[str]:
    """Where the fit's contribution and the samples' sum of the same components exclude each other."""
    est = ga.sample_est
    assert est is not None and ga.counts is not None
    contrib = fit.contributions(ga.counts)
    out = []
    for reg in [None] + fit.regressors:
        name = "fixed" if reg is None else reg.name
        comps = ["fixed"] if reg is None else list(reg.components)
        if reg is not None and "stores" in reg.members:
            comps.append("tracer")  # the ma_write program runs inside every mas_store
        idx = [COMPONENTS.index(c) for c in comps]
        s_point = sum(est.ns_per_fork[c] for c in comps)
        s_lo, s_hi = np.percentile(est.draws[:, idx].sum(axis=1), [2.5, 97.5])
        f_point, f_lo, f_hi = contrib[name]
        if f_hi < s_lo or s_hi < f_lo:
            out.append(
                f"{ga.key.label()}: {'+'.join(comps)} is {f_point / 1e3:.1f} us per fork by the fit "
                f"({f_lo / 1e3:.1f}-{f_hi / 1e3:.1f}) but {s_point / 1e3:.1f} us by the samples "
                f"({s_lo / 1e3:.1f}-{s_hi / 1e3:.1f}): they disagree beyond their intervals"
            )
    return out


def predict(source: Attribution, target: Attribution) -> dict[str, Any]:
    """Costs from `source` applied to `target`'s counts: predicted vs measured mean dup_mmap per group."""
    rows: list[dict[str, Any]] = []
    how, missing = None, None
    if source.fit.missing is None:
        how = f"fit over {source.fit.cells} layouts of the source ({source.fit.method}); on-CPU dup_mmap"
    else:
        sampled = [g for g in source.groups if g.estimate == "samples" and g.counts is not None]
        if not sampled:
            missing = f"the source has no fit ({source.fit.missing}) and no sampled group with model counts"
            return {"method": None, "missing": missing, "groups": []}
        base = max(sampled, key=lambda g: g.sample_est.samples if g.sample_est else 0)
        how = (f"per-unit costs from the samples of {base.key.label()} (the source has one layout: no fit); "
               f"on-CPU dup_mmap")
    for g in target.groups:
        measured = float(_oncpu(g.forks).mean()) if len(g.forks) else None
        if g.counts is None or measured is None:
            rows.append({"group": g.key.label(), "measured_ns": measured, "predicted_ns": None,
                         "error_pct": None, "why": g.counts_missing})
            continue
        if source.fit.missing is None:
            p, lo, hi = (float(v[0]) for v in source.fit.predict(g.counts))
        else:
            p, lo, hi = _predict_from_samples(base, g.counts)
        rows.append({"group": g.key.label(), "vmas": g.counts["vmas"], "measured_ns": measured, "predicted_ns": p,
                     "ci95": [lo, hi], "error_pct": 100 * (p - measured) / measured})
    return {"method": how, "missing": missing, "groups": rows}


def _predict_from_samples(base: GroupAttribution, counts: dict[str, float]) -> tuple[float, float, float]:
    assert base.sample_est is not None and base.counts is not None
    scale = np.array([
        0.0 if c == "offcpu" else  # the host's load, not the layout's cost: predicted on-CPU
        (1.0 if COMPONENT_UNITS[c] == "forks" else counts[COMPONENT_UNITS[c]] / base.counts[COMPONENT_UNITS[c]])
        if base.counts.get(COMPONENT_UNITS[c], 1.0) else 0.0
        for c in COMPONENTS
    ])
    point = float(np.array([base.sample_est.ns_per_fork[c] for c in COMPONENTS]) @ scale)
    lo, hi = np.percentile(base.sample_est.draws @ scale, [2.5, 97.5])
    return point, float(lo), float(hi)

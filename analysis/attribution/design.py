"""A cost model fitted across a designed experiment (tracer sweep --vary), runs as the unit.

Each run (one workload process) gives one observation: its mean on-CPU
dup_mmap time per fork, split by the bracket's exact timestamps into the tree
window (child lock -> first mas_store: __mt_dup) and the rest, beside the
replay model's counts for its parent tree and what its level put in each
extra VMA. Runs of one (factor, level, VMA count) form a cell; the noise of a
cell is the spread of its runs' means (the run is the unit of replication,
not the fork).

The models, from least to most allowed (tree-window terms | the rest):

constant     tree_fixed + per node copied | fixed + per VMA + per gapped VMA,
             and the per-VMA weights where the design has them (a touched
             page with a shared anon_vma, its own anon_vma, a file-backed VMA)
warm-cold    constant, plus cold increments of each window's fixed cost, the
             per-node and the per-VMA cost, in the runs whose caches were
             evicted right before each fork
working-set  warm-cold, plus a cost per node, per VMA and per touched VMA on
             the share of the fork's working set that does not fit the CPU's
             L2 (VMAs and tree nodes, read in the parent and written in the
             child, and what a touched VMA's copy touches: WS_BYTES_*), for
             the bend at large counts

The first models were declared before any design was recorded; the windows,
the gapped increment, the touched spill term and warm-only beyond-L2 costs
were settled on the designs docs/experiments.md names, then tested on designs
recorded after.

Each window is fitted by non-negative least squares of cell means (weights: runs /
variance of the runs' means), with intervals from a parametric bootstrap of
the cell means (normal, each cell's run-to-run variance, taken as at least
the mean relative variance of all cells: a few runs estimate a variance
poorly). A model is refused where a cell's mean is missed beyond its noise
(analysis.attribution.fit's rule: 3 standard errors and 5%); the summary
says which model is the simplest one the data do not refuse, or that all are.
Predictions to a shape level are made by a fit that never saw that level.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import pandas as pd

from analysis.attribution.fit import COND_MAX, MISFIT_SIGMAS, missed
from analysis.attribution.nnls import weighted_solver

__all__ = [
    "MODELS",
    "WS_BYTES_PER_VMA",
    "WS_BYTES_PER_NODE",
    "design_fit",
    "fit_model",
    "load_design_runs",
    "predict_level",
    "render_design",
    "run_row",
]

# The working set of the copy, per unit: a VMA is read in the parent and a
# copy written for the child (vm_area_struct, ~200 bytes on x86-64 6.x, in
# 256-byte slab objects), a tree node is read and written (256 bytes each).
WS_BYTES_PER_VMA = 2 * 256
WS_BYTES_PER_NODE = 2 * 256
# A VMA with a resident page adds the lines its copy touches: the child's
# anon_vma_chain, its anon_vma's lock and tree, the parent's and the child's
# page-table entry and the page's struct page (five 64-byte lines); an anon_vma
# of its own, rather than one all share, adds that object's two lines.
WS_BYTES_PER_TOUCHED_VMA = 5 * 64
WS_BYTES_PER_OWN_ANON_VMA = 2 * 64

# The fit has two responses, both measured exactly per fork by the bracket
# tracepoints: the tree window (child lock -> first mas_store: __mt_dup's node
# copy and its walk) and the rest of dup_mmap's on-CPU time (the lock gap, the
# replace loop, the tail). At one shape the node count moves with the VMA count,
# so a single response cannot tell per-node from per-VMA cost; the windows can.
WINDOWS = ("tree", "rest")
TREE_TERMS = ("tree_fixed", "nodes_copied")
# In a gapped layout the replace loop's slot steps move with the VMAs (two a VMA,
# one in the adjacent layout); the gapped layout also differs in how its VMAs
# were made (holes cut after they were mapped), so a per-step cost fitted from
# gapped against adjacent would hold all of that. The fit does not claim one:
# a gapped VMA gets its own per-VMA increment, and the loop's traversal is
# measured by the samples alone.
REST_TERMS = ("fixed", "vmas", "gapped_vmas", "touched_vmas", "own_anon_vmas", "file_vmas")
BASE_TERMS = TREE_TERMS + REST_TERMS
# The cache factor varies warm/cold at one shape: a cold increment per VMA stands for
# everything per VMA in the rest, and one per node for the tree window.
COLD_TERMS = ("cold_tree_fixed", "cold_nodes", "cold_fixed", "cold_vmas")
SPILL_TERMS = ("nodes_beyond_l2", "vmas_beyond_l2", "touched_vmas_beyond_l2")
MODELS: dict[str, tuple[str, ...]] = {
    "constant": BASE_TERMS,
    "warm-cold": BASE_TERMS + COLD_TERMS,
    "working-set": BASE_TERMS + COLD_TERMS + SPILL_TERMS,
}
TREE_WINDOW_TERMS = ("tree_fixed", "cold_tree_fixed", "nodes_copied", "cold_nodes", "nodes_beyond_l2")


def window_of(term: str) -> str:
    """The window whose time a term is fitted to."""
    return "tree" if term in TREE_WINDOW_TERMS else "rest"

UNITS = {
    "tree_fixed": "fork, in the tree window (__mt_dup's setup, the first VMA's copy before its store)",
    "nodes_copied": "tree node copied by __mt_dup (its allocation, memcpy and walk)",
    "fixed": "fork, outside the tree window",
    "vmas": "VMA (its copy: vm_area_dup, the loop's mas_store, the rest of the per-VMA work)",
    "gapped_vmas": "VMA of the gapped layout, beyond an adjacent one (twice the slot steps, holes cut)",
    "touched_vmas": "extra VMA with a resident page (copy_page_range, anon_vma_fork)",
    "own_anon_vmas": "extra VMA with its own anon_vma (beyond a shared one)",
    "file_vmas": "file-backed extra VMA (get_file, i_mmap insert)",
    "cold_tree_fixed": "fork, extra in the tree window when cold",
    "cold_nodes": "tree node, extra when cold",
    "cold_fixed": "fork, extra outside the tree window when cold",
    "cold_vmas": "VMA, extra when cold",
    "nodes_beyond_l2": "tree node times the share of the working set beyond L2",
    "vmas_beyond_l2": "VMA times the share of the working set beyond L2",
    "touched_vmas_beyond_l2": "extra VMA with a resident page times the share of the working set beyond L2",
}
# Each per-unit cost and its cold increment (cold_vs_warm).
COLD_OF = {"tree_fixed": "cold_tree_fixed", "nodes_copied": "cold_nodes", "fixed": "cold_fixed", "vmas": "cold_vmas"}
BOOT = 400


# -- from recordings ---------------------------------------------------------------


def run_row(rec, entry: dict[str, Any]) -> dict[str, Any]:
    """One run's observation: mean on-CPU dup_mmap per fork, its model counts and its weights."""
    from analysis.attribution.counts import recording_counts
    from analysis.attribution.samples import window_times

    counts = recording_counts(rec)
    forks = rec.forks.join(counts.per_fork.add_prefix("model_"))
    forks = forks[forks["usable"] & (forks["stores"] > 0) & forks["model_vmas"].notna()]
    col = "dup_mmap_oncpu_ns" if "dup_mmap_oncpu_ns" in forks else "dup_mmap_ns"
    y = forks[col].to_numpy(dtype="float64")
    tree = window_times(forks)["mt_dup"].to_numpy(dtype="float64") if len(forks) else y
    w = rec.meta.get("workload") or {}
    extra = int(w.get("extra_vmas") or 0)
    weight = "touch" if w.get("touch") else str(w.get("weight") or "none")
    row = {
        "file": entry.get("file"),
        "factor": entry.get("factor"),
        "level": entry.get("level"),
        "extra_vmas": extra,
        "rep": entry.get("rep"),
        "forks": int(len(y)),
        "mean_ns": float(y.mean()) if len(y) else float("nan"),
        "median_ns": float(np.median(y)) if len(y) else float("nan"),
        # the windows' responses: mean_ns = tree_ns + rest_ns (the medians do not add up to median_ns)
        "tree_ns": float(tree.mean()) if len(y) else float("nan"),
        "rest_ns": float((y - tree).mean()) if len(y) else float("nan"),
        "tree_median_ns": float(np.median(tree)) if len(y) else float("nan"),
        "rest_median_ns": float(np.median(y - tree)) if len(y) else float("nan"),
        "cold": bool(w.get("cold")),
        "gapped": w.get("layout", "gapped") != "adjacent",
        "touched_vmas": extra if weight in ("touch", "touch-each") else 0,
        "own_anon_vmas": extra if weight == "touch-each" else 0,
        "file_vmas": extra if weight == "file" else 0,
        "observed_leaves": float(forks["leaves"].median()) if len(forks) else None,
    }
    for c in ("vmas", "stores", "nodes_copied", "find_steps", "cross_edges", "predicted_leaves"):
        row[c] = float(forks[f"model_{c}"].median()) if len(forks) else float("nan")
    row["loop_steps"] = row["find_steps"] + row["cross_edges"]
    stacks = ((rec.meta.get("sample") or {}).get("stacks")) or []
    row["samples"] = int(sum(s.get("count", 0) for s in stacks))
    return row


def load_design_runs(directory: Path) -> pd.DataFrame:
    """The runs a design directory recorded (design.json), one row each."""
    from analysis.errors import TracerError
    from analysis.recording import load_recording

    path = Path(directory) / "design.json"
    try:
        design = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise TracerError(f"{path}: not a design written by tracer sweep --vary ({err})") from None
    rows = [run_row(load_recording(Path(directory) / e["file"]), e) for e in design.get("recorded", [])]
    if not rows:
        raise TracerError(f"{path} lists no recorded run")
    runs = pd.DataFrame(rows)
    runs.attrs["l2_bytes"] = (design.get("caches") or {}).get("L2")
    runs.attrs["design"] = {k: v for k, v in design.items() if k != "recorded"}
    return runs


# -- the terms -----------------------------------------------------------------------


def _terms(runs: pd.DataFrame, l2_bytes: int | None) -> pd.DataFrame:
    cold = runs["cold"].astype(float)
    t = pd.DataFrame(index=runs.index)
    t["tree_fixed"] = 1.0
    t["fixed"] = 1.0
    for c in ("vmas", "nodes_copied", "touched_vmas", "own_anon_vmas", "file_vmas"):
        t[c] = runs[c].astype(float)
    gapped = runs["gapped"] if "gapped" in runs else runs["level"] != "adjacent"
    t["gapped_vmas"] = runs["vmas"].astype(float) * gapped.astype(float)
    t["cold_tree_fixed"] = cold
    t["cold_nodes"] = cold * runs["nodes_copied"].astype(float)
    t["cold_fixed"] = cold
    t["cold_vmas"] = cold * runs["vmas"].astype(float)
    # Beyond-L2 costs are a warm fork's: in a cold one every unit already pays its cold increment.
    spill = spill_share(runs, l2_bytes) * (1 - cold)
    t["nodes_beyond_l2"] = runs["nodes_copied"] * spill
    t["vmas_beyond_l2"] = runs["vmas"] * spill
    t["touched_vmas_beyond_l2"] = runs["touched_vmas"] * spill
    return t


def spill_share(runs: pd.DataFrame, l2_bytes: int | None) -> pd.Series:
    """The share of each run's fork working set that does not fit the CPU's L2 (0 without its size)."""
    ws = (runs["vmas"] * WS_BYTES_PER_VMA + runs["nodes_copied"] * WS_BYTES_PER_NODE
          + runs["touched_vmas"] * WS_BYTES_PER_TOUCHED_VMA + runs["own_anon_vmas"] * WS_BYTES_PER_OWN_ANON_VMA)
    return (1 - float(l2_bytes) / ws).clip(lower=0) if l2_bytes else ws * 0


def _cells(runs: pd.DataFrame) -> pd.Series:
    return runs["factor"].astype(str) + "/" + runs["level"].astype(str) + "/" + runs["extra_vmas"].astype(str)


# -- fitting ---------------------------------------------------------------------------


def _cell_moments(y: np.ndarray, groups: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per cell: mean, run-to-run variance (floored: few runs estimate it poorly) and number of runs."""
    means = np.array([y[g].mean() for g in groups])
    sizes = np.array([len(g) for g in groups], dtype="float64")
    var = np.array([y[g].var(ddof=1) if len(g) > 1 else np.nan for g in groups])
    # Each cell's variance is taken as at least the mean relative run-to-run
    # variance of all cells (and a floor): with the median, intervals on
    # synthetic designs covered the truth in 87% of cases, with the mean 93%.
    floor = (1e-3 * np.abs(means)) ** 2 + 1.0
    pooled = np.nanmean(var / np.maximum(means, 1) ** 2) * means**2 if np.isfinite(var).any() else floor
    var = np.maximum(np.where(np.isfinite(var), var, pooled), np.maximum(pooled, floor))
    return means, var, sizes


def _separable(x: np.ndarray, cells: int) -> tuple[bool, float]:
    """Can cells with these term values tell the terms apart? (and the condition number)."""
    scaled = x / np.where(np.abs(x).max(axis=0) > 0, np.abs(x).max(axis=0), 1.0)
    sv = np.linalg.svd(scaled, compute_uv=False)
    cond = float(sv[0] / sv[-1]) if sv[-1] > 0 else float("inf")
    return cells > x.shape[1] and cond <= COND_MAX, cond


def fit_model(runs: pd.DataFrame, model: str, l2_bytes: int | None = None, boot: int = BOOT, seed: int = 0,
              response: str = "mean_ns") -> dict[str, Any]:
    """One declared model fitted to the runs: costs with intervals, R², residual per cell.

    Each window's terms are fitted to that window's time; the cell's fitted
    time is their sum, judged against the measured total. response: each run's
    mean (the primary: the windows' means add up to it) or its median fork per
    window (a robustness check against forks a loaded host slowed).
    """
    l2_bytes = l2_bytes if l2_bytes is not None else runs.attrs.get("l2_bytes")
    terms_all = _terms(runs, l2_bytes)
    out: dict[str, Any] = {"model": model, "response": response, "terms": [], "dropped": [], "costs": {}, "cells": []}
    names = []
    for name in MODELS[model]:
        col = terms_all[name]
        twin = next((n for n in names if window_of(n) == window_of(name)
                     and n not in ("fixed", "tree_fixed") and np.array_equal(terms_all[n].to_numpy(), col.to_numpy())), None)
        if name not in ("fixed", "tree_fixed") and not (col != 0).any():
            out["dropped"].append({"term": name, "why": "zero in every run: the design does not vary it"})
        elif twin is not None:
            # e.g. gapped_vmas where every run is gapped: its cost is part of the twin's.
            out["dropped"].append({"term": name, "equal_to": twin,
                                   "why": f"equal to {twin} in every run: the design cannot tell them apart"})
        else:
            names.append(name)
    if model == "working-set" and not l2_bytes:
        out["missing"] = "the design does not say this host's L2 size"
        return out
    columns = {"tree": "tree_ns", "rest": "rest_ns"} if response == "mean_ns" else \
        {"tree": "tree_median_ns", "rest": "rest_median_ns"}
    cell_id = _cells(runs)
    order = list(dict.fromkeys(cell_id))
    groups = [np.flatnonzero(cell_id.to_numpy() == c) for c in order]
    x_runs = terms_all[names].to_numpy(dtype="float64")
    x = np.array([x_runs[g[0]] for g in groups])
    beta = np.zeros(len(names))
    draws = np.zeros((boot, len(names)))
    out["condition"], out["r2_windows"], out["window_misfits"] = {}, {}, {}
    window_cells: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    rng = np.random.default_rng(seed)
    y = np.zeros(len(runs))
    for window in WINDOWS:
        idx = [j for j, n in enumerate(names) if window_of(n) == window]
        xw = x[:, idx]
        ok, cond = _separable(xw, len(groups))
        out["condition"][window] = cond
        if not ok:
            out["missing"] = (f"{len(groups)} cells cannot separate the {window} window's {len(idx)} terms "
                              f"(condition number {cond:.3g}): the design does not vary them independently")
            return out
        yw = runs[columns[window]].to_numpy(dtype="float64")
        y += yw
        means, var, sizes = _cell_moments(yw, groups)
        solve = weighted_solver(xw, np.sqrt(sizes / var))
        beta[idx] = solve(means)
        # Parametric bootstrap of the cell means from the runs' variance (resampling
        # 3 runs gives only 10 distinct means, and intervals too narrow by (n-1)/n).
        # The windows are drawn independently.
        se_cells = np.sqrt(var / sizes)
        draws[:, idx] = np.array([solve(means + se_cells * rng.standard_normal(len(means))) for _ in range(boot)])
        fitted_w = xw @ beta[idx]
        ss = float(((means - means.mean()) ** 2).sum())
        out["r2_windows"][window] = 1 - float(((means - fitted_w) ** 2).sum()) / ss if ss > 0 else None
        window_cells[window] = (means, fitted_w)
        # Judged as the total is, per window: a window the terms miss though the total is met.
        resid = means - fitted_w
        out["window_misfits"][window] = [order[i] for i in np.flatnonzero(missed(resid, se_cells, means))]
    means, var, sizes = _cell_moments(y, groups)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    out["terms"] = names
    out["costs"] = {
        n: {"ns_per_unit": float(v), "ci95": [float(a), float(c)], "unit": UNITS[n], "window": window_of(n)}
        for n, v, a, c in zip(names, beta, lo, hi)
    }
    fitted = x @ beta
    pred_draws = draws @ x.T
    plo, phi = np.percentile(pred_draws, [2.5, 97.5], axis=0)
    ss_tot = float(((means - means.mean()) ** 2).sum())
    out["r2_cells"] = 1 - float(((means - fitted) ** 2).sum()) / ss_tot if ss_tot > 0 else None
    ss_tot_runs = float(((y - y.mean()) ** 2).sum())
    fitted_runs = x_runs @ beta
    out["r2_runs"] = 1 - float(((y - fitted_runs) ** 2).sum()) / ss_tot_runs if ss_tot_runs > 0 else None
    for i, (c, g, m, f, v, n, a, b) in enumerate(zip(order, groups, means, fitted, var, sizes, plo, phi)):
        se = float(np.sqrt(v / n))
        resid = float(m - f)
        first = runs.iloc[g[0]]
        out["cells"].append({
            "cell": c, "factor": first["factor"], "level": first["level"], "extra_vmas": int(first["extra_vmas"]),
            "vmas": float(first["vmas"]), "runs": int(n), "measured_ns": float(m), "fitted_ns": float(f),
            # ns per fork per term: they sum to fitted_ns; the residual is what they leave of the measured mean.
            "components": {t: float(beta[j] * x[i, j]) for j, t in enumerate(names)},
            "fitted_ci95": [float(a), float(b)], "residual_pct": 100 * resid / m if m else None, "se_ns": se,
            "misfit": bool(missed(resid, se, m)),
            "windows": {w: {"measured_ns": float(wm[i]), "fitted_ns": float(wf[i])} for w, (wm, wf) in window_cells.items()},
        })
    out["misfits"] = [c["cell"] for c in out["cells"] if c["misfit"]]
    out["_draws"] = draws
    out["_x"] = x
    return out


# Which fitted terms and which sampled stacks hold the same work: each part is
# defined alike on both sides. A key of the samples is (window, work, how,
# component); their off-CPU part is left out, as the fit's response is on-CPU
# time. The tree copy is all of __mt_dup: its per-node work and its per-call
# cost (the tree window's intercepts), which the samples find in the same copy
# and walk functions; the window's intercept also holds the first VMA's work
# before its store (a microsecond or two), which the samples give to the rest.
AGREEMENT_PARTS: dict[str, tuple[tuple[str, ...], Callable[[tuple[str, str, str, str]], bool]]] = {
    "tree copy": (TREE_WINDOW_TERMS, lambda k: k[0] == "mt_dup" and k[3] in ("copy", "traversal")),
}
REST_PART = "the rest"  # every other term (fixed, per VMA), and every other on-CPU sample (the loop's traversal too)
# Shown beside the parts, not judged: the fit's per-fork terms outside the tree
# window are intercepts (cost that does not grow with the counts), the samples'
# fixed component is the functions that run once per fork; they are not the same quantity.
INTERCEPTS = ("fixed", "cold_fixed")


def _part_of(key: tuple[str, str, str, str]) -> str | None:
    if key[3] == "offcpu":
        return None
    return next((p for p, (_, member) in AGREEMENT_PARTS.items() if member(key)), REST_PART)


def sample_agreement(directory: Path, runs: pd.DataFrame, fit: dict[str, Any]) -> dict[str, Any]:
    """Per cell: do the fit's components and the samples' split of the same work overlap in their 95% intervals?

    The samples of a cell's runs are pooled (analysis.attribution.samples),
    with intervals from a bootstrap over the runs (the unit of replication).
    """
    from analysis.attribution.samples import sample_counts, sample_estimate
    from analysis.recording import load_recording

    if fit.get("missing") or "_draws" not in fit:
        return {"missing": fit.get("missing") or "no fit"}
    draws, x, names = fit["_draws"], fit["_x"], fit["terms"]
    part_terms = {p: [n for n in terms if n in names] for p, (terms, _) in AGREEMENT_PARTS.items()}
    claimed = {n for terms in part_terms.values() for n in terms}
    part_terms[REST_PART] = [n for n in names if n not in claimed]
    cell_id = _cells(runs)
    rows, agree = [], 0
    for i, cell in enumerate(fit["cells"]):
        files = runs.loc[cell_id == cell["cell"], "file"]
        recs = [load_recording(Path(directory) / f) for f in files]
        sc = sample_counts([r.meta for r in recs], where=cell["cell"])
        if sc is None or sc.total == 0:
            rows.append({"cell": cell["cell"], "missing": "not sampled"})
            continue
        # Each fork carries its run's index, so the interval resamples runs (the unit), not the pooled forks.
        forks = pd.concat([r.forks[r.forks["usable"] & (r.forks["stores"] > 0)].assign(recording=k)
                           for k, r in enumerate(recs)], ignore_index=True)
        est = sample_estimate(forks, sc, boot=BOOT)
        sampled = est.aggregate(_part_of)
        fixed_functions = est.aggregate(lambda k: "fixed" if k[3] == "fixed" else None).get("fixed")
        loop = est.aggregate(lambda k: "loop" if k[0] == "vma_loop" and k[3] == "traversal" else None).get("loop")
        steps = float(runs.loc[cell_id == cell["cell"], "loop_steps"].median()) if "loop_steps" in runs else 0.0

        def fit_part(terms: Sequence[str]) -> tuple[float, np.ndarray]:
            idx = [names.index(t) for t in terms]
            point = float(sum(fit["costs"][names[j]]["ns_per_unit"] * x[i, j] for j in idx))
            return point, (draws[:, idx] @ x[i, idx] if idx else np.zeros(len(draws)))

        def compare(f_point: float, f_draws: np.ndarray, s) -> dict[str, Any]:
            f_lo, f_hi = np.percentile(f_draws, [2.5, 97.5])
            s_point, (s_lo, s_hi) = (s.ns_per_fork, s.ci95) if s is not None else (0.0, (0.0, 0.0))
            return {"fit_ns": f_point, "fit_ci95": [float(f_lo), float(f_hi)], "samples_ns": float(s_point),
                    "samples_ci95": [float(s_lo), float(s_hi)], "agree": bool(not (f_hi < s_lo or s_hi < f_lo))}

        parts = {p: compare(*fit_part(terms), sampled.get(p)) for p, terms in part_terms.items()}
        for p, v in parts.items():
            # A part the fit's own window misses in this cell: the fit's interval (noise only) is too narrow there.
            v["fit_misses_window"] = any(cell["cell"] in (fit.get("window_misfits") or {}).get(w, [])
                                         for w in {window_of(t) for t in part_terms[p]})
        ok = all(v["agree"] for v in parts.values())
        agree += ok
        rows.append({"cell": cell["cell"], "samples": int(est.samples), "agree": bool(ok), "parts": parts,
                     "per_fork": compare(*fit_part([n for n in INTERCEPTS if n in names]), fixed_functions),
                     # the loop's traversal, which only the samples measure (the fit has no per-step term)
                     "loop_step_ns": loop.ns_per_fork / steps if loop is not None and steps > 0 else None,
                     "loop_step_ci95": [v / steps for v in loop.ci95] if loop is not None and steps > 0 else None})
    compared = [r for r in rows if "agree" in r]
    intercept = [r["per_fork"] for r in compared]
    return {"model": fit["model"], "parts": list(part_terms), "cells": rows, "compared": len(compared), "agree": agree,
            "share": agree / len(compared) if compared else None,
            "min_samples": min((r["samples"] for r in compared), default=0),
            "per_fork": {"fit_intercept_ns": float(np.median([v["fit_ns"] for v in intercept])) if intercept else None,
                         "fixed_functions_ns": float(np.median([v["samples_ns"] for v in intercept])) if intercept else None,
                         "cells_overlapping": int(sum(v["agree"] for v in intercept))},
            "loop_step_ns": _median([r["loop_step_ns"] for r in compared if r["loop_step_ns"] is not None]),
            "loop_step_ns_range": _span([r["loop_step_ns"] for r in compared if r["loop_step_ns"] is not None])}


def _median(v: Sequence[float]) -> float | None:
    return float(np.median(v)) if len(v) else None


def _span(v: Sequence[float]) -> list[float] | None:
    return [float(min(v)), float(max(v))] if len(v) else None


def cold_vs_warm(fit: dict[str, Any]) -> dict[str, Any]:
    """Per unit: the warm cost and the cold one (warm + its cold increment), with intervals."""
    if "_draws" not in fit:
        return {}
    draws, names = fit["_draws"], fit["terms"]
    out = {}
    for unit, cold in COLD_OF.items():
        if unit not in names or cold not in names:
            continue
        w = draws[:, names.index(unit)]
        d = draws[:, names.index(cold)]
        out[unit] = {
            "warm": fit["costs"][unit]["ns_per_unit"],
            "warm_ci95": [float(v) for v in np.percentile(w, [2.5, 97.5])],
            "cold": fit["costs"][unit]["ns_per_unit"] + fit["costs"][cold]["ns_per_unit"],
            "cold_ci95": [float(v) for v in np.percentile(w + d, [2.5, 97.5])],
            "increment_ci95": [float(v) for v in np.percentile(d, [2.5, 97.5])],
        }
    return out


def predict_level(runs: pd.DataFrame, level: str, model: str, l2_bytes: int | None = None,
                  factor: str = "shape") -> dict[str, Any]:
    """Fit without one level's runs, predict that level's cells: the fit's reach to a shape it never saw."""
    held = (runs["factor"] == factor) & (runs["level"] == level)
    if not held.any():
        return {"level": level, "missing": f"no runs of {factor}={level}"}
    train = runs[~held].copy()
    train.attrs = runs.attrs
    fit = fit_model(train, model, l2_bytes)
    if fit.get("missing"):
        return {"level": level, "model": model, "missing": fit["missing"]}
    terms = _terms(runs[held], l2_bytes if l2_bytes is not None else runs.attrs.get("l2_bytes"))
    # A term the training runs never varied was dropped (zero, or one with another term): where the
    # held-out runs have it otherwise, a prediction would guess what it costs.
    unseen = [d["term"] for d in fit["dropped"]
              if not np.array_equal(terms[d["term"]].to_numpy(),
                                    terms[d["equal_to"]].to_numpy() if "equal_to" in d else np.zeros(len(terms)))]
    if unseen:
        return {"level": level, "model": model,
                "missing": f"the fit never saw {', '.join(unseen)} vary as {factor}={level} has it: "
                           "it cannot say what that costs"}
    beta = np.array([fit["costs"][n]["ns_per_unit"] for n in fit["terms"]])
    x = terms[fit["terms"]].to_numpy(dtype="float64")
    sims = fit["_draws"] @ x.T
    rows = []
    test = runs[held].assign(_pred=x @ beta, _lo=np.percentile(sims, 2.5, axis=0), _hi=np.percentile(sims, 97.5, axis=0))
    for extra, g in test.groupby("extra_vmas"):
        m, p = float(g["mean_ns"].mean()), float(g["_pred"].mean())
        se_pct = float(100 * g["mean_ns"].std(ddof=1) / np.sqrt(len(g)) / m) if len(g) > 1 else None
        err = 100 * (p - m) / m
        rows.append({"extra_vmas": int(extra), "measured_ns": m, "predicted_ns": p,
                     "ci95": [float(g["_lo"].mean()), float(g["_hi"].mean())], "error_pct": err,
                     "measured_se_pct": se_pct,
                     # as a misfit is judged: off by more than 3 standard errors of the measured mean
                     "within_noise": se_pct is not None and abs(err) <= MISFIT_SIGMAS * se_pct})
    worst = max(abs(r["error_pct"]) for r in rows)
    return {"level": level, "model": model, "trained_on": int(len(train)), "cells": rows, "worst_error_pct": worst,
            "within_10pct": worst <= 10.0, "within_noise": all(r["within_noise"] for r in rows)}


def per_vma_by_count(runs: pd.DataFrame) -> list[dict[str, Any]]:
    """Measured ns per VMA per (factor, level, count): the curve the bend is seen in, with the runs' spread."""
    out = []
    for (f, lv, extra), g in runs.groupby(["factor", "level", "extra_vmas"], sort=True):
        per = g["mean_ns"] / g["vmas"]
        out.append({"factor": f, "level": lv, "extra_vmas": int(extra), "runs": int(len(g)),
                    "ns_per_vma": float(per.mean()), "sd": float(per.std(ddof=1)) if len(g) > 1 else None,
                    "observed_leaves": float(g["observed_leaves"].median()),
                    "predicted_leaves": float(g["predicted_leaves"].median())})
    return out


def design_fit(runs: pd.DataFrame, l2_bytes: int | None = None, predict: Sequence[str] | None = None,
               directory: Path | None = None) -> dict[str, Any]:
    """Every declared model, the simplest one the data do not refuse, cold vs warm, and predictions."""
    l2 = l2_bytes if l2_bytes is not None else runs.attrs.get("l2_bytes")
    fits = {m: fit_model(runs, m, l2) for m in MODELS}
    chosen, refused = None, []
    for m, f in fits.items():
        if f.get("missing"):
            refused.append({"model": m, "why": f["missing"]})
        elif f["misfits"]:
            refused.append({"model": m, "why": f"misses {len(f['misfits'])} of {len(f['cells'])} cells beyond their "
                            f"noise: {', '.join(f['misfits'][:6])}" + (" ..." if len(f["misfits"]) > 6 else "")})
        elif chosen is None:
            chosen = m
    best = chosen or min((m for m in fits if not fits[m].get("missing")),
                         key=lambda m: len(fits[m]["misfits"]), default=None)
    levels = list(predict) if predict else [lv for lv in runs.loc[runs["factor"] == "shape", "level"].unique()
                                             if lv != "gapped-ascending"]
    predictions = [predict_level(runs, lv, best, l2) for lv in levels] if best else []
    leaves = runs.dropna(subset=["observed_leaves"])
    model_check = {
        "runs": int(len(leaves)),
        "exact": int((leaves["observed_leaves"] == leaves["predicted_leaves"]).sum()),
        "worst": [r for r in leaves.assign(off=(leaves["observed_leaves"] - leaves["predicted_leaves"]).abs())
                  .sort_values("off", ascending=False).head(3)[["file", "observed_leaves", "predicted_leaves"]]
                  .to_dict("records") if r["observed_leaves"] != r["predicted_leaves"]],
    }
    robust = {}
    for m in MODELS:
        f = fit_model(runs, m, l2, response="median_ns")
        robust[m] = {k: f.get(k) for k in ("r2_cells", "r2_runs", "misfits", "missing")}
        robust[m]["costs"] = {k: v for k, v in f.get("costs", {}).items()}
        if m == "warm-cold" and not f.get("missing"):
            robust["cold_vs_warm"] = cold_vs_warm(f)
    doc = {
        "runs": int(len(runs)),
        "cells": int(_cells(runs).nunique()),
        "response": "mean on-CPU dup_mmap per fork of each run (ns)",
        "l2_bytes": l2,
        "models": {m: {k: v for k, v in f.items() if not k.startswith("_")} for m, f in fits.items()},
        "supported": chosen,
        "refused": refused,
        "best": best,
        "cold_vs_warm": cold_vs_warm(fits["warm-cold"]) if not fits["warm-cold"].get("missing") else {},
        "per_vma": per_vma_by_count(runs),
        "predictions": predictions,
        "robustness_median": robust,
        "model_check": model_check,
        "design": runs.attrs.get("design"),
        "samples_vs_fit": (sample_agreement(directory, runs, fits[best])
                           if directory is not None and best and int(runs["samples"].sum()) else None),
    }
    return doc


# -- text -------------------------------------------------------------------------------


def _ci(v: Sequence[float]) -> str:
    return f"[{v[0]:.1f}, {v[1]:.1f}]"


def render_design(doc: dict[str, Any]) -> str:
    lines = [f"designed experiment: {doc['runs']} runs in {doc['cells']} cells; response: {doc['response']}"]
    mc = doc["model_check"]
    lines.append(f"model check: the replayed history predicts the leaves the kernel wrote in {mc['exact']} of {mc['runs']} runs")
    lines.append("")
    lines.append("measured ns per VMA (mean of runs, sd across runs) and leaves (observed / model):")
    for r in doc["per_vma"]:
        sd = f" sd {r['sd']:.1f}" if r["sd"] is not None else ""
        lines.append(f"  {r['factor']:6} {r['level']:18} {r['extra_vmas']:6}: {r['ns_per_vma']:7.1f}{sd}  "
                     f"leaves {r['observed_leaves']:.0f}/{r['predicted_leaves']:.0f}")
    lines.append("")
    for m, f in doc["models"].items():
        if f.get("missing"):
            lines.append(f"model {m}: not fitted: {f['missing']}")
            continue
        r2 = f"R² {f['r2_cells']:.4f} over cell means, {f['r2_runs']:.4f} over runs"
        lines.append(f"model {m}: {r2}; {len(f['misfits'])} of {len(f['cells'])} cells missed beyond their noise")
        for n, c in f["costs"].items():
            lines.append(f"  {n:22} {c['ns_per_unit']:10.2f} ns  95% {_ci(c['ci95'])}  per {c['unit']}")
        for d in f["dropped"]:
            lines.append(f"  ({d['term']}: {d['why']})")
    lines.append("")
    if doc["supported"]:
        lines.append(f"supported: {doc['supported']} (the simplest declared model no cell refuses)")
    else:
        lines.append("no declared model fits every cell within its noise")
    for r in doc["refused"]:
        lines.append(f"refused: {r['model']}: {r['why']}")
    cw = doc.get("cold_vs_warm") or {}
    if cw:
        lines.append("")
        lines.append("warm vs cold cost per unit (warm-cold model):")
        for unit, v in cw.items():
            lines.append(f"  {unit:16} warm {v['warm']:8.2f} {_ci(v['warm_ci95'])}  cold {v['cold']:8.2f} "
                         f"{_ci(v['cold_ci95'])}  increment 95% {_ci(v['increment_ci95'])}")
    bf = doc["models"].get(doc["best"] or "", {})
    for window, cells in (bf.get("window_misfits") or {}).items():
        if cells:
            lines.append("")
            lines.append(f"the {doc['best']} model misses the {window} window beyond its noise in {len(cells)} cells "
                         f"(R² {bf['r2_windows'][window]:.4f}): {', '.join(cells[:6])}{' ...' if len(cells) > 6 else ''}")
    worst_misfit = [c for c in (doc["models"].get(doc["best"] or "", {}).get("cells") or []) if c["misfit"]]
    if worst_misfit:
        lines.append("")
        lines.append(f"cells the {doc['best']} model misses beyond their noise:")
        for c in worst_misfit:
            lines.append(f"  {c['cell']:34} measured {c['measured_ns'] / 1e3:8.1f} us  fitted {c['fitted_ns'] / 1e3:8.1f} us "
                         f"({c['residual_pct']:+.1f}%, se {c['se_ns'] / 1e3:.2f} us)")
    rb = doc.get("robustness_median") or {}
    if rb:
        lines.append("")
        lines.append("robustness: the same models fitted to each run's median fork instead of its mean:")
        for m in MODELS:
            f = rb.get(m) or {}
            if f.get("missing"):
                lines.append(f"  {m}: not fitted: {f['missing']}")
            else:
                lines.append(f"  {m}: R² {f['r2_cells']:.4f} over cell means; {len(f['misfits'])} cells missed beyond their noise"
                             + (f" ({', '.join(f['misfits'][:4])}{' ...' if len(f['misfits']) > 4 else ''})" if f["misfits"] else ""))
        for unit, v in (rb.get("cold_vs_warm") or {}).items():
            lines.append(f"  {unit:16} warm {v['warm']:8.2f} {_ci(v['warm_ci95'])}  cold {v['cold']:8.2f} {_ci(v['cold_ci95'])}")
    sa = doc.get("samples_vs_fit")
    if sa and not sa.get("missing"):
        lines.append("")
        lines.append(f"fit ({sa['model']}) and samples agree within their 95% intervals in {sa['agree']} of "
                     f"{sa['compared']} cells (every part: {', '.join(sa['parts'])}; intervals over runs; "
                     f"fewest samples in a cell: {sa['min_samples']})")
        pf = sa["per_fork"]
        lines.append(f"  per fork outside the tree window, not judged: the fit's intercepts (median over cells "
                     f"{pf['fit_intercept_ns'] / 1e3:.1f} us) are cost that does not grow with the counts; the functions "
                     f"the samples find running once per fork take {pf['fixed_functions_ns'] / 1e3:.1f} us; they overlap "
                     f"in {pf['cells_overlapping']} of {sa['compared']} cells: the rest of the intercept is spent in "
                     "per-VMA functions")
        if sa.get("loop_step_ns") is not None:
            lo, hi = sa["loop_step_ns_range"]
            lines.append(f"  the replace loop's traversal (mas_find, leaf crossings), which only the samples measure: "
                         f"{sa['loop_step_ns']:.1f} ns a slot or edge step (median over cells; {lo:.1f} to {hi:.1f})")
        for r in sa["cells"]:
            if r.get("agree") is False:
                bad = [f"{k} fit {v['fit_ns'] / 1e3:.1f} {_ci([v['fit_ci95'][0] / 1e3, v['fit_ci95'][1] / 1e3])} us, "
                       f"samples {v['samples_ns'] / 1e3:.1f} {_ci([v['samples_ci95'][0] / 1e3, v['samples_ci95'][1] / 1e3])} us"
                       + (" (the fit misses this window here)" if v.get("fit_misses_window") else "")
                       for k, v in r["parts"].items() if not v["agree"]]
                lines.append(f"  {r['cell']}: " + "; ".join(bad))
    if doc["predictions"]:
        lines.append("")
        lines.append(f"predictions to a shape the fit never saw ({doc['best']} model, fitted without that level):")
        for p in doc["predictions"]:
            if p.get("missing"):
                lines.append(f"  {p['level']}: {p['missing']}")
                continue
            cells = ", ".join(f"{c['extra_vmas']}: {c['error_pct']:+.1f}% (se {c['measured_se_pct']:.1f}%)"
                              for c in p["cells"])
            verdict = "within 10%" if p["within_10pct"] else "NOT within 10%"
            noise = "every cell within 3 se of its measured mean" if p["within_noise"] else "some cell beyond 3 se"
            lines.append(f"  {p['level']:18} worst {p['worst_error_pct']:.1f}% ({verdict}; {noise}); {cells}")
    return "\n".join(lines)

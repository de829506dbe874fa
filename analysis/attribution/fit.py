"""Estimate 1: measured times regressed on the model's counts, across forks whose counts differ.

Forks with the same counts (one layout) form a cell; the fit is a weighted
non-negative least squares of the cells' mean times on their counts plus a
fixed cost (weights n / variance: a noisy cell counts for less), with
bootstrap intervals from resampling forks within each cell.

A fit can only separate counts that vary independently. Before fitting,
counts that never change are folded into `fixed`, and counts that move
together (rank deficit, condition number, or near-perfect correlation across
cells) are merged into one regressor, named after all its members and
measured in units of the first in components.REGRESSOR_ORDER; each merge is
reported as inseparable, never split. After fitting, cells whose mean the fit
misses by more than its noise are reported: there the model does not explain
the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.attribution.components import REGRESSOR_ORDER, REGRESSORS
from analysis.attribution.nnls import weighted_solver

__all__ = ["FitResult", "fit_costs", "separable_regressors", "missed", "CORR_MAX", "COND_MAX"]

CORR_MAX = 0.995  # |correlation| across cells above which two counts count as moving together
COND_MAX = 1e4  # condition number of the scaled cell design above which the fit is ill-posed
MISFIT_SIGMAS = 3.0
MISFIT_REL = 0.05  # and off by more than 5% of the cell's mean


def missed(resid, se, mean):
    """A cell (or array of cells) missed beyond its noise: off by more than MISFIT_SIGMAS standard errors and MISFIT_REL of its mean."""
    return (np.abs(resid) > MISFIT_SIGMAS * se) & (np.abs(resid) > MISFIT_REL * np.abs(mean))


@dataclass
class Regressor:
    name: str  # 'stores' or 'stores+vmas+nodes_copied' for a merged one
    members: list[str]
    unit: str  # the count its coefficient is per

    @property
    def components(self) -> list[str]:
        seen: list[str] = []
        for m in self.members:
            if REGRESSORS[m] not in seen:
                seen.append(REGRESSORS[m])
        return seen


@dataclass
class FitResult:
    response: str
    method: str
    n: int  # forks
    cells: int
    regressors: list[Regressor] = field(default_factory=list)
    coef: dict[str, float] = field(default_factory=dict)  # 'fixed' and regressor names: ns per unit
    ci95: dict[str, tuple[float, float]] = field(default_factory=dict)
    draws: np.ndarray | None = None  # bootstrap coefficients, columns ['fixed', *regressors]
    r2: float | None = None  # over forks
    r2_cells: float | None = None  # over cell means
    inseparable: list[dict[str, Any]] = field(default_factory=list)
    folded_into_fixed: list[dict[str, Any]] = field(default_factory=list)
    residuals: list[dict[str, Any]] = field(default_factory=list)  # per cell
    notes: list[str] = field(default_factory=list)
    missing: str | None = None

    @property
    def names(self) -> list[str]:
        return ["fixed"] + [r.name for r in self.regressors]

    def design(self, counts: pd.DataFrame | dict[str, float]) -> np.ndarray:
        """Rows of [1, unit counts...] for counts given per count name."""
        df = pd.DataFrame([counts]) if isinstance(counts, dict) else counts
        cols = [np.ones(len(df))] + [df[r.unit].to_numpy(dtype="float64") for r in self.regressors]
        return np.column_stack(cols)

    def predict(self, counts: pd.DataFrame | dict[str, float]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Predicted mean time, and its 95% interval from the bootstrap draws."""
        x = self.design(counts)
        beta = np.array([self.coef[n] for n in self.names])
        point = x @ beta
        if self.draws is None or not len(self.draws):
            return point, point, point
        sims = self.draws @ x.T
        lo, hi = np.percentile(sims, [2.5, 97.5], axis=0)
        return point, lo, hi

    def contributions(self, counts: dict[str, float]) -> dict[str, tuple[float, float, float]]:
        """Per fitted regressor (and fixed): ns per fork at `counts`, with 95% interval."""
        x = self.design(counts)[0]
        out = {}
        for i, name in enumerate(self.names):
            point = self.coef[name] * x[i]
            if self.draws is not None and len(self.draws):
                lo, hi = np.percentile(self.draws[:, i] * x[i], [2.5, 97.5])
            else:
                lo = hi = point
            out[name] = (float(point), float(lo), float(hi))
        return out

    def as_dict(self) -> dict[str, Any]:
        return {
            "response": self.response,
            "method": self.method,
            "n": self.n,
            "cells": self.cells,
            "r2": self.r2,
            "r2_cells": self.r2_cells,
            "inseparable": self.inseparable,
            "folded_into_fixed": self.folded_into_fixed,
            "costs": {
                name: {
                    "ns_per_unit": self.coef.get(name),
                    "unit": "fork" if name == "fixed" else reg.unit,
                    "members": [] if name == "fixed" else reg.members,
                    "components": ["fixed"] if name == "fixed" else reg.components,
                    "ci95": list(self.ci95[name]) if name in self.ci95 else None,
                }
                for name, reg in [("fixed", None)] + [(r.name, r) for r in self.regressors]
            },
            "residuals": self.residuals,
            "notes": self.notes,
            "missing": self.missing,
        }


def separable_regressors(cells: pd.DataFrame, names: Sequence[str] = REGRESSOR_ORDER) -> tuple[
    list[Regressor], list[dict[str, Any]], list[dict[str, Any]]
]:
    """The regressors the cells can separate: (regressors, inseparable merges, folded into fixed).

    cells: one row per distinct count vector, columns = count names.
    """
    folded: list[dict[str, Any]] = []
    groups: list[list[str]] = []
    for name in names:
        col = cells[name].to_numpy(dtype="float64")
        if np.all(col == 0):
            folded.append({"count": name, "reason": "zero in every fork: nothing to fit"})
        elif np.ptp(col) == 0:
            folded.append({"count": name, "reason": f"{col[0]:g} in every fork: its cost cannot be told from fixed"})
        else:
            groups.append([name])
    merges: list[dict[str, Any]] = []
    n_cells = len(cells)

    def column(g: list[str]) -> np.ndarray:
        return cells[g[0]].to_numpy(dtype="float64")

    while len(groups) > 1:
        cols = np.column_stack([column(g) for g in groups])
        centred = cols - cols.mean(axis=0)
        norms = np.linalg.norm(centred, axis=0)
        corr = (centred.T @ centred) / np.outer(norms, norms)
        np.fill_diagonal(corr, 0.0)
        scaled = np.column_stack([np.ones(n_cells), cols / np.linalg.norm(cols, axis=0)])
        sv = np.linalg.svd(scaled, compute_uv=False)
        cond = sv[0] / sv[-1] if sv[-1] > 0 else np.inf
        too_many = len(groups) + 1 > n_cells
        i, j = np.unravel_index(int(np.argmax(np.abs(corr))), corr.shape)
        top = float(abs(corr[i, j]))
        if not too_many and cond <= COND_MAX and top <= CORR_MAX:
            break
        i, j = sorted((int(i), int(j)))
        if too_many:
            reason = f"{n_cells} distinct layouts cannot separate {len(groups)} counts and a fixed cost"
        elif top > CORR_MAX:
            reason = f"correlation {top:.4f} across layouts"
        else:
            reason = f"condition number {cond:.3g} of the design"
        merged = groups[i] + groups[j]
        merges.append({"members": list(merged), "unit": merged[0], "reason": reason})
        groups[i] = merged
        del groups[j]
    regs = [Regressor("+".join(g), list(g), g[0]) for g in groups]
    # Each final merged regressor once, with every reason that merged its members.
    final = [
        {
            "members": r.members,
            "unit": r.unit,
            "reason": _reasons([m["reason"] for m in merges if set(m["members"]) <= set(r.members)]),
        }
        for r in regs
        if len(r.members) > 1
    ]
    return regs, final, folded


def _reasons(reasons: list[str]) -> str:
    """The first reason of each kind (too few layouts, correlation, condition), in order."""
    kinds: dict[str, str] = {}
    for r in reasons:
        kinds.setdefault(r.split(" ")[0] if not r[0].isdigit() else "layouts", r)
    return "; ".join(kinds.values())


def fit_costs(
    y: np.ndarray, counts: pd.DataFrame, response: str = "dup_mmap_ns", boot: int = 400, seed: int = 0
) -> FitResult:
    """Fit y (ns per fork) on the counts (one row per fork, REGRESSOR_ORDER columns)."""
    y = np.asarray(y, dtype="float64")
    ok = np.isfinite(y) & counts[list(REGRESSOR_ORDER)].notna().all(axis=1).to_numpy()
    y, counts = y[ok], counts.loc[ok, list(REGRESSOR_ORDER)].reset_index(drop=True)
    method = "non-negative least squares of cell means, weighted n/variance; bootstrap over forks within cells"
    res = FitResult(response=response, method=method, n=int(len(y)), cells=0)
    if len(y) == 0:
        res.missing = "no fork has both a measured time and model counts"
        return res
    keys = [tuple(r) for r in counts.to_numpy()]
    cell_ids = pd.Series(pd.factorize(pd.Series(keys))[0])
    res.cells = int(cell_ids.max() + 1)
    cells = counts.groupby(cell_ids.to_numpy()).first().sort_index()
    if res.cells < 2:
        res.missing = "every fork has the same counts (one layout): a fit needs forks whose counts differ"
        return res
    regs, res.inseparable, res.folded_into_fixed = separable_regressors(cells)
    res.regressors = regs
    members = [np.flatnonzero(cell_ids.to_numpy() == c) for c in range(res.cells)]
    x_cells = np.column_stack([np.ones(res.cells)] + [cells[r.unit].to_numpy(dtype="float64") for r in regs])

    def cell_stats(yy: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        means = np.array([v.mean() for v in yy])
        var = np.array([v.var(ddof=1) if len(v) > 1 else np.nan for v in yy])
        floor = (1e-3 * np.abs(means)) ** 2 + 1.0
        var = np.where(np.isfinite(var), np.maximum(var, floor), np.nanmax(np.append(var, floor.max())))
        return means, var

    groups_y = [y[m] for m in members]
    means, var = cell_stats(groups_y)
    sizes = np.array([len(m) for m in members], dtype="float64")
    weights = np.sqrt(sizes / var)
    solve = weighted_solver(x_cells, weights)
    beta = solve(means)
    rng = np.random.default_rng(seed)
    draws = np.empty((boot, len(beta)))
    for b in range(boot):
        mu = np.array([g[rng.integers(0, len(g), len(g))].mean() for g in groups_y])
        draws[b] = solve(mu)
    res.draws = draws
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    res.coef = {n: float(v) for n, v in zip(res.names, beta)}
    res.ci95 = {n: (float(a), float(b)) for n, a, b in zip(res.names, lo, hi)}

    fitted_forks = x_cells[cell_ids.to_numpy()] @ beta
    ss_res = float(((y - fitted_forks) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    res.r2 = 1 - ss_res / ss_tot if ss_tot > 0 else None
    fitted = x_cells @ beta
    w2 = weights**2
    mbar = float((w2 * means).sum() / w2.sum())
    tot = float((w2 * (means - mbar) ** 2).sum())
    res.r2_cells = 1 - float((w2 * (means - fitted) ** 2).sum()) / tot if tot > 0 else None

    main = regs[0].unit if regs else "stores"
    for c in np.argsort(cells[main].to_numpy(), kind="stable"):
        se = float(np.sqrt(var[c] / sizes[c]))
        resid = float(means[c] - fitted[c])
        bad = bool(missed(resid, se, means[c]))
        res.residuals.append(
            {
                **{k: float(cells.iloc[c][k]) for k in ("vmas", "stores")},
                "forks": int(sizes[c]),
                "measured_ns": float(means[c]),
                "fitted_ns": float(fitted[c]),
                "residual_ns": resid,
                "residual_pct": 100 * resid / means[c] if means[c] else None,
                "se_ns": se,
                "misfit": bool(bad),
            }
        )
    bad = [r for r in res.residuals if r["misfit"]]
    if bad:
        where = ", ".join(f"{int(r['vmas'])} VMAs ({r['residual_pct']:+.0f}%)" for r in bad)
        res.notes.append(f"the model does not explain the data at {where}: the fit misses those means beyond their noise")
        rel = [abs(r["residual_pct"] or 0) for r in res.residuals]
        if len(rel) >= 3 and res.residuals[-1]["misfit"] and rel[-1] == max(rel):
            res.notes.append(f"residuals grow with {main}: cost per unit is not constant there (a bend the counts do not explain)")
    return res

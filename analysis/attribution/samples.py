"""Estimate 2: sampled kernel stacks, classified by their frames into functions and components.

Each stack (folded, root first) carries the bracket window it was taken in:
mt_dup (child lock -> first mas_store), vma_loop (first store -> child
unlock) or tail (child unlock -> parent unlock). functions.py names what each
stack is doing (the work: vm_area_dup, anon_vma_fork, __mt_dup, ...; how:
slab allocator, memcg charge, ...; and the component of components.py),
from tables a reader can audit. A window's samples split its measured mean
ON-CPU time by share; the parent lock -> child lock gap is not sampled and
goes to `fixed` as measured ("lock gap"). cpu-clock samples fire only while
the thread runs, so a window's time off CPU (offcpu_*_ns, from sched_switch)
is taken out of it first and reported as the `offcpu` component. So per fork:

    ns(cell)   = share(cell | window) * mean on-CPU time of its window
    ns(offcpu) = mean offcpu_ns

and a function's or a component's time is the sum of its cells'. Off-CPU
time the probe could not place in a window (level fork: only the total) is
taken from the windows in proportion to their time.

Intervals: a bootstrap over runs (recordings: a run is a process, the unit of
replication) where the group has several, each run resampled within (its
forks, and its samples as a Dirichlet over the functions it saw); with one
run, only the within-run part, and the estimate says so.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import pandas as pd

from analysis.attribution.components import COMPONENTS
from analysis.attribution.functions import MEASURED, Cell, classify
from analysis.recording.phases import WINDOWS
from analysis.recording.stacks import sampled_stacks

__all__ = [
    "WINDOWS",
    "classify_stack",
    "SampleCounts",
    "sample_counts",
    "window_times",
    "Aggregate",
    "SampleEstimate",
    "sample_estimate",
]


def classify_stack(stack: str, window: str) -> str:
    """The component a sampled stack ('a;b;c', root first) belongs to (functions.classify)."""
    return classify(stack, window).component


@dataclass
class SampleCounts:
    """Samples per (window, Cell), one Counter per run (recording) of a group, in the group's order."""

    runs: list[Counter[tuple[str, Cell]]] = field(default_factory=list)
    hz: list[Any] = field(default_factory=list)
    lost: int = 0

    @property
    def cells(self) -> Counter[tuple[str, Cell]]:
        """All runs' samples pooled."""
        out: Counter[tuple[str, Cell]] = Counter()
        for run in self.runs:
            out.update(run)
        return out

    @property
    def counts(self) -> dict[str, dict[str, int]]:
        """window -> component -> samples, pooled."""
        out = {w: {c: 0 for c in COMPONENTS} for w in WINDOWS}
        for (window, cell), n in self.cells.items():
            out[window][cell.component] += n
        return out

    @property
    def total(self) -> int:
        return sum(self.cells.values())

    def by_component(self) -> dict[str, int]:
        out = {c: 0 for c in COMPONENTS}
        for (_, cell), n in self.cells.items():
            out[cell.component] += n
        return out


def sample_counts(metas: Iterable[Mapping[str, Any]], where: str = "recording") -> SampleCounts | None:
    """Classified samples of several recordings' metadata (one run each); None if none of them sampled.

    Each distinct (stack, window) is classified once (classify() is cached
    across recordings too), so the cost is in distinct stacks, not samples.
    """
    out = SampleCounts()
    sampled = False
    for meta in metas:
        stacks = sampled_stacks(meta, where)
        run: Counter[tuple[str, Cell]] = Counter()
        out.runs.append(run)
        if stacks is None:
            continue
        sampled = True
        out.hz.append(meta["sample"].get("hz"))
        out.lost += int(meta["sample"].get("lost") or 0)
        for (stack, window), n in stacks.items():
            if window in WINDOWS:  # a window this analysis does not know: not attributed, not invented
                run[(window, classify(stack, window))] += n
    return out if sampled else None


def window_times(forks: pd.DataFrame) -> pd.DataFrame:
    """Per fork, the sampling windows' on-CPU time in ns, the unsampled lock gap, and the off-CPU time.

    The columns sum to dup_mmap_ns. Recordings without off-CPU columns read 0.
    """
    ts = {c: forks[c].astype("int64").to_numpy() for c in ("ts_parent_lock", "ts_child_lock", "ts_first_store",
                                                          "ts_child_unlock", "ts_parent_unlock")}
    wall = {
        "mt_dup": (ts["ts_first_store"] - ts["ts_child_lock"]).astype("float64"),
        "vma_loop": (ts["ts_child_unlock"] - ts["ts_first_store"]).astype("float64"),
        "tail": (ts["ts_parent_unlock"] - ts["ts_child_unlock"]).astype("float64"),
    }

    def col(name: str) -> np.ndarray:
        return forks[name].astype("float64").to_numpy() if name in forks else np.zeros(len(forks))

    off = {w: np.minimum(col(f"offcpu_{w}_ns"), np.maximum(wall[w], 0)) for w in WINDOWS}
    total_off = np.maximum(col("offcpu_ns"), sum(off.values()))
    on = {w: wall[w] - off[w] for w in WINDOWS}
    # Off-CPU time not placed in a window: out of the windows in proportion to their on-CPU time.
    unplaced = total_off - sum(off.values())
    on_sum = sum(np.maximum(on[w], 0) for w in WINDOWS)
    with np.errstate(divide="ignore", invalid="ignore"):
        keep = np.where(on_sum > 0, np.clip(1 - unplaced / on_sum, 0, 1), 1.0)
    on = {w: np.where(on[w] > 0, on[w] * keep, on[w]) for w in WINDOWS}
    gap = (ts["ts_child_lock"] - ts["ts_parent_lock"]).astype("float64")
    dup_mmap = (ts["ts_parent_unlock"] - ts["ts_parent_lock"]).astype("float64")
    offcpu = dup_mmap - gap - sum(on.values())  # what the windows lost: the columns sum to dup_mmap
    return pd.DataFrame({"gap": gap, **on, "offcpu": offcpu}, index=forks.index)


# A cell of the estimate: (window or "-", work, how, component).
Key = tuple[str, str, str, str]


@dataclass
class Aggregate:
    """ns per fork of some grouping of cells (a function, a component, ...), with its interval."""

    ns_per_fork: float
    ci95: tuple[float, float]
    samples: int
    draws: np.ndarray  # bootstrap ns per fork


@dataclass
class SampleEstimate:
    """Estimate 2 for one group: ns per fork per cell, component and function, with bootstrap intervals."""

    samples: int
    shares: dict[str, float]  # of all samples (tracer included), per component
    ns_per_fork: dict[str, float]  # per component, tracer included: sums to the mean dup_mmap time
    ci95: dict[str, tuple[float, float]]
    total_ns: float  # mean dup_mmap_ns of the forks used
    window_samples: dict[str, int]
    forks: int
    draws: np.ndarray  # bootstrap ns per fork, columns COMPONENTS: intervals of sums
    keys: list[Key] = field(default_factory=list)
    cell_ns: np.ndarray = field(default_factory=lambda: np.zeros(0))
    cell_draws: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    cell_samples: np.ndarray = field(default_factory=lambda: np.zeros(0))
    runs: int = 1
    vmas: float = float("nan")  # mean VMAs copied per fork (stores)
    interval: str = ""  # what the bootstrap resampled
    _functions: dict[str, Aggregate] | None = field(default=None, repr=False)
    _by_work_how: dict[str, Aggregate] | None = field(default=None, repr=False)

    def aggregate(self, by: Callable[[Key], str | None]) -> dict[str, Aggregate]:
        """Cells summed by by(key) (None: left out), largest first."""
        names: dict[str, list[int]] = {}
        for i, key in enumerate(self.keys):
            name = by(key)
            if name is not None:
                names.setdefault(name, []).append(i)
        if not names:
            return {}
        # One matrix product and one percentile call for all the groups.
        member = np.zeros((len(self.keys), len(names)))
        for j, idx in enumerate(names.values()):
            member[idx, j] = 1.0
        draws = self.cell_draws @ member
        ns = self.cell_ns @ member
        samples = self.cell_samples @ member
        if len(draws):
            lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
        else:
            lo = hi = np.full(len(names), np.nan)
        out = {name: Aggregate(float(ns[j]), (float(lo[j]), float(hi[j])), int(samples[j]), draws[:, j])
               for j, name in enumerate(names)}
        return dict(sorted(out.items(), key=lambda kv: -kv[1].ns_per_fork))

    def functions(self) -> dict[str, Aggregate]:
        """Per work (functions.py), measured parts included ("lock gap", "off CPU", ...)."""
        if self._functions is None:
            self._functions = self.aggregate(lambda k: k[1])
        return self._functions

    def hows(self) -> dict[str, Aggregate]:
        """Per how, over the sampled functions that are dup_mmap's work (not the tracer's)."""
        return self.aggregate(lambda k: k[2] if k[0] != "-" and k[1] not in MEASURED and k[1] != "tracer" else None)

    def within(self, work: str) -> dict[str, Aggregate]:
        """One work's time by how."""
        if self._by_work_how is None:
            self._by_work_how = self.aggregate(lambda k: f"{k[1]}\0{k[2]}")
        out = {key.split("\0", 1)[1]: a for key, a in self._by_work_how.items() if key.split("\0", 1)[0] == work}
        return dict(sorted(out.items(), key=lambda kv: -kv[1].ns_per_fork))


def _run_ids(forks: pd.DataFrame, runs: int) -> np.ndarray:
    if "recording" in forks and runs > 1:
        return forks["recording"].to_numpy(dtype="int64")
    return np.zeros(len(forks), dtype="int64")


def sample_estimate(
    forks: pd.DataFrame, counts: SampleCounts, boot: int = 400, seed: int = 0
) -> SampleEstimate:
    """Split the forks' mean dup_mmap time by sample shares per window (forks: usable, stores > 0).

    forks["recording"] (the run's index in counts.runs) pairs forks with their
    run's samples; without it all forks are one run.
    """
    times = window_times(forks).to_numpy()  # columns: gap, mt_dup, vma_loop, tail, offcpu
    nruns = max(len(counts.runs), 1)
    run_of = _run_ids(forks, nruns)
    pooled = counts.cells
    sampled = sorted(pooled, key=lambda wc: (WINDOWS.index(wc[0]), wc[1].work, wc[1].how))
    keys: list[Key] = [(w, c.work, c.how, c.component) for w, c in sampled]
    keys += [("-", "lock gap", "-", MEASURED["lock gap"].component), ("-", "off CPU", "-", MEASURED["off CPU"].component)]
    keys += [(w, "unsampled window", "-", "other" if w == "vma_loop" else "fixed") for w in WINDOWS]
    nc = len(sampled)
    win = np.array([WINDOWS.index(w) for w, _ in sampled], dtype="int64")
    onehot = np.zeros((nc, len(WINDOWS)))
    onehot[np.arange(nc), win] = 1.0
    run_mats = [np.array([run.get(wc, 0) for wc in sampled], dtype="float64") for run in (counts.runs or [Counter()])]

    def split(tmean: np.ndarray, cell_counts: np.ndarray) -> np.ndarray:
        """(B, 5) window means and (B, nc) sample counts -> (B, len(keys)) ns per fork."""
        per_window = cell_counts @ onehot  # (B, W)
        with np.errstate(divide="ignore", invalid="ignore"):
            share = np.where(per_window[:, win] > 0, cell_counts / per_window[:, win], 0.0)
        out = np.empty((len(tmean), len(keys)))
        out[:, :nc] = share * tmean[:, 1 + win]
        out[:, nc] = tmean[:, 0]
        out[:, nc + 1] = tmean[:, 4]
        out[:, nc + 2 :] = np.where(per_window == 0, tmean[:, 1:4], 0.0)
        return out

    pooled_mat = sum(run_mats)
    point = split(times.mean(axis=0, keepdims=True), pooled_mat[None, :])[0]

    rng = np.random.default_rng(seed)
    sums = np.zeros((boot, 5))
    nfork = np.zeros(boot)
    cell_counts = np.zeros((boot, nc))
    # Runs drawn with replacement (only where there are several), then each run resampled within.
    mult = rng.multinomial(nruns, np.full(nruns, 1 / nruns), size=boot).astype("float64") if nruns > 1 else np.ones((boot, 1))
    for r in range(nruns):
        t = times[run_of == r]
        k = mult[:, r]
        if len(t):
            w = rng.multinomial(len(t), np.full(len(t), 1 / len(t)), size=boot)  # forks, with replacement
            sums += k[:, None] * (w @ t)
            nfork += k * len(t)
        m = run_mats[r] if r < len(run_mats) else np.zeros(nc)
        if m.sum():
            # Dirichlet (Bayesian bootstrap) per window over the functions this run saw there.
            g = rng.gamma(np.where(m > 0, m + 0.5, 0.0), size=(boot, nc))
            gw = g @ onehot
            with np.errstate(divide="ignore", invalid="ignore"):
                draw = np.where(gw[:, win] > 0, g / gw[:, win], 0.0) * (m @ onehot)[win]
            cell_counts += k[:, None] * draw
    with np.errstate(divide="ignore", invalid="ignore"):
        tmean = np.where(nfork[:, None] > 0, sums / nfork[:, None], np.nan)
    cell_draws = split(tmean, cell_counts)
    cell_draws = cell_draws[np.isfinite(cell_draws).all(axis=1)]

    comp_of = np.array([COMPONENTS.index(k[3]) for k in keys])
    to_comp = np.zeros((len(keys), len(COMPONENTS)))
    to_comp[np.arange(len(keys)), comp_of] = 1.0
    comp_point = point @ to_comp
    comp_draws = cell_draws @ to_comp
    lo, hi = np.percentile(comp_draws, [2.5, 97.5], axis=0) if len(comp_draws) else (comp_point, comp_point)
    by_comp = pooled_mat @ to_comp[:nc] if nc else np.zeros(len(COMPONENTS))
    total = float(pooled_mat.sum())
    vmas = float(forks["stores"].astype("float64").mean()) if "stores" in forks and len(forks) else float("nan")
    interval = (
        f"bootstrap over {nruns} runs (recordings), each resampled within (forks; samples as a Dirichlet)"
        if nruns > 1 else
        "one run: bootstrap over its forks and samples only, no run-to-run variation (record several runs to get it)"
    )
    return SampleEstimate(
        samples=int(total),
        shares={c: float(by_comp[i] / total) if total else float("nan") for i, c in enumerate(COMPONENTS)},
        ns_per_fork={c: float(comp_point[i]) for i, c in enumerate(COMPONENTS)},
        ci95={c: (float(lo[i]), float(hi[i])) for i, c in enumerate(COMPONENTS)},
        total_ns=float(times.sum(axis=1).mean()),
        window_samples={w: int((pooled_mat @ onehot)[wi]) if nc else 0 for wi, w in enumerate(WINDOWS)},
        forks=len(times),
        draws=comp_draws,
        keys=keys,
        cell_ns=point,
        cell_draws=cell_draws,
        cell_samples=np.concatenate([pooled_mat, np.zeros(len(keys) - nc)]),
        runs=nruns,
        vmas=vmas,
        interval=interval,
    )

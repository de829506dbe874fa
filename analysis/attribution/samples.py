"""Estimate 2: sampled kernel stacks, classified by their frames into components.

Each stack (folded, root first) carries the bracket window it was taken in:
mt_dup (child lock -> first mas_store), vma_loop (first store -> child
unlock) or tail (child unlock -> parent unlock). A window's samples split its
measured mean ON-CPU time by share; the parent lock -> child lock gap is not
sampled and goes to `fixed` as measured. cpu-clock samples fire only while the
thread runs, so a window's time off CPU (offcpu_*_ns, from sched_switch) is
taken out of it first and reported as the `offcpu` component. So per fork:

    ns(component) = sum over windows of share(component | window) * mean on-CPU window time
    ns(offcpu)    = mean offcpu_ns

Off-CPU time the probe could not place in a window (level fork: only the
total) is taken from the windows in proportion to their time.

Classification, first rule that matches:
1. tracer: any frame of forktrace's BPF programs (bpf_trace_run*, bpf_prog_*,
   __bpf_prog_*, the helpers they call: bpf_task_storage_get*,
   bpf_probe_read*, bpf_ringbuf_*, ...; read_tsc / ktime_get_mono_fast_ns are
   below such a frame). BPF LSM hooks (bpf_lsm_*) are not the tracer.
2. interrupts (asm_sysvec_*, handle_softirqs, ...) -> other: not tree work.
3. the frame dup_mmap called (its callee in the stack):
   __mt_dup: copy if an allocation or node copy is below it, else traversal;
   mas_find / mas_next* / vma_next / vma_iter_*: traversal;
   mas_store / mas_wr_* / vma_iter_bulk_store: replace;
   per-fork setup (uprobe_*, ksm_fork, khugepaged_fork, ...): fixed;
   anything else (vm_area_dup, anon_vma_fork, copy_page_range, ...): other.
4. dup_mmap itself (or a stack without it): other in vma_loop, fixed elsewhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import pandas as pd

from analysis.attribution.components import COMPONENTS
from analysis.errors import TracerError
from analysis.recording.phases import WINDOWS

__all__ = [
    "WINDOWS",
    "classify_stack",
    "SampleCounts",
    "sample_counts",
    "window_times",
    "SampleEstimate",
    "sample_estimate",
]

_SUFFIX = re.compile(r"(\+0x[0-9a-f]+(/0x[0-9a-f]+)?|\.(isra|constprop|part|cold|llvm)\.[0-9]+)+$")
_TRACER = re.compile(
    r"^(bpf_trace_run\d*|__bpf_trace_\w+|bpf_prog_\w+|__bpf_prog_\w+|trace_call_bpf|perf_trace_ma_write"
    r"|perf_trace_mmap_lock\w*|bpf_task_storage_\w+|bpf_probe_read\w*|bpf_ringbuf_\w+|bpf_ktime_get\w*"
    r"|bpf_get_current\w*|bpf_map_\w+|htab_map_\w+|__htab_map_\w+|bpf_perf_event_\w+|bpf_get_stackid\w*"
    r"|__bpf_\w+|bpf_dispatcher_\w+)$"
)
_INTERRUPT = re.compile(r"^(asm_sysvec_\w+|asm_common_interrupt|sysvec_\w+|__irq_exit_rcu|irq_exit_rcu|handle_softirqs|__do_softirq|asm_exc_\w+)$")
_COPY_BELOW_MT_DUP = re.compile(r"alloc|copy_node|memcpy|slab|kmem_cache|sheaf")
_TRAVERSAL = re.compile(r"^(mas_find\w*|mas_next\w*|mas_walk|vma_next|vma_find|vma_iter_(next|find|load)\w*|mas_prev\w*)$")
_REPLACE = re.compile(r"^(mas_store\w*|mas_wr_\w+|vma_iter_bulk_store|vma_iter_store\w*|mas_state_walk)$")
_FIXED = re.compile(
    r"^(uprobe_\w+|dup_mmap_\w+|ksm_fork|khugepaged_fork|flush_cache_dup_mm|arch_dup_mmap|dup_mm_exe_file"
    r"|mmap_write_\w+|down_write\w*|up_write\w*|flush_tlb_mm\w*|lru_add_drain\w*|__mt_destroy|mt_set_in_rcu)$"
)


def _name(frame: str) -> str:
    return _SUFFIX.sub("", frame.strip())


def classify_stack(stack: str, window: str) -> str:
    """The component a sampled stack ('a;b;c', root first) belongs to; see the module docstring."""
    frames = [_name(f) for f in stack.split(";") if f.strip()]
    if any(_TRACER.match(f) and not f.startswith("bpf_lsm_") for f in frames):
        return "tracer"
    if any(_INTERRUPT.match(f) for f in frames):
        return "other"
    at = max((i for i, f in enumerate(frames) if f == "dup_mmap"), default=None)
    below = frames[at + 1 :] if at is not None else []
    if not below:
        return "other" if window == "vma_loop" else "fixed"
    callee = below[0]
    if callee in ("__mt_dup", "mt_dup", "mas_dup_build"):
        return "copy" if any(_COPY_BELOW_MT_DUP.search(f) for f in below[1:]) else "traversal"
    if _TRAVERSAL.match(callee):
        return "traversal"
    if _REPLACE.match(callee):
        return "replace"
    if _FIXED.match(callee):
        return "fixed"
    return "other"


@dataclass
class SampleCounts:
    """Samples per (window, component), pooled over recordings."""

    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # window -> component -> samples
    hz: list[Any] = field(default_factory=list)
    lost: int = 0

    @property
    def total(self) -> int:
        return sum(sum(c.values()) for c in self.counts.values())

    def by_component(self) -> dict[str, int]:
        out = {c: 0 for c in COMPONENTS}
        for per in self.counts.values():
            for c, n in per.items():
                out[c] += n
        return out


def sample_counts(metas: Iterable[Mapping[str, Any]], where: str = "recording") -> SampleCounts | None:
    """Classified samples of several recordings' metadata; None if none of them sampled."""
    out = SampleCounts(counts={w: {c: 0 for c in COMPONENTS} for w in WINDOWS})
    sampled = False
    for meta in metas:
        sample = meta.get("sample")
        if not isinstance(sample, dict):
            continue
        sampled = True
        out.hz.append(sample.get("hz"))
        out.lost += int(sample.get("lost") or 0)
        for i, entry in enumerate(sample.get("stacks") or []):
            try:
                stack, window, n = str(entry["stack"]), str(entry["phase"]), int(entry["count"])
            except (KeyError, TypeError, ValueError):
                raise TracerError(f"{where}: sampled stack entry {i} lacks stack, phase or count") from None
            if window not in out.counts:
                continue  # a window this analysis does not know: not attributed, not invented
            out.counts[window][classify_stack(stack, window)] += n
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


@dataclass
class SampleEstimate:
    """Estimate 2 for one group: ns per fork per component, with bootstrap intervals."""

    samples: int
    shares: dict[str, float]  # of all samples (tracer included)
    ns_per_fork: dict[str, float]  # tracer included: sums to the mean dup_mmap time
    ci95: dict[str, tuple[float, float]]
    total_ns: float  # mean dup_mmap_ns of the forks used
    window_samples: dict[str, int]
    forks: int
    draws: np.ndarray  # bootstrap ns per fork, columns COMPONENTS: intervals of sums


def sample_estimate(
    forks: pd.DataFrame, counts: SampleCounts, boot: int = 400, seed: int = 0
) -> SampleEstimate:
    """Split the forks' mean dup_mmap time by sample shares per window (forks: usable, stores > 0)."""
    times = window_times(forks).to_numpy()  # columns: gap, mt_dup, vma_loop, tail, offcpu
    k = len(COMPONENTS)
    mat = np.array([[counts.counts[w][c] for c in COMPONENTS] for w in WINDOWS], dtype="float64")  # (3, k)
    fixed = COMPONENTS.index("fixed")
    offcpu = COMPONENTS.index("offcpu")

    def split(window_means: np.ndarray, sample_mat: np.ndarray) -> np.ndarray:
        out = np.zeros(k)
        out[fixed] += window_means[0]
        out[offcpu] += window_means[-1]
        for wi in range(len(WINDOWS)):
            n = sample_mat[wi].sum()
            if n > 0:
                out += sample_mat[wi] / n * window_means[wi + 1]
            else:  # no sample landed in this window: its time is not attributed to a guess
                out[fixed if WINDOWS[wi] != "vma_loop" else COMPONENTS.index("other")] += window_means[wi + 1]
        return out

    point = split(times.mean(axis=0), mat)
    rng = np.random.default_rng(seed)
    draws = np.empty((boot, k))
    nf = len(times)
    for b in range(boot):
        idx = rng.integers(0, nf, nf)
        # Dirichlet (Bayesian bootstrap) rather than multinomial: a window with 1 sample is uncertain too.
        resampled = np.array([rng.dirichlet(row + 0.5) * row.sum() if row.sum() else row for row in mat])
        draws[b] = split(times[idx].mean(axis=0), resampled)
    lo, hi = np.percentile(draws, [2.5, 97.5], axis=0)
    total = mat.sum()
    return SampleEstimate(
        samples=int(total),
        shares={c: float(mat[:, i].sum() / total) if total else float("nan") for i, c in enumerate(COMPONENTS)},
        ns_per_fork={c: float(point[i]) for i, c in enumerate(COMPONENTS)},
        ci95={c: (float(lo[i]), float(hi[i])) for i, c in enumerate(COMPONENTS)},
        total_ns=float(times.sum(axis=1).mean()),
        window_samples={w: int(mat[wi].sum()) for wi, w in enumerate(WINDOWS)},
        forks=nf,
        draws=draws,
    )

"""A recording as a data frame, with dup_mmap's phases derived from its brackets.

The probes record six raw timestamps per dup_mmap() call, in the forking thread
(CLOCK_MONOTONIC ns, see schema.py):

    ts_parent_lock    mmap_lock_acquire_returned, write, parent mm: dup_mmap starts
    ts_child_lock     mmap_lock_acquire_returned, write, child mm: __mt_dup follows
    ts_first_store    first maple_tree:ma_write "mas_store" on the child tree
    ts_last_store     last  maple_tree:ma_write "mas_store" on the child tree
    ts_child_unlock   mmap_lock_released, child mm
    ts_parent_unlock  mmap_lock_released, parent mm: dup_mmap ends

No probe fires where __mt_dup() returns (lib/ is built without ftrace hooks and
__mt_dup emits no tracepoint), so its cost is not bracketed directly. Between
the child lock and the first store lie __mt_dup(), the first mas_find() of
for_each_vma(), and the first VMA's pre-store work (vm_area_dup(), anon_vma_fork(),
...). Between two consecutive stores lies one per-VMA step: the rest of one
VMA's copy (copy_page_range(), ...) plus the next VMA's pre-store work. So, in
ns, as float (NaN where not measurable):

    dup_mmap_ns   = ts_parent_unlock - ts_parent_lock
    mt_dup_raw_ns = ts_first_store - ts_child_lock
    vma_loop_ns   = ts_last_store - ts_first_store           (stores - 1 steps)
    vma_step_ns   = vma_loop_ns / (stores - 1)               (stores >= 2)
    mt_dup_step_ns = min_step_ns, or vma_step_ns where min_step_ns is 0
    mt_dup_ns     = max(mt_dup_raw_ns - mt_dup_step_ns, 0)   (stores >= 2)
    tail_ns       = ts_parent_unlock - ts_last_store
    dup_mmap_oncpu_ns = dup_mmap_ns - offcpu_ns

Phases are wall-clock: a thread preempted (or blocked) inside dup_mmap, which
holds both mmap locks all along, has that time in its phases. The probe times
it (`offcpu_ns`, switch-out -> switch-in, from the child lock on, split by the
window it began in); `dup_mmap_oncpu_ns` is what ran on a CPU, and the
attribution reports off-CPU time as its own part. Recordings without the
columns read 0: on a loaded host their phases include it unseen.

mt_dup_ns removes one per-VMA step from mt_dup_raw_ns: the first VMA's
pre-store work. Which step: VMAs differ wildly in cost (a large heap's
copy_page_range runs after its store and can be a thousand times a small
VMA's step), so the *mean* step is dominated by the expensive few and, where
they exist, over-subtracts until the estimate is clamped at 0 (Redis: every
fork). The probe records the *shortest* step between consecutive stores among
the first 17 (`min_step_ns`): one VMA's post-store work plus the next one's
pre-store work, for the cheapest VMA near the start of the address space,
where the first VMA is. It bounds the first VMA's pre-store work closely
when that VMA is an ordinary one and is immune to a few huge VMAs. Recordings
made before min_step_ns existed (0 there) fall back to the mean step. Where
the difference is negative it is clamped to 0 and `mt_dup_clamped` is set, so
a reader can count how often the assumption failed.

A VM_DONTCOPY VMA (MADV_DONTFORK) is not copied: since v6.8 the loop clears
its range in the child's tree with mas_store_gfp(NULL), which is not a
"mas_store" event (before v6.8 the VMA is skipped). Its time lies in the step
(or the tail) where it falls, and `stores` counts the copied VMAs only:

    dontcopy_vmas = parent_map_count - stores - null_stores - zero_stores
                    (forks that did not fail, map_count read; else NaN)

Rows with stores == 0, or a store timestamp of 0 ("not seen"), get NaN for every
store-based phase. A bracket whose timestamps run backwards is flagged with
`bracket_ok = False` rather than dropped. Failed forks (`failed`) stay in the
frame, and so do `partial` ones (in flight when tracing started or stopped);
`usable` marks rows that latency statistics may use (not failed, not partial, bracket
in order), so excluded rows are counted rather than silently lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:  # imported where used: the phase list is needed without pandas
    import numpy as np
    import pandas as pd

__all__ = ["Phase", "PHASES", "PHASE_NAMES", "TIMESTAMPS", "WINDOWS", "derive_phases", "phase_arrays"]


@dataclass(frozen=True)
class Phase:
    """One phase of dup_mmap: its frame column and what it spans."""

    name: str
    spans: str
    derived: bool = False  # computed from other phases, not measured by a method of its own

    @property
    def column(self) -> str:
        return f"{self.name}_ns"


# The one list of phases, in bracket order. Recording columns, report rows,
# doctor's method table and compare's rows all come from here.
PHASES: tuple[Phase, ...] = (
    Phase("dup_mmap", "parent lock -> parent unlock"),
    Phase("mt_dup", "child lock -> first mas_store, less the shortest VMA step"),
    Phase("vma_loop", "first -> last mas_store (stores - 1 VMA steps)"),
    Phase("vma_step", "vma_loop / (stores - 1)", derived=True),
    Phase("tail", "last mas_store -> parent unlock"),
)
PHASE_NAMES: tuple[str, ...] = tuple(p.name for p in PHASES)

# The windows after the child's lock, in bracket order: the parts of dup_mmap
# timed from ma_write stores. The sampler tags stacks with them (bracket.h's
# enum sample_phase), off-CPU time is split by them (offcpu_<window>_ns), the
# attribution splits samples by them and compare's verdict names them.
WINDOWS: tuple[str, ...] = ("mt_dup", "vma_loop", "tail")

# The six bracket timestamps, in the order they must occur.
TIMESTAMPS = (
    "ts_parent_lock",
    "ts_child_lock",
    "ts_first_store",
    "ts_last_store",
    "ts_child_unlock",
    "ts_parent_unlock",
)


# Raw columns the phases use where a recording has them (older ones may not).
OPTIONAL_INPUTS = ("partial", "min_step_ns", "offcpu_ns", "parent_map_count", "null_stores", "zero_stores")


def derive_phases(forks: pd.DataFrame) -> pd.DataFrame:
    """Return a copy of `forks` with the phase columns of the module docstring added.

    Pure: the input is not modified. Needs the ts_* columns and `stores`,
    `failed`; extra columns pass through.
    """
    df = forks.copy()
    optional = {name: df[name].to_numpy() for name in OPTIONAL_INPUTS if name in df}
    columns = {name: df[name].to_numpy() for name in (*TIMESTAMPS, "stores", "failed")}
    for name, values in phase_arrays({**columns, **optional}, len(df)).items():
        df[name] = values
    return df


def phase_arrays(columns: Mapping[str, np.ndarray], rows: int) -> dict[str, np.ndarray]:
    """The phase columns of the module docstring, from raw column arrays (the one place they are computed).

    `columns` holds the ts_* columns, `stores` and `failed`; `partial`,
    `min_step_ns` and `offcpu_ns` where the recording has them (absent: false, 0, 0);
    `dontcopy_vmas` is computed where `parent_map_count` is given.
    """
    import numpy as np

    # int64 before subtracting: uint64 differences would wrap instead of going negative.
    ts = {name: np.asarray(columns[name]).astype("int64") for name in TIMESTAMPS}
    stores = np.asarray(columns["stores"]).astype("int64")
    failed = np.asarray(columns["failed"]).astype(bool)
    partial = np.asarray(columns["partial"]).astype(bool) if "partial" in columns else np.zeros(rows, dtype=bool)

    def span(end: str, start: str, valid: np.ndarray) -> np.ndarray:
        out = (ts[end] - ts[start]).astype("float64")
        return np.where(valid, out, np.nan)

    seen = {name: ts[name] != 0 for name in TIMESTAMPS}
    bracket = seen["ts_parent_lock"] & seen["ts_parent_unlock"]
    stored = (stores > 0) & seen["ts_first_store"] & seen["ts_last_store"]

    dup_mmap = span("ts_parent_unlock", "ts_parent_lock", bracket)
    mt_dup_raw = span("ts_first_store", "ts_child_lock", stored & seen["ts_child_lock"])
    vma_loop = span("ts_last_store", "ts_first_store", stored)
    with np.errstate(divide="ignore", invalid="ignore"):
        vma_step = np.where(stored & (stores >= 2), vma_loop / (stores - 1), np.nan)
    min_step = np.asarray(columns["min_step_ns"]).astype("float64") if "min_step_ns" in columns else np.zeros(rows)
    mt_dup_step = np.where(stored & (stores >= 2) & (min_step > 0), min_step, vma_step)
    corrected = mt_dup_raw - mt_dup_step
    clamped = corrected < 0  # False where NaN
    mt_dup = np.where(clamped, 0.0, corrected)
    tail = span("ts_parent_unlock", "ts_last_store", stored & seen["ts_parent_unlock"])

    # Seen timestamps must not run backwards along the bracket.
    ordered = np.ones(rows, dtype=bool)
    last_seen = np.zeros(rows, dtype="int64")
    for name in TIMESTAMPS:
        here = ts[name]
        ordered &= ~seen[name] | (here >= last_seen)
        last_seen = np.where(seen[name], here, last_seen)

    offcpu = np.asarray(columns["offcpu_ns"]).astype("float64") if "offcpu_ns" in columns else np.zeros(rows)
    out = {
        "dup_mmap_ns": dup_mmap,
        "mt_dup_raw_ns": mt_dup_raw,
        "vma_loop_ns": vma_loop,
        "vma_step_ns": vma_step,
        "mt_dup_step_ns": mt_dup_step,
        "mt_dup_ns": mt_dup,
        "mt_dup_clamped": clamped,
        "tail_ns": tail,
        "dup_mmap_oncpu_ns": dup_mmap - offcpu,
        "bracket_ok": ordered & bracket,
        "usable": ordered & bracket & ~failed & ~partial,
    }
    if "parent_map_count" in columns:
        visited = np.asarray(columns["parent_map_count"]).astype("int64")
        called = stores + sum(np.asarray(columns[c]).astype("int64") for c in ("null_stores", "zero_stores") if c in columns)
        out["dontcopy_vmas"] = np.where((visited >= 0) & ~failed & bracket, visited - called, np.nan)
    return out

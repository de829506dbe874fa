"""The replay model's operation counts per fork, for the parent's tree the fork copied.

Which parent tree: the layout saved with the recording (Recording.maps(), the
snapshot of the forking pid) shaped by

* spawn_history: the built-in workload's own mmap/munmap history replayed
  (analysis.model.parent.choose_parent_build says when that applies), or
* observed_partition: for a process whose history is unknown, a tree with as
  many leaves as the kernel wrote (the recording's `leaves`), VMAs spread
  evenly over them. Its leaf count matches by construction; how far a
  guessed history (top-down mmap order) would be off is reported beside it.

Every result says which source it used. The parent's tree comes from
analysis.model.parent.parent_tree, which caches it: forks share layouts, and
a 6400-VMA tree costs ~0.1 s to build the first time.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, fields
from typing import Any, Sequence

import numpy as np
import pandas as pd

from analysis.model.build import build_bulk
from analysis.model.parent import GATE_AREAS, RecordedTarget, parent_tree, workload_key
from analysis.model.dup import dup_mmap_replace, mt_dup
from analysis.model.tree import MapleTree
from analysis.recording.layout import Vma
from analysis.recording.reader import Recording

__all__ = ["ModelCounts", "CountSource", "RecordingCounts", "COUNT_COLUMNS", "counts_for_layout", "recording_counts"]


@dataclass(frozen=True)
class ModelCounts:
    """What one fork of one parent tree does, in the model's kernel-named counts."""

    vmas: int  # VMAs in the parent's layout (for_each_vma visits each)
    stores: int  # exact-fit mas_store calls (VMAs copied)
    nodes_copied: int  # mas_copy_node() memcpys in __mt_dup
    allocs: int  # allocator calls in __mt_dup: the root's plus one bulk call per internal node
    edges: int  # __mt_dup's mas_descend + mas_ascend on each tree
    find_steps: int  # mas_find's slot steps and its first walk's descends
    leaf_crossings: int  # mas_next_node(): the loop moving to the next leaf
    cross_edges: int  # ascends + descends inside those crossings
    predicted_leaves: int  # distinct leaves the replace loop writes (the recording's `leaves`)

    @property
    def traversal_steps(self) -> int:
        return self.edges + self.find_steps + self.cross_edges

    @property
    def forks(self) -> int:
        return 1

    def unit(self, name: str) -> float:
        return float(getattr(self, name))

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "traversal_steps": self.traversal_steps}


COUNT_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(ModelCounts)) + ("traversal_steps",)


@dataclass(frozen=True)
class CountSource:
    """Where a layout's counts came from, and how the model's leaves compare with the kernel's."""

    source: str  # 'spawn_history', 'observed_partition', or 'bulk_append' (no counts: BULK_NOT_COUNTED)
    reason: str
    observed_leaves: float | None  # median `leaves` of the forks of this layout
    predicted_leaves: int
    assumed_history_leaves: int | None = None  # observed_partition only: top-down mmap order's leaves

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RecordingCounts:
    """Counts for every fork of a recording (NaN where the fork's layout is unknown)."""

    per_fork: pd.DataFrame  # index = rec.forks.index, columns COUNT_COLUMNS
    sources: list[CountSource]  # one per layout used
    missing: str | None  # why no fork has counts, or None


def counts_for_layout(
    layout: Sequence[Vma], workload: dict[str, Any] | None, observed_leaves: float | None
) -> tuple[ModelCounts, CountSource]:
    """The model's counts for one fork of a process with `layout` (its tree cached by parent_tree)."""
    layout = [v for v in layout if v.path not in GATE_AREAS]
    # Keyed by the layout's content: many recordings of one setup (a fleet, a sweep's repeats) count once.
    key = (tuple(layout), observed_leaves, workload_key(workload))
    hit = _COUNTED.get(key)
    if hit is None:
        chosen = parent_tree(RecordedTarget(layout, observed_leaves, "", None, workload))
        source = {"observed_leaves": "observed_partition"}.get(chosen.build, chosen.build)
        counts = _count(chosen.tree, layout)
        hit = counts, CountSource(source, chosen.why, observed_leaves, counts.predicted_leaves, chosen.assumed_leaves)
        if len(_COUNTED) >= _COUNTED_MAX:
            _COUNTED.pop(next(iter(_COUNTED)))
        _COUNTED[key] = hit
    return hit


_COUNTED: dict[tuple[Any, ...], tuple[ModelCounts, CountSource]] = {}
_COUNTED_MAX = 64


def _count(tree: MapleTree, layout: Sequence[Vma]) -> ModelCounts:
    child, dup = mt_dup(tree)
    replace = dup_mmap_replace(child, [(v.start, v.end - 1) for v in layout])
    f = replace.find
    return ModelCounts(
        vmas=len(layout),
        stores=replace.stores_exact_fit,
        nodes_copied=dup.nodes_copied,
        allocs=dup.single_allocs + dup.bulk_allocs,
        edges=dup.edges_down + dup.edges_up,
        find_steps=f.slots_stepped + f.walk_descends,
        leaf_crossings=f.leaf_crossings,
        cross_edges=f.cross_edges_up + f.cross_edges_down,
        predicted_leaves=replace.leaves_written,
    )


# Before v6.8 the child's tree is built by bulk appends, not copied by __mt_dup:
# the component model's units (nodes copied, edges, exact-fit stores) do not exist there.
BULK_NOT_COUNTED = (
    "this kernel builds the child's tree by bulk appends (before v6.8), and the component model "
    "(copy, traversal, replace) is __mt_dup's: no units are counted; the bulk build's own work is in "
    "`tracer compare`'s tree work and `tracer model`"
)


def recording_counts(rec: Recording) -> RecordingCounts:
    """Counts per fork: each usable fork with stores gets its pid's saved layout's counts.

    On a bulk-append kernel the forks get no counts (BULK_NOT_COUNTED), but each
    layout still gets its model check: the leaves a per-VMA probe sees there
    (the bulk build's node changes), against the forks' `leaves`.
    """
    per_fork = pd.DataFrame(np.nan, index=rec.forks.index, columns=list(COUNT_COLUMNS))
    layouts: dict[int, list[list[Vma]]] = {}
    for pid, _comm, vmas in rec.maps():
        layouts.setdefault(pid, []).append([v for v in vmas if v.path not in GATE_AREAS])
    if not layouts:
        return RecordingCounts(per_fork, [], "no parent layout saved (/proc/PID/maps): the model cannot count the tree's work")
    workload = rec.meta.get("workload") if isinstance(rec.meta.get("workload"), dict) else None
    algorithm = rec.meta.get("algorithm") if isinstance(rec.meta.get("algorithm"), dict) else {}
    bulk = algorithm.get("name") == "bulk_append"
    forks = rec.forks[rec.forks["usable"] & (rec.forks["stores"] > 0)]
    sources: list[CountSource] = []
    for pid, rows in forks.groupby("pid"):
        candidates = layouts.get(int(pid))
        if not candidates:
            continue
        # The snapshot whose VMA count matches the parent's at the fork (map_count, which
        # counts VM_DONTCOPY VMAs too; else what the forks stored), else the last one.
        map_count = int(np.median(rows["parent_map_count"]))
        visited = map_count if map_count >= 0 else int(np.median(rows["stores"])) + int(np.median(rows["null_stores"]))
        layout = next((c for c in candidates if len(c) == visited), candidates[-1])
        own = workload if workload and workload.get("pid") in (None, int(pid)) else None
        observed = float(statistics.median(rows["leaves"].tolist()))
        if bulk:
            seen = build_bulk(layout).leaves_seen
            sources.append(CountSource("bulk_append", BULK_NOT_COUNTED, observed, seen))
            continue
        counts, source = counts_for_layout(layout, own, observed)
        per_fork.loc[rows.index, list(COUNT_COLUMNS)] = [counts.as_dict()[c] for c in COUNT_COLUMNS]
        sources.append(source)
    if not sources:
        return RecordingCounts(per_fork, [], "no saved layout belongs to a process whose forks copied VMAs")
    return RecordingCounts(per_fork, sources, BULK_NOT_COUNTED if bulk else None)

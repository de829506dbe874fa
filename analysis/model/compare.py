"""Two kernels' fork() tree work on the same layout, side by side.

new path (v6.8+): __mt_dup() of the parent's tree, then the replace loop.
old path (v6.1-v6.7): mas_for_each() over the parent's tree, appending each
copied VMA into the child's empty tree in bulk mode, then mas_destroy().

The parent's tree is the same for both; by default it is built by mmap-like
stores in descending address order (how top-down mmap() fills a fresh
process), since a layout alone does not say what history shaped it. When the
history is known -- the built-in spawn workload's (analysis.model.history) --
parent_build="spawn_history" replays it instead.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable, Sequence
from dataclasses import dataclass, field

from analysis.recording.layout import Vma
from analysis.model.build import (
    Store,
    build_bulk,
    build_from_history,
    build_from_partition,
    check_layout,
    layout_slots,
)
from analysis.model.history import history_mmap_order, spawn_history
from analysis.model.dup import FindCounters, dup_mmap_replace, mas_for_each, mt_dup
from analysis.model.tree import MapleTree, TreeShape

__all__ = ["ModelReport", "compare_paths", "model_leaf_counts", "seed_node_estimate"]

PARENT_BUILDS = ("mmap_descending", "mmap_ascending", "bulk_append", "spawn_history")


def seed_node_estimate(entries: int) -> float:
    """The seed's rule of thumb: a tree of n entries has about (n - 1) / 15 nodes.

    It counts VMAs only, as if every node held 16 of them: it ignores the NULL
    slot each unmapped interval takes and the internal levels of 10.
    """
    return max(entries - 1, 0) / 15


@dataclass
class ModelReport:
    """Everything `tracer model` prints, as plain data."""

    source: str
    vmas: int
    slots: int
    parent_build: str
    parent_shape: TreeShape
    old_child_shape: TreeShape
    new: dict[str, int]
    old: dict[str, int]
    rows: list[tuple[str, int | None, int | None]]
    seed_estimate: float
    leaf_counts: dict[str, int | float | None] = field(default_factory=dict)
    parent_build_reason: str = ""  # why this build path: said beside it in the output


def _parent_tree(
    layout: Sequence[Vma], parent_build: str, extra_vmas: int | None = None, spawn_layout: str = "gapped"
) -> MapleTree:
    if parent_build == "spawn_history":
        if extra_vmas is None:
            raise ValueError("parent_build 'spawn_history' needs extra_vmas (spawn.c's --vmas)")
        return build_from_history(spawn_history(layout, extra_vmas, spawn_layout=spawn_layout))
    if parent_build == "bulk_append":
        return build_bulk(layout).tree
    if parent_build == "mmap_descending":
        return build_from_history(history_mmap_order(layout, "descending"))
    if parent_build == "mmap_ascending":
        return build_from_history(history_mmap_order(layout, "ascending"))
    raise ValueError(f"parent_build must be one of {', '.join(PARENT_BUILDS)}, not {parent_build!r}")


def compare_paths(
    layout: Sequence[Vma],
    parent: MapleTree | None = None,
    parent_build: str = "mmap_descending",
    dontcopy: Collection[int] = frozenset(),
    source: str = "layout",
    extra_vmas: int | None = None,
    parent_build_reason: str = "",
    spawn_layout: str = "gapped",
) -> ModelReport:
    """Model both fork paths for `layout`; `parent` overrides the built parent tree.

    extra_vmas, spawn_layout: spawn.c's --vmas and --layout, for parent_build="spawn_history".
    """
    check_layout(layout)
    if parent is None:
        parent = _parent_tree(layout, parent_build, extra_vmas, spawn_layout)
    else:
        parent_build = "given"
    dontcopy = frozenset(dontcopy)
    ranges = [(v.start, v.end - 1) for v in layout]

    child, dup = mt_dup(parent)
    replace = dup_mmap_replace(child, ranges, dontcopy)
    new = {**dup.as_dict(), **replace.as_dict()}

    walk = FindCounters()
    for _ in mas_for_each(parent, walk):
        pass
    old_build = build_bulk(layout, dontcopy)
    old = {
        **{f"parent_{k}": v for k, v in walk.as_dict().items()},
        **old_build.counters.as_dict(),
        "prealloc_nodes": old_build.prealloc_nodes,
        "leaves_seen": old_build.leaves_seen,
    }
    old_shape = old_build.tree.shape()
    parent_shape = parent.shape()

    rows: list[tuple[str, int | None, int | None]] = [
        ("child tree nodes", child.shape().nodes, old_shape.nodes),
        ("child tree leaves", child.shape().leaves, old_shape.leaves),
        ("child tree height", child.height, old_build.tree.height),
        ("nodes copied (memcpy 256 B)", dup.nodes_copied, None),
        ("bytes copied", dup.bytes_copied, None),
        ("allocator calls", dup.single_allocs + dup.bulk_allocs, None),
        ("  of which bulk (one per internal node)", dup.bulk_allocs, None),
        ("nodes preallocated (mas_expected_entries)", None, old_build.prealloc_nodes),
        ("nodes built by split/push (from the prealloc)", None, old_build.counters.node_allocs),
        ("edges down / tree (mas_descend)", dup.edges_down, None),
        ("edges up / tree (mas_ascend)", dup.edges_up, None),
        ("mas_find calls", replace.find.mas_find_calls, walk.mas_find_calls),
        ("slots stepped", replace.find.slots_stepped, walk.slots_stepped),
        ("leaf crossings", replace.find.leaf_crossings, walk.leaf_crossings),
        ("stores: exact fit", replace.stores_exact_fit, old_build.counters.stores_exact_fit),
        ("stores: append", None, old_build.counters.stores_append),
        ("stores: node rewrite", None, old_build.counters.stores_node),
        ("stores: split", None, old_build.counters.stores_split),
        ("stores: NULL (VM_DONTCOPY)", replace.stores_null, None),
        ("splits (levels)", replace.null_store.splits, old_build.counters.splits),
        ("push left", replace.null_store.push_left, old_build.counters.push_left),
        ("push right", replace.null_store.push_right, old_build.counters.push_right),
        ("rebalances (NULL stores | mas_destroy)", replace.null_store.rebalances, old_build.counters.destroy_rebalances),
        ("mas_store calls (one ma_write each)", replace.ma_write_events, old_build.counters.stores),
        ("  ma_write from mas_wr_node_store (v6.1)", None, old_build.counters.node_store_events),
        ("  ma_write from mas_wr_bnode (v6.1)", None, old_build.counters.bnode_events),
        ("leaves written (as a per-VMA probe counts them)", replace.leaves_written, old_build.leaves_seen),
    ]
    return ModelReport(
        source=source,
        vmas=len(layout),
        slots=layout_slots(layout),
        parent_build=parent_build,
        parent_shape=parent_shape,
        old_child_shape=old_shape,
        new=new,
        old=old,
        rows=rows,
        seed_estimate=seed_node_estimate(len(layout)),
        parent_build_reason=parent_build_reason,
    )


def model_leaf_counts(
    layout: Sequence[Vma],
    observed_leaves: float | None,
    history: Sequence[Store] | None = None,
    partition: Sequence[Hashable | None] | None = None,
    extra_vmas: int | None = None,
    spawn_layout: str = "gapped",
) -> dict[str, int | float | None]:
    """The model's leaf count per build path, beside what a recording observed.

    Keys: observed (as given), bulk_append (the v6.1 child), bulk_append_probe_sees
    (the node changes a per-VMA probe counts as leaves there), mmap_descending
    (a parent filled by top-down mmap), history (if a history is given),
    partition (if the observed leaf of each VMA is given; it reproduces the
    observation by construction, so it checks the input, not the model),
    spawn_history (if extra_vmas is given: spawn.c's own history replayed).
    """
    check_layout(layout)
    out: dict[str, int | float | None] = {"observed": observed_leaves}
    bulk = build_bulk(layout)
    out["bulk_append"] = bulk.tree.shape().leaves
    # What a per-VMA probe counts as leaves on a kernel that builds the child by bulk appends.
    out["bulk_append_probe_sees"] = bulk.leaves_seen
    out["mmap_descending"] = build_from_history(history_mmap_order(layout, "descending")).shape().leaves
    out["history"] = build_from_history(history).shape().leaves if history is not None else None
    out["partition"] = build_from_partition(layout, partition).shape().leaves if partition is not None else None
    if extra_vmas is not None:
        out["spawn_history"] = build_from_history(spawn_history(layout, extra_vmas, spawn_layout=spawn_layout)).shape().leaves
    return out


"""Which tree a recorded process had: the one decision, used by the model CLI, the model check and attribution.

A layout alone does not say what history shaped a parent's tree. The spawn
workload's history is known, so its tree is replayed store by store; any
other process's is not, and its tree is built with the leaf count its forks
were seen writing (VMAs spread evenly over them), else top-down mmap order.
Every choice carries the sentence that says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from analysis.model.build import build_from_history, build_from_partition, even_leaf_partition
from analysis.model.history import find_spawn_region, history_mmap_order, spawn_history
from analysis.model.tree import MapleTree
from analysis.recording.layout import Vma

__all__ = ["GATE_AREAS", "RecordedTarget", "ParentTree", "choose_parent_build", "observed_parent", "parent_tree"]

# Not user VMAs in mm->mm_mt although /proc/PID/maps shows them (x86-64 [vsyscall] is a gate area).
GATE_AREAS = ("[vsyscall]",)


@dataclass
class RecordedTarget:
    """The process of a recording the model is run for."""

    layout: list[Vma]
    observed: float | None  # median `leaves` of its forks (None: no fork with leaves)
    note: str
    pid: int | None
    workload: dict[str, Any] | None  # the recording's metadata `workload`, if it is this pid's


def choose_parent_build(target: RecordedTarget) -> tuple[str, str, int | None]:
    """(parent_build, why, extra_vmas) for a recorded process.

    The spawn workload's history is known, so its tree is built by replaying
    it. Anything else has an unknown history: "observed_leaves" (a tree with
    the leaf count its forks wrote) where the recording observed leaves, else
    top-down mmap order. A spawn recording whose layout is not the one spawn.c
    makes (edited maps, another version of spawn.c) falls back too, and says why.
    """
    w = target.workload
    fallback, assumed = (
        ("observed_leaves", "its history is unknown, so the leaves its forks wrote are used")
        if target.observed
        else ("mmap_descending", "its history is unknown, top-down mmap order assumed")
    )
    if not w or w.get("kind") != "spawn":
        kind = (w or {}).get("kind")
        what = f"workload {kind!r}" if kind else "no built-in workload"
        return fallback, f"{what}: {assumed}", None
    extra = w.get("extra_vmas")
    if not isinstance(extra, int) or isinstance(extra, bool) or extra < 0:
        return fallback, f"spawn workload without a valid extra_vmas ({extra!r}): {assumed}", None
    spawn_layout = w.get("layout") or "gapped"
    try:
        find_spawn_region(target.layout, extra, spawn_layout=spawn_layout)
    except ValueError as err:
        return fallback, f"spawn workload, but {err}; {assumed}", None
    base = "the other VMAs (exec's, ld.so's) mapped top-down"
    if extra == 0:
        why = f"the recording's workload is spawn --vmas 0: {base}, no extra region to replay"
    elif spawn_layout == "adjacent":
        why = (
            f"the recording's workload is spawn --vmas {extra} --layout adjacent: {base}, then spawn.c's mmap of one "
            "region and mprotect of every other page, ascending, as mm/vma.c stores them (analysis.model.history)"
        )
    else:
        why = (
            f"the recording's workload is spawn --vmas {extra}: {base}, then spawn.c's mmap of one region "
            "and munmap of every other page, ascending, as mm/vma.c stores them (analysis.model.history)"
        )
    return "spawn_history", why, extra


def observed_parent(layout: list[Vma], observed: float | None, why: str) -> tuple[Any, str, str]:
    """(parent tree, build, reason) for a process of unknown history whose forks wrote `observed` leaves.

    The leaf count is what the kernel showed; how the VMAs fall into the leaves
    is not recorded, so they are spread evenly. The reason says how far the
    top-down mmap assumption is from the observation. Falls back to top-down
    order where the observed count cannot hold the layout.
    """
    assumed = build_from_history(history_mmap_order(layout, "descending")).shape().leaves
    if not observed:
        return None, "mmap_descending", f"{why}; nothing observed: top-down mmap order assumed ({assumed} leaves)"
    leaves = max(1, round(observed))
    try:
        tree = build_from_partition(layout, even_leaf_partition(layout, leaves))
    except ValueError as err:
        return None, "mmap_descending", f"{why}, but {err}: top-down mmap order assumed ({assumed} leaves)"
    off = (assumed - leaves) / leaves
    return tree, "observed_leaves", (
        f"{why}: the parent tree has the {leaves} leaves the kernel wrote (median per fork), VMAs spread evenly "
        f"over them; top-down mmap order would predict {assumed} leaves ({off:+.0%} off)"
    )


@dataclass(frozen=True)
class ParentTree:
    """The parent's tree for a recorded process, how it was built, and why."""

    tree: MapleTree
    build: str  # 'spawn_history', 'observed_leaves' or 'mmap_descending'
    why: str
    extra_vmas: int | None
    spawn_layout: str


def parent_tree(target: RecordedTarget) -> ParentTree:
    """Build the parent's tree the way choose_parent_build() decides."""
    build, why, extra = choose_parent_build(target)
    spawn_layout = str((target.workload or {}).get("layout") or "gapped")
    if build == "spawn_history":
        tree = build_from_history(spawn_history(target.layout, extra, spawn_layout=spawn_layout))
        return ParentTree(tree, build, why, extra, spawn_layout)
    tree, build, why = observed_parent(target.layout, target.observed if build == "observed_leaves" else None, why)
    if tree is None:
        tree = build_from_history(history_mmap_order(target.layout, "descending"))
    return ParentTree(tree, build, why, None, spawn_layout)

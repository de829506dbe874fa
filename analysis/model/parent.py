"""Which tree a recorded process had: the one decision, used by the model CLI, the model check and attribution.

A layout alone does not say what history shaped a parent's tree. The spawn
workload's history is known, so its tree is replayed store by store; any
other process's is not, and its tree is built with the leaf count its forks
were seen writing (VMAs spread evenly over them), else top-down mmap order.
Every choice carries the sentence that says why.

One place reads a recording's parent (recording_target) and builds its tree
(parent_tree, cached): the model CLI, the model check, attribution's counts and
compare's tree shapes all take it from here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from analysis.errors import TracerError
from analysis.model.build import build_from_history, build_from_partition, even_leaf_partition
from analysis.model.history import find_spawn_region, history_mmap_order, spawn_history
from analysis.model.tree import MapleTree
from analysis.recording.layout import Vma, parse_maps

if TYPE_CHECKING:
    from analysis.recording.reader import Recording

__all__ = [
    "GATE_AREAS",
    "RecordedTarget",
    "ParentTree",
    "choose_parent_build",
    "layout_from_maps_text",
    "observed_parent",
    "parent_tree",
    "recording_target",
    "saved_parent",
    "workload_key",
]

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


def layout_from_maps_text(text: str, what: str) -> list[Vma]:
    """A /proc/PID/maps text as a layout, without gate areas; `what` names it in the one-line errors."""
    try:
        vmas = parse_maps(text)
    except ValueError as err:
        raise TracerError(f"{what} is not a /proc/PID/maps file: {err}") from None
    layout = [v for v in vmas if v.path not in GATE_AREAS]
    if not layout:
        raise TracerError(f"{what} holds no VMAs")
    return layout


def recording_target(rec: Recording) -> RecordedTarget:
    """The process with the most forks in a recording: layout, median `leaves`, workload."""
    path = rec.path
    snapshots = rec.meta.get("maps") or []
    if not snapshots:
        raise TracerError(f"{path} holds no /proc/PID/maps snapshot")

    forks = rec.forks[rec.forks["leaves"] > 0]
    leaves_by_pid = {int(pid): rows["leaves"].tolist() for pid, rows in forks.groupby("pid")}
    pids_with_maps = {s.get("pid") for s in snapshots}
    ranked = sorted((p for p in leaves_by_pid if p in pids_with_maps), key=lambda p: -len(leaves_by_pid[p]))
    if ranked:
        pid = ranked[0]
        snapshot = next(s for s in snapshots if s.get("pid") == pid)
    else:
        snapshot = snapshots[0]
        pid = snapshot.get("pid")
    layout = layout_from_maps_text(snapshot.get("maps") or "", f"{path} (maps of pid {pid})")
    leaves = leaves_by_pid.get(pid, [])
    observed = statistics.median(leaves) if leaves else None
    note = f"pid {pid} {snapshot.get('comm', '')}".rstrip() + f", {len(leaves)} forks with leaves"
    workload = rec.meta.get("workload")
    if not isinstance(workload, dict) or workload.get("pid") != pid:
        workload = None
    return RecordedTarget(layout, observed, note, pid, workload)


def saved_parent(rec: Recording) -> tuple[RecordedTarget, ParentTree] | None:
    """A recording's process and its parent tree, or None where it saved no layout the model can use."""
    try:
        target = recording_target(rec)
        return target, parent_tree(target)
    except (TracerError, ValueError):
        return None


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
        find_spawn_region(target.layout, extra, spawn_layout=spawn_layout, backing=spawn_backing(w))
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
        order = spawn_order(w)
        why = (
            f"the recording's workload is spawn --vmas {extra}"
            + (f" --order {order}" if order != "ascending" else "")
            + (" --weight file" if spawn_backing(w) == "file" else "")
            + f": {base}, then spawn.c's mmap of one region "
            f"and munmap of every other page, {order}, as mm/vma.c stores them (analysis.model.history)"
        )
    return "spawn_history", why, extra


def spawn_order(workload: dict[str, Any] | None) -> str:
    """The order spawn.c cut its holes in (--order; recordings before it existed: ascending)."""
    return str((workload or {}).get("order") or "ascending")


def spawn_backing(workload: dict[str, Any] | None) -> str:
    """'file' where spawn.c mapped its extra VMAs from its memfd (--weight file), else 'anon'."""
    return "file" if (workload or {}).get("weight") == "file" else "anon"


def observed_parent(
    layout: list[Vma], observed: float | None, why: str, assumed: int | None = None
) -> tuple[Any, str, str]:
    """(parent tree, build, reason) for a process of unknown history whose forks wrote `observed` leaves.

    The leaf count is what the kernel showed; how the VMAs fall into the leaves
    is not recorded, so they are spread evenly. The reason says how far the
    top-down mmap assumption (`assumed` leaves; built here if not given) is
    from the observation. Falls back to top-down order where the observed count
    cannot hold the layout.
    """
    if assumed is None:
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
    """The parent's tree for a recorded process, how it was built, and why.

    Shared by every caller that asks for the same target (parent_tree caches
    it): read the tree, never change it.
    """

    tree: MapleTree
    build: str  # 'spawn_history', 'observed_leaves' or 'mmap_descending'
    why: str
    extra_vmas: int | None
    spawn_layout: str
    assumed_leaves: int | None = None  # leaves of top-down mmap order; None for spawn_history


# Built trees by what decides them. A recording is read by report, attribution
# and compare, each asking for the same trees; a 6400-VMA tree takes ~0.1 s.
_BUILT: dict[tuple, ParentTree] = {}
_BUILT_MAX = 64


def parent_tree(target: RecordedTarget) -> ParentTree:
    """Build the parent's tree the way choose_parent_build() decides (cached)."""
    # choose_parent_build and the builds read the layout, the observation and the workload's
    # kind, extra_vmas and layout only: not its pid or timings, so runs of one setup share a tree.
    key = (tuple(target.layout), target.observed, workload_key(target.workload))
    hit = _BUILT.get(key)
    if hit is None:
        hit = _build_parent_tree(target)
        if len(_BUILT) >= _BUILT_MAX:
            _BUILT.pop(next(iter(_BUILT)))
        _BUILT[key] = hit
    return hit


def workload_key(workload: dict[str, Any] | None) -> tuple[Any, ...]:
    """What of a workload choose_parent_build reads: two runs equal here get the same tree."""
    w = workload or {}
    return (w.get("kind"), repr(w.get("extra_vmas")), w.get("layout"))


def _build_parent_tree(target: RecordedTarget) -> ParentTree:
    build, why, extra = choose_parent_build(target)
    spawn_layout = str((target.workload or {}).get("layout") or "gapped")
    if build == "spawn_history":
        tree = build_from_history(spawn_history(
            target.layout, extra, spawn_layout=spawn_layout, munmap_order=spawn_order(target.workload),
            backing=spawn_backing(target.workload),
        ))
        return ParentTree(tree, build, why, extra, spawn_layout)
    top_down = build_from_history(history_mmap_order(target.layout, "descending"))
    assumed = top_down.shape().leaves
    observed = target.observed if build == "observed_leaves" else None
    tree, build, why = observed_parent(target.layout, observed, why, assumed)
    return ParentTree(tree if tree is not None else top_down, build, why, None, spawn_layout, assumed)

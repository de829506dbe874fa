"""Several recordings as one frame, grouped by workload and VMA count.

report, compare and attribution all take "FILE... or a directory" and work
per group: forks of the same workload at the same number of VMAs belong
together (a sweep is many groups; two runs of one setup are one group). The
group key is read from each recording's metadata, so two recordings of the
same setup on different kernels fall into the same group and can be
compared.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
import pandas as pd

from analysis.errors import InputError, TracerError
from analysis.recording.reader import Recording, load_recording

__all__ = ["GroupKey", "Group", "recording_paths", "load_recordings", "group_key", "group_recordings", "fork_frame"]


@dataclass(frozen=True, order=True)
class GroupKey:
    """What makes forks comparable: the workload, its layout, and the VMAs it copies."""

    workload: str  # 'spawn', or the traced comm for other targets
    layout: str  # 'gapped' / 'adjacent' for spawn; '' when unknown
    vmas: int  # VMAs copied per fork (spawn: extra VMAs asked for; else median stores)

    def label(self) -> str:
        if self.workload == "spawn":
            return f"spawn {self.vmas} extra VMAs" + (f", {self.layout}" if self.layout else "")
        return f"{self.workload}, {self.vmas} VMAs"


@dataclass
class Group:
    key: GroupKey
    recordings: list[Recording] = field(default_factory=list)

    @property
    def forks(self) -> pd.DataFrame:
        return fork_frame(self.recordings)


def recording_paths(args: Iterable[Path | str]) -> list[Path]:
    """FILE and DIR arguments as recording files: a directory stands for its *.parquet files."""
    paths: list[Path] = []
    for arg in args:
        arg = Path(arg)
        if arg.is_dir():
            found = sorted(arg.glob("*.parquet"))
            if not found:
                raise InputError(f"directory {arg} holds no recordings (*.parquet)")
            paths += found
        else:
            paths.append(arg)
    if not paths:
        raise InputError("no recordings given")
    return paths


def load_recordings(args: Iterable[Path | str]) -> list[Recording]:
    return [load_recording(p) for p in recording_paths(args)]


def group_key(rec: Recording) -> GroupKey:
    """The group a recording belongs to, from its metadata (and its forks where it says nothing)."""
    workload = rec.meta.get("workload") if isinstance(rec.meta.get("workload"), dict) else {}
    if workload.get("kind") == "spawn" and isinstance(workload.get("extra_vmas"), int):
        return GroupKey("spawn", spawn_variant(workload), int(workload["extra_vmas"]))
    df = rec.forks[rec.forks["usable"]]
    if df.empty:
        return GroupKey(_main_comm(rec.forks), "", 0)
    return GroupKey(_main_comm(df), "", int(np.median(df["stores"].to_numpy())))


def spawn_variant(workload: dict) -> str:
    """The spawn layout and any designed-experiment option that changes what a fork copies: 'gapped+scatter+cold'.

    Runs that differ in these are different experiments and never one group.
    """
    parts = [str(workload.get("layout") or "gapped")]
    if workload.get("order") not in (None, "ascending"):
        parts.append(str(workload["order"]))
    if workload.get("touch"):
        parts.append("touch")
    if workload.get("weight") not in (None, "none"):
        parts.append(str(workload["weight"]))
    if workload.get("evict_mb"):
        parts.append(f"evict{workload['evict_mb']}M" + ("-cold" if workload.get("cold") else "-warm"))
    return "+".join(parts)


def _main_comm(df: pd.DataFrame) -> str:
    if df.empty:
        return "?"
    return str(df["comm"].value_counts().index[0])


def group_recordings(recs: Sequence[Recording]) -> list[Group]:
    """Recordings grouped by GroupKey, groups in key order (workload, layout, VMAs)."""
    groups: dict[GroupKey, Group] = {}
    for rec in recs:
        key = group_key(rec)
        groups.setdefault(key, Group(key)).recordings.append(rec)
    return [groups[k] for k in sorted(groups)]


def fork_frame(recs: Sequence[Recording]) -> pd.DataFrame:
    """The fork rows of several recordings, one frame, with a `recording` column (its index in recs)."""
    if not recs:
        raise TracerError("no recordings")
    frames = []
    for i, rec in enumerate(recs):
        df = rec.forks.copy()
        df.insert(0, "recording", i)
        frames.append(df)
    return pd.concat(frames, ignore_index=True)

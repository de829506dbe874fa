"""The whole spawn cycle (clone, dup_mmap, exit_mmap, wait), when a recording carries it.

The bracket measures dup_mmap only. A recording that also measured the rest of
a spawn iteration carries either fork columns `clone_ns`, `exit_mmap_ns`,
`wait_ns`, or a metadata entry `cycle` ({part: p50 ns, or {p50_ns: ...}}).
This is the one place the report asks for them; until recordings carry them
the report says so.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["CYCLE_PARTS", "cycle_summary"]

CYCLE_PARTS: tuple[str, ...] = ("clone", "dup_mmap", "exit_mmap", "wait")


def cycle_summary(forks: pd.DataFrame, metas: Sequence[Mapping[str, Any]]) -> tuple[dict[str, float | None] | None, str]:
    """({part: p50 ns}, where from) or (None, why not)."""
    columns = [f"{p}_ns" for p in CYCLE_PARTS if p != "dup_mmap"]
    if any(c in forks.columns for c in columns):
        used = forks[forks["usable"]] if "usable" in forks.columns else forks
        out = {}
        for part in CYCLE_PARTS:
            col = f"{part}_ns"
            values = used[col].to_numpy(dtype="float64") if col in used.columns else np.array([])
            values = values[np.isfinite(values)]
            out[part] = float(np.median(values)) if values.size else None
        return out, "fork columns " + ", ".join(c for c in columns if c in forks.columns)
    for meta in metas:
        cycle = meta.get("cycle")
        if isinstance(cycle, dict):
            out = {}
            for part in CYCLE_PARTS:
                v = cycle.get(part)
                v = v.get("p50_ns") if isinstance(v, dict) else v
                out[part] = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None
            return out, "metadata 'cycle'"
    return None, "the recording measured dup_mmap only (no clone/exit_mmap/wait columns or 'cycle' metadata)"

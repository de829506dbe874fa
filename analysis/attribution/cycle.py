"""The whole spawn cycle (clone, dup_mmap, exit_mmap, wait), when a recording carries it.

The bracket measures dup_mmap only. A recording made with `record --cycle`
also measured the rest of a spawn iteration, in the fork columns `clone_ns`,
`exit_mmap_ns`, `wait_ns` (tracer/probes/cycle.c). This is the one place the
report asks for them.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

__all__ = ["CYCLE_PARTS", "cycle_summary"]

CYCLE_PARTS: tuple[str, ...] = ("clone", "dup_mmap", "exit_mmap", "wait")


def cycle_summary(forks: pd.DataFrame, metas: Sequence[Mapping[str, Any]] = ()) -> tuple[dict[str, float | None] | None, str]:
    """({part: p50 ns}, where from) or (None, why not).

    Recordings made without the cycle carry its columns as NaN (the reader
    fills columns added since format 1), so "measured" means a finite value.
    """
    columns = [f"{p}_ns" for p in CYCLE_PARTS if p != "dup_mmap"]
    used = forks[forks["usable"]] if "usable" in forks.columns else forks
    measured = [c for c in columns if c in used.columns and np.isfinite(used[c].to_numpy(dtype="float64")).any()]
    if not measured:
        why = "the recording measured dup_mmap only (recorded without --cycle: no clone/exit_mmap/wait times)"
        return None, why
    out = {}
    for part in CYCLE_PARTS:
        col = f"{part}_ns"
        values = used[col].to_numpy(dtype="float64") if col in used.columns else np.array([])
        values = values[np.isfinite(values)]
        out[part] = float(np.median(values)) if values.size else None
    return out, "fork columns " + ", ".join(measured)

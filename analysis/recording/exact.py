"""Exact-probe records joined to the bracket's rows: one fork, both measurements.

Both probes run in the forking thread and stamp CLOCK_MONOTONIC
(bpf_ktime_get_ns), so a dup_mmap() call is the exact record of the same
thread whose entry..exit contains the bracket's parent lock..unlock. An exact
record that contains no bracket (the bracket lost it, or it was in flight at
attach) is counted, not guessed into a row.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from analysis.recording.schema import ADDED_COLUMNS

__all__ = ["EXACT_COLUMNS", "EXACT_PHASE_COLUMNS", "join_exact"]

# The fork-table columns the exact probes fill, with their "not measured" defaults.
EXACT_COLUMNS: dict[str, object] = {name: default for name, _, _, default in ADDED_COLUMNS if name.startswith("exact_")}

# A phase whose method is "exact" takes its figures from this column, not the bracket's.
EXACT_PHASE_COLUMNS: dict[str, str] = {"dup_mmap": "exact_dup_mmap_ns", "mt_dup": "exact_mt_dup_sum_ns"}


def join_exact(forks: pd.DataFrame, exact: pd.DataFrame) -> tuple[pd.DataFrame, int]:
    """`forks` with the EXACT_COLUMNS of its matching exact record, and how many records matched no fork.

    forks needs tid, ts_parent_lock, ts_parent_unlock and failed; exact needs
    tid and the EXACT_COLUMNS it measured (exact_ts_entry/exit at least).
    A fork whose dup_mmap returned an error, or called undo_dup_mmap, is failed.
    Pure: neither input is modified.
    """
    out = forks.copy()
    for name, default in EXACT_COLUMNS.items():
        out[name] = default
    if forks.empty or exact.empty:
        return out, len(exact)
    left = pd.DataFrame(
        {
            "row": np.arange(len(forks)),
            "tid": forks["tid"].astype("int64").to_numpy(),
            "key": forks["ts_parent_lock"].astype("int64").to_numpy(),
            "until": forks["ts_parent_unlock"].astype("int64").to_numpy(),
        }
    ).sort_values("key", kind="stable")
    right = exact.assign(
        tid=exact["tid"].astype("int64"),
        key=exact["exact_ts_entry"].astype("int64"),
        record=np.arange(len(exact)),
    ).sort_values("key", kind="stable")
    m = pd.merge_asof(left, right, on="key", by="tid", direction="backward", suffixes=("", "_x"))
    # The latest entry at or before the parent lock must also return after the parent unlock.
    inside = m["record"].notna() & (m["exact_ts_exit"].astype("float64") >= m["until"].astype("float64"))
    inside &= m["key"] > 0  # a bracket without its parent lock (partial) matches nothing
    inside &= ~(m["record"].duplicated(keep="first") & m["record"].notna())
    hit = m[inside]
    rows = hit["row"].to_numpy()
    for name in EXACT_COLUMNS:
        if name in hit:
            values = hit[name].to_numpy()
            column = out[name].to_numpy().copy()
            column[rows] = values.astype(column.dtype)
            out[name] = column
    if "exact_dup_mmap_ns" not in exact:
        seen = out["exact_ts_entry"].to_numpy() != 0
        span = out["exact_ts_exit"].astype("int64") - out["exact_ts_entry"].astype("int64")
        out["exact_dup_mmap_ns"] = np.where(seen, span.astype("float64"), np.nan)
    undo = out["exact_undo_dup_mmap_calls"].to_numpy() + out["exact_undo_dup_mmap_no_exit"].to_numpy()
    out["failed"] = out["failed"].astype(bool).to_numpy() | (out["exact_ret"].to_numpy() != 0) | (undo > 0)
    unmatched = len(exact) - int(hit["record"].nunique())
    return out, unmatched

"""Packed ring buffer records -> the recording's fork table (columns of FORK_SCHEMA).

The bracket's records make the rows; exact probe records, where there are
any, are joined to them (analysis.recording.exact.join_exact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.recording.exact import join_exact
from analysis.recording.schema import COLUMN_DEFAULTS, EXACT_CHILDREN, FORK_SCHEMA
from tracer.probes.bracket import DUP_EVENT_DTYPE
from tracer.probes.exact import CHILD_FUNCTIONS, EXACT_EVENT_DTYPE

__all__ = ["exact_frame", "fork_table"]


def exact_frame(records: bytes | bytearray, timed: set[str]) -> pd.DataFrame:
    """Packed struct exact_event records -> one row per dup_mmap call, in fork-table column names.

    timed: the kernel functions that were attached; the others keep their
    "not probed" defaults (NaN sums) rather than a measured-looking 0.
    """
    ev = np.frombuffer(records, dtype=EXACT_EVENT_DTYPE)
    entry = ev["ts_entry"].astype("int64")
    cols: dict[str, object] = {
        "tid": ev["tid"],
        "seq": ev["seq"],
        "exact_ts_entry": ev["ts_entry"],
        "exact_ts_exit": ev["ts_exit"],
        "exact_dup_mmap_ns": (ev["ts_exit"].astype("int64") - entry).astype("float64"),
        "exact_ret": ev["ret"],
    }
    for i, (function, stem) in enumerate(zip(CHILD_FUNCTIONS, EXACT_CHILDREN)):
        prefix = f"exact_{stem}"
        if function not in timed:
            for suffix in ("calls", "sum_ns", "max_ns", "first_ns", "no_exit"):
                cols[f"{prefix}_{suffix}"] = np.full(len(ev), COLUMN_DEFAULTS[f"{prefix}_{suffix}"])
            continue
        calls = ev["child_calls"][:, i]
        first = ev["child_first"][:, i].astype("int64")
        cols[f"{prefix}_calls"] = calls
        cols[f"{prefix}_sum_ns"] = ev["child_sum_ns"][:, i].astype("float64")
        cols[f"{prefix}_max_ns"] = np.where(calls > 0, ev["child_max_ns"][:, i].astype("float64"), np.nan)
        cols[f"{prefix}_first_ns"] = np.where(first > 0, (first - entry).astype("float64"), np.nan)
        cols[f"{prefix}_no_exit"] = ev["child_no_exit"][:, i]
    return pd.DataFrame(cols)


def fork_table(
    dups: bytes | bytearray,
    children: list[tuple[int, int, int]],
    exact: pd.DataFrame | None = None,
) -> tuple[pa.Table, int]:
    """Packed struct dup_event records + (tid, seq, child pid) pairs (+ exact rows) -> the fork table.

    Returns the table and the number of exact records that matched no bracket.
    """
    ev = np.frombuffer(dups, dtype=DUP_EVENT_DTYPE)  # a view: no copy of the run's records
    frame = pd.DataFrame({"tid": ev["tid"], "seq": ev["seq"]})
    kids = pd.DataFrame(children, columns=["tid", "seq", "child_pid"]).astype(
        {"tid": "uint32", "seq": "uint64", "child_pid": "int64"}
    )
    kids = kids.drop_duplicates(["tid", "seq"], keep="first")
    child = frame.merge(kids, on=["tid", "seq"], how="left")["child_pid"]
    completed = child.notna().to_numpy()
    columns = {name: ev[name] for name in FORK_SCHEMA.names if name in ev.dtype.names and name != "comm"}
    columns["comm"] = np.char.decode(ev["comm"], "utf-8", errors="replace")
    columns["child_pid"] = child.fillna(-1).astype("int64").to_numpy()
    columns["failed"] = (ev["zero_stores"] > 0) | ~completed
    columns["partial"] = np.zeros(len(ev), dtype=bool)
    frame = pd.DataFrame({name: columns[name] for name in FORK_SCHEMA.names if name in columns})
    unmatched = 0
    if exact is not None:
        frame, unmatched = join_exact(frame, exact)
    for name, default in COLUMN_DEFAULTS.items():
        if name not in frame:
            frame[name] = default
    # pa.array on numpy keeps NaN as NaN ("not measured"); from_pandas would make it null.
    table = pa.table({name: pa.array(np.asarray(frame[name].to_numpy())) for name in FORK_SCHEMA.names})
    return table.cast(FORK_SCHEMA), unmatched

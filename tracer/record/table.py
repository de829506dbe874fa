"""Packed ring buffer records -> the recording's fork table (columns of FORK_SCHEMA).

The bracket's records make the rows; exact probe records, where there are
any, are joined to them (analysis.recording.exact.join_exact).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.recording.exact import join_exact
from analysis.recording.phases import WINDOWS
from analysis.recording.schema import COLUMN_DEFAULTS, EXACT_CHILDREN, FORK_SCHEMA, with_defaults
from tracer.probes.bracket import DUP_EVENT_DTYPE
from tracer.probes.exact import CHILD_FUNCTIONS, EXACT_EVENT_DTYPE

__all__ = ["exact_frame", "fork_table", "unmatched_exact"]


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
    start_ns: int | None = None,
    end_ns: int | None = None,
    exact: pd.DataFrame | None = None,
) -> pa.Table:
    """Packed struct dup_event records + (tid, seq, child pid) pairs (+ exact rows) -> the fork table.

    start_ns and end_ns (CLOCK_MONOTONIC, as the records) bound the run. A
    bracket that began before start_ns was in flight while the programs were
    being attached, one at a time: its start, and its child event, may have
    been missed. A record without a child that ended at or after end_ns may
    have had its child event after the tracer stopped reading. Both are
    `partial`, not failed; a fork that stored XA_ZERO_ENTRY failed regardless.
    exact (exact_frame's rows) fills the exact_* columns of the forks it
    contains; unmatched_exact() tells which of its rows matched none.
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
    partial = np.zeros(len(ev), dtype=bool)
    if start_ns is not None:
        partial |= ev["ts_parent_lock"] < np.uint64(start_ns)
    if end_ns is not None:
        partial |= ~completed & (ev["ts_parent_unlock"] >= np.uint64(end_ns))
    failed = ev["zero_stores"] > 0
    columns["failed"] = failed | (~completed & ~partial)
    columns["partial"] = partial & ~failed
    columns["min_step_ns"] = ev["min_step"]
    for window in WINDOWS:
        columns[f"offcpu_{window}_ns"] = ev[f"offcpu_{window}"]
    if exact is not None:
        columns = _with_exact(columns, exact)
    # Columns the bracket does not give (the cycle's, the exact ones unprobed) start at their defaults.
    return with_defaults(pa.table({name: columns[name] for name in FORK_SCHEMA.names if name in columns})).cast(FORK_SCHEMA)


def _with_exact(columns: dict[str, np.ndarray], exact: pd.DataFrame) -> dict[str, np.ndarray]:
    """The bracket's columns with the exact ones joined; a fork exact shows failed is failed, not partial."""
    frame, _ = join_exact(pd.DataFrame(columns), exact)
    frame["partial"] = frame["partial"].to_numpy() & ~frame["failed"].to_numpy()
    # numpy arrays, not a pandas round trip: pa.array keeps NaN as NaN ("not measured"), from_pandas makes it null.
    return {name: np.asarray(frame[name].to_numpy()) for name in frame.columns}


def unmatched_exact(table: pa.Table, exact: pd.DataFrame) -> pd.DataFrame:
    """The rows of `exact` (dup_mmap calls) that no fork of `table` was joined to, in their order."""
    joined = pd.DataFrame(
        {"tid": table.column("tid").to_numpy().astype("int64"), "exact_ts_entry": table.column("exact_ts_entry").to_numpy().astype("int64")}
    )
    joined = joined[joined["exact_ts_entry"] != 0]
    keys = exact["tid"].astype("int64").to_numpy(), exact["exact_ts_entry"].astype("int64").to_numpy()
    seen = pd.MultiIndex.from_arrays(keys).isin(pd.MultiIndex.from_frame(joined))
    return exact[~seen]

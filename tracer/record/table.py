"""Packed ring buffer records -> the recording's fork table (columns of FORK_SCHEMA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.recording.schema import FORK_SCHEMA, with_defaults
from tracer.probes.bracket import DUP_EVENT_DTYPE

__all__ = ["fork_table"]


def fork_table(
    dups: bytes | bytearray,
    children: list[tuple[int, int, int]],
    start_ns: int | None = None,
    end_ns: int | None = None,
) -> pa.Table:
    """Packed struct dup_event records + (tid, seq, child pid) pairs -> the fork table.

    start_ns and end_ns (CLOCK_MONOTONIC, as the records) bound the run. A
    bracket that began before start_ns was in flight while the programs were
    being attached, one at a time: its start, and its child event, may have
    been missed. A record without a child that ended at or after end_ns may
    have had its child event after the tracer stopped reading. Both are
    `partial`, not failed; a fork that stored XA_ZERO_ENTRY failed regardless.
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
    for window in ("mt_dup", "vma_loop", "tail"):
        columns[f"offcpu_{window}_ns"] = ev[f"offcpu_{window}"]
    # Columns the bracket does not give (the cycle's) start at their defaults.
    return with_defaults(pa.table({name: columns[name] for name in FORK_SCHEMA.names if name in columns})).cast(FORK_SCHEMA)

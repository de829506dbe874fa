"""Packed ring buffer records -> the recording's fork table (columns of FORK_SCHEMA)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.recording.schema import FORK_SCHEMA
from tracer.probes.bracket import DUP_EVENT_DTYPE

__all__ = ["fork_table"]


def fork_table(dups: bytes | bytearray, children: list[tuple[int, int, int]]) -> pa.Table:
    """Packed struct dup_event records + (tid, seq, child pid) pairs -> the fork table."""
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
    columns["min_step_ns"] = ev["min_step"]
    return pa.table({name: columns[name] for name in FORK_SCHEMA.names}).cast(FORK_SCHEMA)

"""cycle.c's records -> the fork table's cycle columns (clone, exit_mmap, wait).

Each part is joined to the dup_mmap row of the same child. Pids are reused
(pid_max is often 32768, and a sweep forks more than that), so a child pid
alone is not a key: a part belongs to the fork whose dup_mmap it encloses
(clone) or follows most closely (the child's exit_mmap, the parent's wait).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from analysis.recording.schema import CYCLE_PARTS, FORK_SCHEMA
from tracer.probes.cycle import CYCLE_EVENT_DTYPE, CYCLE_KINDS

__all__ = ["join_cycle"]

_KIND = {name: value for value, name in CYCLE_KINDS.items()}


def join_cycle(forks: pa.Table, records: bytes | bytearray) -> tuple[pa.Table, dict[str, int]]:
    """`forks` with the cycle columns filled from packed struct cycle_event records.

    Returns the table and, per part, how many forks got one.
    """
    ev = pd.DataFrame(np.frombuffer(records, dtype=CYCLE_EVENT_DTYPE))
    rows = pd.DataFrame(
        {
            "row": np.arange(forks.num_rows),
            "tid": forks.column("tid").to_numpy().astype("int64"),
            "child_pid": forks.column("child_pid").to_numpy().astype("int64"),
            "ts_parent_lock": forks.column("ts_parent_lock").to_numpy().astype("int64"),
            "ts_parent_unlock": forks.column("ts_parent_unlock").to_numpy().astype("int64"),
        }
    )
    rows = rows[rows["child_pid"] > 0]
    joined: dict[str, int] = {}
    for part, (ts_col, ns_col) in CYCLE_PARTS.items():
        found = _match(rows, ev[ev["kind"] == _KIND[part]], part)
        ts = np.zeros(forks.num_rows, dtype="uint64")
        ns = np.full(forks.num_rows, np.nan)
        ts[found["row"].to_numpy()] = found["ts_start"].to_numpy().astype("uint64")
        ns[found["row"].to_numpy()] = (found["ts_end"] - found["ts_start"]).to_numpy().astype("float64")
        for name, values in ((ts_col, ts), (ns_col, ns)):
            i = forks.schema.get_field_index(name)
            forks = forks.set_column(i, FORK_SCHEMA.field(name), pa.array(values, type=FORK_SCHEMA.field(name).type))
        joined[part] = len(found)
    return forks, joined


def _match(rows: pd.DataFrame, events: pd.DataFrame, part: str) -> pd.DataFrame:
    """(row, ts_start, ts_end) for the fork rows that have this part."""
    empty = pd.DataFrame({"row": np.array([], dtype="int64"), "ts_start": [], "ts_end": []})
    if rows.empty or events.empty:
        return empty
    ev = pd.DataFrame(
        {
            "tid": events["tid"].to_numpy().astype("int64"),
            "child_pid": events["child_pid"].to_numpy().astype("int64"),
            "ts_start": events["ts_start"].to_numpy().astype("int64"),
            "ts_end": events["ts_end"].to_numpy().astype("int64"),
        }
    )
    if part == "clone":
        # The clone syscall of this thread that returned this child and began before dup_mmap.
        left = rows.sort_values("ts_parent_lock")
        m = pd.merge_asof(
            left, ev.sort_values("ts_start"), left_on="ts_parent_lock", right_on="ts_start",
            by=["tid", "child_pid"], direction="backward",
        )
        m = m[m["ts_end"].notna() & (m["ts_end"] >= m["ts_parent_unlock"])]
    else:
        # The child's teardown, or the wait that reaped it, first after dup_mmap ended.
        key = "ts_start" if part == "exit_mmap" else "ts_end"
        left = rows.drop(columns="tid").sort_values("ts_parent_unlock")
        m = pd.merge_asof(
            left, ev.drop(columns="tid").sort_values(key), left_on="ts_parent_unlock", right_on=key,
            by="child_pid", direction="forward",
        )
        m = m[m["ts_start"].notna()]
    # Each event belongs to one fork: where two rows found the same one, the nearer keeps it.
    m = m.drop_duplicates(subset=["child_pid", "ts_start"], keep="last")
    return m[["row", "ts_start", "ts_end"]].astype("int64")

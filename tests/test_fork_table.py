"""Records from the ring buffer -> the fork table, without BPF.

Feeds hand-made struct dup_event records through the same path `record`
uses, so pairing with children and the failed flag are checked exactly.
"""

from __future__ import annotations

import ctypes

import numpy as np

from tracer.probes.bracket import DUP_EVENT_DTYPE, EVENT_DUP, DupEvent
from tracer.record.table import fork_table
from analysis.recording.schema import FORK_SCHEMA


def event(tid: int, seq: int, stores: int = 10, zero_stores: int = 0, comm: bytes = b"spawn") -> bytes:
    ev = DupEvent(kind=EVENT_DUP, pid=tid, tid=tid, seq=seq, stores=stores, zero_stores=zero_stores, comm=comm)
    t0 = 1_000_000 * seq
    for i, name in enumerate(["ts_parent_lock", "ts_child_lock", "ts_first_store", "ts_last_store",
                              "ts_child_unlock", "ts_parent_unlock"]):
        setattr(ev, name, t0 + 100 * i)
    return bytes(ev)


def test_numpy_dtype_mirrors_the_ctypes_struct():
    assert DUP_EVENT_DTYPE.itemsize == ctypes.sizeof(DupEvent) == 120
    raw = event(tid=7, seq=3, stores=42, comm=b"bash")
    (row,) = np.frombuffer(raw, dtype=DUP_EVENT_DTYPE)
    assert (row["tid"], row["seq"], row["stores"], row["comm"]) == (7, 3, 42, b"bash")


def test_children_pair_by_thread_and_sequence_and_order_is_kept():
    dups = event(1, 1) + event(2, 1) + event(1, 2) + event(2, 2, zero_stores=1)
    # Children arrive in any order; a duplicate must not multiply rows.
    children = [(2, 1, 201), (1, 2, 102), (1, 1, 101), (1, 1, 999)]
    table, _ = fork_table(dups, children)
    assert table.schema.equals(FORK_SCHEMA, check_metadata=False)
    df = table.to_pandas()
    assert list(zip(df.tid, df.child_pid)) == [(1, 101), (2, 201), (1, 102), (2, -1)]
    # The last one failed twice over: XA_ZERO_ENTRY stored and no child.
    assert list(df.failed) == [False, False, False, True]


def test_a_fork_without_a_child_is_failed_even_without_zero_entry():
    df = fork_table(event(5, 1) + event(5, 2), [(5, 2, 77)])[0].to_pandas()
    assert list(df.failed) == [True, False]
    assert list(df.child_pid) == [-1, 77]


def test_comm_with_bad_utf8_is_kept_readable():
    df = fork_table(event(1, 1, comm=b"ab\xffcd"), [(1, 1, 2)])[0].to_pandas()
    assert df.comm[0].startswith("ab") and df.comm[0].endswith("cd")


def test_empty_run_gives_an_empty_table():
    table, _ = fork_table(b"", [])
    assert table.num_rows == 0 and table.schema.equals(FORK_SCHEMA, check_metadata=False)

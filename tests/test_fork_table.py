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


def event(tid: int, seq: int, stores: int = 10, zero_stores: int = 0, comm: bytes = b"spawn", **fields) -> bytes:
    ev = DupEvent(kind=EVENT_DUP, pid=tid, tid=tid, seq=seq, stores=stores, zero_stores=zero_stores, comm=comm, **fields)
    t0 = 1_000_000 * seq
    for i, name in enumerate(["ts_parent_lock", "ts_child_lock", "ts_first_store", "ts_last_store",
                              "ts_child_unlock", "ts_parent_unlock"]):
        setattr(ev, name, t0 + 100 * i)
    return bytes(ev)


def test_numpy_dtype_mirrors_the_ctypes_struct():
    assert DUP_EVENT_DTYPE.itemsize == ctypes.sizeof(DupEvent) == 160
    raw = event(tid=7, seq=3, stores=42, comm=b"bash")
    (row,) = np.frombuffer(raw, dtype=DUP_EVENT_DTYPE)
    assert (row["tid"], row["seq"], row["stores"], row["comm"]) == (7, 3, 42, b"bash")


def test_children_pair_by_thread_and_sequence_and_order_is_kept():
    dups = event(1, 1) + event(2, 1) + event(1, 2) + event(2, 2, zero_stores=1)
    # Children arrive in any order; a duplicate must not multiply rows.
    children = [(2, 1, 201), (1, 2, 102), (1, 1, 101), (1, 1, 999)]
    table = fork_table(dups, children)
    assert table.schema.equals(FORK_SCHEMA, check_metadata=False)
    df = table.to_pandas()
    assert list(zip(df.tid, df.child_pid)) == [(1, 101), (2, 201), (1, 102), (2, -1)]
    # The last one failed twice over: XA_ZERO_ENTRY stored and no child.
    assert list(df.failed) == [False, False, False, True]


def test_a_fork_without_a_child_is_failed_even_without_zero_entry():
    df = fork_table(event(5, 1) + event(5, 2), [(5, 2, 77)]).to_pandas()
    assert list(df.failed) == [True, False]
    assert list(df.child_pid) == [-1, 77]


def test_comm_with_bad_utf8_is_kept_readable():
    df = fork_table(event(1, 1, comm=b"ab\xffcd"), [(1, 1, 2)]).to_pandas()
    assert df.comm[0].startswith("ab") and df.comm[0].endswith("cd")


def test_empty_run_gives_an_empty_table():
    table = fork_table(b"", [])
    assert table.num_rows == 0 and table.schema.equals(FORK_SCHEMA, check_metadata=False)


def test_forks_in_flight_at_attach_or_detach_are_partial_not_failed():
    # seq 1 began before tracing started (start_ns = its child lock) and its
    # child event was missed; seq 2 is whole; seq 3 has no child and failed;
    # seq 4 ended after tracing stopped, its child event unread.
    start_ns = 1_000_000 * 1 + 100
    end_ns = 1_000_000 * 4 + 100
    dups = event(1, 1) + event(1, 2) + event(1, 3) + event(1, 4)
    df = fork_table(dups, [(1, 2, 102)], start_ns=start_ns, end_ns=end_ns).to_pandas()
    assert list(df.partial) == [True, False, False, True]
    assert list(df.failed) == [False, False, True, False]


def test_a_fork_that_stored_the_failure_mark_failed_even_in_flight():
    df = fork_table(event(1, 1, zero_stores=1), [], start_ns=1_000_000 + 100, end_ns=0).to_pandas()
    assert list(df.failed) == [True] and list(df.partial) == [False]


def test_a_fork_with_its_child_after_the_end_is_whole():
    # Ended after end_ns but its child was read: nothing is missing.
    df = fork_table(event(1, 1), [(1, 1, 5)], start_ns=0, end_ns=1).to_pandas()
    assert list(df.partial) == [False] and list(df.failed) == [False]


def test_offcpu_fields_become_columns():
    raw = event(tid=7, seq=1, offcpu_ns=900, offcpu_mt_dup=100, offcpu_vma_loop=500, offcpu_tail=300, switches=4)
    df = fork_table(raw, [(7, 1, 70)]).to_pandas()
    row = df.iloc[0]
    assert (row.offcpu_ns, row.offcpu_mt_dup_ns, row.offcpu_vma_loop_ns, row.offcpu_tail_ns, row.switches) == (
        900, 100, 500, 300, 4)

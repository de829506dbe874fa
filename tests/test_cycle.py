"""The spawn cycle: clone, dup_mmap, the child's exit_mmap, the parent's wait, per fork.

The join (tracer/record/cycle.py) is checked on synthetic records; the probe
on the running kernel, through `tracer record` as a user runs it.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from analysis.recording import load_recording
from conftest import ROOT, TRACER
from tracer.probes.bracket import DUP_EVENT_DTYPE
from tracer.probes.cycle import CYCLE_EVENT_DTYPE, CYCLE_KINDS, missing_support
from tracer.record.cycle import join_cycle
from tracer.record.table import fork_table

KIND = {name: value for value, name in CYCLE_KINDS.items()}


def _forks(locks: list[tuple[int, int]], child: int, tid: int = 7):
    dups = np.zeros(len(locks), dtype=DUP_EVENT_DTYPE)
    dups["tid"] = dups["pid"] = tid
    dups["seq"] = np.arange(1, len(locks) + 1)
    dups["ts_parent_lock"] = [a for a, _ in locks]
    dups["ts_parent_unlock"] = [b for _, b in locks]
    return fork_table(dups.tobytes(), [(tid, i + 1, child) for i in range(len(locks))])


def _events(rows: list[tuple[str, int, int, int, int]]) -> bytes:
    ev = np.zeros(len(rows), dtype=CYCLE_EVENT_DTYPE)
    for i, (kind, tid, child, start, end) in enumerate(rows):
        ev[i]["kind"], ev[i]["tid"], ev[i]["child_pid"] = KIND[kind], tid, child
        ev[i]["ts_start"], ev[i]["ts_end"] = start, end
    return ev.tobytes()


def test_a_reused_child_pid_joins_each_part_to_its_own_fork():
    forks = _forks([(100, 200), (1000, 1100)], child=50)
    events = _events([
        ("clone", 7, 50, 90, 210), ("exit_mmap", 50, 50, 300, 400), ("wait", 7, 50, 250, 500),
        ("clone", 7, 50, 990, 1110), ("exit_mmap", 50, 50, 1300, 1350),  # second fork: its wait was lost
    ])
    table, joined = join_cycle(forks, events)
    df = table.to_pandas()
    assert joined == {"clone": 2, "exit_mmap": 2, "wait": 1}
    assert df.ts_clone.tolist() == [90, 990] and df.clone_ns.tolist() == [120.0, 120.0]
    assert df.ts_exit_mmap.tolist() == [300, 1300] and df.exit_mmap_ns.tolist() == [100.0, 50.0]
    assert df.ts_wait.tolist() == [250, 0] and df.wait_ns[0] == 250.0 and np.isnan(df.wait_ns[1])


def test_a_clone_that_does_not_enclose_dup_mmap_is_not_joined():
    forks = _forks([(100, 200)], child=50)
    table, joined = join_cycle(forks, _events([("clone", 7, 50, 90, 150), ("clone", 8, 50, 90, 300)]))
    assert joined["clone"] == 0 and np.isnan(table.column("clone_ns")[0].as_py())


def test_no_records_leave_the_columns_not_seen():
    table, joined = join_cycle(_forks([(100, 200)], child=50), b"")
    assert joined == {"clone": 0, "exit_mmap": 0, "wait": 0}
    assert table.column("ts_clone")[0].as_py() == 0 and np.isnan(table.column("exit_mmap_ns")[0].as_py())


def test_other_machines_are_refused_with_a_reason():
    assert "syscall numbers" in missing_support(machine="aarch64", tracepoint_exists=lambda c, e: True)
    why = missing_support(machine="x86_64", tracepoint_exists=lambda c, e: e != "exit_mmap")
    assert why == "tracepoints missing on this kernel: mmap:exit_mmap"


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
@pytest.mark.parametrize("vmas", [0, 800])
def test_spawn_recording_times_the_whole_cycle(tmp_path, vmas):
    if missing_support():
        pytest.fail(f"the cycle cannot be traced here: {missing_support()}")
    path = tmp_path / "cycle.parquet"
    proc = subprocess.run(
        [*TRACER, "record", "--spawn", str(vmas), "--forks", "40", "--cpu", "0", "-q", "-o", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(path)
    forks = rec.forks[rec.forks.usable]
    assert len(forks) == 40
    assert rec.meta["cycle"]["joined"] == {"clone": 40, "exit_mmap": 40, "wait": 40}
    assert rec.meta["cycle"]["events"]["lost_ringbuf"] == 0
    # dup_mmap runs inside the clone syscall; the child tears its copy down after it; the wait reaps it.
    assert (forks.clone_ns >= forks.dup_mmap_ns).all()
    assert (forks.ts_clone <= forks.ts_parent_lock).all()
    assert (forks.exit_mmap_ns > 0).all() and (forks.wait_ns > 0).all()
    assert (forks.ts_exit_mmap >= forks.ts_parent_unlock).all()
    assert (forks.ts_wait + forks.wait_ns >= forks.ts_exit_mmap + forks.exit_mmap_ns).all()


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_no_cycle_leaves_the_columns_not_seen(tmp_path):
    path = tmp_path / "nocycle.parquet"
    proc = subprocess.run(
        [*TRACER, "record", "--spawn", "10", "--forks", "5", "--no-cycle", "-q", "-o", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(path)
    assert rec.meta["cycle"] is None
    assert rec.forks.clone_ns.isna().all() and (rec.forks.ts_wait == 0).all()

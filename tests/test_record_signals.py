"""`tracer record` under a hostile user, with real BPF: signals, stubborn commands, exit status.

Each case runs the CLI as a user would and checks that what was traced is
written, whole, and loads; signals are sent at the moments that used to lose
the recording.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from analysis.recording import load_recording
from conftest import ROOT, TRACER, hangup_default

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]


def start_tracing(*args: str) -> subprocess.Popen:
    """The CLI, returned once it says it is tracing (BPF attached, targets running)."""
    proc = subprocess.Popen([*TRACER, "record", *args], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                            preexec_fn=hangup_default)
    while not (line := proc.stderr.readline()).startswith("tracing"):
        if not line:
            proc.wait(timeout=60)
            pytest.fail("tracer exited before tracing")
    return proc


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    rest = proc.stderr.read()
    return proc.wait(timeout=timeout), rest


def files(directory: Path) -> list[str]:
    """Every name in `directory`, hidden temporary files included."""
    return sorted(os.listdir(directory))


def test_two_ctrl_c_30_ms_apart_keep_the_whole_recording(tmp_path):
    path = tmp_path / "rec.parquet"
    path.write_text("an older recording")
    proc = start_tracing("--spawn", "50", "-d", "60", "-o", str(path))
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.03)
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc)
    assert code == 0, err
    rec = load_recording(path)
    workload = rec.meta["workload"]
    assert workload["stop"] == "signal" and workload["forks"] > 0
    assert len(rec.forks[rec.forks.pid == workload["pid"]]) == workload["forks"]
    assert not rec.forks.failed.any()
    # The file that was there is kept, as perf keeps perf.data.old.
    assert (tmp_path / "rec.parquet.old").read_text() == "an older recording"
    assert files(tmp_path) == ["rec.parquet", "rec.parquet.old"]


FORKER = """
import os, mmap, sys
# Many VMAs, so each fork spends long in dup_mmap: one is likely in flight
# when tracing starts and when it stops.
keep = [mmap.mmap(-1, 4096, prot=mmap.PROT_READ | (mmap.PROT_WRITE if i % 2 else 0)) for i in range(6000)]
print("forking", flush=True)
while True:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
"""


def test_sighup_then_a_sigterm_storm_system_wide_still_writes_and_marks_forks_in_flight(tmp_path):
    path = tmp_path / "rec.parquet"
    forker = subprocess.Popen([sys.executable, "-c", FORKER], stdout=subprocess.PIPE, text=True)
    try:
        assert forker.stdout.readline().strip() == "forking"
        proc = start_tracing("-d", "60", "-o", str(path))
        time.sleep(0.5)
        proc.send_signal(signal.SIGHUP)
        # SIGTERM every 2 ms until it exits: through the drain, the read-out and the write.
        while proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            time.sleep(0.002)
        code, err = finish(proc)
    finally:
        forker.kill()
        forker.wait()
    assert code == 0, err
    assert "Traceback" not in err
    # Each phase's repeat is noted once, not once per signal.
    assert err.count("SIGTERM again") <= 2
    assert files(tmp_path) == ["rec.parquet"]
    rec = load_recording(path)
    start, end = rec.meta["start"]["mono_ns"], rec.meta["end"]["mono_ns"]
    mine = rec.forks[rec.forks.pid == forker.pid]
    assert len(mine) > 0
    # A fork of the forker cannot fail here: none is "failed", in flight or not.
    assert not mine.failed.any(), mine[mine.failed][["ts_parent_lock", "ts_parent_unlock", "child_pid"]]
    began_before = mine.ts_parent_lock < start
    assert mine.partial[began_before].all()
    # Whole forks are whole: their child was seen; only an unseen child at the end is partial.
    whole = mine[~mine.partial]
    assert (whole.child_pid > 0).all()
    assert (mine[mine.partial & ~began_before].ts_parent_unlock >= end).all()
    assert whole.usable.all()
    # Brackets left open by attaching one program at a time are labelled so, not anomalies.
    assert rec.meta["lost"]["unpaired"] == 0, rec.meta["lost"]
    assert rec.meta["lost"]["open_at_attach"] >= 0


STUBBORN = "trap '' INT TERM HUP; while :; do /bin/true; done"


def test_command_ignoring_stop_signals_is_killed_after_a_grace_period(tmp_path):
    from tracer.record.session import COMMAND_GRACE_S

    path = tmp_path / "rec.parquet"
    proc = start_tracing("-o", str(path), "--", "bash", "-c", STUBBORN)
    time.sleep(0.3)
    sent = time.monotonic()
    proc.send_signal(signal.SIGINT)
    code, err = finish(proc, timeout=COMMAND_GRACE_S + 60)
    waited = time.monotonic() - sent
    assert code == 128 + signal.SIGKILL, err
    assert "killing its process group" in err
    assert waited >= COMMAND_GRACE_S  # it was given its grace period first
    rec = load_recording(path)
    group = rec.meta["workload"]["pid"]
    assert rec.meta["workload"]["exit_status"] == 128 + signal.SIGKILL
    assert len(rec.forks[rec.forks.pid == group]) > 0
    # The whole group is gone, /bin/true children too (once init reaps them).
    deadline = time.monotonic() + 10
    while _group_alive(group) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _group_alive(group)


def _group_alive(pgid: int) -> bool:
    """Any process of group `pgid` that is not a zombie."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
            except (FileNotFoundError, ProcessLookupError):
                continue
            if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
                return True
    return False


def test_command_exit_status_is_passed_on(tmp_path):
    not_a_program = tmp_path / "garbage"
    not_a_program.write_bytes(b"\x7fELF not really")
    not_a_program.chmod(0o755)
    cases = {
        "false": (["false"], 1),
        "crash": (["sh", "-c", "kill -SEGV $$"], 128 + signal.SIGSEGV),
        "noexec": ([str(not_a_program)], 126),
    }
    # Side by side: each pays for its own BPF compile.
    procs = {
        name: subprocess.Popen(
            [*TRACER, "record", "-q", "-o", str(tmp_path / f"{name}.parquet"), "--", *argv],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )
        for name, (argv, _) in cases.items()
    }
    errors = {}
    for name, proc in procs.items():
        code, errors[name] = finish(proc, timeout=120)
        assert code == cases[name][1], (name, errors[name])
        assert load_recording(tmp_path / f"{name}.parquet").meta["workload"]["exit_status"] == code
    assert "Exec format error" in errors["noexec"]


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(p) for p in text.split()]


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def test_spawn_workload_dies_with_a_killed_tracer(tmp_path):
    proc = start_tracing("--spawn", "20000", "-d", "600", "-o", str(tmp_path / "rec.parquet"))
    (workload,) = _children(proc.pid)
    assert _alive(workload)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.monotonic() + 30
    while _alive(workload) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(workload), "the workload outlived the tracer"

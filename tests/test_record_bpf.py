"""Integration: real BPF on the running kernel, real forks, real recordings.

These run `tracer record` as a user would (a subprocess of the CLI) and check
the recording against what the kernel must have done: one record per fork,
one store per VMA of the parent's /proc/PID/maps, phases that nest.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.recording import load_recording
from analysis.recording.layout import parse_maps
from conftest import ROOT, TRACER

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

FORKS = 40


def run_tracer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def tree_vmas(maps_text: str) -> int:
    """VMAs in mm->mm_mt: /proc/PID/maps lines minus the gate area, which is not in the tree."""
    return sum(1 for v in parse_maps(maps_text) if v.path != "[vsyscall]")


@pytest.fixture(scope="module")
def spawn_recordings(tmp_path_factory) -> dict[int, object]:
    """One recording of the built-in workload per VMA count, made once for the module."""
    out = {}
    for vmas in (0, 200, 1000):
        path = tmp_path_factory.mktemp("rec") / f"spawn{vmas}.parquet"
        proc = run_tracer("record", "--spawn", str(vmas), "--forks", str(FORKS), "--cpu", "0", "-q", "-o", str(path))
        assert proc.returncode == 0, proc.stderr
        out[vmas] = load_recording(path)
    return out


@pytest.mark.parametrize("vmas", [0, 200, 1000])
def test_every_fork_recorded_with_one_store_per_vma(spawn_recordings, vmas):
    rec = spawn_recordings[vmas]
    workload = rec.meta["workload"]
    forks = rec.forks[rec.forks.pid == workload["pid"]]
    assert workload["forks"] == FORKS
    assert len(forks) == FORKS, "a fork of the workload was not recorded"
    assert not forks.failed.any()
    assert (forks.child_pid > 0).all() and forks.child_pid.is_unique
    (snapshot,) = [m for m in rec.meta["maps"] if m["pid"] == workload["pid"]]
    expected = tree_vmas(snapshot["maps"])
    assert expected >= vmas
    assert (forks.stores == expected).all(), forks.stores.value_counts().to_dict()
    assert (forks.parent_map_count == expected).all()
    # A leaf holds at most 16 slots (VMAs and gaps), so at least stores/16 leaves.
    assert (forks.leaves >= -(-expected // 16)).all()
    assert (forks.leaves <= expected).all()


@pytest.mark.parametrize("vmas", [0, 200, 1000])
def test_phases_are_positive_and_nest(spawn_recordings, vmas):
    f = spawn_recordings[vmas].forks
    assert (f.dup_mmap_ns > 0).all()
    assert (f.vma_loop_ns > 0).all()
    assert (f.mt_dup_raw_ns > 0).all()
    assert (f.mt_dup_ns >= 0).all()
    assert (f.mt_dup_ns + f.vma_loop_ns <= f.dup_mmap_ns).all()
    order = ["ts_parent_lock", "ts_child_lock", "ts_first_store", "ts_last_store", "ts_child_unlock", "ts_parent_unlock"]
    for early, late in zip(order, order[1:]):
        assert (f[early] <= f[late]).all(), f"{early} after {late}"


def test_mt_dup_grows_with_vmas(spawn_recordings):
    raw = [spawn_recordings[v].forks.mt_dup_raw_ns.median() for v in (0, 200, 1000)]
    assert raw[0] < raw[2] and raw[1] < raw[2], raw
    corrected = [spawn_recordings[v].forks.mt_dup_ns.median() for v in (0, 200, 1000)]
    assert corrected[0] < corrected[2] and corrected[1] < corrected[2], corrected
    loops = [spawn_recordings[v].forks.vma_loop_ns.median() for v in (0, 200, 1000)]
    assert loops[0] < loops[1] < loops[2], loops


def test_recording_is_self_describing(spawn_recordings):
    meta = spawn_recordings[200].meta
    assert meta["kernel"]["release"] == os.uname().release
    assert meta["backend"] in ("raw_tracepoint", "tracepoint")
    assert set(meta["methods"]) >= {"dup_mmap", "mt_dup", "vma_loop"}
    assert meta["lost"]["ringbuf"] == 0
    assert meta["events"]["dups"] >= FORKS
    assert meta["start"]["mono_ns"] < meta["end"]["mono_ns"]


def test_classic_tracepoint_backend_agrees(tmp_path):
    path = tmp_path / "classic.parquet"
    proc = run_tracer("record", "--spawn", "100", "--forks", "10", "--backend", "tracepoint", "-q", "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(path)
    assert rec.meta["backend"] == "tracepoint"
    forks = rec.forks[rec.forks.pid == rec.meta["workload"]["pid"]]
    assert len(forks) == 10
    (snapshot,) = rec.meta["maps"]
    assert (forks.stores == tree_vmas(snapshot["maps"])).all()


def test_pid_mode_traces_only_that_process(tmp_path):
    path = tmp_path / "pid.parquet"
    # A process that forks 5 times once it gets SIGUSR1, then exits.
    script = (
        "import os, signal, time\n"
        "signal.signal(signal.SIGUSR1, lambda *a: None)\n"
        "print('ready', flush=True)\n"
        "signal.pause()\n"
        "for _ in range(5):\n"
        "    p = os.fork()\n"
        "    if p == 0: os._exit(0)\n"
        "    os.waitpid(p, 0)\n"
        "time.sleep(0.5)\n"
    )
    target = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert target.stdout.readline().strip() == "ready"
        tracer = subprocess.Popen(
            [*TRACER, "record", "-p", str(target.pid), "-d", "8", "-o", str(path)],
            cwd=ROOT, stderr=subprocess.PIPE, text=True,
        )
        # Attached once it says it is tracing.
        while not (line := tracer.stderr.readline()).startswith("tracing"):
            assert line, "tracer exited before tracing"
        target.send_signal(signal.SIGUSR1)
        target.wait(timeout=30)
        tracer.stderr.read()
        assert tracer.wait(timeout=60) == 0
    finally:
        target.kill()
    rec = load_recording(path)
    assert set(rec.forks.pid) == {target.pid}
    assert len(rec.forks) == 5
    assert [m["pid"] for m in rec.meta["maps"]] == [target.pid]


def test_command_mode_follows_descendants(tmp_path):
    path = tmp_path / "cmd.parquet"
    # bash forks for each external command but execs the last one in place
    # (dash would vfork, which has no dup_mmap): 2 forks outside, 1 inside.
    script = "/bin/true; bash -c '/bin/true; /bin/true'; /bin/true"
    proc = run_tracer("record", "-q", "-o", str(path), "--", "bash", "-c", script)
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(path)
    assert len(rec.forks) == 3
    assert rec.meta["workload"]["exit_status"] == 0
    assert set(rec.forks.comm) == {"bash"}
    outer = rec.meta["workload"]["pid"]
    inner = set(rec.forks.pid) - {outer}
    assert len(inner) == 1 and inner <= set(rec.forks.child_pid), "the descendant's fork was not followed"


def test_sampling_sees_the_kernel_inside_dup_mmap(tmp_path):
    path = tmp_path / "sample.parquet"
    proc = run_tracer("record", "--spawn", "6400", "--forks", "150", "--sample", "4999", "-q", "-o", str(path))
    assert proc.returncode == 0, proc.stderr
    sample = load_recording(path).meta["sample"]
    assert sample["hz"] == 4999
    total = sum(s["count"] for s in sample["stacks"])
    assert total > 0
    frames = {frame for s in sample["stacks"] for frame in s["stack"].split(";")}
    assert "dup_mmap" in frames
    assert {s["phase"] for s in sample["stacks"]} <= {"mt_dup", "vma_loop", "tail"}


def test_dup_event_layout_matches_bpf():
    """The C struct and its ctypes mirror must agree, or every field is garbage."""
    from bcc import BPF

    from tracer.host import headers
    from tracer.probes.bracket import SOURCE, DupEvent

    headers.apply(headers.resolve_headers())
    checks = [f"_Static_assert(sizeof(struct dup_event) == {ctypes.sizeof(DupEvent)}, \"size\");"]
    for name, _ in DupEvent._fields_:
        offset = getattr(DupEvent, name).offset
        checks.append(f"_Static_assert(__builtin_offsetof(struct dup_event, {name}) == {offset}, \"{name}\");")
    text = SOURCE.read_text() + "\n" + "\n".join(checks) + "\n"
    BPF(text=text.encode(), cflags=[f"-I{SOURCE.parent}", "-DRINGBUF_PAGES=8", "-DMM_MAP_COUNT_OFF=-1"]).cleanup()


FAILING_FORK = r"""
import mmap, os, sys
# Strict overcommit for a moment: a private writable mapping is charged at
# mmap() and charged again when fork() copies it, so the copy fails in
# dup_mmap() (security_vm_enough_memory_mm) at that VMA, after the VMAs below it.
knob = "/proc/sys/vm/overcommit_memory"
saved = open(knob).read()
try:
    open(knob, "w").write("2")
    meminfo = dict(line.split(":") for line in open("/proc/meminfo"))
    kib = lambda key: int(meminfo[key].split()[0])
    headroom = (kib("CommitLimit") - kib("Committed_AS")) * 1024
    big = mmap.mmap(-1, int(headroom * 0.7) & ~4095, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        pid = os.fork()
    except OSError as err:
        print("ENOMEM" if err.errno == 12 else err, flush=True)
    else:
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)
        print("forked", flush=True)
finally:
    open(knob, "w").write(saved)
"""


def test_fork_failing_inside_dup_mmap_is_recorded_and_flagged(tmp_path):
    path = tmp_path / "fail.parquet"
    saved = Path("/proc/sys/vm/overcommit_memory").read_text()
    try:
        proc = run_tracer("record", "-q", "-o", str(path), "--", sys.executable, "-c", FAILING_FORK)
    finally:
        Path("/proc/sys/vm/overcommit_memory").write_text(saved)
    assert proc.returncode == 0, proc.stderr
    rec = load_recording(path)
    (fork,) = rec.forks.itertuples()
    assert fork.failed and fork.child_pid == -1
    # The kernel marks where the copy stopped with XA_ZERO_ENTRY (v6.8+)...
    assert fork.zero_stores == 1
    # ...after copying the VMAs below the big mapping, not all of them.
    assert 0 < fork.stores < fork.parent_map_count
    assert fork.dup_mmap_ns > 0

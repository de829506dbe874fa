"""Integration: real BPF on the running kernel, real forks, real recordings.

These run `tracer record` as a user would (a subprocess of the CLI) and check
the recording against what the kernel must have done: one record per fork,
one store per VMA of the parent's /proc/PID/maps, phases that nest.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.recording import load_recording
from analysis.recording.layout import parse_maps
from probe_runs import probe_records
from conftest import ROOT, TRACER

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

FORKS = 40


def run_tracer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )


def record(path: Path, *args: str):
    """`tracer record -q -o PATH ARGS...`, which must succeed; the recording it wrote."""
    proc = run_tracer("record", "-q", "-o", str(path), *args)
    assert proc.returncode == 0, proc.stderr
    return load_recording(path)


def workload_forks(rec):
    """The forks of the workload's own process (not of its children or the tracer)."""
    return rec.forks[rec.forks.pid == rec.meta["workload"]["pid"]]


def tree_vmas(maps_text: str) -> int:
    """VMAs in mm->mm_mt: /proc/PID/maps lines minus the gate area, which is not in the tree."""
    return sum(1 for v in parse_maps(maps_text) if v.path != "[vsyscall]")


@pytest.fixture(scope="module")
def spawn_recordings(tmp_path_factory) -> dict[int, object]:
    """One recording of the built-in workload per VMA count, made once for the module."""
    out = {}
    for vmas in (0, 200, 1000):
        path = tmp_path_factory.mktemp("rec") / f"spawn{vmas}.parquet"
        out[vmas] = record(path, "--spawn", str(vmas), "--forks", str(FORKS), "--cpu", "0")
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
    # Each recording's least disturbed fork: preemption, interrupts and cache
    # pollution from whatever else runs only ever add time, so the minimum
    # over 40 forks is the undisturbed cost, which more VMAs must raise; the
    # median of recordings made one after another moves with the machine's load.
    raw = [spawn_recordings[v].forks.mt_dup_raw_ns.min() for v in (0, 200, 1000)]
    assert raw[0] < raw[2] and raw[1] < raw[2], raw
    corrected = [spawn_recordings[v].forks.mt_dup_ns.min() for v in (0, 200, 1000)]
    assert corrected[0] < corrected[2] and corrected[1] < corrected[2], corrected
    loops = [spawn_recordings[v].forks.vma_loop_ns.min() for v in (0, 200, 1000)]
    assert loops[0] < loops[1] < loops[2], loops


def test_min_step_is_one_of_the_first_steps(spawn_recordings):
    f = spawn_recordings[1000].forks
    assert (f.min_step_ns > 0).all()
    # The shortest of the first 16 steps is at most their mean, so at most 1/16 of the loop.
    assert (f.min_step_ns * 16 <= f.vma_loop_ns).all()
    assert (f.mt_dup_step_ns == f.min_step_ns).all()
    assert (spawn_recordings[0].forks.min_step_ns > 0).all()  # ~20 VMAs: still two stores or more


def test_recording_is_self_describing(spawn_recordings):
    meta = spawn_recordings[200].meta
    assert meta["kernel"]["release"] == os.uname().release
    assert meta["backend"] in ("raw_tracepoint", "tracepoint")
    assert set(meta["methods"]) >= {"dup_mmap", "mt_dup", "vma_loop"}
    assert meta["lost"]["ringbuf"] == 0
    assert meta["events"]["dups"] >= FORKS
    assert meta["start"]["mono_ns"] < meta["end"]["mono_ns"]
    assert meta["level"] == "phase"
    assert meta["events"]["last_store_missed"] == 0
    program = meta["per_vma_program"]
    assert program["type"] in ("tp_btf", meta["backend"])
    assert (program["type"] == "tp_btf") == (program["refused"] is None)  # not tp_btf: the reason is kept


def test_classic_tracepoint_backend_agrees(tmp_path):
    rec = record(tmp_path / "classic.parquet", "--spawn", "100", "--forks", "10", "--backend", "tracepoint")
    assert rec.meta["backend"] == "tracepoint"
    forks = workload_forks(rec)
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
    # bash forks for each external command but execs the last one in place
    # (dash would vfork, which has no dup_mmap): 2 forks outside, 1 inside.
    script = "/bin/true; bash -c '/bin/true; /bin/true'; /bin/true"
    rec = record(tmp_path / "cmd.parquet", "--", "bash", "-c", script)
    assert len(rec.forks) == 3
    assert rec.meta["workload"]["exit_status"] == 0
    assert set(rec.forks.comm) == {"bash"}
    outer = rec.meta["workload"]["pid"]
    inner = set(rec.forks.pid) - {outer}
    assert len(inner) == 1 and inner <= set(rec.forks.child_pid), "the descendant's fork was not followed"


def test_sampling_sees_the_kernel_inside_dup_mmap(tmp_path):
    meta = record(tmp_path / "sample.parquet", "--spawn", "6400", "--forks", "150", "--sample", "4999").meta
    assert meta["level"] == "full"  # --sample is the full level
    sample = meta["sample"]
    assert sample["hz"] == 4999
    total = sum(s["count"] for s in sample["stacks"])
    assert total > 0
    frames = {frame for s in sample["stacks"] for frame in s["stack"].split(";")}
    assert "dup_mmap" in frames
    assert {s["phase"] for s in sample["stacks"]} <= {"mt_dup", "vma_loop", "tail"}
    # The samples name the kernel's per-VMA work, and every ns of dup_mmap lands in a named function.
    doc = json.loads(run_tracer("report", "-f", "json", str(tmp_path / "sample.parquet")).stdout)
    functions = {r["function"]: r for r in doc["functions"]["functions"]}
    assert {"vm_area_dup", "mas_store"} <= set(functions)
    assert sum(r["share"] for r in functions.values()) == pytest.approx(1.0)
    assert not doc["functions"]["unnamed_over_limit"], doc["functions"]["largest_unnamed"]


def test_dup_event_layout_matches_bpf():
    """The C struct and its ctypes mirror must agree, or every field is garbage."""
    from bcc import BPF

    from tracer.host import headers
    from tracer.probes.bracket import SOURCE, BracketConfig, DupEvent, cflags_for
    from tracer.probes.program import program_text

    headers.apply(headers.resolve_headers())
    checks = [f"_Static_assert(sizeof(struct dup_event) == {ctypes.sizeof(DupEvent)}, \"size\");"]
    for name, _ in DupEvent._fields_:
        offset = getattr(DupEvent, name).offset
        checks.append(f"_Static_assert(__builtin_offsetof(struct dup_event, {name}) == {offset}, \"{name}\");")
    text = program_text(SOURCE) + ("\n" + "\n".join(checks) + "\n").encode()
    BPF(text=text, cflags=cflags_for(BracketConfig(backend="tracepoint", ringbuf_pages=8, max_cpus=1))).cleanup()


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


@pytest.mark.system_wide  # strict overcommit, most of the commit headroom taken: nothing else may allocate meanwhile
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


def test_fork_level_times_dup_mmap_without_per_vma_data(tmp_path):
    path = tmp_path / "fork.parquet"
    rec = record(path, "--spawn", "300", "--forks", "20", "--level", "fork")
    assert rec.meta["level"] == "fork"
    forks = workload_forks(rec)
    assert len(forks) == 20 and not forks.failed.any()
    assert (forks.dup_mmap_ns > 0).all()
    assert (forks.child_pid > 0).all() and forks.child_pid.is_unique
    (snapshot,) = [m for m in rec.meta["maps"] if m["pid"] == rec.meta["workload"]["pid"]]
    assert (forks.parent_map_count == tree_vmas(snapshot["maps"])).all()
    # No per-VMA program: nothing counted, store-based phases not measured, and the method says why.
    assert (forks[["stores", "leaves", "other_writes", "ts_first_store", "ts_last_store", "min_step_ns"]] == 0).all().all()
    assert forks[["mt_dup_ns", "vma_loop_ns", "tail_ns"]].isna().all().all()
    assert rec.meta["events"]["ma_write"] == 0
    assert rec.meta["per_vma_program"]["type"] is None
    for phase in ("mt_dup", "vma_loop", "tail"):
        assert "--level fork" in rec.meta["methods"][phase]
    report = run_tracer("report", str(path))
    assert report.returncode == 0, report.stderr
    assert "level     fork" in report.stdout


def test_full_level_samples_at_a_default_rate(tmp_path):
    from tracer.record.options import DEFAULT_SAMPLE_HZ

    rec = record(tmp_path / "full.parquet", "--spawn", "1600", "--forks", "60", "--level", "full")
    assert rec.meta["level"] == "full"
    assert rec.meta["sample"]["hz"] == DEFAULT_SAMPLE_HZ
    assert sum(s["count"] for s in rec.meta["sample"]["stacks"]) > 0
    forks = workload_forks(rec)
    assert (forks.stores >= 1600).all() and (forks.vma_loop_ns > 0).all()


def test_task_storage_fallback_records_what_the_cpu_slot_does():
    """A thread without a CPU slot (migrated, or every slot busy) keeps its aggregates in task storage."""
    for fields in ({}, {"ablate": ("lookup_task_storage",)}):
        records, vmas_total = probe_records(fields, vmas=300, forks=8)
        assert len(records) == 8, fields
        for r in records:
            assert r.stores == vmas_total and r.leaves >= vmas_total // 16, fields
            assert r.ts_child_lock < r.ts_first_store < r.ts_last_store <= r.ts_child_unlock, fields
            assert 0 < r.min_step <= r.ts_last_store - r.ts_first_store, fields


def test_typed_and_raw_per_vma_programs_record_the_same():
    """The tp_btf ma_write (a plain load of ma_state->node) and the raw tracepoint one (a probe read) agree."""
    typed, vmas_total = probe_records({}, vmas=300, forks=6)
    raw, _ = probe_records({"typed_ma_write": False}, vmas=300, forks=6)
    assert len(typed) == len(raw) == 6
    for field in ("stores", "null_stores", "zero_stores", "other_writes", "leaves"):
        assert {getattr(r, field) for r in typed} == {getattr(r, field) for r in raw}, field
    assert all(0 < r.stores <= vmas_total and r.leaves > 1 for r in typed)


def test_typed_program_reads_ma_state_with_a_load_not_a_helper():
    """The point of tp_btf: bcc's rewriter must not turn mas->node back into bpf_probe_read_kernel()."""
    from bcc import BPF

    from tracer.host import headers
    from tracer.probes.bracket import SOURCE, BracketConfig, cflags_for, offsets_from_btf
    from tracer.probes.program import program_text

    headers.apply(headers.resolve_headers())
    offsets = offsets_from_btf()
    texts = {}
    for typed in (True, False):
        bpf = BPF(text=program_text(SOURCE), cflags=cflags_for(BracketConfig(**offsets), typed=typed))
        texts[typed] = bpf.disassemble_func(b"ma_write_typed" if typed else b"raw_tracepoint__ma_write")
        bpf.cleanup()
    # helper 113; older disassemblers print it unnamed ("<unknown helper #113>")
    probe_reads = {
        typed: sum("bpf_probe_read_kernel" in line or "#113" in line for line in text.splitlines())
        for typed, text in texts.items()
    }
    # Both read the function name once (the first ma_write); only the raw one reads ma_state through the helper.
    assert probe_reads == {True: 1, False: 2}, probe_reads
    assert f"+{offsets['ma_state_node_off']})" in texts[True]


def test_a_refused_typed_program_falls_back_to_the_raw_tracepoint(monkeypatch):
    """A verifier that rejects the tp_btf build: the raw tracepoint program records, and the reason is kept."""
    import errno

    from tracer.host.bpfsys import LoadError
    from tracer.probes.bracket import BracketProbe
    from tracer.probes.typed import TypedTracepoint

    def refuse(self):
        raise LoadError(errno.EACCES, "0: (bf) r6 = r1\nR1 invalid mem access 'scalar'\n")

    loaded = []
    load = BracketProbe.load
    monkeypatch.setattr(TypedTracepoint, "load", refuse)
    monkeypatch.setattr(BracketProbe, "load", lambda self: (loaded.append(self), load(self))[1])
    records, _ = probe_records({}, vmas=100, forks=3)
    (probe,) = loaded
    assert len(records) == 3 and all(r.stores > 0 for r in records)
    assert probe.per_vma_program == "raw_tracepoint"
    if probe.typed_refused.startswith("tp_btf: "):  # this kernel allows tp_btf: the refusal is the one faked here
        assert probe.typed_refused == "tp_btf: EACCES: R1 invalid mem access 'scalar'"
    else:  # refused before the build: the test program already failed, as the probe says
        assert probe.typed_refused.startswith("tp_btf ") or "BTF" in probe.typed_refused


@pytest.mark.parametrize(
    "ablate", [("vma_body",), ("fn_check", "ma_state", "timestamp", "leaves", "lookup_task_storage", "time_every_store")]
)
@pytest.mark.parametrize("backend", ["raw_tracepoint", "tracepoint"])
def test_ablation_variants_load(ablate, backend):
    """Every ablation switch compiles and passes the verifier (the bench needs them all)."""
    from tracer.host import headers, kernel
    from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf

    headers.apply(headers.resolve_headers())
    if backend == "tracepoint":
        kernel.ensure_tracefs()
    with BracketProbe(BracketConfig(backend=backend, ablate=ablate, **offsets_from_btf())) as probe:
        probe.detach()
        probe.attach()


# A SCHED_FIFO thread on the workload's CPU that wakes every 100 us. Each
# wakeup of a realtime task sets need_resched on the CFS task running there
# (an RT wakeup always preempts a fair task), so the switch does not depend
# on slices, ticks or what else the machine runs. Under any preemption model
# the switch then happens at the forker's next scheduling point: with --touch
# every extra VMA has a resident page, and copy_page_range() ends each page
# table it copies with cond_resched(), so there is one per copied VMA inside
# the loop (PREEMPT_NONE, as on distribution kernels booted with
# preempt=none, switches only there). 1600 such VMAs keep dup_mmap busy for
# far longer than the waker's period, so the timer fires inside the loop.
REALTIME_WAKER = """
import os, sys, time
os.sched_setaffinity(0, {0})
try:
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
except OSError as e:
    print(f"refused: {e}", flush=True)
    sys.exit(1)
print("ready", flush=True)
while True:
    time.sleep(0.0001)
"""


def test_offcpu_time_is_seen_when_a_realtime_waker_shares_the_cpu(tmp_path):
    """A SCHED_FIFO waker on the workload's CPU switches the forking thread out inside dup_mmap."""
    path = tmp_path / "waker.parquet"
    waker = subprocess.Popen([sys.executable, "-c", REALTIME_WAKER], stdout=subprocess.PIPE, text=True)
    try:
        state = waker.stdout.readline().strip()
        if state != "ready":
            pytest.skip(f"SCHED_FIFO not allowed here ({state or 'waker died'}): no certain preemption")
        proc = run_tracer("record", "--spawn", "1600", "--touch", "--forks", "40", "--cpu", "0", "-q", "-o", str(path))
    finally:
        waker.kill()
        waker.wait()
    assert proc.returncode == 0, proc.stderr
    f = load_recording(path).forks
    f = f[f.usable]
    assert len(f) > 0
    assert (f.switches > 0).all() and (f.offcpu_ns > 0).all()  # every fork: the waker fires many times a loop
    assert (f.offcpu_ns <= f.dup_mmap_ns).all()
    placed = f.offcpu_mt_dup_ns + f.offcpu_vma_loop_ns + f.offcpu_tail_ns
    assert (placed == f.offcpu_ns).all()  # level phase: every interval has its window
    assert ((f.offcpu_ns > 0) == (f.switches > 0)).all()
    assert (f.dup_mmap_oncpu_ns == f.dup_mmap_ns - f.offcpu_ns).all()

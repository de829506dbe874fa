"""`tracer record`: attach the bracket, run or follow the targets, write one recording.

Order matters here and is the point of this module: everything that can fail
on bad input is checked before any BPF is loaded; the targets are known to
the kernel filter before they fork; the recording is written once, atomically,
whatever ends the run (count reached, -d elapsed, command exited, Ctrl-C).
"""

from __future__ import annotations

import os
import platform
import shutil
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa

from tracer import __version__
from analysis.errors import TracerError, UsageError
from tracer.probes.bracket import (
    BACKENDS,
    BCC_MISSING,
    DUP_EVENT_DTYPE,
    BracketConfig,
    BracketProbe,
    DupEvent,
    offsets_from_btf,
)
from analysis.recording.schema import FORK_SCHEMA
from analysis.recording.writer import check_writable, write_recording

__all__ = ["RecordOptions", "record", "default_output", "fork_table", "keep_off_cpu"]

# System-wide and command mode: /proc/PID/maps snapshots of forking processes,
# taken when a process is first seen forking. Bounded so a fork storm cannot
# turn the tracer into the load.
MAPS_MAX_PROCESSES = 64
MAPS_MIN_INTERVAL_S = 0.1


@dataclass
class RecordOptions:
    pids: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    spawn_vmas: int | None = None
    forks: int | None = None
    duration: float | None = None
    cpu: int | None = None
    touch: bool = False
    layout: str = "gapped"  # spawn.c --layout: gapped or adjacent
    output: Path | None = None
    sample_hz: int = 0
    backend: str | None = None
    quiet: bool = False

    @property
    def mode(self) -> str:
        if self.spawn_vmas is not None:
            return "spawn"
        if self.command:
            return "command"
        if self.pids:
            return "pid"
        return "system"


def default_output(opts: RecordOptions, now: datetime | None = None) -> Path:
    """forktrace-<mode>[-<vmas>]-<kernel>-<time>.parquet in the current directory."""
    now = now or datetime.now()
    tag = opts.mode if opts.spawn_vmas is None else f"spawn{opts.spawn_vmas}"
    return Path(f"forktrace-{tag}-{platform.release()}-{now:%Y%m%d-%H%M%S}.parquet")


def validate(opts: RecordOptions) -> None:
    """Every check that needs no BPF, so bad input fails in well under a second."""
    modes = [bool(opts.pids), bool(opts.command), opts.spawn_vmas is not None]
    if sum(modes) > 1:
        raise UsageError("choose one target: -p PID, --spawn VMAS, or -- CMD")
    if opts.forks is not None and opts.spawn_vmas is None:
        raise UsageError("--forks applies to the built-in workload (--spawn VMAS)")
    if opts.forks is not None and opts.forks <= 0:
        raise UsageError("--forks must be positive")
    if opts.duration is not None and opts.duration <= 0:
        raise UsageError("-d/--duration must be positive")
    if opts.spawn_vmas is not None:
        if opts.spawn_vmas < 0:
            raise UsageError("--spawn VMAS must be >= 0")
        if opts.forks is None and opts.duration is None:
            opts.forks = 1000
    if opts.cpu is not None and opts.cpu not in os.sched_getaffinity(0):
        raise UsageError(f"--cpu {opts.cpu}: not a CPU this process may run on")
    if opts.cpu is not None and opts.spawn_vmas is None:
        raise UsageError("--cpu applies to the built-in workload (--spawn VMAS)")
    from tracer.workload.spawn import LAYOUTS

    if opts.layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {opts.layout!r}")
    if opts.layout != "gapped" and opts.spawn_vmas is None:
        raise UsageError("--layout applies to the built-in workload (--spawn VMAS)")
    if opts.backend is not None and opts.backend not in BACKENDS:
        raise UsageError(f"unknown backend {opts.backend!r} (known: {', '.join(BACKENDS)})")
    if opts.sample_hz < 0 or opts.sample_hz > 100_000:
        raise UsageError("--sample HZ must be between 0 (off) and 100000")
    for pid in opts.pids:
        if pid <= 0 or not Path(f"/proc/{pid}").is_dir():
            raise TracerError(f"no such process: {pid}")
    if opts.command and shutil.which(opts.command[0]) is None:
        raise TracerError(f"command not found: {opts.command[0]}")
    if os.geteuid() != 0:
        raise TracerError("tracer record loads BPF programs and needs root: run it with sudo")
    opts.output = check_writable(opts.output or default_output(opts))


def record(opts: RecordOptions, log: Callable[[str], None] | None = None) -> Path:
    """Run one recording to completion and return the path written."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    validate(opts)
    from tracer.host import capabilities, headers, kernel

    caps = capabilities.probe_capabilities(try_load=False)
    if not caps.get("bcc", {}).get("importable", True):
        raise TracerError(BCC_MISSING)
    methods = capabilities.choose_methods(caps)
    backend = opts.backend or methods["backend"]
    if backend is None:
        raise TracerError(f"cannot trace dup_mmap on this kernel: {methods['backend_reason']} (see tracer doctor)")
    config = _bracket_config(opts, backend)
    if backend == "tracepoint":
        kernel.ensure_tracefs()  # classic tracepoints: bcc reads event ids and formats there
    hdrs = headers.resolve_headers()
    headers.apply(hdrs)
    log(hdrs.description)

    session = _Session(opts, log)
    probe = BracketProbe(config, on_dup=session.on_dup, on_child=session.on_child)
    log(f"loading BPF ({backend}{', sampling %d Hz' % opts.sample_hz if opts.sample_hz else ''}) ...")
    probe.load()
    try:
        session.run(probe)
    finally:
        probe.close()

    # From here on the recording is only written: a second Ctrl-C must not lose it.
    previous_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        forks = session.fork_table()
        meta = _metadata(opts, session, caps, methods, backend, hdrs.description, kernel.lockdown_mode())
        write_recording(opts.output, forks, meta)
    finally:
        signal.signal(signal.SIGINT, previous_sigint)
    lost = meta["lost"]["ringbuf"]
    log(f"wrote {forks.num_rows} forks to {opts.output}" + (f" (LOST {lost} records)" if lost else " (no events lost)"))
    return opts.output


def _metadata(
    opts: RecordOptions, session: "_Session", caps: dict, methods: dict, backend: str, headers: str, lockdown: str
) -> dict:
    """The recording's self-description: enough to trust, or distrust, every number in it."""
    return {
        "tool_version": __version__,
        "kernel": {"release": platform.release(), "version": platform.version(), "machine": platform.machine()},
        "host": {
            "hostname": socket.gethostname(),
            "cpus": os.cpu_count(),
            "cpu_model": _cpu_model(),
            "lockdown": lockdown,
        },
        "backend": backend,
        "methods": methods["phases"],
        "backend_reason": methods.get("backend_reason") if backend == methods["backend"] else "forced by --backend",
        "probes": caps,
        "headers": headers,
        "targets": {"mode": opts.mode, "pids": opts.pids, "command": opts.command},
        "workload": session.workload,
        "start": session.start,
        "end": session.end,
        "lost": {"ringbuf": session.counters.get("lost_ringbuf", 0), "unpaired": session.counters.get("reentry", 0)},
        "events": {**session.counters, "ma_write": session.ma_writes},
        "sample": (
            {"hz": opts.sample_hz, "stacks": session.stacks, "lost": session.counters.get("sample_lost", 0)}
            if opts.sample_hz
            else None
        ),
        "maps": session.maps,
    }


def _bracket_config(opts: RecordOptions, backend: str) -> BracketConfig:
    offsets: dict[str, int | None] = {"ma_state_node_off": None, "task_pid_off": None, "mm_map_count_off": None}
    try:
        offsets.update(offsets_from_btf())
    except TracerError:
        if backend == "raw_tracepoint":
            raise
    return BracketConfig(
        backend=backend,
        filter_tgids=opts.mode != "system",
        follow_children=opts.mode == "command",
        sample_hz=opts.sample_hz,
        **offsets,
    )


def keep_off_cpu(cpu: int | None) -> list[int]:
    """Run the tracer's own thread off the workload's CPU, where there is another.

    Reading the ring buffer costs a few microseconds per record in Python; on
    the workload's CPU that would be charged to the forks being measured.
    """
    cpus = os.sched_getaffinity(0)
    if cpu is not None and len(cpus - {cpu}) > 0:
        cpus = cpus - {cpu}
        os.sched_setaffinity(0, cpus)
    return sorted(cpus)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def _wall_mono() -> dict:
    return {"wall": datetime.now(timezone.utc).isoformat(), "mono_ns": time.monotonic_ns()}


class _Session:
    """One run: targets, the polling loop, and what it collected."""

    def __init__(self, opts: RecordOptions, log: Callable[[str], None]):
        self.opts = opts
        self.log = log
        self._dups = bytearray()  # struct dup_event records, packed as they came
        self.forks = 0
        self._children: list[tuple[int, int, int]] = []  # (tid, seq, child pid)
        self.maps: list[dict] = []
        self._maps_seen: set[int] = set()
        self._maps_last = 0.0
        self.workload: dict | None = None
        self.counters: dict[str, int] = {}
        self.stacks: list[dict] = []
        self.ma_writes = 0  # ma_write events inside brackets, summed from the records
        self.start: dict = {}
        self.end: dict = {}
        self._stop = False

    # -- ring buffer callbacks -------------------------------------------
    def on_dup(self, event: DupEvent, raw: bytes) -> None:
        self._dups += raw
        self.forks += 1
        self.ma_writes += event.stores + event.null_stores + event.zero_stores + event.other_writes
        if self.opts.mode in ("system", "command") and event.pid not in self._maps_seen:
            self._snapshot_rate_limited(event.pid)

    def on_child(self, tid: int, seq: int, child_pid: int) -> None:
        self._children.append((tid, seq, child_pid))

    # -- maps ----------------------------------------------------------------
    def snapshot(self, pid: int) -> None:
        from tracer.host.procmaps import comm_of, read_maps

        self._maps_seen.add(pid)
        try:
            text = read_maps(pid)
            comm = comm_of(pid)
        except TracerError:
            return  # the process is gone: best effort
        if not text:
            return  # a zombie: its mm is gone, an empty layout would mislead the model
        self.maps.append({"pid": pid, "comm": comm, "ts_mono_ns": time.monotonic_ns(), "maps": text})

    def _snapshot_rate_limited(self, pid: int) -> None:
        now = time.monotonic()
        if len(self.maps) >= MAPS_MAX_PROCESSES or now - self._maps_last < MAPS_MIN_INTERVAL_S:
            return
        self._maps_last = now
        self.snapshot(pid)

    # -- the loop -------------------------------------------------------------
    def run(self, probe: BracketProbe) -> None:
        # A flag, not KeyboardInterrupt: an exception raised while Python runs
        # a ring buffer callback under ctypes would be printed and dropped.
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
        try:
            if self.opts.mode == "spawn":
                self._run_spawn(probe)
            elif self.opts.mode == "command":
                self._run_command(probe)
            else:
                done = lambda: False  # noqa: E731  system-wide: until -d or Ctrl-C
                if self.opts.mode == "pid":
                    from tracer.host.procmaps import pid_exists

                    probe.add_targets(self.opts.pids)
                    for pid in self.opts.pids:
                        self.snapshot(pid)
                    done = lambda: not any(pid_exists(p) for p in self.opts.pids)  # noqa: E731  as perf record -p
                self._loop(probe, done=done)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            # Let the last sched_process_fork records arrive before reading out.
            for _ in range(3):
                probe.poll(20)
            self.end = _wall_mono()
            self.counters = probe.counters()
            self.stacks = probe.sampled_stacks()
            self._progress(final=True)

    def _on_signal(self, signum, frame) -> None:
        self._stop = True

    def _loop(self, probe: BracketProbe, done: Callable[[], bool]) -> None:
        self.start = self.start or _wall_mono()
        t0 = time.monotonic()
        next_progress = t0 + 1.0
        # The spawn workload stops itself after -d; everything else stops here.
        deadline = t0 + self.opts.duration if self.opts.duration and self.opts.mode != "spawn" else None
        if not self.opts.quiet:
            until = {"spawn": "the workload ends", "command": "the command exits", "pid": "the process exits"}
            how = f"for {self.opts.duration:g} s" if deadline else f"until {until.get(self.opts.mode, 'Ctrl-C')}"
            self.log(f"tracing {self.opts.mode} {how} (Ctrl-C to stop) ...")
        while not self._stop and not done():
            probe.poll(100)
            now = time.monotonic()
            if deadline and now >= deadline:
                break
            if now >= next_progress:
                self.counters = probe.counters()
                self._progress()
                next_progress = now + 1.0

    def _progress(self, final: bool = False) -> None:
        if self.opts.quiet:
            return
        lost = self.counters.get("lost_ringbuf", 0)
        line = (
            f"forks {self.forks}  ma_write {self.ma_writes}  "
            f"lost {lost}{'  (!)' if lost else ''}"
        )
        if sys.stderr.isatty():
            sys.stderr.write("\r" + line + ("\n" if final else ""))
            sys.stderr.flush()
        elif final:
            self.log(line)

    def _run_spawn(self, probe: BracketProbe) -> None:
        from tracer.workload.spawn import SpawnWorkload

        opts = self.opts
        tracer_cpus = keep_off_cpu(opts.cpu)
        with SpawnWorkload(
            vmas=opts.spawn_vmas, forks=opts.forks, seconds=opts.duration, cpu=opts.cpu, touch=opts.touch,
            layout=opts.layout,
        ) as work:
            pid, _ = work.start()
            probe.add_targets([pid])
            self.snapshot(pid)
            self.start = _wall_mono()
            work.go()
            self._loop(probe, done=work.finished)
            work.stop()  # no-op if it already ended; after Ctrl-C or SIGTERM it ends the loop
            work.wait(timeout=60)
        self.workload = {"pid": pid, **work.metadata(), "tracer_cpus": tracer_cpus}

    def _run_command(self, probe: BracketProbe) -> None:
        # fork + wait-on-pipe + exec, so the pid is in the filter before the
        # command can fork (subprocess would exec before we know the pid).
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(write_fd)
            os.read(read_fd, 1)
            try:
                os.execvp(self.opts.command[0], self.opts.command)
            except OSError as err:
                os.write(2, f"tracer: error: cannot run {self.opts.command[0]}: {err.strerror}\n".encode())
            os._exit(127)
        os.close(read_fd)
        probe.add_targets([pid])
        self.start = _wall_mono()
        os.write(write_fd, b"g")
        os.close(write_fd)
        status: list[int] = []

        def exited() -> bool:
            if not status:
                done, code = os.waitpid(pid, os.WNOHANG)
                if done:
                    status.append(code)
            return bool(status)

        try:
            self._loop(probe, done=exited)
        finally:
            if not status:
                try:
                    os.kill(pid, signal.SIGTERM)
                    os.waitpid(pid, 0)
                except ChildProcessError:
                    pass
        self.workload = {
            "kind": "command",
            "command": self.opts.command,
            "pid": pid,
            "exit_status": os.waitstatus_to_exitcode(status[0]) if status else None,
        }

    # -- results ------------------------------------------------------------
    def fork_table(self) -> pa.Table:
        """The records as columns of FORK_SCHEMA, paired with their children.

        A record whose thread saw no sched_process_fork after it (same tid and
        per-thread sequence number) is a fork that did not complete.
        """
        return fork_table(self._dups, self._children)


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
    return pa.table({name: columns[name] for name in FORK_SCHEMA.names}).cast(FORK_SCHEMA)

"""One recording run: the targets, the polling loop, and what it collected.

Stop signals only set a flag (tracer.record.stopping), which the loop reads
between ring buffer polls. `-- CMD` runs in its own process group, as
timeout(1) runs its command: a stop request is passed on to the group, and a
group that outlives COMMAND_GRACE_S is killed, so an uncooperative command
cannot keep the tracer (and its BPF programs) running.
"""

from __future__ import annotations

import errno
import os
import signal
import sys
import time
from typing import Callable

import pyarrow as pa

from analysis.errors import TracerError
from tracer.probes.bracket import DupEvent
from tracer.record.context import keep_off_cpu, wall_mono
from tracer.record.options import RecordOptions
from tracer.record.attached import ProbeSet
from tracer.record.stopping import STOP_SIGNALS, StopRequests
from tracer.record.table import exact_frame, fork_table, unmatched_exact

__all__ = ["COMMAND_GRACE_S", "Session", "exit_status"]

# Seconds a command's process group has to exit after a stop request is
# passed on to it, before SIGKILL.
COMMAND_GRACE_S = 2.0

# System-wide and command mode: /proc/PID/maps snapshots of forking processes,
# taken when a process is first seen forking. Bounded so a fork storm cannot
# turn the tracer into the load.
MAPS_MAX_PROCESSES = 64
MAPS_MIN_INTERVAL_S = 0.1
# Exact records that matched no bracket, kept in the metadata for diagnosis.
UNMATCHED_KEPT = 20


class Session:
    """One run: targets, the polling loop, and what it collected."""

    def __init__(self, opts: RecordOptions, log: Callable[[str], None], stop: StopRequests | None = None):
        self.opts = opts
        self.log = log
        self.stop = stop or StopRequests()
        self._dups = bytearray()  # struct dup_event records, packed as they came
        self._exact = bytearray()  # struct exact_event records, packed as they came
        self.exact_timed: set[str] = set()  # kernel functions the exact probes attached to
        self.exact_counters: dict[str, int] | None = None
        self.exact_missed: dict[str, object] | None = None
        self.exact_unmatched = 0
        self.exact_unmatched_calls: list[dict] = []
        self.forks = 0
        self._children: list[tuple[int, int, int]] = []  # (tid, seq, child pid)
        self.maps: list[dict] = []
        self._maps_seen: set[int] = set()
        self._maps_last = 0.0
        self.workload: dict | None = None
        self.counters: dict[str, int] = {}
        self.stacks: list[dict] = []
        self.ma_writes = 0  # ma_write events inside brackets, summed from the records
        self.stores = 0  # of which mas_store of a VMA
        self.other_writes = 0  # of which from other functions (node splits on the bulk build)
        self.start: dict = {}
        self.end: dict = {}
        self.exit_status: int | None = None  # -- CMD: its status as a shell reports it

    # -- ring buffer callbacks -------------------------------------------
    def on_dup(self, event: DupEvent, raw: bytes) -> None:
        self._dups += raw
        self.forks += 1
        self.ma_writes += event.stores + event.null_stores + event.zero_stores + event.other_writes
        self.stores += event.stores
        self.other_writes += event.other_writes
        if self.opts.mode in ("system", "command") and event.pid not in self._maps_seen:
            self._snapshot_rate_limited(event.pid)

    def on_exact(self, raw: bytes) -> None:
        self._exact += raw

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
    def run(self, probe: ProbeSet) -> None:
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
                if self.opts.mode == "pid" and not self.stop.requested and done():
                    pids = ", ".join(map(str, self.opts.pids))
                    self.log(f"{'process' if len(self.opts.pids) == 1 else 'processes'} {pids} exited: tracing stopped")
        finally:
            # Tracing ends here; a fork whose child event comes after this may
            # lack it for no fault of its own (table.py marks it partial).
            self.end = wall_mono()
            # Let the last sched_process_fork records arrive before reading out.
            for _ in range(3):
                probe.poll(20)
            self.counters = probe.counters()
            self.exact_counters = probe.exact_counters()
            self.exact_missed = probe.exact_missed()
            self.stacks = probe.sampled_stacks()
            self._progress(final=True)

    def _loop(self, probe: ProbeSet, done: Callable[[], bool]) -> None:
        self.start = self.start or wall_mono()
        t0 = time.monotonic()
        next_progress = t0 + 1.0
        # The spawn workload stops itself after -d; everything else stops here.
        deadline = t0 + self.opts.duration if self.opts.duration and self.opts.mode != "spawn" else None
        if not self.opts.quiet:
            until = {"spawn": "the workload ends", "command": "the command exits", "pid": "the process exits"}
            how = f"for {self.opts.duration:g} s" if deadline else f"until {until.get(self.opts.mode, 'Ctrl-C')}"
            self.log(f"tracing {self.opts.mode} {how} (Ctrl-C to stop) ...")
        while not self.stop.requested and not done():
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

    def _run_spawn(self, probe: ProbeSet) -> None:
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
            self.start = wall_mono()
            work.go()
            self._loop(probe, done=work.finished)
            work.stop()  # no-op if it already ended; after Ctrl-C or SIGTERM it ends the loop
            work.wait(timeout=60)
        self.workload = {"pid": pid, **work.metadata(), "tracer_cpus": tracer_cpus}

    def _run_command(self, probe: ProbeSet) -> None:
        # fork + wait-on-pipe + exec, so the pid is in the filter before the
        # command can fork (subprocess would exec before we know the pid).
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:
            _exec_command(self.opts.command, read_fd, write_fd, ignored=self.stop.ignored)
        os.close(read_fd)
        try:
            os.setpgid(pid, pid)  # also done by the child: whichever runs first
        except OSError:
            pass
        probe.add_targets([pid])
        self.start = wall_mono()
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
            if not status:
                self._stop_command(probe, pid, exited)
        finally:
            if not status:  # an error above: leave nothing running
                _kill_group(pid, signal.SIGKILL)
                status.append(os.waitpid(pid, 0)[1])
        self.exit_status = exit_status(status[0])
        self.workload = {
            "kind": "command",
            "command": self.opts.command,
            "pid": pid,
            "exit_status": self.exit_status,
        }

    def _stop_command(self, probe: ProbeSet, pid: int, exited: Callable[[], bool]) -> None:
        """Pass the stop on to the command's group; SIGKILL it after COMMAND_GRACE_S.

        The ring buffer is read meanwhile: the command's last forks are recorded.
        """
        sig = self.stop.signum or signal.SIGTERM  # -d elapsed: as timeout(1)
        _kill_group(pid, sig)
        deadline = time.monotonic() + COMMAND_GRACE_S
        while not exited():
            if time.monotonic() >= deadline:
                self.log(
                    f"the command did not exit {COMMAND_GRACE_S:g} s after {signal.Signals(sig).name}: "
                    "killing its process group"
                )
                _kill_group(pid, signal.SIGKILL)
                deadline = float("inf")
            probe.poll(50)

    # -- results ------------------------------------------------------------

    def fork_table(self) -> pa.Table:
        """The records as columns of FORK_SCHEMA, paired with their children.

        A record whose thread saw no sched_process_fork after it (same tid and
        per-thread sequence number) is a fork that did not complete.
        """
        exact = exact_frame(self._exact, self.exact_timed) if self.exact_counters is not None else None
        table = fork_table(
            self._dups, self._children, start_ns=self.start.get("mono_ns"), end_ns=self.end.get("mono_ns"), exact=exact
        )
        if exact is not None:
            # dup_mmap calls the exact probe saw and the bracket did not: how many, and which ones, for diagnosis.
            missed = unmatched_exact(table, exact)
            self.exact_unmatched = len(missed)
            self.exact_unmatched_calls = [
                {"tid": int(r.tid), "seq": int(r.seq), "ts_entry": int(r.exact_ts_entry), "dup_mmap_ns": float(r.exact_dup_mmap_ns)}
                for r in missed.head(UNMATCHED_KEPT).itertuples()
            ]
        return table


def exit_status(wait_status: int) -> int:
    """A wait status as a shell reports it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(wait_status)
    return code if code >= 0 else 128 - code


def _kill_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _exec_command(command: list[str], read_fd: int, write_fd: int, ignored: set[int]) -> None:
    """In the forked child: own process group, wait for the tracer, exec. Never returns."""
    try:
        os.setpgid(0, 0)
        os.close(write_fd)
        # Dispositions a command expects: Python ignores SIGPIPE and SIGXFSZ;
        # the tracer's stop handlers must not run here, and a stop signal the
        # tracer was started with ignored (nohup) stays ignored.
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, *STOP_SIGNALS):
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)
        if not os.read(read_fd, 1):
            os._exit(1)  # the tracer died before attaching: do not run untraced
        os.execvp(command[0], command)
    except OSError as err:
        os.write(2, f"tracer: error: cannot run {command[0]}: {err.strerror}\n".encode())
        os._exit(127 if err.errno == errno.ENOENT else 126)
    finally:
        os._exit(126)

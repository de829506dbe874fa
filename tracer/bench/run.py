"""Drive the pyperf worker over VMA counts; optionally trace each run; print the seed's table.

For each VMA count N, DIR/spawn-LAYOUT-N.json is pyperf's own file (pyperf
stats / hist / compare_to read it unchanged). With record, the pyperf run is
the command of a `tracer record -- CMD` session (root), and the recording is
written beside it as DIR/spawn-LAYOUT-N.parquet; without it nothing is traced.
"""

from __future__ import annotations

import signal
import statistics
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from analysis.errors import TracerError, UsageError
from tracer.bench.worker import benchmark_name
from tracer.workload.spawn import LAYOUTS, SEED_VMAS, build_spawn

__all__ = ["BenchOptions", "parse_vmas", "run_bench", "DEFAULT_VMAS"]

DEFAULT_VMAS = ",".join(map(str, SEED_VMAS))
MAX_VMAS = 1 << 20


@dataclass
class BenchOptions:
    vmas: list[int]
    layout: str = "gapped"
    cpu: int | None = None
    output: Path = Path(".")
    record: bool = False
    pyperf_args: list[str] = field(default_factory=list)  # -p, -n, -w, -l, --fast, ...
    quiet: bool = False


def parse_vmas(text: str) -> list[int]:
    """'0,100,6400' -> [0, 100, 6400]: whole numbers, no repeats."""
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--vmas takes comma-separated whole numbers (0,100,6400), not {text!r}") from None
    if not values or any(v < 0 or v > MAX_VMAS for v in values):
        raise UsageError(f"--vmas needs counts between 0 and {MAX_VMAS}, got {text!r}")
    if len(set(values)) != len(values):
        raise UsageError(f"--vmas lists a count twice: {text!r}")
    return values


def outputs(opts: BenchOptions, vmas: int) -> tuple[Path, Path]:
    stem = benchmark_name(opts.layout, vmas)
    return opts.output / f"{stem}.json", opts.output / f"{stem}.parquet"


def validate(opts: BenchOptions) -> None:
    """Everything checkable before the first fork, so a sweep does not die half-way."""
    import os

    if opts.layout not in LAYOUTS:
        raise UsageError(f"--layout must be one of {', '.join(LAYOUTS)}, not {opts.layout!r}")
    if opts.cpu is not None and opts.cpu not in os.sched_getaffinity(0):
        raise UsageError(f"--cpu {opts.cpu}: not a CPU this process may run on")
    if opts.record and os.geteuid() != 0:
        raise TracerError("tracer bench --record loads BPF programs and needs root: run it with sudo")
    if opts.output.exists() and not opts.output.is_dir():
        raise UsageError(f"-o {opts.output} is a file; give a directory")
    for vmas in opts.vmas:
        for path in outputs(opts, vmas):
            if path.exists():
                raise UsageError(f"{path} exists; choose another -o DIR (results are never overwritten)")


def worker_command(opts: BenchOptions, vmas: int, json_path: Path) -> list[str]:
    cmd = [sys.executable, "-m", "tracer.bench.worker", "--vmas", str(vmas), "--layout", opts.layout, "-o", str(json_path)]
    if opts.cpu is not None:
        cmd += ["--spawn-cpu", str(opts.cpu)]
    if opts.quiet:
        cmd.append("--quiet")
    if opts.record:
        cmd.append("--traced")
    return cmd + list(opts.pyperf_args)


def run_bench(opts: BenchOptions, log: Callable[[str], None] | None = None) -> str:
    """Run the sweep; return the seed's table (VMAs, forks/s, time per fork, files)."""
    from analysis.files import Directory
    from tracer.record.stopping import StopRequests

    log = log or (lambda msg: print(msg, file=sys.stderr))
    validate(opts)
    build_spawn()  # compile once, before pyperf's workers race to
    # pyperf writes its JSON itself, by name: into a directory no other user can write, so no name is planted.
    Directory.open(opts.output, create=True, what="-o directory").close()
    rows = []
    with StopRequests() as stop:  # one for the whole bench: a stop ends it, pyperf and its workers included
        for vmas in opts.vmas:
            json_path, rec_path = outputs(opts, vmas)
            cmd = worker_command(opts, vmas, json_path)
            log(f"bench: {benchmark_name(opts.layout, vmas)}" + (" (traced)" if opts.record else ""))
            if opts.record:
                from tracer.record import RecordOptions, record

                # pyperf runs as record's command, in its own process group: a stop reaches its workers.
                record(RecordOptions(command=cmd, output=rec_path, quiet=True), log=log, stop=stop)
            else:
                status = run_group(cmd, stop)
                if status != 0 and not stop.requested:
                    raise TracerError(f"pyperf run for {vmas} extra VMAs failed (exit status {status})")
            if stop.requested:
                err = TracerError(f"{signal.Signals(stop.signum).name}: bench stopped during {vmas} extra VMAs; "
                                  f"{len(rows)} results written before it")
                err.exit_code = 128 + stop.signum
                raise err
            if not json_path.exists():
                raise TracerError(f"pyperf wrote no result for {vmas} extra VMAs ({json_path})")
            rows.append((vmas, json_path, rec_path if opts.record else None))
    return seed_table(rows)


def run_group(cmd: list[str], stop, grace_s: float = 2.0) -> int:
    """Run `cmd` in its own process group until it exits or a stop is requested.

    On a stop, the signal is passed on to the group (pyperf and its workers),
    SIGKILL follows after `grace_s`, and the group is waited for: nothing it
    started outlives the tracer or writes after it exited.
    """
    import time

    proc = subprocess.Popen(cmd, process_group=0)
    try:
        while proc.poll() is None and not stop.requested:
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            _signal_group(proc.pid, stop.signum or signal.SIGTERM)
            try:
                proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
        # Workers outlive their parent for a moment: wait until the group is empty (or kill it).
        deadline, killed = time.monotonic() + grace_s, False
        while _signal_group(proc.pid, 0):
            if time.monotonic() > deadline:
                if killed:
                    break  # unkillable (D state): nothing more to do
                _signal_group(proc.pid, signal.SIGKILL)
                deadline, killed = time.monotonic() + grace_s, True
            time.sleep(0.02)
    return proc.returncode


def _signal_group(pgid: int, sig: int) -> bool:
    """killpg; False once no process is left in the group."""
    import os

    try:
        os.killpg(pgid, sig)
        return True
    except ProcessLookupError:
        return False


def seed_table(rows: list[tuple[int, Path, Path | None]]) -> str:
    """The thread's table: extra VMAs, forks per second, time per fork (pyperf median)."""
    import pyperf

    lines = [f"{'extra VMAs':>10} {'forks/s':>10} {'per fork':>10} {'values':>7}  file"]
    for vmas, path, rec in rows:
        bench = pyperf.Benchmark.load(str(path))
        values = bench.get_values()
        median = statistics.median(values)
        lines.append(
            f"{vmas:>10} {1 / median:>10.1f} {median * 1e6:>8.1f}us {len(values):>7}  {path.name}"
            + (f" + {rec.name}" if rec else "")
        )
    return "\n".join(lines)

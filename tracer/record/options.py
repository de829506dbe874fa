"""What `tracer record` was asked to do, and every check of it that needs no BPF.

resolve_options() runs before anything is loaded, so bad input fails in well
under a second with one line; it returns the options with the defaults they
imply filled in and leaves the caller's as they were. The output file is
checked by tracer.record.output.
"""

from __future__ import annotations

import math
import os
import platform
import shutil
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

from analysis.errors import TracerError, UsageError
from tracer.probes.bracket import BACKENDS as BRACKET_BACKENDS
from tracer.probes.bracket import LEVELS, samples_stacks
from tracer.probes.exact import EXACT_BACKENDS

# --backend: how the bracket attaches, or which exact probes to add beside it.
BACKENDS = (*BRACKET_BACKENDS, *EXACT_BACKENDS)

__all__ = ["DEFAULT_AB_RUNS", "DEFAULT_SAMPLE_HZ", "SERIES_FORKS", "RecordOptions", "default_output", "level_and_rate",
           "resolve_options"]

# --level full without --sample: an odd rate, so samples do not beat with timer ticks.
DEFAULT_SAMPLE_HZ = 4999

# Runs per arm of an A/B (--layout A,B, --spawn A,B, -- CMD_A ::: CMD_B) when --runs is not given: on this
# project's host, where a run's vma_loop median moves by 16% between runs, 80 interleaved runs an arm found an
# injected +8% in vma_loop in 19 of 20 comparisons (a +10% change is found at least as often) with 1 A/A
# flag in 40 (scripts/bench_triage.py; docs/runs.md). About 30 s of the built-in workload.
DEFAULT_AB_RUNS = 80
# --spawn forks per run in a series of runs when --forks is not given: the run is the unit, and a run's
# median of 25 forks detected as much as one of 100 (docs/runs.md); more runs buy power, more forks do not.
SERIES_FORKS = 25


@dataclass
class RecordOptions:
    pids: list[int] = field(default_factory=list)
    command: list[str] = field(default_factory=list)
    spawn_vmas: int | None = None
    forks: int | None = None
    duration: float | None = None
    cpu: int | None = None
    touch: bool = False
    output: Path | None = None
    sample_hz: int = 0
    backend: str | None = None
    level: str | None = None  # LEVELS; None: full with --sample, else phase
    quiet: bool = False
    layout: str = "gapped"  # --spawn: how the extra VMAs are laid out (tracer.workload.spawn.LAYOUTS)
    cycle: bool | None = None  # clone/exit_mmap/wait per fork; None: on for --spawn, off otherwise
    runs: int | None = None  # --runs: fresh workload processes, one recording each (None: 1, A/B: DEFAULT_AB_RUNS)
    spawn_list: list[int] | None = None  # --spawn A,B: one arm per VMA count
    inject_store_ns: tuple[int, ...] = ()  # test only: ns spun per mas_store (bracket.c INJECT_STORE)

    @property
    def series(self) -> bool:
        """Several runs or arms: -o is a directory of recordings (tracer.record.runs)."""
        from tracer.record.runs import ARM_SEPARATOR

        return ((self.runs or 1) > 1 or ARM_SEPARATOR in self.command or "," in (self.layout or "")
                or len(self.spawn_list or []) > 1 or len(self.inject_store_ns) > 1)

    @property
    def samples(self) -> bool:
        """Whether this run samples kernel stacks: its level says (sample_hz is the rate)."""
        return samples_stacks(self.level)

    @property
    def trace_cycle(self) -> bool:
        return self.cycle if self.cycle is not None else self.spawn_vmas is not None

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


def resolve_options(asked: RecordOptions) -> RecordOptions:
    """Every check that needs no BPF, then the options completed: --forks, level, sample rate.

    A copy: what the caller asked for is not changed. With several runs or
    arms (tracer.record.runs) each arm's options are checked, and -o becomes
    a new directory of recordings, made now.
    """
    from tracer.record import runs as series

    opts = replace(asked, pids=list(asked.pids), command=list(asked.command))
    if opts.runs is not None and opts.runs < 1:
        raise UsageError("--runs must be at least 1")
    if any(ns < 0 or ns > 10_000 for ns in opts.inject_store_ns):
        raise UsageError("the injected store cost is 0 to 10000 ns")
    if not opts.series:
        opts.runs = 1
        return _resolve_one(opts)
    arms = series.arms_of(opts)
    if opts.runs is None:
        opts.runs = DEFAULT_AB_RUNS if len(arms) > 1 else 1
    if opts.runs > 1 and opts.forks is None and opts.duration is None and opts.spawn_vmas is not None:
        opts.forks = SERIES_FORKS
        for arm in arms:
            arm.opts.forks = SERIES_FORKS
    for arm in arms:
        arm.opts.runs = 1
        _resolve_one(arm.opts)
    # What every arm shares, completed once (each run's options are the arm's, from these).
    opts.level, opts.sample_hz, opts.forks = arms[0].opts.level, arms[0].opts.sample_hz, arms[0].opts.forks
    opts.output = opts.output or series.series_dir(arms[0].opts)
    series.check_series_dir(opts.output, arms)
    return opts


def _resolve_one(opts: RecordOptions) -> RecordOptions:
    modes = [bool(opts.pids), bool(opts.command), opts.spawn_vmas is not None]
    if sum(modes) > 1:
        raise UsageError("choose one target: -p PID, --spawn VMAS, or -- CMD")
    if opts.forks is not None and opts.spawn_vmas is None:
        raise UsageError("--forks applies to the built-in workload (--spawn VMAS)")
    if opts.forks is not None and opts.forks <= 0:
        raise UsageError("--forks must be positive")
    if opts.duration is not None and not (math.isfinite(opts.duration) and opts.duration > 0):
        raise UsageError(f"-d/--duration must be a positive number of seconds, not {opts.duration:g}")
    if opts.spawn_vmas is not None:
        from tracer.workload.spawn import check_args

        if opts.spawn_vmas < 0:
            raise UsageError("--spawn VMAS must be >= 0")
        if opts.forks is None and opts.duration is None:
            opts.forks = 1000
        check_args(opts.spawn_vmas, opts.forks, opts.duration, opts.cpu, opts.layout)
    if opts.cpu is not None and opts.cpu not in os.sched_getaffinity(0):
        raise UsageError(f"--cpu {opts.cpu}: not a CPU this process may run on")
    if opts.layout != "gapped" and opts.spawn_vmas is None:
        raise UsageError("--layout applies to the built-in workload (--spawn VMAS)")
    if opts.cpu is not None and opts.spawn_vmas is None:
        raise UsageError("--cpu applies to the built-in workload (--spawn VMAS)")
    if opts.backend is not None and opts.backend not in BACKENDS:
        raise UsageError(f"unknown backend {opts.backend!r} (known: {', '.join(BACKENDS)})")
    if opts.sample_hz < 0 or opts.sample_hz > 100_000:
        raise UsageError("--sample HZ must be between 0 (off) and 100000")
    opts.level, opts.sample_hz = level_and_rate(opts.level, opts.sample_hz)
    for pid in opts.pids:
        if pid <= 0 or not Path(f"/proc/{pid}").is_dir():
            raise UsageError(f"no such process: {pid}")
        if _kernel_thread(pid):
            raise UsageError(f"-p {pid} is a kernel thread: it has no mm, so it never calls dup_mmap")
    if opts.command:
        _check_command(opts.command[0])
    if os.geteuid() != 0:
        raise TracerError("tracer record loads BPF programs and needs root: run it with sudo")
    return opts


PF_KTHREAD = 0x00200000  # include/linux/sched.h


def _kernel_thread(pid: int) -> bool:
    """PF_KTHREAD in /proc/PID/stat's flags (field 9); False if it cannot be read (the process is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        flags = int(stat.rsplit(")", 1)[1].split()[6])
    except (OSError, ValueError, IndexError):
        return False
    return bool(flags & PF_KTHREAD)


def _check_command(name: str) -> None:
    """As a shell says it: 127 for a command not found, 126 for one that cannot be run."""
    if shutil.which(name) is not None:
        return
    if "/" in name and os.path.exists(name):
        err = TracerError(f"cannot run {name}: not an executable file")
        err.exit_code = 126
    else:
        err = TracerError(f"command not found: {name}")
        err.exit_code = 127
    raise err




def level_and_rate(level: str | None, sample_hz: int) -> tuple[str, int]:
    """--level and --sample together: full samples (at DEFAULT_SAMPLE_HZ unless told), the others do not."""
    if level is None:
        level = "full" if sample_hz else "phase"
    if level not in LEVELS:
        raise UsageError(f"unknown level {level!r} (known: {', '.join(LEVELS)})")
    if samples_stacks(level) and not sample_hz:
        return level, DEFAULT_SAMPLE_HZ
    if not samples_stacks(level) and sample_hz:
        raise UsageError(f"--sample takes stack samples, which is --level full, not {level}")
    return level, sample_hz

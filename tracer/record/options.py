"""What `tracer record` was asked to do, and every check of it that needs no BPF.

validate() runs before anything is loaded, so bad input fails in well under a
second with one line.
"""

from __future__ import annotations

import os
import platform
import shutil
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from analysis.errors import TracerError, UsageError
from analysis.recording.writer import check_writable
from tracer.probes.bracket import BACKENDS as BRACKET_BACKENDS
from tracer.probes.exact import EXACT_BACKENDS

BACKENDS = (*BRACKET_BACKENDS, *EXACT_BACKENDS)

__all__ = ["RecordOptions", "default_output", "validate"]


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



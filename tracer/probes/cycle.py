"""Load cycle.c with bcc: the clone, exit_mmap and wait around each traced dup_mmap.

The bracket (bracket.py) times dup_mmap itself; this probe times the rest of
a fork-exit-wait iteration, as separate records that tracer/record/cycle.py
joins to the bracket's forks by child pid. It is a BPF object of its own, so
turning it off leaves the bracket's programs exactly as they were.
"""

from __future__ import annotations

import ctypes
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable


from analysis.errors import TracerError
from tracer.probes.bracket import BACKENDS
from tracer.probes.cheader import read_header
from tracer.probes.program import BCC_MISSING, add_targets, clear_targets, common_cflags, one_line, program_text, read_counters
from tracer.probes.rawtp import argument_macros, macros_for

__all__ = [
    "CYCLE_EVENT_DTYPE",
    "CYCLE_KINDS",
    "CycleConfig",
    "CycleProbe",
    "COUNTER_NAMES",
    "SYSCALLS",
    "TRACEPOINTS",
    "cflags_for",
    "missing_support",
]

SOURCE = Path(__file__).with_name("cycle.c")
HEADER = read_header(SOURCE.with_name("cycle.h"))

# enum cycle_kind: CYCLE_CLONE -> 'clone'.
CYCLE_KINDS = {value: name[len("CYCLE_"):].lower() for name, value in HEADER.enums["cycle_kind"].items()}
# enum cycle_counter: CC_LOST_RINGBUF -> 'lost_ringbuf'.
COUNTER_NAMES = tuple(name[3:].lower() for name in HEADER.names_in_order("cycle_counter", stop="NR_CYCLE_COUNTERS"))
# enum cycle_syscall: x86_64 numbers -> names, as recorded in the metadata.
SYSCALLS = {value: name[3:].lower() for name, value in HEADER.enums["cycle_syscall"].items()}

# The machine whose syscall numbers cycle.h holds.
MACHINE = "x86_64"

# Tracepoints cycle.c attaches to (category, event).
TRACEPOINTS = (
    ("raw_syscalls", "sys_enter"),
    ("raw_syscalls", "sys_exit"),
    ("sched", "sched_process_fork"),
    ("mmap_lock", "mmap_lock_acquire_returned"),
    ("mmap_lock", "mmap_lock_released"),
    ("mmap", "exit_mmap"),
)
RAW_EVENTS = tuple(event for _, event in TRACEPOINTS)

# struct members the raw tracepoint programs read, with the -D macro that carries each offset.
BTF_OFFSETS = {
    ("task_struct", "pid"): "TASK_PID_OFF",
    ("task_struct", "tgid"): "TASK_TGID_OFF",
    ("pt_regs", "orig_ax"): "REGS_ORIG_AX_OFF",
    ("pt_regs", "dx"): "REGS_DX_OFF",
}

CycleEvent = HEADER.structure("cycle_event")

# The record as a numpy dtype: a run's records stay one packed buffer.
CYCLE_EVENT_DTYPE = HEADER.dtype("cycle_event")


@dataclass(frozen=True)
class CycleConfig:
    """What to build: backend, offsets from BTF (raw tracepoints), filtering."""

    backend: str = "raw_tracepoint"
    offsets: dict[str, int] = field(default_factory=dict)  # -D macro -> offset
    filter_tgids: bool = False
    follow_children: bool = False
    ringbuf_pages: int = 256


def cflags_for(config: CycleConfig) -> list[str]:
    """The -D flags that select cycle.c's variant; pure, so it is testable."""
    if config.backend not in BACKENDS:
        raise TracerError(f"unknown backend {config.backend!r} (known: {', '.join(BACKENDS)})")
    flags = common_cflags(SOURCE, config.ringbuf_pages, COUNTER_NAMES)
    if config.backend == "raw_tracepoint":
        needed = [*BTF_OFFSETS.values(), *macros_for(RAW_EVENTS)]
        missing = [macro for macro in needed if macro not in config.offsets]
        if missing:
            raise TracerError(f"raw tracepoints need struct offsets and argument positions from BTF ({', '.join(missing)})")
        flags.append("-DRAW_TP")
        flags += [f"-D{macro}={config.offsets[macro]}" for macro in needed]
    if config.filter_tgids:
        flags.append("-DFILTER_TGIDS")
    if config.follow_children:
        flags.append("-DFOLLOW_CHILDREN")
    return flags


def missing_support(machine: str | None = None, tracepoint_exists=None) -> str | None:
    """Why the cycle cannot be traced on this host, or None.

    tracepoint_exists(category, event) -> bool; by default tracefs, else BTF.
    """
    machine = machine or platform.machine()
    if machine != MACHINE:
        return f"cycle.h holds {MACHINE} syscall numbers; this machine is {machine}"
    exists = tracepoint_exists or _tracepoint_exists
    absent = [f"{cat}:{event}" for cat, event in TRACEPOINTS if not exists(cat, event)]
    if absent:
        return f"tracepoints missing on this kernel: {', '.join(absent)}"
    return None


def _tracepoint_exists(category: str, event: str) -> bool:
    for tracefs in ("/sys/kernel/tracing", "/sys/kernel/debug/tracing"):
        events = Path(tracefs, "events")
        if events.is_dir():
            return (events / category / event).is_dir()
    from tracer.host import btf

    try:
        return btf.has_type(f"btf_trace_{event}", "typedef")
    except TracerError:
        return False


def offsets_from_btf() -> dict[str, int]:
    """-D macros cycle.c's raw tracepoint programs need (struct offsets, argument positions), from BTF."""
    from tracer.host import btf

    found = {macro: btf.member_offset(struct, member) for (struct, member), macro in BTF_OFFSETS.items()}
    return {**found, **argument_macros(RAW_EVENTS)}


@dataclass
class CycleProbe:
    """cycle.c loaded into the kernel: feed it targets, drain it, read its records out."""

    config: CycleConfig
    _bpf: object = field(default=None, init=False, repr=False)
    _records: bytearray = field(default_factory=bytearray, init=False, repr=False)

    def load(self) -> "CycleProbe":
        try:
            from bcc import BPF
        except ImportError:
            raise TracerError(BCC_MISSING) from None
        try:
            self._bpf = BPF(text=program_text(SOURCE), cflags=cflags_for(self.config))
        except Exception as err:  # bcc raises plain Exception for compile/load failures
            raise TracerError(f"cycle BPF programs failed to load ({self.config.backend}): {one_line(err)}") from None
        self._bpf[b"cycle_events"].open_ring_buffer(self._on_event)
        return self

    def add_targets(self, tgids: Iterable[int]) -> None:
        add_targets(self._bpf, tgids)

    def new_run(self) -> None:
        """Forget the last run: its targets and records (the programs stay loaded)."""
        clear_targets(self._bpf)
        self._records = bytearray()

    def drain(self) -> None:
        """Read whatever is queued, without waiting (cycle.c never wakes the reader)."""
        self._bpf.ring_buffer_consume()

    def records(self) -> bytes:
        """Every struct cycle_event received so far, packed (CYCLE_EVENT_DTYPE)."""
        return bytes(self._records)

    def counters(self) -> dict[str, int]:
        return read_counters(self._bpf, COUNTER_NAMES)

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "CycleProbe":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_event(self, ctx, data, size) -> None:
        self._records += ctypes.string_at(data, ctypes.sizeof(CycleEvent))

"""Load bracket.c with bcc and turn its ring buffer into per-fork rows.

The loader's job is everything bracket.c cannot know by itself: which
backend this kernel allows, the struct offsets of the running kernel (from
BTF, since bcc compiles against whatever headers exist, which may be older),
which processes to trace, and the decoding of the records it emits.
"""

from __future__ import annotations

import ctypes
import time

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from analysis.errors import TracerError
from tracer.host.attach_points import BTF_OFFSETS, TRACEPOINTS
from tracer.probes.cheader import read_header
from tracer.probes.program import BCC_MISSING, add_targets, clear_targets, common_cflags, one_line, program_text, read_counters
from tracer.probes.rawtp import argument_macros, as_cflags
from tracer.probes.rawtp import macros_for as rawtp_macros
from tracer.probes.typed import TypedTracepoint

__all__ = [
    "BACKENDS",
    "BracketConfig",
    "BracketProbe",
    "DupEvent",
    "DUP_EVENT_DTYPE",
    "EVENT_CHILD",
    "EVENT_DUP",
    "SAMPLE_PHASES",
    "COUNTER_NAMES",
    "ABLATIONS",
    "LEVELS",
    "samples_stacks",
    "cflags_for",
    "possible_cpus",
]

SOURCE = Path(__file__).with_name("bracket.c")
BACKENDS = ("raw_tracepoint", "tracepoint")

HEADER = read_header(SOURCE.with_name("bracket.h"))

EVENT_DUP = HEADER.enums["event_kind"]["EVENT_DUP"]
EVENT_CHILD = HEADER.enums["event_kind"]["EVENT_CHILD"]

# enum counter in bracket.h, as names user space reports: C_LOST_RINGBUF -> lost_ringbuf.
COUNTER_NAMES = tuple(name[2:].lower() for name in HEADER.names_in_order("counter", stop="NR_COUNTERS"))

# enum sample_phase in bracket.h -> the phase names of analysis.recording.phases.
SAMPLE_PHASES = {value: name[len("SAMPLE_"):].lower() for name, value in HEADER.enums["sample_phase"].items()}

RAW_EVENTS = tuple(event for _, event in TRACEPOINTS)

# Recording levels (`record --level`), cheapest first: what each attaches.
LEVELS = {
    "fork": "lock bracket, map_count, child pid, off-CPU total: dup_mmap only, no per-VMA program",
    "phase": "plus the per-VMA program: store-based phases, stores, leaves, off-CPU time per window",
    "full": "plus perf sampling of kernel stacks inside dup_mmap",
}


def samples_stacks(level: str | None) -> bool:
    """Whether a level samples kernel stacks: full alone does; a sampling rate is only its rate."""
    return level == "full"

# bracket.c's ablation switches (-D flags), each removing or replacing one piece
# of the per-VMA program; scripts/bench_overhead.py measures each.
ABLATIONS = {
    "vma_body": "ma_write finds its state, then returns",
    "fn_check": "no function-name check: every ma_write counts as a store",
    "ma_state": "no read of ma_state->node",
    "timestamp": "no store is timed",
    "leaves": "no leaf tracking",
    "lookup_task_storage": "per-VMA state from task storage instead of the CPU slot",
    "time_every_store": "every store timed (the pre-slot program did this)",
}

# struct dup_event of bracket.h (160 bytes; a test checks the layout against the compiled BPF).
DupEvent = HEADER.structure("dup_event")


# The same record as a numpy dtype (160 bytes a fork, one packed buffer per run).
DUP_EVENT_DTYPE = HEADER.dtype("dup_event")


@dataclass(frozen=True)
class BracketConfig:
    """What to build: backend, offsets from BTF, filtering and sampling."""

    backend: str = "raw_tracepoint"
    ma_state_node_off: int | None = None
    task_pid_off: int | None = None
    mm_map_count_off: int | None = None
    filter_tgids: bool = False
    follow_children: bool = False
    sample_hz: int = 0
    ringbuf_pages: int = 256
    empty: bool = False  # programs attached but doing nothing: the overhead floor
    level: str = "phase"  # LEVELS; "full" samples stacks, at sample_hz
    ablate: tuple[str, ...] = ()  # ABLATIONS, for the overhead bench only
    max_cpus: int = field(default_factory=lambda: possible_cpus())
    arg_macros: dict[str, int] = field(default_factory=dict)  # raw tracepoint argument positions (rawtp.py)
    # Before v6.8 (no __mt_dup) the last store is not known in advance: time them all (bracket.c).
    time_every_store: bool = False
    # Raw tracepoints: the per-VMA program as tp_btf (a plain load of ma_state->node, no
    # bpf_probe_read_kernel) where the kernel allows it; False keeps the raw tracepoint one.
    typed_ma_write: bool = True
    # Test only: spin inject_ns[0] ns in each mas_store after the first (bracket.c INJECT_STORE):
    # a known extra cost in vma_loop, the ground truth of scripts/bench_triage.py.
    inject_store: bool = False

    @property
    def samples(self) -> bool:
        return samples_stacks(self.level)


def cflags_for(config: BracketConfig, typed: bool = False) -> list[str]:
    """The -D flags that select bracket.c's variant; pure, so it is testable.

    typed: build the per-VMA program for tp_btf (BracketProbe decides, from the kernel's answer).
    """
    if config.backend not in BACKENDS:
        raise TracerError(f"unknown backend {config.backend!r} (known: {', '.join(BACKENDS)})")
    flags = common_cflags(SOURCE, config.ringbuf_pages, COUNTER_NAMES)
    if config.level not in LEVELS:
        raise TracerError(f"unknown level {config.level!r} (known: {', '.join(LEVELS)})")
    unknown = sorted(set(config.ablate) - set(ABLATIONS))
    if unknown:
        raise TracerError(f"unknown ablation {', '.join(unknown)} (known: {', '.join(ABLATIONS)})")
    if config.samples and not config.sample_hz:
        raise TracerError("level full samples stacks: it needs a sampling rate")
    if config.sample_hz and not config.samples:
        raise TracerError(f"a sampling rate without stack sampling: level {config.level} does not sample (full does)")
    if config.max_cpus <= 0:
        raise TracerError(f"max_cpus must be positive, not {config.max_cpus}")
    flags.append(f"-DMAX_CPUS={config.max_cpus}")
    flags.append(f"-DMM_MAP_COUNT_OFF={config.mm_map_count_off if config.mm_map_count_off is not None else -1}")
    if config.backend == "raw_tracepoint":
        if config.ma_state_node_off is None or config.task_pid_off is None:
            raise TracerError("raw tracepoints need struct offsets from BTF (ma_state.node, task_struct.pid)")
        missing = sorted(set(rawtp_macros(RAW_EVENTS)) - set(config.arg_macros))
        if missing:
            raise TracerError(f"raw tracepoints need argument positions from BTF ({', '.join(missing)})")
        flags += [
            "-DRAW_TP",
            f"-DMA_STATE_NODE_OFF={config.ma_state_node_off}",
            f"-DTASK_PID_OFF={config.task_pid_off}",
            *as_cflags(config.arg_macros),
        ]
    if config.filter_tgids:
        flags.append("-DFILTER_TGIDS")
    if config.follow_children:
        flags.append("-DFOLLOW_CHILDREN")
    if config.samples:
        flags.append("-DSAMPLE")
    if config.level == "fork":
        flags.append("-DNO_PER_VMA")
    elif typed:
        if config.backend != "raw_tracepoint":
            raise TracerError("a BTF-typed ma_write program goes with the raw_tracepoint backend")
        flags.append("-DTYPED_MA_WRITE")
    if config.inject_store:
        flags.append("-DINJECT_STORE")
    switches = set(config.ablate) | ({"time_every_store"} if config.time_every_store else set())
    flags += [f"-DABLATE_{name.upper()}" if name not in _PLAIN_SWITCHES else f"-D{name.upper()}"
              for name in sorted(switches)]
    return flags


# Ablations whose macro is not ABLATE_<NAME>: they replace a piece rather than remove it.
_PLAIN_SWITCHES = {"lookup_task_storage", "time_every_store"}


def possible_cpus() -> int:
    """CPU ids go up to the last possible CPU (/sys/devices/system/cpu/possible, e.g. "0-3")."""
    try:
        text = Path("/sys/devices/system/cpu/possible").read_text().strip()
        return max(int(part.split("-")[-1]) for part in text.split(",")) + 1
    except (OSError, ValueError):
        import os

        return os.cpu_count() or 1


def _empty_source(backend: str) -> str:
    """Programs on the same tracepoints that do nothing: the cost of attaching at all."""
    if backend == "raw_tracepoint":
        bodies = [f"RAW_TRACEPOINT_PROBE({event}) {{ return 0; }}" for _, event in TRACEPOINTS]
    else:
        bodies = [f"TRACEPOINT_PROBE({cat}, {event}) {{ return 0; }}" for cat, event in TRACEPOINTS]
    return "\n".join(bodies) + "\n"


@dataclass
class BracketProbe:
    """bracket.c loaded into the kernel; feed it targets, poll it, read it out."""

    config: BracketConfig
    # on_dup(view, raw): the view is valid only during the call; raw is a copy.
    on_dup: Callable[[DupEvent, bytes], None] | None = None
    on_child: Callable[[int, int, int], None] | None = None
    _bpf: object = field(default=None, init=False, repr=False)
    _typed: TypedTracepoint | None = field(default=None, init=False, repr=False)
    # What runs per VMA: "tp_btf", "raw_tracepoint" or "tracepoint" (None: no per-VMA program),
    # and why not tp_btf when it was wanted and the kernel refused.
    per_vma_program: str | None = field(default=None, init=False)
    typed_refused: str | None = field(default=None, init=False)

    def load(self) -> "BracketProbe":
        try:
            from bcc import BPF, PerfSWConfig, PerfType
        except ImportError:
            raise TracerError(BCC_MISSING) from None
        per_vma = not self.config.empty and self.config.level != "fork"
        typed = per_vma and self._typed_allowed()
        self._compile(BPF, typed)
        if typed:
            program = TypedTracepoint(self._bpf, "ma_write_typed", "ma_write")
            try:
                program.load()
                program.attach()
                self._typed = program
            except OSError as err:  # the verifier or the attach refused this build: the raw tracepoint one
                program.close()
                self.typed_refused = f"tp_btf: {err}"
                self.close()
                typed = False
                self._compile(BPF, typed)
        self.per_vma_program = ("tp_btf" if typed else self.config.backend) if per_vma else None
        if self.config.empty:
            return self
        if self.config.samples:
            try:
                self._bpf.attach_perf_event(
                    ev_type=PerfType.SOFTWARE,
                    ev_config=PerfSWConfig.CPU_CLOCK,
                    fn_name="on_sample",
                    sample_freq=self.config.sample_hz,
                )
            except Exception as err:
                raise TracerError(f"perf_event sampling could not be attached: {one_line(err)}") from None
        self._bpf[b"events"].open_ring_buffer(self._on_event)
        # Every program is attached now; CLOCK_MONOTONIC, as bpf_ktime_get_ns().
        self._bpf[b"armed_at"][ctypes.c_int(0)] = ctypes.c_uint64(time.monotonic_ns())
        return self

    def _typed_allowed(self) -> bool:
        """Whether to build the tp_btf ma_write: wanted, and a test program attaches (no compiler needed)."""
        if not self.config.typed_ma_write or self.config.backend != "raw_tracepoint":
            return False
        from tracer.host.attach import try_tp_btf

        attempt = try_tp_btf("ma_write")
        if not attempt.ok:
            self.typed_refused = attempt.log or f"tp_btf {attempt.stage}: {attempt.errno}"
        return attempt.ok

    def _compile(self, BPF, typed: bool) -> None:
        text = _empty_source(self.config.backend).encode() if self.config.empty else program_text(SOURCE)
        try:
            self._bpf = BPF(text=text, cflags=cflags_for(self.config, typed))
        except Exception as err:  # bcc raises plain Exception for compile/load failures
            raise TracerError(f"BPF programs failed to load ({self.config.backend}): {one_line(err)}") from None

    def detach(self) -> None:
        """Take the programs off their tracepoints, keeping them loaded (the bench interleaves)."""
        for cat, event in self._attached():
            if event == "ma_write" and self._typed is not None:
                self._typed.detach()
            elif self.config.backend == "raw_tracepoint":
                self._bpf.detach_raw_tracepoint(tp=event.encode())
            else:
                self._bpf.detach_tracepoint(tp=f"{cat}:{event}".encode())

    def attach(self) -> None:
        """Put detached programs back on their tracepoints."""
        for cat, event in self._attached():
            if event == "ma_write" and self._typed is not None:
                self._typed.attach()
            elif self.config.backend == "raw_tracepoint":
                self._bpf.attach_raw_tracepoint(tp=event.encode(), fn_name=f"raw_tracepoint__{event}".encode())
            else:
                self._bpf.attach_tracepoint(tp=f"{cat}:{event}".encode(), fn_name=f"tracepoint__{cat}__{event}".encode())

    def _attached(self) -> list[tuple[str, str]]:
        skip = {"ma_write"} if self.config.level == "fork" and not self.config.empty else set()
        return [(cat, event) for cat, event in TRACEPOINTS if event not in skip]

    def add_targets(self, tgids: Iterable[int]) -> None:
        add_targets(self._bpf, tgids)

    def new_run(self, inject_store_ns: int = 0) -> None:
        """Forget the last run's targets and sampled stacks (record --runs: the programs stay loaded).

        inject_store_ns: test only, the ns bracket.c spins per mas_store (a build with inject_store).
        """
        if self.config.empty:
            return
        if self.config.filter_tgids:
            clear_targets(self._bpf)
        if self.config.sample_hz:
            self._bpf[b"samples"].clear()
        if inject_store_ns and not self.config.inject_store:
            raise TracerError("an injected store cost needs a build with inject_store")
        if self.config.inject_store:
            self._bpf[b"inject_ns"][ctypes.c_int(0)] = ctypes.c_uint64(inject_store_ns)

    def poll(self, timeout_ms: int = 100) -> None:
        """Wait up to timeout_ms for a wakeup, then read whatever is queued.

        bracket.c wakes the reader only every few records (wakeups are costly
        inside dup_mmap), so records may be waiting without one: consume
        after every wait.
        """
        if not self.config.empty:
            self._bpf.ring_buffer_poll(timeout_ms)
            self._bpf.ring_buffer_consume()

    def counters(self) -> dict[str, int]:
        """Sum of the per-CPU counters, by name."""
        if self.config.empty:
            return {name: 0 for name in COUNTER_NAMES}
        return read_counters(self._bpf, COUNTER_NAMES)

    def sampled_stacks(self) -> list[dict]:
        """Sampled kernel stacks as folded strings (root first), with phase and count.

        Stack ids differ by return address; two ids that symbolise to the same
        functions are one folded stack.
        """
        if not self.config.samples:
            return []
        stacks = self._bpf[b"stacks"]
        folded: dict[tuple[str, str], int] = {}
        for key, value in self._bpf[b"samples"].items():
            try:
                addrs = list(stacks.walk(key.stackid))
            except KeyError:
                continue
            frames = [self._bpf.ksym(addr).decode("utf-8", "replace") for addr in reversed(addrs)]
            ident = (";".join(frames), SAMPLE_PHASES.get(key.phase, "?"))
            folded[ident] = folded.get(ident, 0) + int(value.value)
        out = [{"stack": stack, "phase": phase, "count": n} for (stack, phase), n in folded.items()]
        out.sort(key=lambda s: (-s["count"], s["stack"]))
        return out

    def close(self) -> None:
        if self._typed is not None:
            self._typed.close()
            self._typed = None
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "BracketProbe":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_event(self, ctx, data, size) -> None:
        event = ctypes.cast(data, ctypes.POINTER(DupEvent)).contents
        if event.kind == EVENT_DUP:
            if self.on_dup:
                # Copy out: the ring buffer slot is reused after the callback.
                self.on_dup(event, ctypes.string_at(data, ctypes.sizeof(DupEvent)))
        elif event.kind == EVENT_CHILD and self.on_child:
            self.on_child(event.tid, event.seq, event.child_pid)


def offsets_from_btf() -> dict:
    """BracketConfig's fields that come from the running kernel's BTF: struct offsets, argument positions."""
    from tracer.host import btf

    found: dict = {key: btf.member_offset(struct, member) for (struct, member), key in BTF_OFFSETS.items()}
    found["arg_macros"] = argument_macros(RAW_EVENTS)
    return found

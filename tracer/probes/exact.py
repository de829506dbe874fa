"""Load exact.c with bcc: dup_mmap and its callees timed from their own entries and exits.

exact.c cannot know which functions this kernel lets a probe attach to, under
which symbol names, nor read the kernel's miss counters: the loader does.
Which functions to attach comes from HostFacts (real load attempts), never
from the kernel version.
"""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable


from analysis.errors import TracerError
from tracer.probes.cheader import read_header
from tracer.probes.program import BCC_MISSING, add_targets, clear_targets, common_cflags, one_line, program_text, read_counters

__all__ = [
    "CHILD_FUNCTIONS",
    "EXACT_BACKENDS",
    "EXACT_COUNTER_NAMES",
    "EXACT_EVENT_DTYPE",
    "ExactConfig",
    "ExactEvent",
    "ExactProbe",
    "exact_cflags",
]

SOURCE = Path(__file__).with_name("exact.c")
HEADER = read_header(SOURCE.with_name("exact.h"))

EXACT_BACKENDS = ("fentry", "kprobe")

# enum child_fn -> kernel function, in array order; the -D macro that attaches each.
_CHILD_SYMBOLS = {
    "CHILD_MT_DUP": "__mt_dup",
    "CHILD_MAS_STORE": "mas_store",
    "CHILD_VM_AREA_DUP": "vm_area_dup",
    "CHILD_UNDO_DUP_MMAP": "undo_dup_mmap",
}
CHILD_FUNCTIONS: tuple[str, ...] = tuple(_CHILD_SYMBOLS[name] for name in HEADER.names_in_order("child_fn"))
if len(CHILD_FUNCTIONS) != HEADER.defines["NR_CHILDREN"]:
    raise ImportError("exact.h: enum child_fn and NR_CHILDREN disagree")

# enum exact_counter, as names user space reports: X_DUP_NO_EXIT -> dup_no_exit.
EXACT_COUNTER_NAMES = tuple(name[2:].lower() for name in HEADER.names_in_order("exact_counter", stop="NR_X_COUNTERS"))

ExactEvent = HEADER.structure("exact_event")

# struct exact_event as a numpy dtype: records stay one packed buffer until the end.
EXACT_EVENT_DTYPE = HEADER.dtype("exact_event")


@dataclass(frozen=True)
class ExactConfig:
    """What to build: per function, how to attach ("fentry" or "kprobe") and to which kallsyms name.

    attach must hold dup_mmap; the functions it calls only where the kernel
    allows a probe on them (HostFacts, through methods.choose_methods). A
    compiler clone such as dup_mmap.constprop.0 is the kprobe's symbol;
    fentry attaches by the BTF name, the function's own.
    """

    attach: dict[str, tuple[str, str]] = field(default_factory=lambda: {"dup_mmap": ("fentry", "dup_mmap")})
    filter_tgids: bool = False
    follow_children: bool = False
    task_pid_off: int | None = None
    fork_child_arg: int | None = None  # sched_process_fork's child argument (rawtp.py), to follow children
    ringbuf_pages: int = 64


def _macro(function: str) -> str:
    """exact.c's -D name for `function`: __mt_dup -> HOW_MT_DUP."""
    return "HOW_" + function.strip("_").upper()


def exact_cflags(config: ExactConfig) -> list[str]:
    """The -D flags that select exact.c's variant; pure, so it is testable."""
    if "dup_mmap" not in config.attach:
        raise TracerError("exact probes need dup_mmap itself")
    unknown = set(config.attach) - {"dup_mmap", *CHILD_FUNCTIONS}
    if unknown:
        raise TracerError(f"exact.c cannot time {', '.join(sorted(unknown))}")
    flags = common_cflags(SOURCE, config.ringbuf_pages, EXACT_COUNTER_NAMES)
    for function in ("dup_mmap", *CHILD_FUNCTIONS):
        if function not in config.attach:
            continue
        via = config.attach[function][0]
        if via not in EXACT_BACKENDS:
            raise TracerError(f"unknown exact backend {via!r} for {function} (known: {', '.join(EXACT_BACKENDS)})")
        flags.append(f"-D{_macro(function)}=VIA_{via.upper()}")
    if config.filter_tgids:
        flags.append("-DFILTER_TGIDS")
    if config.follow_children:
        if config.task_pid_off is None or config.fork_child_arg is None:
            raise TracerError("following children needs task_struct.pid's offset and sched_process_fork's arguments from BTF")
        flags += ["-DFOLLOW_CHILDREN", f"-DTASK_PID_OFF={config.task_pid_off}", f"-DFORK_CHILD_ARG={config.fork_child_arg}"]
    return flags


def _program_names(function: str, backend: str) -> tuple[str, str]:
    """exact.c's entry and return program names for `function`."""
    if backend == "fentry":
        return f"kfunc__{function}", f"kretfunc__{function}"
    return f"on_{function}_entry", f"on_{function}_return"


def compile_only(config: ExactConfig) -> list[str]:
    """Compile exact.c for `config` with bcc without loading or attaching a program.

    Returns the programs the object holds. Maps are created (that needs root);
    programs are not loaded, so this works where the kernel refuses fentry/kprobes.
    """
    from bcc import BPF
    from bcc.libbcc import lib

    class _Compiled(BPF):
        def _trace_autoload(self) -> None:  # noqa: D401  compile, never attach
            return None

    bpf = _Compiled(text=program_text(SOURCE), cflags=exact_cflags(config))
    try:
        return [lib.bpf_function_name(bpf.module, i).decode() for i in range(lib.bpf_num_functions(bpf.module))]
    finally:
        bpf.cleanup()


@dataclass
class ExactProbe:
    """exact.c loaded and attached; feed it targets, poll it, read it out."""

    config: ExactConfig
    on_event: Callable[[bytes], None] | None = None
    _bpf: object = field(default=None, init=False, repr=False)
    _maxactive: int = field(default=0, init=False)

    def load(self) -> "ExactProbe":
        try:
            from bcc import BPF
        except ImportError:
            raise TracerError(BCC_MISSING) from None
        text = program_text(SOURCE)
        try:
            # fentry: bcc attaches kfunc__/kretfunc__ programs while it loads them.
            self._bpf = BPF(text=text, cflags=exact_cflags(self.config))
            self._attach_kprobes()
        except Exception as err:  # bcc raises plain Exception for compile/load/attach failures
            self.close()
            how = ", ".join(f"{fn} ({via})" for fn, (via, _) in self.config.attach.items())
            raise TracerError(f"exact probes failed to load ({how}): {one_line(err)}") from None
        self._bpf["events"].open_ring_buffer(self._on_event)
        return self

    def _attach_kprobes(self) -> None:
        # Enough return-probe instances for every CPU's forks: a kretprobe that
        # runs out misses the exit, which exact.c then counts as an entry without an exit.
        self._maxactive = max(64, 4 * (os.cpu_count() or 1))
        for function, (via, symbol) in self.config.attach.items():
            if via != "kprobe":
                continue
            entry, ret = _program_names(function, "kprobe")
            self._bpf.attach_kprobe(event=symbol.encode(), fn_name=entry.encode())
            self._bpf.attach_kretprobe(event=symbol.encode(), fn_name=ret.encode(), maxactive=self._maxactive)

    def add_targets(self, tgids: Iterable[int]) -> None:
        if not (self.config.filter_tgids or self.config.follow_children):
            return
        add_targets(self._bpf, tgids)

    def new_run(self) -> None:
        """Forget the last run's targets (the programs stay loaded)."""
        if self.config.filter_tgids or self.config.follow_children:
            clear_targets(self._bpf)

    def poll(self, timeout_ms: int = 100) -> None:
        self._bpf.ring_buffer_poll(timeout_ms)
        self._bpf.ring_buffer_consume()

    def counters(self) -> dict[str, int]:
        """Sum of the per-CPU counters, by name."""
        return read_counters(self._bpf, EXACT_COUNTER_NAMES)

    def missed(self) -> dict[str, object]:
        """The kernel's own miss counters for these programs, each with how it was read.

        recursion_misses: bpf_prog_info of each program (a program not run
        because one of its own was already running on that CPU, v5.12+);
        kprobe nmissed: kprobe_profile where bcc's events are listed there.
        """
        out: dict[str, object] = {"recursion_misses": None, "kprobe_nmissed": None, "how": []}
        fds = {name.decode() if isinstance(name, bytes) else name: fn.fd for name, fn in self._bpf.funcs.items()}
        misses, why = prog_recursion_misses(fds)
        out["recursion_misses"] = misses
        out["how"].append(why)
        if any(via == "kprobe" for via, _ in self.config.attach.values()):
            nmissed, why = kprobe_nmissed(os.getpid())
            out["kprobe_nmissed"] = nmissed
            out["how"].append(why)
            out["kretprobe_maxactive"] = self._maxactive
        return out

    def close(self) -> None:
        if self._bpf is not None:
            self._bpf.cleanup()
            self._bpf = None

    def __enter__(self) -> "ExactProbe":
        return self.load()

    def __exit__(self, *exc) -> None:
        self.close()

    def _on_event(self, ctx, data, size) -> None:
        if self.on_event:
            self.on_event(ctypes.string_at(data, ctypes.sizeof(ExactEvent)))


# bpf(2) command and the kernel's bpf_prog_info member read, at the offset the running kernel's BTF gives.
_BPF_OBJ_GET_INFO_BY_FD = 15
_SYS_BPF = {"x86_64": 321, "aarch64": 280}


class _InfoAttr(ctypes.Structure):
    _fields_ = [("bpf_fd", ctypes.c_uint32), ("info_len", ctypes.c_uint32), ("info", ctypes.c_uint64)]


def prog_recursion_misses(fds: dict[str, int]) -> tuple[dict[str, int] | None, str]:
    """bpf_prog_info.recursion_misses per program (by name), or None and why not."""
    from tracer.host import btf

    machine = os.uname().machine
    if machine not in _SYS_BPF:
        return None, f"recursion_misses: bpf(2) number unknown on {machine}"
    try:
        offset = btf.member_offset("bpf_prog_info", "recursion_misses")
    except TracerError as err:
        return None, f"recursion_misses: not in this kernel's bpf_prog_info ({err})"
    libc = ctypes.CDLL(None, use_errno=True)
    size = offset + 8
    out = {}
    for name, fd in fds.items():
        buf = ctypes.create_string_buffer(max(size, 256))
        attr = _InfoAttr(fd, len(buf), ctypes.addressof(buf))
        if libc.syscall(_SYS_BPF[machine], _BPF_OBJ_GET_INFO_BY_FD, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            code = ctypes.get_errno()
            return None, f"recursion_misses: BPF_OBJ_GET_INFO_BY_FD failed ({errno.errorcode.get(code, code)})"
        if attr.info_len < size:
            return None, "recursion_misses: the kernel's bpf_prog_info is too short"
        out[name] = int.from_bytes(buf.raw[offset:size], "little")
    return out, "recursion_misses: bpf_prog_info of each program (BPF_OBJ_GET_INFO_BY_FD)"


def kprobe_nmissed(pid: int, tracefs: str | None = None) -> tuple[int | None, str]:
    """Sum of nmissed over this process's bcc kprobe events in kprobe_profile, or None and why.

    bcc names the kprobe events it creates through tracefs after the pid; kprobes
    it creates through perf_event_open (the usual path) are not listed there, and
    kernels before v6.7 have no other interface for their nmissed.
    """
    from tracer.host import kernel

    tracefs = tracefs or kernel.find_tracefs()
    if tracefs is None:
        return None, "kprobe nmissed: tracefs not mounted"
    try:
        text = Path(tracefs, "kprobe_profile").read_text()
    except OSError as err:
        return None, f"kprobe nmissed: kprobe_profile unreadable ({err.strerror})"
    ours = [line.split() for line in text.splitlines() if f"bcc_{pid}" in line]
    if not ours:
        return None, (
            "kprobe nmissed: bcc attached through perf_event_open, whose kprobes kprobe_profile does not list;"
            " entries without an exit (exact.c) count the kretprobes that missed"
        )
    return sum(int(fields[-1]) for fields in ours if fields[-1].isdigit()), "kprobe nmissed: kprobe_profile"

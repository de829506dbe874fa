"""Gather HostFacts: the one place that asks the running kernel what it allows.

survey_host() reads /proc and /sys, may build the header view, mounts
securityfs as root when it is not mounted (so lockdown is known, as record
mounts tracefs), and with try_load=True loads tiny BPF programs to hear the
kernel's own answer. Every "no" carries its reason; a fact that could not be
established stays unknown (None, "unknown"), never guessed.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import replace

from analysis.errors import TracerError
from tracer.host import btf as btf_mod
from tracer.host import kernel
from tracer.host.attach_points import BTF_OFFSETS, TRACEPOINTS
from tracer.host.attach import Attempt, try_fentry, try_kprobe, try_tp_btf
from tracer.host.attach import errno_name as _errno_name
from tracer.host.facts import (
    CONFIG_OPTIONS,
    MT_DUP_SINCE,
    BccFacts,
    BtfFacts,
    ConfigFacts,
    HeadersFacts,
    HostFacts,
    KernelFacts,
    LoadCheck,
    PerfFacts,
    ProbeCheck,
    SymbolFacts,
    TracepointFacts,
)
from tracer.host.headers import Headers, resolve_headers
from tracer.host.headers import apply as apply_headers
from tracer.host.kallsyms import symbol_names

__all__ = ["TARGET_SYMBOLS", "TRACEPOINT_NAMES", "survey_host"]

# The functions fork() goes through that we would like to probe directly.
# source: where the kernel defines it; absent: why it can be missing (None: decided by version).
TARGET_SYMBOLS: dict[str, dict[str, str | None]] = {
    "dup_mmap": {"source": "kernel/fork.c (mm/mmap.c from v6.16)", "absent": "inlined (no symbol on this kernel)"},
    "__mt_dup": {"source": "lib/maple_tree.c", "absent": None},
    "mas_store": {"source": "lib/maple_tree.c", "absent": "inlined (no symbol on this kernel)"},
    "undo_dup_mmap": {"source": "mm/mmap.c (proposed patch)", "absent": "absent (undo_dup_mmap never landed upstream)"},
    # A neighbour: dup_mmap's first call of it, after the child's lock, ends the tree copy.
    "vm_area_dup": {"source": "kernel/fork.c", "absent": "inlined (no symbol on this kernel)"},
}

# The tracepoints the bracket attaches to, as "system:event".
TRACEPOINT_NAMES = tuple(f"{system}:{event}" for system, event in TRACEPOINTS)
# The tracepoint whose program runs per VMA: BTF-typed (tp_btf) where the kernel allows.
TYPED_TRACEPOINT = "maple_tree:ma_write"

# Helpers whose symbol proves a facility is built: kprobes, BPF trampolines (fentry).
_HELPERS = ("register_kprobe", "bpf_trampoline_link_prog")


@contextlib.contextmanager
def _captured_output() -> Iterator[list[str]]:
    """Collect what bcc's C++ (clang, libbpf) writes on fds 1 and 2, instead of showing it.

    Keeps `doctor --json` one clean document. The lines are in the yielded
    list once the block ends.
    """
    lines: list[str] = []
    sys.stdout.flush()
    sys.stderr.flush()
    saved = {fd: os.dup(fd) for fd in (1, 2)}
    with tempfile.TemporaryFile(mode="w+b") as sink:
        for fd in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield lines
        finally:
            for fd, copy in saved.items():
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _try_bpf(text: str) -> Attempt:
    """Compile, load and attach `text` with bcc (autoattach), then detach at once."""
    from bcc import BPF

    ctypes.set_errno(0)
    stage = code = None
    with _captured_output() as log:
        try:
            bpf = BPF(text=text.encode())
        except Exception as err:  # bcc raises bare Exception for every failure
            number = ctypes.get_errno()
            message = str(err)
            stage = "compile" if message.startswith("Failed to compile") else (
                "attach" if "attach" in message else "load"
            )
            code = _errno_name(number) if number and stage != "compile" else None
        else:
            bpf.cleanup()
    # Keep the one line worth showing: clang's first error, else libbpf's last word.
    errors = [line for line in log if "error" in line]
    line = (errors or log or [None])[0 if errors else -1]
    return Attempt(stage is None, stage, code, line)


@functools.lru_cache(maxsize=4)
def _raw_tracepoint_check(headers_path: str | None) -> Attempt:
    """One empty raw tracepoint program, once per process and headers (doctor then record, in one process)."""
    return _try_bpf("RAW_TRACEPOINT_PROBE(sched_process_fork) { return 0; }")


def _read_filter_functions(tracefs: str | None) -> tuple[set[str] | None, str]:
    """ftrace's available_filter_functions as names, or None and why it is unreadable."""
    if tracefs is None:
        return None, "tracefs not mounted or not readable"
    try:
        with open(os.path.join(tracefs, "available_filter_functions")) as f:
            return {line.split()[0] for line in f if line.strip()}, "readable"
    except OSError as err:
        return None, f"available_filter_functions: {_errno_name(err.errno) if err.errno else err}"


def _probe_lockdown(root: bool) -> str:
    """The lockdown mode, mounting securityfs first as root if needed; "unknown" if that fails."""
    try:
        return kernel.lockdown_mode(mount=root)
    except TracerError:
        return "unknown"


def _probe_bcc() -> BccFacts:
    try:
        import bcc
    except ImportError as err:
        return BccFacts(importable=False, error=f"cannot import bcc ({err}); install python3-bpfcc")
    return BccFacts(importable=True, version=getattr(bcc, "__version__", None))


def _probe_headers() -> tuple[HeadersFacts, Headers | None]:
    """Resolve headers (building the merged view if needed: a few ms of symlinks)."""
    try:
        headers = resolve_headers()
    except TracerError as err:
        return HeadersFacts(ok=False, description=str(err)), None
    return HeadersFacts(ok=True, path=headers.path, description=headers.description, env=dict(headers.env)), headers


def _probe_btf() -> BtfFacts:
    """BTF presence and every offset the bracket reads (tracer.host.attach_points.BTF_OFFSETS)."""
    if not kernel.btf_present():
        return BtfFacts(False, kernel.VMLINUX_BTF, {}, "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF unset)")
    offsets: dict[str, int] = {}
    try:
        blob = btf_mod.load_btf()
        for struct_name, member in BTF_OFFSETS:
            offsets[f"{struct_name}.{member}"] = blob.member_offset(struct_name, member)
    except TracerError as err:
        return BtfFacts(True, kernel.VMLINUX_BTF, offsets, str(err))
    return BtfFacts(True, kernel.VMLINUX_BTF, offsets, None)


def _btf_has(name: str, kind: str) -> bool | None:
    """has_type/has_func on the kernel's BTF; None when the BTF cannot be read."""
    try:
        return btf_mod.has_func(name) if kind == "func" else btf_mod.has_type(name, kind)
    except TracerError:
        return None


def _typed_tracepoint_check() -> LoadCheck:
    """Load and attach a two-instruction tp_btf program on ma_write, then detach it."""
    attempt = try_tp_btf(TYPED_TRACEPOINT.split(":")[1])
    return LoadCheck(ok=attempt.ok, errno=attempt.errno, log=None if attempt.ok else attempt.log or attempt.stage)


def _probe_tracepoints(tracefs: str | None, btf_present: bool) -> dict[str, TracepointFacts]:
    """Per tracepoint: in tracefs events/? has a btf_trace_<name> typedef (raw tracepoint)?"""
    found = {}
    for tp in TRACEPOINT_NAMES:
        system, name = tp.split(":")
        in_tracefs = os.path.isdir(os.path.join(tracefs, "events", system, name)) if tracefs else None
        in_btf = _btf_has(f"btf_trace_{name}", "typedef") if btf_present else None
        exists = in_tracefs if in_tracefs is not None else in_btf
        found[tp] = TracepointFacts(exists=exists, tracefs=in_tracefs, btf=in_btf)
    return found


def _absent_reason(symbol: str, version: tuple[int, int] | None) -> str:
    reason = TARGET_SYMBOLS[symbol]["absent"]
    if reason:
        return reason
    if version is not None and version < MT_DUP_SINCE:
        return "absent (kernel predates __mt_dup, v6.8)"
    return "inlined (no symbol on this kernel)"


def _ftrace_status(symbol: str, filter_functions: set[str] | None, why_unknown: str) -> str:
    if filter_functions is None:
        return f"unknown ({why_unknown})"
    if symbol in filter_functions:
        return "traceable"
    if TARGET_SYMBOLS[symbol]["source"] == "lib/maple_tree.c":
        return "notrace (lib/ built without ftrace hooks)"
    return "notrace (not in available_filter_functions)"


def _refusal(how: str, tried: Attempt, lockdown: str) -> str:
    """One line for a failed test load: which stage, the errno, lockdown as context."""
    if tried.stage == "compile":
        return f"{how} test program did not compile: {tried.log or 'see bcc output'}"
    code = tried.errno or "no errno"
    if tried.stage == "attach":
        return f"{how} program loaded but attach failed ({code})"
    context = f"; lockdown={lockdown}" if lockdown not in ("none", "unknown") else ""
    return f"{how} refused by the kernel ({code}{context})"


def _load_check(how: str, attempt: Attempt, lockdown: str) -> ProbeCheck:
    if attempt.ok:
        return ProbeCheck(True, "loaded and attached", None)
    return ProbeCheck(False, _refusal(how, attempt, lockdown), attempt.errno)


class _SymbolProber:
    """Static reasons first, then (when loading is allowed) the kernel's answer."""

    def __init__(
        self, facts: HostFacts, trampoline: bool, kprobes_built: bool | None, can_load: bool, skipped: str | None = None
    ):
        self.facts, self.trampoline, self.kprobes_built, self.can_load = facts, trampoline, kprobes_built, can_load
        self.skipped = skipped  # why no load is tried, when can_load is False

    def fentry(self, symbol: str, in_btf: bool | None, ftrace: str) -> ProbeCheck:
        if not self.facts.btf.present:
            return ProbeCheck(False, "no BTF (fentry needs CONFIG_DEBUG_INFO_BTF)")
        if not self.trampoline:
            return ProbeCheck(False, "no BPF trampoline (bpf_trampoline_link_prog absent)")
        if in_btf is False:
            return ProbeCheck(False, "no BTF func record (fentry needs one)")
        if ftrace.startswith("notrace"):
            return ProbeCheck(False, ftrace)
        if not self.can_load:
            return ProbeCheck(None, f"not tried ({self.skipped})")
        ids = btf_mod.load_btf().find(symbol, "func")
        if not ids:
            return ProbeCheck(False, "no BTF func record (fentry needs one)")
        return _load_check("fentry", try_fentry(ids[0]), self.facts.lockdown)

    def kprobe(self, symbol: str, ftrace: str) -> ProbeCheck:
        config = self.facts.config
        if self.kprobes_built is False:
            why = "CONFIG_KPROBES unset" if config.source else "no register_kprobe in kallsyms"
            return ProbeCheck(False, f"kprobes not built ({why})")
        if self.facts.lockdown == "confidentiality":
            return ProbeCheck(False, "kprobes blocked by lockdown=confidentiality")
        if ftrace.startswith("notrace") and config.get("CONFIG_KPROBE_EVENTS_ON_NOTRACE") != "y":
            return ProbeCheck(False, f"{ftrace}; CONFIG_KPROBE_EVENTS_ON_NOTRACE unset")
        if not self.can_load:
            return ProbeCheck(None, f"not tried ({self.skipped})")
        return _load_check("kprobe", try_kprobe(symbol), self.facts.lockdown)


def survey_host(try_load: bool = True, kinds: tuple[str, ...] | None = None) -> HostFacts:
    """Everything doctor reports and record's method choice depends on.

    With try_load (and root, bcc and headers), fentry and kprobe are checked by
    loading an empty program on each symbol and detaching it at once. kinds
    (record's choice; None: doctor's, every kind on every symbol) are the
    probe kinds record could use, in order of preference: per symbol, the
    first that attaches ends the attempts, and where none attaches to
    dup_mmap the other symbols are not tried (exact probes time them only
    inside dup_mmap). Each load costs seconds under emulation.
    """
    uts = kernel.uname()
    config = kernel.kernel_config(uts["release"])
    tracefs = kernel.find_tracefs()
    paranoid = kernel.perf_event_paranoid()
    root = kernel.is_root()
    lockdown = _probe_lockdown(root)
    headers_found, headers = _probe_headers()
    btf = _probe_btf()
    facts = HostFacts(
        kernel=KernelFacts(**uts),
        root=root,
        lockdown=lockdown,
        config=ConfigFacts(
            source=config.source if config else None,
            options={name: (config.get(name) if config else None) for name in CONFIG_OPTIONS},
        ),
        tracefs=tracefs,
        btf=btf,
        bcc=_probe_bcc(),
        headers=headers_found,
        perf_event=PerfFacts(
            paranoid=paranoid,
            # Kernel stacks need CAP_PERFMON/CAP_SYS_ADMIN or paranoid <= 1; lockdown
            # confidentiality refuses kernel reads through perf whatever the caps.
            sampling=lockdown != "confidentiality" and (root or (paranoid is not None and paranoid <= 1)),
        ),
        tracepoints=_probe_tracepoints(tracefs, bool(btf.present)),
    )

    skipped = [
        why
        for why, blocked in (
            ("try_load=False", not try_load),
            ("not root", not root),
            ("bcc not importable", not facts.bcc.importable),
            ("no kernel headers", not facts.headers.ok),
        )
        if blocked
    ]
    raw_load = None
    if not skipped:
        # One empty raw tracepoint program: proves the headers compile and the backend loads.
        if headers is not None:
            apply_headers(headers)
        check = _raw_tracepoint_check(headers.path if headers is not None else None)
        if check.stage == "compile":
            description = f"{facts.headers.description}; a test program does not compile: {check.log}"
            facts = replace(facts, headers=replace(facts.headers, ok=False, compiles=False, description=description))
            skipped.append("headers do not compile")
        else:
            facts = replace(facts, headers=replace(facts.headers, compiles=True))
            raw_load = LoadCheck(ok=check.ok, errno=check.errno, log=check.log)
    facts = replace(facts, raw_tracepoint_load=raw_load, load_skipped=", ".join(skipped) or None)
    # fentry, kprobe and tp_btf checks load a program through bpf(2) directly: root is all they need.
    symbol_skipped = ", ".join(why for why, blocked in (("try_load=False", not try_load), ("not root", not root)) if blocked)
    if not symbol_skipped and facts.tracepoint(TYPED_TRACEPOINT).btf:
        facts = replace(facts, typed_tracepoint_load=_typed_tracepoint_check())
    return replace(facts, symbols=_probe_symbols(facts, config, skipped=symbol_skipped or None, kinds=kinds))


def _probe_symbols(
    facts: HostFacts, config: kernel.KernelConfig | None, skipped: str | None, kinds: tuple[str, ...] | None = None
) -> dict[str, SymbolFacts]:
    found = symbol_names([*TARGET_SYMBOLS, *_HELPERS])
    kprobes_built = config.enabled("CONFIG_KPROBES") if config is not None else bool(found["register_kprobe"])
    prober = _SymbolProber(facts, bool(found["bpf_trampoline_link_prog"]), kprobes_built, skipped is None, skipped)
    filter_functions, why_unknown = _read_filter_functions(facts.tracefs)
    symbols: dict[str, SymbolFacts] = {}
    for symbol in TARGET_SYMBOLS:  # dup_mmap first
        if kinds is not None and symbol != "dup_mmap" and prober.can_load:
            dup = symbols["dup_mmap"]
            if not (dup.fentry.available or dup.kprobe.available):
                prober = _SymbolProber(
                    facts, prober.trampoline, kprobes_built, can_load=False, skipped="dup_mmap cannot be probed"
                )
        names = found[symbol]
        if not names:
            no = ProbeCheck(False, _absent_reason(symbol, facts.kernel.version_tuple))
            symbols[symbol] = SymbolFacts(kallsyms=False, names=(), btf_func=None, ftrace="absent", fentry=no, kprobe=no)
            continue
        in_btf = _btf_has(symbol, "func") if facts.btf.present else None
        ftrace = _ftrace_status(symbol, filter_functions, why_unknown)
        checks = {}
        for how in ("fentry", "kprobe") if kinds is None else kinds:
            if any(check.available for check in checks.values()):
                checks[how] = ProbeCheck(None, f"not tried ({next(iter(checks))} attaches)")
            else:
                checks[how] = prober.fentry(symbol, in_btf, ftrace) if how == "fentry" else prober.kprobe(symbol, ftrace)
        unused = ProbeCheck(None, "not tried (not a kind record may use here)")
        symbols[symbol] = SymbolFacts(
            kallsyms=True,
            names=tuple(names),
            btf_func=in_btf,
            ftrace=ftrace,
            fentry=checks.get("fentry", unused),
            kprobe=checks.get("kprobe", unused),
        )
    return symbols

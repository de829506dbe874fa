"""`tracer doctor`: what this kernel lets us probe, and how `record` will measure each phase.

probe_capabilities() gathers facts (it reads /proc and /sys, may build the
header view, and with try_load=True loads tiny BPF programs to hear the
kernel's own answer). choose_methods() and render_doctor() are pure functions
of that JSON-able dict, so they are tested on synthetic hosts.

Every "no" carries its reason; a fact we could not establish is reported as
unknown (None, "?"), never guessed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import sys
import tempfile
from collections.abc import Iterator
from typing import Any

from analysis.errors import TracerError
from tracer.host import btf as btf_mod
from tracer.host import kernel
from tracer.host.headers import Headers, resolve_headers
from tracer.host.headers import apply as apply_headers
from tracer.host.kallsyms import symbol_names

__all__ = [
    "BTF_OFFSETS",
    "PHASES",
    "TARGET_SYMBOLS",
    "TRACEPOINTS",
    "choose_methods",
    "probe_capabilities",
    "render_doctor",
]

# The functions fork() goes through that we would like to probe directly.
# source: where the kernel defines it; absent: why it can be missing (None: decided by version).
TARGET_SYMBOLS: dict[str, dict[str, str | None]] = {
    "dup_mmap": {"source": "kernel/fork.c (mm/mmap.c from v6.16)", "absent": "inlined (no symbol on this kernel)"},
    "__mt_dup": {"source": "lib/maple_tree.c", "absent": None},
    "mas_store": {"source": "lib/maple_tree.c", "absent": "inlined (no symbol on this kernel)"},
    "undo_dup_mmap": {"source": "mm/mmap.c (proposed patch)", "absent": "absent (undo_dup_mmap never landed upstream)"},
}

# The bracket of dup_mmap (see docs/maple-tree-facts.md), and fork's own events.
TRACEPOINTS = [
    "mmap_lock:mmap_lock_acquire_returned",
    "mmap_lock:mmap_lock_released",
    "mmap_lock:mmap_lock_start_locking",
    "maple_tree:ma_write",
    "sched:sched_process_fork",
    "task:task_newtask",
]

# Fields the raw tracepoint probes read through the tracepoints' pointers.
BTF_OFFSETS = [("ma_state", "node"), ("mm_struct", "map_count")]

PHASES = ["dup_mmap", "mt_dup", "vma_loop", "tail", "undo_dup_mmap"]

_LOCK_TPS = ["mmap_lock:mmap_lock_acquire_returned", "mmap_lock:mmap_lock_released"]
_STORE_TP = "maple_tree:ma_write"
_MT_DUP_SINCE = (6, 8)


def _kernel_version(release: str) -> tuple[int, int] | None:
    """'6.18.44-fc-v595' -> (6, 18)."""
    m = re.match(r"(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else None


# -- probing (side effects) ------------------------------------------------------


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


def _errno_name(number: int) -> str:
    return errno.errorcode.get(number, f"errno {number}")


def _try_bpf(text: str) -> dict[str, Any]:
    """Compile, load and attach `text` with bcc (autoattach), then detach at once.

    Returns {ok, stage, errno, log}: stage is where it failed (compile, load or
    attach); errno is the kernel's answer as bcc's libbpf saw it.
    """
    from bcc import BPF

    ctypes.set_errno(0)
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
            failed = {"ok": False, "stage": stage, "errno": code}
        else:
            bpf.cleanup()
            failed = None
    result = failed or {"ok": True, "stage": None, "errno": None}
    # Keep the one line worth showing: clang's first error, else libbpf's last word.
    errors = [line for line in log if "error" in line]
    result["log"] = (errors or log or [None])[0 if errors else -1]
    return result


def _read_filter_functions(tracefs: str | None) -> tuple[set[str] | None, str]:
    """ftrace's available_filter_functions as names, or None and why it is unreadable."""
    if tracefs is None:
        return None, "tracefs not mounted or not readable"
    try:
        with open(os.path.join(tracefs, "available_filter_functions")) as f:
            return {line.split()[0] for line in f if line.strip()}, "readable"
    except OSError as err:
        return None, f"available_filter_functions: {_errno_name(err.errno) if err.errno else err}"


def _probe_bcc() -> dict[str, Any]:
    try:
        import bcc
    except ImportError as err:
        return {"importable": False, "version": None, "error": f"cannot import bcc ({err}); install python3-bpfcc"}
    return {"importable": True, "version": getattr(bcc, "__version__", None), "error": None}


def _probe_headers() -> tuple[dict[str, Any], Headers | None]:
    """Resolve headers (building the merged view if needed: a few ms of symlinks)."""
    try:
        headers = resolve_headers()
    except TracerError as err:
        return {"ok": False, "path": None, "description": str(err), "env": {}}, None
    return {"ok": True, "path": headers.path, "description": headers.description, "env": headers.env}, headers


def _probe_btf() -> dict[str, Any]:
    found = {"present": kernel.btf_present(), "path": kernel.VMLINUX_BTF, "offsets": {}, "error": None}
    if not found["present"]:
        found["error"] = "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF unset)"
        return found
    try:
        blob = btf_mod.load_btf()
        for struct_name, member in BTF_OFFSETS:
            found["offsets"][f"{struct_name}.{member}"] = blob.member_offset(struct_name, member)
    except TracerError as err:
        found["error"] = str(err)
    return found


def _btf_has(name: str, kind: str) -> bool | None:
    """has_type/has_func on the kernel's BTF; None when the BTF cannot be read."""
    try:
        return btf_mod.has_func(name) if kind == "func" else btf_mod.has_type(name, kind)
    except TracerError:
        return None


def _probe_tracepoints(tracefs: str | None, btf_present: bool) -> dict[str, dict[str, Any]]:
    """Per tracepoint: in tracefs events/? has a btf_trace_<name> typedef (raw tracepoint)?"""
    found = {}
    for tp in TRACEPOINTS:
        system, name = tp.split(":")
        in_tracefs = os.path.isdir(os.path.join(tracefs, "events", system, name)) if tracefs else None
        in_btf = _btf_has(f"btf_trace_{name}", "typedef") if btf_present else None
        exists = in_tracefs if in_tracefs is not None else in_btf
        found[tp] = {"exists": exists, "tracefs": in_tracefs, "btf": in_btf}
    return found


def _absent_reason(symbol: str, version: tuple[int, int] | None) -> str:
    reason = TARGET_SYMBOLS[symbol]["absent"]
    if reason:
        return reason
    if version is not None and version < _MT_DUP_SINCE:
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


def _fentry(
    symbol: str, caps: dict[str, Any], in_btf: bool | None, ftrace: str, trampoline: bool, can_load: bool
) -> dict[str, Any]:
    """Can fentry attach to `symbol`? Static reasons first, then the kernel's answer."""
    if not caps["btf"]["present"]:
        return {"available": False, "reason": "no BTF (fentry needs CONFIG_DEBUG_INFO_BTF)", "errno": None}
    if not trampoline:
        return {"available": False, "reason": "no BPF trampoline (bpf_trampoline_link_prog absent)", "errno": None}
    if in_btf is False:
        return {"available": False, "reason": "no BTF func record (fentry needs one)", "errno": None}
    if ftrace.startswith("notrace"):
        return {"available": False, "reason": ftrace, "errno": None}
    if not can_load:
        return {"available": None, "reason": f"not tried ({caps['load_skipped']})", "errno": None}
    tried = _try_bpf(f"KFUNC_PROBE({symbol}) {{ return 0; }}")
    if tried["ok"]:
        return {"available": True, "reason": "loaded and attached", "errno": None}
    return {"available": False, "reason": _refusal("fentry", tried, caps["lockdown"]), "errno": tried["errno"]}


def _kprobe(
    symbol: str, caps: dict[str, Any], ftrace: str, kprobes_built: bool | None, can_load: bool
) -> dict[str, Any]:
    """Can a kprobe attach to `symbol`? Static reasons first, then the kernel's answer."""
    config = caps["config"]["options"]
    if kprobes_built is False:
        why = "CONFIG_KPROBES unset" if caps["config"]["source"] else "no register_kprobe in kallsyms"
        return {"available": False, "reason": f"kprobes not built ({why})", "errno": None}
    if caps["lockdown"] == "confidentiality":
        return {"available": False, "reason": "kprobes blocked by lockdown=confidentiality", "errno": None}
    if ftrace.startswith("notrace") and config.get("CONFIG_KPROBE_EVENTS_ON_NOTRACE") != "y":
        return {"available": False, "reason": f"{ftrace}; CONFIG_KPROBE_EVENTS_ON_NOTRACE unset", "errno": None}
    if not can_load:
        return {"available": None, "reason": f"not tried ({caps['load_skipped']})", "errno": None}
    tried = _try_bpf(f"int kprobe__{symbol}(void *ctx) {{ return 0; }}")
    if tried["ok"]:
        return {"available": True, "reason": "loaded and attached", "errno": None}
    return {"available": False, "reason": _refusal("kprobe", tried, caps["lockdown"]), "errno": tried["errno"]}


def _refusal(how: str, tried: dict[str, Any], lockdown: str) -> str:
    """One line for a failed test load: which stage, the errno, lockdown as context."""
    if tried["stage"] == "compile":
        return f"{how} test program did not compile: {tried['log'] or 'see bcc output'}"
    code = tried["errno"] or "no errno"
    if tried["stage"] == "attach":
        return f"{how} program loaded but attach failed ({code})"
    context = f"; lockdown={lockdown}" if lockdown not in ("none", "unknown") else ""
    return f"{how} refused by the kernel ({code}{context})"


def probe_capabilities(try_load: bool = True) -> dict[str, Any]:
    """Everything doctor reports and record's method choice depends on, JSON-able.

    With try_load (and root, bcc and headers), fentry and kprobe are checked by
    loading an empty program on each symbol and detaching it at once.
    """
    uts = kernel.uname()
    version = _kernel_version(uts["release"])
    config = kernel.kernel_config(uts["release"])
    tracefs = kernel.find_tracefs()
    paranoid = kernel.perf_event_paranoid()
    root = kernel.is_root()
    lockdown = kernel.lockdown_mode()

    headers_found, headers = _probe_headers()
    caps: dict[str, Any] = {
        "kernel": uts,
        "root": root,
        "lockdown": lockdown,
        "config": {
            "source": config.source if config else None,
            "options": {
                name: (config.get(name) if config else None)
                for name in (
                    "CONFIG_KPROBES",
                    "CONFIG_KPROBE_EVENTS_ON_NOTRACE",
                    "CONFIG_FUNCTION_TRACER",
                    "CONFIG_DEBUG_INFO_BTF",
                    "CONFIG_BPF_EVENTS",
                )
            },
        },
        "tracefs": tracefs,
        "btf": _probe_btf(),
        "bcc": _probe_bcc(),
        "headers": headers_found,
        "perf_event": {
            "paranoid": paranoid,
            # Kernel stacks need CAP_PERFMON/CAP_SYS_ADMIN or paranoid <= 1; lockdown
            # confidentiality refuses kernel reads through perf whatever the caps.
            "sampling": lockdown != "confidentiality" and (root or (paranoid is not None and paranoid <= 1)),
        },
    }
    caps["tracepoints"] = _probe_tracepoints(tracefs, caps["btf"]["present"])

    helpers = ["register_kprobe", "bpf_trampoline_link_prog"]
    found = symbol_names([*TARGET_SYMBOLS, *helpers])
    if config is not None:
        kprobes_built = config.enabled("CONFIG_KPROBES")
    else:
        kprobes_built = bool(found["register_kprobe"])
    trampoline = bool(found["bpf_trampoline_link_prog"])
    filter_functions, why_unknown = _read_filter_functions(tracefs)

    skipped = [
        why
        for why, blocked in (
            ("try_load=False", not try_load),
            ("not root", not root),
            ("bcc not importable", not caps["bcc"]["importable"]),
            ("no kernel headers", not caps["headers"]["ok"]),
        )
        if blocked
    ]
    caps["raw_tracepoint_load"] = None
    if not skipped:
        # One empty raw tracepoint program: proves the headers compile and the backend loads.
        if headers is not None:
            apply_headers(headers)
        check = _try_bpf("RAW_TRACEPOINT_PROBE(sched_process_fork) { return 0; }")
        caps["headers"]["compiles"] = check["stage"] != "compile"
        if check["stage"] == "compile":
            caps["headers"]["ok"] = False
            caps["headers"]["description"] += f"; a test program does not compile: {check['log']}"
            skipped.append("headers do not compile")
        else:
            caps["raw_tracepoint_load"] = {"ok": check["ok"], "errno": check["errno"], "log": check["log"]}
    caps["load_skipped"] = ", ".join(skipped) or None
    can_load = not skipped

    symbols: dict[str, Any] = {}
    for symbol in TARGET_SYMBOLS:
        names = found[symbol]
        if not names:
            absent = _absent_reason(symbol, version)
            no = {"available": False, "reason": absent, "errno": None}
            symbols[symbol] = {
                "kallsyms": False, "names": [], "btf_func": None, "ftrace": "absent", "fentry": no, "kprobe": dict(no),
            }
            continue
        in_btf = _btf_has(symbol, "func") if caps["btf"]["present"] else None
        ftrace = _ftrace_status(symbol, filter_functions, why_unknown)
        symbols[symbol] = {
            "kallsyms": True,
            "names": names,
            "btf_func": in_btf,
            "ftrace": ftrace,
            "fentry": _fentry(symbol, caps, in_btf, ftrace, trampoline, can_load),
            "kprobe": _kprobe(symbol, caps, ftrace, kprobes_built, can_load),
        }
    caps["symbols"] = symbols
    caps["methods"] = choose_methods(caps)
    return caps


# -- decisions (pure) -------------------------------------------------------------


def _tp_exists(caps: dict[str, Any], tp: str, via: str) -> bool:
    entry = caps.get("tracepoints", {}).get(tp, {})
    return bool(entry.get(via))


def choose_methods(caps: dict[str, Any]) -> dict[str, Any]:
    """The backend and, per phase, how `record` will obtain it on this host.

    Returns {"backend": "raw_tracepoint" | "tracepoint" | None, "backend_reason",
    "phases": {phase: method}, "notes": [...]}. Raw tracepoints cost half of
    classic ones per event but need BTF for the field offsets; classic ones need
    tracefs (record mounts it as root).
    """
    btf = caps.get("btf", {})
    btf_ok = bool(btf.get("present")) and not btf.get("error")
    needed = [*_LOCK_TPS, _STORE_TP]
    tracefs_ok = bool(caps.get("tracefs")) or bool(caps.get("root"))
    notes: list[str] = []

    raw_load = caps.get("raw_tracepoint_load") or {}
    if raw_load.get("ok") is False:
        notes.append(f"a raw tracepoint program did not load ({raw_load.get('errno') or raw_load.get('log')})")
    if btf_ok and raw_load.get("ok") is not False and all(_tp_exists(caps, tp, "btf") for tp in _LOCK_TPS):
        backend, via = "raw_tracepoint", "btf"
        backend_reason = "BTF gives the field offsets; raw tracepoints halve the per-event cost"
    elif tracefs_ok and all(
        # tracefs unmounted: BTF still proves the tracepoint exists, record mounts tracefs.
        _tp_exists(caps, tp, "tracefs") or (caps.get("tracefs") is None and _tp_exists(caps, tp, "btf"))
        for tp in _LOCK_TPS
    ):
        backend, via = "tracepoint", "tracefs"
        why = btf.get("error") or "no usable BTF for raw tracepoint field offsets"
        backend_reason = f"classic tracepoints: {why}"
    else:
        backend, via = None, None
        missing = [tp for tp in needed if not caps.get("tracepoints", {}).get(tp, {}).get("exists")]
        backend_reason = "no usable bracket: " + (
            f"missing tracepoints {', '.join(missing)}" if missing else "neither BTF nor tracefs is usable"
        )

    def has(tp: str) -> bool:
        entry = caps.get("tracepoints", {}).get(tp, {})
        return bool(entry.get("btf") if via == "btf" else entry.get("exists"))

    symbols = caps.get("symbols", {})
    version = _kernel_version(caps.get("kernel", {}).get("release", ""))
    phases: dict[str, str] = {}
    if backend is None:
        phases = {phase: "unavailable (no bracket tracepoints)" for phase in PHASES}
    else:
        phases["dup_mmap"] = "bracket (mmap_lock acquire/release)"
        no_store = "unavailable (no maple_tree:ma_write tracepoint)"
        store = has(_STORE_TP)
        if version is not None and version < _MT_DUP_SINCE and not symbols.get("__mt_dup", {}).get("kallsyms"):
            phases["mt_dup"] = "not applicable (kernel predates __mt_dup, v6.8: the VMA loop builds the tree)"
        else:
            corrected = "bracket-corrected (child lock -> first store, minus one VMA step)"
            phases["mt_dup"] = corrected if store else no_store
        phases["vma_loop"] = "bracket (first -> last mas_store)" if store else no_store
        phases["tail"] = "bracket (last mas_store -> parent mmap_lock release)" if store else no_store

    undo = symbols.get("undo_dup_mmap", {})
    if not undo.get("kallsyms"):
        phases["undo_dup_mmap"] = "unavailable (symbol absent)"
    else:
        phases["undo_dup_mmap"] = "unavailable (symbol present; this version has no probe for it)"

    dup = symbols.get("dup_mmap", {})
    direct = [how for how in ("fentry", "kprobe") if dup.get(how, {}).get("available")]
    if direct:
        notes.append(
            f"dup_mmap: {' and '.join(direct)} available; this version uses the tracepoint bracket on every kernel"
        )
    if backend and not caps.get("root"):
        notes.append("not root: record needs root to load BPF programs")
    if backend and not has("sched:sched_process_fork"):
        notes.append("no sched:sched_process_fork: child pids and fork failures will not be known")
    if not caps.get("perf_event", {}).get("sampling"):
        notes.append("perf sampling not allowed: no sampled kernel stacks inside the phases")
    return {"backend": backend, "backend_reason": backend_reason, "phases": phases, "notes": notes}


# -- rendering (pure) --------------------------------------------------------------


def _mark(value: bool | None) -> str:
    return {True: "✓", False: "✗"}.get(value, "?")


def render_doctor(caps: dict[str, Any]) -> str:
    """Aligned text: host facts, functions, tracepoints, then record's method per phase."""
    uts = caps.get("kernel", {})
    lines = [f"forktrace doctor: Linux {uts.get('release', '?')} {uts.get('machine', '')}".rstrip(), ""]

    def row(label: str, ok: bool | None, text: str) -> None:
        lines.append(f"  {_mark(ok)} {label:<16} {text}".rstrip())

    btf = caps.get("btf", {})
    offsets = ", ".join(f"{k} at {v}" for k, v in btf.get("offsets", {}).items())
    config = caps.get("config", {})
    bcc = caps.get("bcc", {})
    headers = caps.get("headers", {})
    perf = caps.get("perf_event", {})
    lockdown = caps.get("lockdown", "unknown")
    lines.append("Host")
    row("root", caps.get("root"), "yes" if caps.get("root") else "no: BPF loading needs root")
    row("lockdown", None if lockdown == "unknown" else lockdown != "confidentiality", lockdown)
    row("BTF", btf.get("present") and not btf.get("error"), btf.get("error") or f"{btf.get('path')} ({offsets})")
    row(
        "kernel config",
        config.get("source") is not None,
        config.get("source") or "unavailable (no /proc/config.gz or /boot/config-*)",
    )
    row(
        "tracefs",
        caps.get("tracefs") is not None,
        caps.get("tracefs") or "not mounted or not readable (record mounts it as root)",
    )
    row("bcc", bcc.get("importable"), f"bcc {bcc.get('version')}" if bcc.get("importable") else bcc.get("error") or "")
    description = headers.get("description") or ""
    row("kernel headers", headers.get("ok"), description.removeprefix("kernel headers: "))
    row(
        "perf sampling",
        perf.get("sampling"),
        f"perf_event_paranoid={perf.get('paranoid')}" + (", root" if caps.get("root") else ""),
    )

    lines += ["", "Functions"]
    for symbol, entry in caps.get("symbols", {}).items():
        names = entry.get("names") or []
        where = "kallsyms" if names in ([], [symbol]) else f"kallsyms as {', '.join(names)}"
        found = where if entry.get("kallsyms") else "not in kallsyms"
        lines.append(f"  {_mark(entry.get('kallsyms'))} {symbol:<16} {found}")
        if not entry.get("kallsyms"):
            lines.append(f"    {'':<16} {entry.get('fentry', {}).get('reason', '')}")
            continue
        for how in ("fentry", "kprobe"):
            probe = entry.get(how, {})
            lines.append(f"    {_mark(probe.get('available'))} {how:<14} {probe.get('reason', '')}")
        ftrace = entry.get("ftrace", "unknown")
        ftrace_ok = True if ftrace == "traceable" else False if ftrace.startswith("notrace") else None
        lines.append(f"    {_mark(ftrace_ok)} {'ftrace':<14} {ftrace}")

    lines += ["", "Tracepoints"]
    for tp, entry in caps.get("tracepoints", {}).items():
        seen = [via for via in ("tracefs", "btf") if entry.get(via)]
        text = f"({' and '.join(seen)})" if seen else "not found"
        lines.append(f"  {_mark(entry.get('exists'))} {tp:<38} {text}")

    methods = choose_methods(caps)
    lines += ["", f"record will use: {methods['backend'] or 'nothing'} ({methods['backend_reason']})"]
    for phase, method in methods["phases"].items():
        lines.append(f"  {phase:<16} {method}")
    for note in methods["notes"]:
        lines.append(f"  note: {note}")
    return "\n".join(lines)

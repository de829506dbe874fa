"""Can an fentry or kprobe program attach to a function? Ask the kernel, without a compiler.

doctor and record decide per symbol from a real load and attach, not from
config guesses. Compiling even an empty program with bcc costs about a second
of clang here and most of a minute under emulation, and says nothing the
kernel's answer does not: the verdict is the kernel's, at BPF_PROG_LOAD and
at attach. So the test program is two instructions (r0 = 0; exit), loaded
through bpf(2) and attached as libbpf would: fentry through
BPF_RAW_TRACEPOINT_OPEN with the function's BTF id, kprobe through the
kprobe PMU's perf_event_open and PERF_EVENT_IOC_SET_BPF. Everything is
closed again before returning, so nothing stays attached.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct
from dataclasses import dataclass

__all__ = ["Attempt", "errno_name", "try_fentry", "try_kprobe"]

_SYS_BPF = 321  # x86_64
_SYS_PERF_EVENT_OPEN = 298
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
_PROG_TYPE_KPROBE = 2
_PROG_TYPE_TRACING = 26
_TRACE_FENTRY = 24
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_FLAG_FD_CLOEXEC = 8
_KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"

# r0 = 0; exit
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")
_ATTR_SIZE = 128  # covers BPF_PROG_LOAD's fields up to attach_btf_id; the kernel wants the rest zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Attempt:
    """A test load's outcome: ok, else the stage that failed (compile, load, attach), the errno's name, one line of log."""

    ok: bool
    stage: str | None = None
    errno: str | None = None
    log: str | None = None


def errno_name(number: int) -> str:
    """EPERM for 1: the name a kernel developer reads in an error line."""
    return errno_mod.errorcode.get(number, f"errno {number}")


def _load(prog_type: int, attach_type: int = 0, attach_btf_id: int = 0) -> tuple[int, int]:
    """BPF_PROG_LOAD of the two-instruction program: (fd, 0) or (-1, errno)."""
    insns = ctypes.create_string_buffer(_RETURN_ZERO, len(_RETURN_ZERO))
    license = ctypes.create_string_buffer(b"GPL")
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, prog_type, len(_RETURN_ZERO) // 8, ctypes.addressof(insns), ctypes.addressof(license))
    struct.pack_into("<16s", attr, 48, b"forktrace_check")
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    fd = _libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, _ATTR_SIZE)
    return (fd, 0) if fd >= 0 else (-1, ctypes.get_errno())


def try_fentry(btf_func_id: int) -> Attempt:
    """Load an fentry program for the function with this vmlinux BTF id, attach it, detach it."""
    prog, err = _load(_PROG_TYPE_TRACING, _TRACE_FENTRY, btf_func_id)
    if prog < 0:
        return Attempt(False, "load", errno_name(err))
    try:
        attr = ctypes.create_string_buffer(16)
        struct.pack_into("<QI", attr, 0, 0, prog)  # name NULL: a tracing program's own target
        link = _libc.syscall(_SYS_BPF, _BPF_RAW_TRACEPOINT_OPEN, attr, 16)
        if link < 0:
            return Attempt(False, "attach", errno_name(ctypes.get_errno()))
        os.close(link)
        return Attempt(True)
    finally:
        os.close(prog)


def _kprobe_pmu_type() -> int | None:
    try:
        with open(os.path.join(_KPROBE_PMU, "type")) as f:
            return int(f.read())
    except (OSError, ValueError):
        return None


def try_kprobe(function: str) -> Attempt:
    """Load a kprobe program, attach it at `function` through the kprobe PMU, detach it."""
    pmu = _kprobe_pmu_type()
    if pmu is None:
        return Attempt(False, "attach", "ENOENT", f"no kprobe PMU ({_KPROBE_PMU})")
    prog, err = _load(_PROG_TYPE_KPROBE)
    if prog < 0:
        return Attempt(False, "load", errno_name(err))
    name = ctypes.create_string_buffer(function.encode())
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    # perf_event_attr: type, size, config (0: kprobe, not kretprobe), sample_period 1,
    # wakeup_events 1, config1 = the function's name (kprobe_func), config2 = offset 0.
    struct.pack_into("<IIQQ", attr, 0, pmu, _ATTR_SIZE, 0, 1)
    struct.pack_into("<I", attr, 48, 1)
    struct.pack_into("<QQ", attr, 56, ctypes.addressof(name), 0)
    try:
        event = _libc.syscall(_SYS_PERF_EVENT_OPEN, attr, -1, 0, -1, _PERF_FLAG_FD_CLOEXEC)
        if event < 0:
            return Attempt(False, "attach", errno_name(ctypes.get_errno()))
        try:
            if _libc.ioctl(event, _PERF_EVENT_IOC_SET_BPF, prog) < 0:
                return Attempt(False, "attach", errno_name(ctypes.get_errno()))
            return Attempt(True)
        finally:
            os.close(event)
    finally:
        os.close(prog)

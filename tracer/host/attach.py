"""Can an fentry, kprobe or tp_btf program attach? Ask the kernel, without a compiler.

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
import os
import struct
from dataclasses import dataclass

from analysis.errors import TracerError
from tracer.host.bpfsys import PROG_TYPE_KPROBE, PROG_TYPE_TRACING, TRACE_FENTRY, TRACE_RAW_TP, errno_name
from tracer.host.bpfsys import prog_load, raw_tracepoint_open
from tracer.host.btf import tracepoint_type_id

__all__ = ["Attempt", "errno_name", "try_fentry", "try_kprobe", "try_tp_btf"]

_SYS_PERF_EVENT_OPEN = 298
_PERF_EVENT_IOC_SET_BPF = 0x40042408
_PERF_FLAG_FD_CLOEXEC = 8
_KPROBE_PMU = "/sys/bus/event_source/devices/kprobe"
_ATTR_SIZE = 128  # perf_event_attr as passed: its fields up to config2 set, the rest zero

# r0 = 0; exit
_RETURN_ZERO = bytes.fromhex("b700000000000000" "9500000000000000")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class Attempt:
    """A test load's outcome: ok, else the stage that failed (compile, load, attach), the errno's name, one line of log."""

    ok: bool
    stage: str | None = None
    errno: str | None = None
    log: str | None = None


def _try_tracing(attach_type: int, btf_id: int) -> Attempt:
    """Load a tracing program for this vmlinux BTF id, attach it to its target, detach it."""
    try:
        prog = prog_load(PROG_TYPE_TRACING, _RETURN_ZERO, "forktrace_check", attach_type, btf_id)
    except OSError as err:
        return Attempt(False, "load", errno_name(err.errno))
    try:
        os.close(raw_tracepoint_open(prog))
        return Attempt(True)
    except OSError as err:
        return Attempt(False, "attach", errno_name(err.errno))
    finally:
        os.close(prog)


def try_fentry(btf_func_id: int) -> Attempt:
    """Load an fentry program for the function with this vmlinux BTF id, attach it, detach it."""
    return _try_tracing(TRACE_FENTRY, btf_func_id)


def try_tp_btf(event: str) -> Attempt:
    """The same for a BTF-typed tracepoint (tp_btf) on `event`, by its `btf_trace_<event>` typedef.

    No such typedef (or no BTF) is a refusal at stage "btf", its log saying why.
    """
    try:
        btf_id = tracepoint_type_id(event)
    except TracerError as err:
        return Attempt(False, "btf", None, str(err))
    return _try_tracing(TRACE_RAW_TP, btf_id)


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
    try:
        prog = prog_load(PROG_TYPE_KPROBE, _RETURN_ZERO, "forktrace_check")
    except OSError as err:
        return Attempt(False, "load", errno_name(err.errno))
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

"""The two bpf(2) commands forktrace issues itself: BPF_PROG_LOAD and BPF_RAW_TRACEPOINT_OPEN.

bcc does the rest, but it cannot load a program of a type it does not know
how to attach (a BTF-typed tracepoint, tp_btf) and it needs a compiler even
for a two-instruction check program. These wrappers take finished bytecode.
"""

from __future__ import annotations

import ctypes
import errno as errno_mod
import os
import struct

__all__ = ["PROG_TYPE_KPROBE", "PROG_TYPE_TRACING", "TRACE_FENTRY", "TRACE_RAW_TP", "LoadError", "errno_name",
           "prog_load", "raw_tracepoint_open"]

_SYS_BPF = 321  # x86_64
_BPF_PROG_LOAD = 5
_BPF_RAW_TRACEPOINT_OPEN = 17
PROG_TYPE_KPROBE = 2
PROG_TYPE_TRACING = 26
TRACE_RAW_TP = 23  # enum bpf_attach_type: BTF-typed tracepoint (tp_btf)
TRACE_FENTRY = 24
_ATTR_SIZE = 128  # covers BPF_PROG_LOAD's fields up to attach_btf_id; the kernel wants the rest zero

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def errno_name(number: int) -> str:
    """EPERM for 1: the name a kernel developer reads in an error line."""
    return errno_mod.errorcode.get(number, f"errno {number}")


class LoadError(OSError):
    """BPF_PROG_LOAD refused the program: errno, and the verifier's last line when a log was asked for."""

    def __init__(self, err: int, log: str = "") -> None:
        super().__init__(err, os.strerror(err))
        self.log = log

    def __str__(self) -> str:
        # The verifier ends with its statistics ("processed N insns ...", "verification time ..."):
        # the reason is the last line before them.
        lines = [line for line in self.log.strip().splitlines() if line.strip()]
        reasons = [line for line in lines if not line.startswith(("processed ", "verification time"))]
        last = reasons[-1] if reasons else ""
        return errno_name(self.errno) + (f": {last}" if last else "")


def prog_load(prog_type: int, insns: bytes, name: str, attach_type: int = 0, attach_btf_id: int = 0,
              log_size: int = 0) -> int:
    """Load bytecode; the program's fd. log_size > 0 keeps the verifier's log for the error."""
    code = ctypes.create_string_buffer(insns, len(insns))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(log_size) if log_size else None
    attr = ctypes.create_string_buffer(_ATTR_SIZE)
    struct.pack_into("<IIQQ", attr, 0, prog_type, len(insns) // 8, ctypes.addressof(code), ctypes.addressof(license))
    if log is not None:
        struct.pack_into("<IIQ", attr, 24, 1, log_size, ctypes.addressof(log))
    struct.pack_into("<16s", attr, 48, name.encode()[:15])
    struct.pack_into("<I", attr, 68, attach_type)
    struct.pack_into("<I", attr, 108, attach_btf_id)
    fd = _libc.syscall(_SYS_BPF, _BPF_PROG_LOAD, attr, _ATTR_SIZE)
    if fd < 0:
        err = ctypes.get_errno()
        raise LoadError(err, log.value.decode("utf-8", "replace") if log is not None else "")
    return fd


def raw_tracepoint_open(prog_fd: int, name: str | None = None) -> int:
    """Attach a raw tracepoint program to `name`, or a tracing program (fentry, tp_btf) to its own target; the link fd."""
    event = ctypes.create_string_buffer(name.encode()) if name else None
    attr = ctypes.create_string_buffer(16)
    struct.pack_into("<QI", attr, 0, ctypes.addressof(event) if event is not None else 0, prog_fd)
    fd = _libc.syscall(_SYS_BPF, _BPF_RAW_TRACEPOINT_OPEN, attr, 16)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd

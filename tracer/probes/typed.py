"""One bcc-compiled function loaded as a BTF-typed tracepoint program (tp_btf).

A tp_btf program sees the tracepoint's arguments with their kernel types, so
a struct member is read by a plain load where a raw tracepoint program must
call bpf_probe_read_kernel(). bcc compiles such a function like any other
but has no way to load it with the right type and target; this does it from
the bytecode bcc made (map references already resolved to bcc's map fds),
through bpf(2), and attaches it by the `btf_trace_<event>` BTF id.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from tracer.host import bpfsys
from tracer.host.btf import tracepoint_type_id

__all__ = ["TypedTracepoint"]


@dataclass
class TypedTracepoint:
    """A function of a loaded bcc program, loaded again as tp_btf on `event`; attach and detach at will."""

    bpf: object
    function: str
    event: str
    prog_fd: int = -1
    link_fd: int = -1

    def load(self) -> "TypedTracepoint":
        """Load (bpfsys.LoadError with the verifier's last line if the kernel refuses).

        As libbpf does, the verifier's log is asked for only on a second try
        after a refusal: logging slows verification, which under emulation
        is already slow.
        """
        code = self.bpf.dump_func(self.function.encode())
        target = tracepoint_type_id(self.event)
        args = (bpfsys.PROG_TYPE_TRACING, code, self.event, bpfsys.TRACE_RAW_TP, target)
        try:
            self.prog_fd = bpfsys.prog_load(*args)
        except bpfsys.LoadError:
            self.prog_fd = bpfsys.prog_load(*args, log_size=1 << 20)  # refused again, now with the reason
        return self

    def attach(self) -> None:
        if self.link_fd < 0:
            self.link_fd = bpfsys.raw_tracepoint_open(self.prog_fd)

    def detach(self) -> None:
        if self.link_fd >= 0:
            os.close(self.link_fd)
            self.link_fd = -1

    def close(self) -> None:
        self.detach()
        if self.prog_fd >= 0:
            os.close(self.prog_fd)
            self.prog_fd = -1

"""What the running kernel really allows, found by other means than tracer/host uses.

Tests of doctor and of tracer.host compare against these answers instead of
hard-coding one machine's facts, so they pass on any kernel (this host, Debian's
6.1 and 6.12 guests) and on a fresh boot where securityfs or tracefs are not
mounted yet. Nothing here changes the host: mounts happen in a private mount
namespace (unshare -m) that ends with the command.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

KALLSYMS = "/proc/kallsyms"


@lru_cache(maxsize=1)
def _kallsyms_text() -> str:
    return Path(KALLSYMS).read_text(errors="replace")


def in_kallsyms(function: str) -> bool:
    """A text symbol named `function`, or a compiler clone of it (function.isra.0, .cold, ...)."""
    pattern = rf"^\S+ [tTwW] {re.escape(function)}(\.[\w.]+)?(\s|$)"
    return re.search(pattern, _kallsyms_text(), re.MULTILINE) is not None


def tracepoint_in_kernel(event: str) -> bool:
    """Every tracepoint has an iterator function __traceiter_<event> (v5.10+)."""
    return in_kallsyms(f"__traceiter_{event}")


def _bracketed(text: str) -> str | None:
    found = re.search(r"\[(\w+)\]", text)
    return found[1] if found else None


def lockdown() -> str | None:
    """The lockdown mode, read with securityfs mounted in a throwaway namespace; None if not root.

    Without the lockdown file in a mounted securityfs, the lockdown LSM is off: "none".
    """
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return None
    script = (
        "grep -q ' /sys/kernel/security securityfs ' /proc/mounts"
        " || mount -t securityfs securityfs /sys/kernel/security || exit 3;"
        " cat /sys/kernel/security/lockdown 2>/dev/null || echo '[none]'"
    )
    out = subprocess.run(["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return _bracketed(out.stdout) or "unknown"


def config_files(release: str | None = None) -> list[str]:
    """The kernel config files that exist for the running kernel."""
    release = release or os.uname().release
    return [p for p in ("/proc/config.gz", f"/boot/config-{release}") if os.path.exists(p)]


def attach_results(how: str, functions: tuple[str, ...]) -> dict[str, bool]:
    """Per function: does the kernel let a BPF program of kind `how` (fentry, kprobe) attach?

    Real loads and attaches through bcc's explicit API (doctor loads through
    bpf(2) directly), detached at once. One compile for all functions: under
    emulation each costs most of a minute. Needs root, bcc and headers applied.
    """
    from bcc import BPF

    class Compiled(BPF):
        def _trace_autoload(self) -> None:  # attach one at a time below
            return None

    if how == "kprobe":
        bpf = Compiled(text=b"int on_call(void *ctx) { return 0; }")
    else:
        bpf = Compiled(text="\n".join(f"KFUNC_PROBE({f}) {{ return 0; }}" for f in functions).encode())
    found = {}
    try:
        for function in functions:
            try:
                if how == "kprobe":
                    bpf.attach_kprobe(event=function.encode(), fn_name=b"on_call")
                    bpf.detach_kprobe(event=function.encode())
                else:
                    bpf.attach_kfunc(fn_name=function.encode())
                    bpf.detach_kfunc(fn_name=function.encode())
            except Exception:  # bcc raises bare Exception for any refusal
                found[function] = False
            else:
                found[function] = True
    finally:
        bpf.cleanup()
    return found

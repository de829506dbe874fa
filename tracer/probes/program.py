"""What the loaders of bracket.c, cycle.c and exact.c share: the text bcc compiles and the -D flags every program takes.

Each program starts with common.bpf.h (the maps and helpers all three use),
put in front of its own text rather than #included: see that file for why.
"""

from __future__ import annotations

import ctypes
from pathlib import Path
from typing import Iterable

from analysis.errors import TracerError

__all__ = ["BCC_MISSING", "COMMON", "add_targets", "common_cflags", "one_line", "program_text", "read_counters"]

COMMON = Path(__file__).with_name("common.bpf.h")

BCC_MISSING = (
    "bcc is not importable: install python3-bpfcc (Debian) and run from a venv made "
    "with --system-site-packages (scripts/install.sh does both)"
)


def program_text(source: Path) -> bytes:
    """common.bpf.h, then the program; a #line keeps bcc's error messages on the program's own lines."""
    return (COMMON.read_text() + f'#line 1 "{source.name}"\n' + source.read_text()).encode()


def common_cflags(source: Path, ringbuf_pages: int, counter_names: tuple[str, ...]) -> list[str]:
    """-I for the program's header, its ring buffer size, and how many counters common.bpf.h keeps."""
    if ringbuf_pages <= 0 or ringbuf_pages & (ringbuf_pages - 1):
        raise TracerError(f"ring buffer pages must be a power of two, not {ringbuf_pages}")
    return [f"-I{source.parent}", f"-DRINGBUF_PAGES={ringbuf_pages}", f"-DNR_PROBE_COUNTERS={len(counter_names)}"]


def add_targets(bpf, tgids: Iterable[int]) -> None:
    """Put processes in common.bpf.h's `targets` map."""
    table = bpf[b"targets"]
    for tgid in tgids:
        table[ctypes.c_uint32(tgid)] = ctypes.c_uint8(1)


def clear_targets(bpf) -> None:
    """Empty the `targets` map: the next run's processes only (record --runs)."""
    bpf[b"targets"].clear()


def read_counters(bpf, counter_names: tuple[str, ...]) -> dict[str, int]:
    """common.bpf.h's per-CPU `counters`, summed over CPUs, by name."""
    table = bpf[b"counters"]
    return {name: int(sum(table[ctypes.c_int(i)])) for i, name in enumerate(counter_names)}


def one_line(err: BaseException) -> str:
    """bcc's multi-line compiler output as one line of at most 300 characters."""
    text = " ".join(str(err).split())
    return text[:300] + ("..." if len(text) > 300 else "")

"""VMA layouts as the kernel exposes them in /proc/PID/maps.

A layout is the input of the replay model: each VMA becomes one maple tree entry
over [start, end - 1]. Parsing is pure; reading /proc is left to the caller.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Vma", "parse_maps", "format_maps"]


@dataclass(frozen=True, slots=True)
class Vma:
    """One line of /proc/PID/maps (vm_start inclusive, vm_end exclusive)."""

    start: int
    end: int
    perms: str = "---p"
    offset: int = 0
    dev: str = "00:00"
    inode: int = 0
    path: str = ""

    @property
    def last(self) -> int:
        """The maple tree's inclusive upper index for this entry (vm_end - 1)."""
        return self.end - 1


def parse_maps(text: str) -> list[Vma]:
    """Parse /proc/PID/maps text into VMAs, in address order.

    >>> parse_maps("55d0-55e0 r--p 00000000 08:01 42 /bin/true")[0].end == 0x55e0
    True
    """
    vmas: list[Vma] = []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split(None, 5)
        try:
            lo, hi = fields[0].split("-")
            vma = Vma(
                start=int(lo, 16),
                end=int(hi, 16),
                perms=fields[1],
                offset=int(fields[2], 16),
                dev=fields[3],
                inode=int(fields[4]),
                path=fields[5].strip() if len(fields) > 5 else "",
            )
        except (IndexError, ValueError):
            raise ValueError(f"line {lineno} is not a /proc/PID/maps line: {line[:60]!r}") from None
        if vma.end <= vma.start:
            raise ValueError(f"line {lineno}: empty or inverted range {fields[0]}")
        if vmas and vma.start < vmas[-1].end:
            raise ValueError(f"line {lineno}: range {fields[0]} overlaps or is out of order")
        vmas.append(vma)
    return vmas


def format_maps(vmas: list[Vma]) -> str:
    """The inverse of parse_maps, in the kernel's own format."""
    return "".join(
        f"{v.start:08x}-{v.end:08x} {v.perms} {v.offset:08x} {v.dev} {v.inode:<10d} {v.path}".rstrip() + "\n"
        for v in vmas
    )

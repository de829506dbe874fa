"""Sampled kernel stacks as the recording stores them, read once for everyone.

`record --sample` keeps, under the metadata key `sample`, one entry per
distinct (stack, window): `stack` is folded ("a;b;c", root first, leaf last),
`phase` the bracket window the samples fell in, `count` how many. Frames are
kallsyms names, possibly with an offset (`+0x1a/0x80`) and with the compiler's
clone suffixes (`.isra.0`, `.constprop.0`, `.part.0`, `.cold`, `.llvm.123`),
and x86's `__pi_` aliases, which are one function to a reader: frame_name() is
the one place that says so.

    >>> frame_name("mas_copy_node.isra.0+0x1f/0x60")
    'mas_copy_node'
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache
from typing import Any, Iterable, Mapping

from analysis.errors import TracerError

__all__ = ["frame_name", "stack_frames", "sampled_stacks", "pooled_stacks"]

_SUFFIX = re.compile(r"(\+0x[0-9a-f]+(/0x[0-9a-f]+)?|\.(isra|constprop|part|cold|llvm)(\.[0-9]+)?)+$")
_ALIAS = "__pi_"  # x86 position-independent aliases (__pi___x86_indirect_thunk_rax): the same code


def frame_name(frame: str) -> str:
    """A frame's function name: offset, compiler clone suffixes and alias prefix dropped."""
    name = _SUFFIX.sub("", frame.strip())
    return name[len(_ALIAS):] if name.startswith(_ALIAS) and len(name) > len(_ALIAS) else name


@lru_cache(maxsize=65536)
def stack_frames(stack: str) -> tuple[str, ...]:
    """A folded stack's function names, root first (empty frames dropped)."""
    return tuple(frame_name(f) for f in stack.split(";") if f.strip())


def sampled_stacks(meta: Mapping[str, Any], where: str = "recording") -> Counter[tuple[str, str]] | None:
    """(stack, window) -> samples of one recording's metadata; None if it was not sampled.

    Identical (stack, window) entries are summed, so callers classify each
    distinct stack once. A malformed entry is a TracerError naming `where`.
    """
    sample = meta.get("sample")
    if not isinstance(sample, dict):
        return None
    out: Counter[tuple[str, str]] = Counter()
    for i, entry in enumerate(sample.get("stacks") or []):
        try:
            stack, window, n = str(entry["stack"]), str(entry["phase"]), int(entry["count"])
        except (KeyError, TypeError, ValueError):
            raise TracerError(f"{where}: sampled stack entry {i} lacks stack, phase or count") from None
        out[(stack, window)] += n
    return out


def pooled_stacks(metas: Iterable[Mapping[str, Any]], where: str = "recording") -> Counter[tuple[str, str]] | None:
    """sampled_stacks() of several recordings, summed; None if none of them was sampled."""
    total: Counter[tuple[str, str]] | None = None
    for meta in metas:
        one = sampled_stacks(meta, where)
        if one is not None:
            total = (total or Counter()) + one
    return total

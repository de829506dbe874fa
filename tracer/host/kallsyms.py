"""Which kernel functions have a symbol on the running kernel (/proc/kallsyms).

A function absent from kallsyms was inlined or never existed on this kernel
(e.g. dup_mmap is inlined into copy_process on Debian's 6.12). Only names are
needed, so this works without root (addresses read as zero then).

Lines look like "ffffffff815f3170 T dup_mmap" and, for modules,
"ffffffffc0201000 t name\t[module]". GCC clones carry suffixes such as
"mas_wr_store_entry.isra.0": those count as the function's symbol too.
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["KALLSYMS", "symbols_present", "symbol_names"]

KALLSYMS = "/proc/kallsyms"


def _base_name(symbol: str) -> str:
    """'mas_store.isra.0' -> 'mas_store'; '__mt_dup' -> '__mt_dup'."""
    return symbol.split(".", 1)[0]


def symbol_names(names: Iterable[str], path: str = KALLSYMS) -> dict[str, list[str]]:
    """Every kallsyms symbol for each wanted function: exact name and compiler clones.

    Reads the file once. Module symbols count (the module column is ignored).
    """
    wanted = {name: [] for name in names}
    with open(path, encoding="ascii", errors="replace") as f:
        for line in f:
            fields = line.split(None, 3)
            if len(fields) < 3:
                continue
            symbol = fields[2]
            hits = wanted.get(symbol) if symbol in wanted else wanted.get(_base_name(symbol))
            if hits is not None:
                hits.append(symbol)
    return wanted


def symbols_present(names: Iterable[str], path: str = KALLSYMS) -> dict[str, bool]:
    """{name: True if the function has a symbol (possibly a compiler clone)}.

    >>> import tempfile
    >>> with tempfile.NamedTemporaryFile("w", suffix=".kallsyms") as f:
    ...     _ = f.write("ffffffff81234560 T dup_mmap\\nffffffff81234990 t mas_store.constprop.0\\n")
    ...     f.flush()
    ...     symbols_present(["dup_mmap", "mas_store", "undo_dup_mmap"], f.name)
    {'dup_mmap': True, 'mas_store': True, 'undo_dup_mmap': False}
    """
    return {name: bool(found) for name, found in symbol_names(names, path).items()}

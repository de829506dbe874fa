"""Read the plain declarations of a probe's shared header (bracket.h) in Python.

The BPF side and the loader must agree on the record layout and the enum
values; reading the one header both use keeps them from drifting. Only what
such headers hold is understood: `#define NAME number`, enums of one
enumerator per line, structs of fixed-width scalars and char arrays.
"""

from __future__ import annotations

import ctypes
import re
from pathlib import Path

import numpy as np

__all__ = ["CHeader", "read_header"]

_CTYPES = {
    "u64": ctypes.c_uint64,
    "s64": ctypes.c_int64,
    "u32": ctypes.c_uint32,
    "s32": ctypes.c_int32,
    "u16": ctypes.c_uint16,
    "s16": ctypes.c_int16,
    "u8": ctypes.c_uint8,
    "char": ctypes.c_char,
}

_NUMPY = {
    ctypes.c_uint64: "<u8",
    ctypes.c_int64: "<i8",
    ctypes.c_uint32: "<u4",
    ctypes.c_int32: "<i4",
    ctypes.c_uint16: "<u2",
    ctypes.c_int16: "<i2",
    ctypes.c_uint8: "u1",
}

_COMMENTS = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_DEFINE = re.compile(r"^#define\s+(\w+)\s+(\d+)\s*$", re.M)
_BLOCK = re.compile(r"\b(enum|struct)\s+(\w+)\s*\{(.*?)\};", re.S)
_FIELD = re.compile(r"^(\w+)\s+(\w+)(?:\[(\w+)\])?$")


class CHeader:
    """The defines, enums and structs of one header."""

    def __init__(self, text: str):
        text = _COMMENTS.sub("", text)
        self.defines = {name: int(value) for name, value in _DEFINE.findall(text)}
        self.enums: dict[str, dict[str, int]] = {}
        self.structs: dict[str, list[tuple[str, object]]] = {}
        for kind, name, body in _BLOCK.findall(text):
            items = [item.strip() for item in body.replace("\n", " ").split(";" if kind == "struct" else ",")]
            items = [item for item in items if item]
            if kind == "enum":
                self.enums[name] = self._enum(items)
            else:
                self.structs[name] = [self._field(name, item) for item in items]

    def _enum(self, items: list[str]) -> dict[str, int]:
        values, next_value = {}, 0
        for item in items:
            name, _, value = (part.strip() for part in item.partition("="))
            next_value = int(value, 0) if value else next_value
            values[name] = next_value
            next_value += 1
        return values

    def _field(self, struct: str, item: str) -> tuple[str, object]:
        m = _FIELD.match(" ".join(item.split()))
        if not m or m[1] not in _CTYPES:
            raise ValueError(f"struct {struct}: cannot read field {item!r}")
        ctype, name, length = _CTYPES[m[1]], m[2], m[3]
        if length is not None:
            ctype = ctype * (self.defines[length] if length in self.defines else int(length))
        return name, ctype

    def structure(self, name: str) -> type[ctypes.Structure]:
        """struct `name` as a ctypes.Structure (natural alignment, as clang lays it out)."""
        return type(name, (ctypes.Structure,), {"_fields_": self.structs[name]})

    def dtype(self, name: str) -> np.dtype:
        """struct `name` as a numpy dtype with the same offsets: a run's records can stay one
        packed buffer and become columns at the end, without a Python object per record."""
        struct = self.structure(name)

        def fmt(ctype):
            if getattr(ctype, "_type_", None) is ctypes.c_char:
                return f"S{ctypes.sizeof(ctype)}"
            if hasattr(ctype, "_length_"):
                return (np.dtype(_NUMPY[ctype._type_]), ctype._length_)
            return _NUMPY[ctype]

        return np.dtype(
            {
                "names": [field for field, _ in struct._fields_],
                "formats": [fmt(ctype) for _, ctype in struct._fields_],
                "offsets": [getattr(struct, field).offset for field, _ in struct._fields_],
                "itemsize": ctypes.sizeof(struct),
            }
        )

    def names_in_order(self, enum: str, stop: str | None = None) -> tuple[str, ...]:
        """Enumerator names sorted by value, up to (not including) `stop`."""
        values = self.enums[enum]
        end = values[stop] if stop else max(values.values()) + 1
        return tuple(n for n, v in sorted(values.items(), key=lambda kv: kv[1]) if v < end and n != stop)


def read_header(path: Path) -> CHeader:
    return CHeader(Path(path).read_text())

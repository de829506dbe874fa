"""A small reader of the kernel's BTF: struct member offsets and type existence.

The raw tracepoint probes read fields through pointers (`struct ma_state *`
of maple_tree:ma_write, the `struct mm_struct *` of mmap_lock events), so
they need this kernel's layout, not the one of whatever headers bcc compiled
against. /sys/kernel/btf/vmlinux has it (CONFIG_DEBUG_INFO_BTF=y).

Format: include/uapi/linux/btf.h and Documentation/bpf/btf.rst. A blob is a
header, a type section and a string section. Types are numbered from 1 in
section order (0 is void); each is a 12-byte `struct btf_type` followed by
kind-specific data whose size depends on the kind and `vlen`.

Parsing is one pass that records where each type starts and its name; names
are resolved only for the lookups asked for.
"""

from __future__ import annotations

import functools
import os
import struct
from array import array
from collections.abc import Iterator
from dataclasses import dataclass

from analysis.errors import TracerError
from tracer.host.kernel import VMLINUX_BTF

__all__ = [
    "BTF_KINDS",
    "Btf",
    "BtfMember",
    "has_func",
    "has_type",
    "load_btf",
    "member_offset",
]

BTF_MAGIC = 0xEB9F

# BTF_KIND_* of include/uapi/linux/btf.h, by number.
BTF_KIND_INT = 1
BTF_KIND_PTR = 2
BTF_KIND_ARRAY = 3
BTF_KIND_STRUCT = 4
BTF_KIND_UNION = 5
BTF_KIND_ENUM = 6
BTF_KIND_FWD = 7
BTF_KIND_TYPEDEF = 8
BTF_KIND_VOLATILE = 9
BTF_KIND_CONST = 10
BTF_KIND_RESTRICT = 11
BTF_KIND_FUNC = 12
BTF_KIND_FUNC_PROTO = 13
BTF_KIND_VAR = 14
BTF_KIND_DATASEC = 15
BTF_KIND_FLOAT = 16
BTF_KIND_DECL_TAG = 17
BTF_KIND_TYPE_TAG = 18
BTF_KIND_ENUM64 = 19

BTF_KINDS = {
    "int": BTF_KIND_INT,
    "ptr": BTF_KIND_PTR,
    "array": BTF_KIND_ARRAY,
    "struct": BTF_KIND_STRUCT,
    "union": BTF_KIND_UNION,
    "enum": BTF_KIND_ENUM,
    "fwd": BTF_KIND_FWD,
    "typedef": BTF_KIND_TYPEDEF,
    "volatile": BTF_KIND_VOLATILE,
    "const": BTF_KIND_CONST,
    "restrict": BTF_KIND_RESTRICT,
    "func": BTF_KIND_FUNC,
    "func_proto": BTF_KIND_FUNC_PROTO,
    "var": BTF_KIND_VAR,
    "datasec": BTF_KIND_DATASEC,
    "float": BTF_KIND_FLOAT,
    "decl_tag": BTF_KIND_DECL_TAG,
    "type_tag": BTF_KIND_TYPE_TAG,
    "enum64": BTF_KIND_ENUM64,
}

# Bytes of kind-specific data after struct btf_type: (fixed, per vlen item).
_TRAILER = {
    BTF_KIND_INT: (4, 0),  # u32 encoding/offset/bits
    BTF_KIND_PTR: (0, 0),
    BTF_KIND_ARRAY: (12, 0),  # struct btf_array
    BTF_KIND_STRUCT: (0, 12),  # struct btf_member
    BTF_KIND_UNION: (0, 12),
    BTF_KIND_ENUM: (0, 8),  # struct btf_enum
    BTF_KIND_FWD: (0, 0),
    BTF_KIND_TYPEDEF: (0, 0),
    BTF_KIND_VOLATILE: (0, 0),
    BTF_KIND_CONST: (0, 0),
    BTF_KIND_RESTRICT: (0, 0),
    BTF_KIND_FUNC: (0, 0),  # vlen holds the linkage, not a count
    BTF_KIND_FUNC_PROTO: (0, 8),  # struct btf_param
    BTF_KIND_VAR: (4, 0),  # struct btf_var
    BTF_KIND_DATASEC: (0, 12),  # struct btf_var_secinfo
    BTF_KIND_FLOAT: (0, 0),
    BTF_KIND_DECL_TAG: (4, 0),  # struct btf_decl_tag
    BTF_KIND_TYPE_TAG: (0, 0),
    BTF_KIND_ENUM64: (0, 12),  # struct btf_enum64
}

# Kinds that only qualify or rename another type: skipped to reach a member's struct.
_MODIFIERS = {BTF_KIND_TYPEDEF, BTF_KIND_VOLATILE, BTF_KIND_CONST, BTF_KIND_RESTRICT, BTF_KIND_TYPE_TAG}


def btf_info_kind(info: int) -> int:
    """BTF_INFO_KIND(): bits 24-28 of btf_type.info."""
    return (info >> 24) & 0x1F


def btf_info_vlen(info: int) -> int:
    """BTF_INFO_VLEN(): bits 0-15 of btf_type.info."""
    return info & 0xFFFF


def btf_info_kflag(info: int) -> bool:
    """BTF_INFO_KFLAG(): bit 31 of btf_type.info."""
    return bool(info >> 31)


@dataclass(frozen=True, slots=True)
class BtfMember:
    """One struct/union member: name ('' if anonymous), type id, offset in bits."""

    name: str
    type_id: int
    bit_offset: int
    bitfield_size: int


class Btf:
    """One parsed BTF blob. Build it with `Btf(data)` or `load_btf(path)`.

    On any kernel with BTF, load_btf().member_offset("list_head", "prev") is 8;
    tests/test_btf.py checks the parser on synthetic blobs and on the running
    kernel's against bcc's own view.
    """

    def __init__(self, data: bytes, source: str = "<bytes>") -> None:
        self.source = source
        self._data = memoryview(data)
        self._parse_header()
        self._index_types()
        self._by_name: dict[str, list[int]] = {}

    # -- parsing ----------------------------------------------------------------

    def _fail(self, why: str) -> TracerError:
        return TracerError(f"{self.source} is not valid BTF: {why}")

    def _parse_header(self) -> None:
        """struct btf_header: magic, version, flags, hdr_len, then section offsets."""
        data = self._data
        if len(data) < 24:
            raise self._fail(f"{len(data)} bytes, shorter than a BTF header")
        for order in "<>":
            (magic,) = struct.unpack_from(order + "H", data, 0)
            if magic == BTF_MAGIC:
                break
        else:
            raise self._fail(f"magic 0x{data[0]:02x}{data[1]:02x}, expected 0xeb9f")
        self._order = order
        version, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from(
            order + "BBIIIII", data, 2
        )
        if version != 1:
            raise self._fail(f"version {version}, this reader knows version 1")
        # hdr_len lets newer kernels append header fields: sections start after it.
        base = hdr_len
        if base < 24 or base + type_off + type_len > len(data) or base + str_off + str_len > len(data):
            raise self._fail("section offsets point past the end of the blob")
        self._types_start = base + type_off
        self._types_end = self._types_start + type_len
        self._strings = bytes(data[base + str_off : base + str_off + str_len])
        if str_len and self._strings[0] != 0:
            raise self._fail("string section does not start with an empty string")

    def _index_types(self) -> None:
        """Record where each type starts, its name offset and its info word.

        Type id i lives at index i; index 0 is void (no record).
        """
        unpack = struct.Struct(self._order + "III").unpack_from
        data, pos, end = self._data, self._types_start, self._types_end
        offsets = array("I", [0])
        name_offs = array("I", [0])
        infos = array("I", [0])
        trailer = _TRAILER
        while pos < end:
            if pos + 12 > end:
                raise self._fail(f"truncated type record at byte {pos}")
            name_off, info, _size_or_type = unpack(data, pos)
            kind = (info >> 24) & 0x1F
            try:
                fixed, per_item = trailer[kind]
            except KeyError:
                raise self._fail(f"unknown kind {kind} for type id {len(offsets)}") from None
            offsets.append(pos)
            name_offs.append(name_off)
            infos.append(info)
            pos += 12 + fixed + per_item * (info & 0xFFFF)
        if pos != end:
            raise self._fail("last type record runs past the type section")
        self._offsets, self._name_offs, self._infos = offsets, name_offs, infos

    def _string(self, offset: int) -> str:
        end = self._strings.find(b"\0", offset)
        if offset >= len(self._strings) or end < 0:
            raise self._fail(f"string offset {offset} outside the string section")
        return self._strings[offset:end].decode()

    def _string_offsets(self, name: str) -> list[int]:
        """Every offset where `name` sits as a whole string (dedup makes it one, usually)."""
        needle = b"\0" + name.encode() + b"\0"
        found, start = [], 0
        while (at := self._strings.find(needle, start)) >= 0:
            found.append(at + 1)
            start = at + 1
        return found

    # -- lookups ------------------------------------------------------------------

    def __len__(self) -> int:
        """Number of types, void excluded."""
        return len(self._offsets) - 1

    def kind(self, type_id: int) -> int:
        return btf_info_kind(self._infos[type_id])

    def name(self, type_id: int) -> str:
        return self._string(self._name_offs[type_id])

    def type_ids(self, name: str) -> list[int]:
        """Ids of every type called `name`, any kind, in id order."""
        if name not in self._by_name:
            ids: list[int] = []
            for str_off in self._string_offsets(name):
                start = 1
                while True:
                    try:
                        i = self._name_offs.index(str_off, start)
                    except ValueError:
                        break
                    ids.append(i)
                    start = i + 1
            self._by_name[name] = sorted(ids)
        return self._by_name[name]

    def find(self, name: str, kind: str | None = None) -> list[int]:
        """Ids of types called `name`, of `kind` ("struct", "typedef", ...) if given."""
        ids = self.type_ids(name)
        if kind is None:
            return ids
        try:
            wanted = BTF_KINDS[kind]
        except KeyError:
            raise ValueError(f"unknown BTF kind {kind!r}; one of {', '.join(BTF_KINDS)}") from None
        return [i for i in ids if self.kind(i) == wanted]

    def has_type(self, name: str, kind: str | None = None) -> bool:
        return bool(self.find(name, kind))

    def has_func(self, name: str) -> bool:
        """A BTF FUNC record: what fentry needs to attach by name."""
        return self.has_type(name, "func")

    def referenced(self, type_id: int) -> int:
        """btf_type.type of a PTR/TYPEDEF/qualifier/FUNC/VAR/DECL_TAG record."""
        (ref,) = struct.unpack_from(self._order + "I", self._data, self._offsets[type_id] + 8)
        return ref

    def resolve(self, type_id: int) -> int:
        """Skip typedefs, qualifiers and type tags to the underlying type (like btf__resolve_type)."""
        seen = 0
        while type_id and self.kind(type_id) in _MODIFIERS:
            type_id = self.referenced(type_id)
            seen += 1
            if seen > 64:
                raise self._fail(f"type chain loops at id {type_id}")
        return type_id

    def type_text(self, type_id: int) -> str:
        """A C-like spelling of a type, qualifiers dropped: "struct mm_struct *", "_Bool", "void *"."""
        type_id = self.resolve(type_id)
        if not type_id:
            return "void"
        kind = self.kind(type_id)
        if kind == BTF_KIND_PTR:
            return self.type_text(self.referenced(type_id)) + " *"
        if kind in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            return f"{'struct' if kind == BTF_KIND_STRUCT else 'union'} {self.name(type_id)}"
        if kind == BTF_KIND_FUNC_PROTO:
            return "function"
        return self.name(type_id)

    def tracepoint_params(self, event: str) -> list[str]:
        """The arguments a raw tracepoint program gets for `event` (ctx->args[0], [1], ...).

        The kernel declares `typedef void (*btf_trace_<event>)(void *__data, TP_PROTO)`:
        the types after __data, as type_text() spells them. A tracepoint's
        prototype changes between kernels (mmap_lock lost its memcg_path
        argument in v6.14), so raw programs take their argument positions from here.
        """
        ids = self.find(f"btf_trace_{event}", "typedef")
        if not ids:
            raise TracerError(f"BTF of {self.source} has no btf_trace_{event}: no raw tracepoint {event}")
        proto = self.resolve(self.referenced(ids[0]))
        if self.kind(proto) == BTF_KIND_PTR:
            proto = self.resolve(self.referenced(proto))
        if self.kind(proto) != BTF_KIND_FUNC_PROTO:
            raise self._fail(f"btf_trace_{event} is not a pointer to a function type")
        unpack = struct.Struct(self._order + "II").unpack_from
        pos = self._offsets[proto] + 12
        params = []
        for _ in range(btf_info_vlen(self._infos[proto])):
            _name_off, param_type = unpack(self._data, pos)
            params.append(self.type_text(param_type))
            pos += 8
        return params[1:]  # drop void *__data

    def members(self, type_id: int) -> Iterator[BtfMember]:
        """Members of a STRUCT or UNION, in declaration order."""
        info = self._infos[type_id]
        if btf_info_kind(info) not in (BTF_KIND_STRUCT, BTF_KIND_UNION):
            raise ValueError(f"type {type_id} is not a struct or union")
        kflag = btf_info_kflag(info)
        unpack = struct.Struct(self._order + "III").unpack_from
        pos = self._offsets[type_id] + 12
        for _ in range(btf_info_vlen(info)):
            name_off, member_type, offset = unpack(self._data, pos)
            pos += 12
            if kflag:
                # With kind_flag, offset packs bitfield size (bits 24-31) and bit offset.
                yield BtfMember(self._string(name_off), member_type, offset & 0xFFFFFF, offset >> 24)
            else:
                yield BtfMember(self._string(name_off), member_type, offset, 0)

    def _member_bit_offset(self, type_id: int, member: str) -> int | None:
        """Bit offset of `member` in the struct/union, looking inside anonymous members."""
        for m in self.members(type_id):
            if m.name == member:
                if m.bitfield_size:
                    raise TracerError(f"{self.name(type_id)}.{member} is a bitfield; a byte offset cannot reach it")
                return m.bit_offset
            if not m.name:
                inner = self.resolve(m.type_id)
                if self.kind(inner) in (BTF_KIND_STRUCT, BTF_KIND_UNION):
                    below = self._member_bit_offset(inner, member)
                    if below is not None:
                        return m.bit_offset + below
        return None

    def member_offset(self, struct_name: str, member: str) -> int:
        """Byte offset of `member` in `struct struct_name` (or union), like offsetof().

        Members of anonymous structs and unions are found as C finds them.
        """
        candidates = self.find(struct_name, "struct") or self.find(struct_name, "union")
        if not candidates:
            raise TracerError(f"BTF of {self.source} has no struct {struct_name}")
        for type_id in candidates:
            bits = self._member_bit_offset(type_id, member)
            if bits is not None:
                if bits % 8:
                    raise TracerError(f"{struct_name}.{member} starts at bit {bits}, not on a byte")
                return bits // 8
        raise TracerError(f"struct {struct_name} has no member {member!r} on this kernel (BTF of {self.source})")


def load_btf(path: str = VMLINUX_BTF) -> Btf:
    """The parsed BTF at `path`, read and indexed once per process."""
    return _load_btf(os.path.realpath(path))


@functools.lru_cache(maxsize=4)
def _load_btf(path: str) -> Btf:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise TracerError(
            f"no BTF at {path}: this kernel was built without CONFIG_DEBUG_INFO_BTF, "
            "so field offsets cannot be read"
        ) from None
    except OSError as err:
        raise TracerError(f"cannot read BTF at {path}: {err.strerror}") from None
    return Btf(data, source=path)


def member_offset(struct_name: str, member: str, path: str = VMLINUX_BTF) -> int:
    """offsetof(struct struct_name, member) on the running kernel, in bytes."""
    return load_btf(path).member_offset(struct_name, member)


def has_type(name: str, kind: str | None = None, path: str = VMLINUX_BTF) -> bool:
    """The running kernel's BTF has a type `name` (of `kind` if given).

    has_type("btf_trace_ma_write", "typedef") is True exactly when the kernel
    has the maple_tree:ma_write tracepoint, usable as a raw tracepoint.
    """
    return load_btf(path).has_type(name, kind)


def tracepoint_type_id(event: str, path: str = VMLINUX_BTF) -> int:
    """The BTF id of `btf_trace_<event>`: what a tp_btf program attaches to (TracerError if absent)."""
    ids = load_btf(path).find(f"btf_trace_{event}", "typedef")
    if not ids:
        raise TracerError(f"no BTF for tracepoint {event} (btf_trace_{event}): BTF-typed tracepoints need it")
    return ids[0]


def has_func(name: str, path: str = VMLINUX_BTF) -> bool:
    """The running kernel's BTF describes function `name` (fentry can name it)."""
    return load_btf(path).has_func(name)

"""tracer.host.btf: against the running kernel's BTF, and hand-built blobs for edge cases.

The blobs come from a small encoder written here from Documentation/bpf/btf.rst,
independently of the parser, so a wrong record size or offset decoding in the
parser shows up as a wrong answer or a failed lookup.
"""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis.errors import TracerError
from tracer.host.btf import Btf, load_btf

import kernel_truth

VMLINUX = "/sys/kernel/btf/vmlinux"

# BTF_KIND_* numbers, as in include/uapi/linux/btf.h.
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)


class BlobBuilder:
    """Writes a BTF blob type by type; add_* return the new type id."""

    def __init__(self, order: str = "<", extra_header: int = 0) -> None:
        self.order = order
        self.extra_header = extra_header
        self.strings = bytearray(b"\0")
        self.types = bytearray()
        self.count = 0

    def s(self, name: str) -> int:
        if not name:
            return 0
        off = len(self.strings)
        self.strings += name.encode() + b"\0"
        return off

    def _add(
        self, name: str, kind: int, vlen: int, size_or_type: int, trailer: bytes = b"", kflag: bool = False
    ) -> int:
        info = (int(kflag) << 31) | (kind << 24) | vlen
        self.types += struct.pack(self.order + "III", self.s(name), info, size_or_type) + trailer
        self.count += 1
        return self.count

    def u32s(self, *values: int) -> bytes:
        return struct.pack(self.order + "I" * len(values), *values)

    def int_(self, name: str, size: int) -> int:
        return self._add(name, INT, 0, size, self.u32s(size * 8))

    def ref(self, kind: int, name: str, target: int) -> int:
        """PTR, TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG, FWD (target=0), FUNC."""
        return self._add(name, kind, 0, target)

    def array(self, elem: int, index: int, n: int) -> int:
        return self._add("", ARRAY, 0, 0, self.u32s(elem, index, n))

    def composite(
        self,
        kind: int,
        name: str,
        size: int,
        members: list[tuple[str, int, int]],
        bitfields: dict[str, int] | None = None,
    ) -> int:
        """members: (name, type id, bit offset); bitfields: name -> size, which sets kind_flag."""
        bitfields = bitfields or {}
        kflag = bool(bitfields)
        trailer = b"".join(
            self.u32s(self.s(m), t, (bitfields.get(m, 0) << 24 | off) if kflag else off) for m, t, off in members
        )
        return self._add(name, kind, len(members), size, trailer, kflag)

    def enum(self, name: str, values: list[tuple[str, int]]) -> int:
        trailer = b"".join(struct.pack(self.order + "Ii", self.s(n), v) for n, v in values)
        return self._add(name, ENUM, len(values), 4, trailer)

    def enum64(self, name: str, values: list[tuple[str, int]]) -> int:
        trailer = b"".join(self.u32s(self.s(n), v & 0xFFFFFFFF, v >> 32) for n, v in values)
        return self._add(name, ENUM64, len(values), 8, trailer)

    def func_proto(self, ret: int, params: list[tuple[str, int]]) -> int:
        trailer = b"".join(self.u32s(self.s(n), t) for n, t in params)
        return self._add("", FUNC_PROTO, len(params), ret, trailer)

    def var(self, name: str, t: int) -> int:
        return self._add(name, VAR, 0, t, self.u32s(1))

    def datasec(self, name: str, entries: list[tuple[int, int, int]]) -> int:
        trailer = b"".join(self.u32s(*e) for e in entries)
        return self._add(name, DATASEC, len(entries), sum(e[2] for e in entries), trailer)

    def decl_tag(self, name: str, target: int, component: int) -> int:
        return self._add(name, DECL_TAG, 0, target, struct.pack(self.order + "i", component))

    def float_(self, name: str, size: int) -> int:
        return self._add(name, FLOAT, 0, size)

    def blob(self) -> bytes:
        hdr_len = 24 + self.extra_header
        header = struct.pack(
            self.order + "HBBIIIII", 0xEB9F, 1, 0, hdr_len, 0, len(self.types), len(self.types), len(self.strings)
        )
        return header + b"\0" * self.extra_header + bytes(self.types) + bytes(self.strings)


def every_kind(b: BlobBuilder) -> int:
    """One record of each kind, so that a wrong size for any kind misplaces what follows."""
    long_ = b.int_("long", 8)
    ptr = b.ref(PTR, "", long_)
    b.array(long_, long_, 4)
    b.enum("colour", [("RED", 0), ("GREEN", -1)])
    b.ref(FWD, "later", 0)
    b.ref(VOLATILE, "", long_)
    b.ref(RESTRICT, "", ptr)
    proto = b.func_proto(long_, [("a", long_), ("b", ptr)])
    b.ref(FUNC, "some_func", proto)
    v = b.var("some_var", long_)
    b.datasec(".data", [(v, 0, 8)])
    b.float_("double", 8)
    b.decl_tag("tag", v, -1)
    b.ref(TYPE_TAG, "user", long_)
    b.enum64("big", [("HUGE", 1 << 40), ("TINY", 1), ("NEG", (1 << 64) - 1)])
    return long_


# -- the running kernel --------------------------------------------------------------

needs_vmlinux = pytest.mark.skipif(
    not os.path.exists(VMLINUX), reason="kernel has no BTF (CONFIG_DEBUG_INFO_BTF unset)"
)


@needs_vmlinux
def test_vmlinux_abi_offsets():
    btf = load_btf(VMLINUX)
    # struct ma_state begins tree, index, last, node (include/linux/maple_tree.h).
    assert btf.member_offset("ma_state", "tree") == 0
    assert btf.member_offset("ma_state", "index") == 8
    assert btf.member_offset("ma_state", "last") == 16
    assert btf.member_offset("ma_state", "node") == 24
    assert btf.member_offset("list_head", "next") == 0
    assert btf.member_offset("list_head", "prev") == 8


@needs_vmlinux
def test_vmlinux_anonymous_members_are_followed():
    btf = load_btf(VMLINUX)
    # mm_struct keeps its fields in an anonymous struct (the cacheline-aligned part).
    (mm,) = [i for i in btf.find("mm_struct", "struct") if btf.name(i) == "mm_struct"]
    assert "map_count" not in {m.name for m in btf.members(mm)}
    offset = btf.member_offset("mm_struct", "map_count")
    assert offset > btf.member_offset("mm_struct", "mm_mt")  # declared after mm_mt


@needs_vmlinux
def test_vmlinux_types_and_funcs():
    btf = load_btf(VMLINUX)
    assert btf.has_type("btf_trace_ma_write", "typedef")
    assert btf.has_type("btf_trace_mmap_lock_acquire_returned", "typedef")
    assert not btf.has_type("btf_trace_no_such_tracepoint")
    assert btf.has_type("ma_state", "struct") and not btf.has_type("ma_state", "union")
    assert btf.has_func("do_exit")  # global and never inlined: on every kernel
    # dup_mmap is inlined into copy_process on some kernels (Debian's 6.12): a BTF func only where it is a symbol.
    assert not btf.has_func("dup_mmap") or kernel_truth.in_kallsyms("dup_mmap")
    assert not btf.has_func("undo_dup_mmap")
    with pytest.raises(ValueError, match="unknown BTF kind"):
        btf.has_type("ma_state", "structure")


@needs_vmlinux
def test_vmlinux_missing_struct_or_member_is_one_clear_error():
    btf = load_btf(VMLINUX)
    with pytest.raises(TracerError, match="no struct no_such_struct"):
        btf.member_offset("no_such_struct", "x")
    with pytest.raises(TracerError, match="ma_state has no member 'no_such_member'"):
        btf.member_offset("ma_state", "no_such_member")


def test_missing_btf_file_is_a_tracer_error(tmp_path):
    with pytest.raises(TracerError, match="no BTF at"):
        load_btf(str(tmp_path / "vmlinux"))


# -- hand-built blobs ------------------------------------------------------------------


@pytest.mark.parametrize("order,extra_header", [("<", 0), (">", 0), ("<", 8)])
def test_every_kind_is_skipped_correctly(order, extra_header):
    b = BlobBuilder(order, extra_header)
    long_ = every_kind(b)
    b.composite(STRUCT, "pair", 16, [("first", long_, 0), ("second", long_, 64)])
    btf = Btf(b.blob())
    assert len(btf) == b.count
    assert btf.member_offset("pair", "second") == 8
    assert btf.has_func("some_func") and btf.has_type("big", "enum64") and btf.has_type("user", "type_tag")
    assert btf.has_type("tag", "decl_tag") and btf.has_type(".data", "datasec")


def test_nested_anonymous_members_add_up():
    b = BlobBuilder()
    long_ = b.int_("long", 8)
    inner = b.composite(STRUCT, "", 16, [("deep_a", long_, 0), ("deep_b", long_, 64)])
    union = b.composite(UNION, "", 16, [("alias", long_, 0), ("", inner, 0)])
    # C with -fms-extensions: an anonymous member through a typedef and a const.
    tagged = b.composite(STRUCT, "", 8, [("via_typedef", long_, 0)])
    td = b.ref(TYPEDEF, "tagged_t", tagged)
    const_td = b.ref(CONST, "", td)
    b.composite(STRUCT, "outer", 48, [("head", long_, 0), ("", union, 64), ("", const_td, 256)])
    btf = Btf(b.blob())
    assert btf.member_offset("outer", "head") == 0
    assert btf.member_offset("outer", "alias") == 8
    assert btf.member_offset("outer", "deep_b") == 16
    assert btf.member_offset("outer", "via_typedef") == 32


def test_kind_flag_offsets_and_bitfields():
    b = BlobBuilder()
    u32 = b.int_("unsigned int", 4)
    b.composite(STRUCT, "flags", 8, [("a", u32, 0), ("b", u32, 3), ("after", u32, 32)], bitfields={"a": 3, "b": 5})
    btf = Btf(b.blob())
    (flags,) = btf.find("flags", "struct")
    assert [(m.name, m.bit_offset, m.bitfield_size) for m in btf.members(flags)] == [
        ("a", 0, 3),
        ("b", 3, 5),
        ("after", 32, 0),
    ]
    assert btf.member_offset("flags", "after") == 4
    with pytest.raises(TracerError, match="bitfield"):
        btf.member_offset("flags", "b")


def test_unaligned_member_is_refused():
    b = BlobBuilder()
    u8 = b.int_("u8", 1)
    b.composite(STRUCT, "packed_bits", 2, [("x", u8, 4)])
    with pytest.raises(TracerError, match="not on a byte"):
        Btf(b.blob()).member_offset("packed_bits", "x")


def test_forward_declarations_and_duplicate_names():
    b = BlobBuilder()
    long_ = b.int_("long", 8)
    b.ref(FWD, "dup", 0)
    b.composite(STRUCT, "dup", 8, [("only_here", long_, 0)])
    b.composite(STRUCT, "dup", 16, [("x", long_, 0), ("wanted", long_, 64)])
    btf = Btf(b.blob())
    assert btf.member_offset("dup", "wanted") == 8
    assert len(btf.find("dup")) == 3 and len(btf.find("dup", "fwd")) == 1


def test_names_match_whole_strings_only():
    b = BlobBuilder()
    long_ = b.int_("long", 8)
    b.composite(STRUCT, "ma_state_extra", 8, [("node", long_, 0)])
    b.composite(STRUCT, "xma_state", 8, [("node", long_, 0)])
    btf = Btf(b.blob())
    assert not btf.has_type("ma_state")
    with pytest.raises(TracerError, match="no struct ma_state"):
        btf.member_offset("ma_state", "node")


@pytest.mark.parametrize(
    "mangle,message",
    [
        (lambda blob: b"\x00\x00" + blob[2:], "magic"),
        (lambda blob: blob[:10], "shorter than a BTF header"),
        (lambda blob: blob[:-20], "past the end"),
        (lambda blob: blob[:2] + b"\x02" + blob[3:], "version 2"),
    ],
)
def test_corrupt_blobs_are_tracer_errors(mangle, message):
    b = BlobBuilder()
    b.composite(STRUCT, "s", 8, [("m", b.int_("long", 8), 0)])
    with pytest.raises(TracerError, match=message):
        Btf(mangle(b.blob()))


def test_unknown_kind_is_a_tracer_error():
    b = BlobBuilder()
    b._add("future", 31, 0, 0)
    with pytest.raises(TracerError, match="unknown kind 31"):
        Btf(b.blob())


# Random struct layouts between random filler types: every member's offset comes back.
_filler = st.sampled_from(["int", "ptr", "array", "enum", "enum64", "proto", "var", "decl_tag", "type_tag", "float"])


@settings(max_examples=60, deadline=None)
@given(
    fillers=st.lists(_filler, max_size=12),
    gaps=st.lists(st.integers(min_value=0, max_value=64), min_size=1, max_size=20),
    order=st.sampled_from("<>"),
)
def test_member_offsets_round_trip(fillers, gaps, order):
    b = BlobBuilder(order)
    long_ = b.int_("long", 8)
    for kind in fillers:
        {
            "int": lambda: b.int_("i", 4),
            "ptr": lambda: b.ref(PTR, "", long_),
            "array": lambda: b.array(long_, long_, 3),
            "enum": lambda: b.enum("e", [("A", 1), ("B", 2)]),
            "enum64": lambda: b.enum64("e64", [("C", 1 << 33)]),
            "proto": lambda: b.func_proto(long_, [("p", long_)] * 3),
            "var": lambda: b.var("v", long_),
            "decl_tag": lambda: b.decl_tag("t", long_, -1),
            "type_tag": lambda: b.ref(TYPE_TAG, "tt", long_),
            "float": lambda: b.float_("f", 4),
        }[kind]()
    members, offset = [], 0
    for i, gap in enumerate(gaps):
        offset += gap
        members.append((f"m{i}", long_, offset * 8))
        offset += 8
    b.composite(STRUCT, "target", offset, members)
    btf = Btf(b.blob())
    for name, _type, bits in members:
        assert btf.member_offset("target", name) == bits // 8

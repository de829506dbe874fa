"""tracer.probes.cheader: the loader reads bracket.h as the C compiler does."""

from __future__ import annotations

import ctypes

import pytest

from analysis.recording.phases import WINDOWS
from tracer.probes.cheader import CHeader

HEADER = """
#define LEN 4
/* a comment; with punctuation */
enum colour {
	RED = 2,	/* two */
	GREEN,
	BLUE = 0x10,
	NR_COLOURS,
};
struct rec {
	u64 a;
	u32 b;		// trailing
	s32 c;
	char name[LEN];
	u8 flag;
};
"""


def test_enums_number_as_c_does():
    h = CHeader(HEADER)
    assert h.enums["colour"] == {"RED": 2, "GREEN": 3, "BLUE": 16, "NR_COLOURS": 17}
    assert h.names_in_order("colour", stop="NR_COLOURS") == ("RED", "GREEN", "BLUE")


def test_struct_layout_is_natural_alignment():
    rec = CHeader(HEADER).structure("rec")
    assert [name for name, _ in rec._fields_] == ["a", "b", "c", "name", "flag"]
    assert rec.name.offset == 16 and rec.name.size == 4 and rec.flag.offset == 20
    assert ctypes.sizeof(rec) == 24  # padded to the u64's alignment


def test_unknown_field_type_is_refused():
    with pytest.raises(ValueError, match="cannot read field"):
        CHeader("struct bad {\n\tfloat x;\n};")


def test_bracket_header_matches_what_the_loader_uses():
    from tracer.probes import bracket

    assert ctypes.sizeof(bracket.DupEvent) == 160
    assert bracket.COUNTER_NAMES[0] == "lost_ringbuf" and "sample_lost" in bracket.COUNTER_NAMES
    assert tuple(bracket.SAMPLE_PHASES[k] for k in sorted(bracket.SAMPLE_PHASES)) == WINDOWS


def test_numpy_dtype_has_the_ctypes_offsets():
    h = CHeader(HEADER)
    dt, rec = h.dtype("rec"), h.structure("rec")
    assert dt.itemsize == ctypes.sizeof(rec)
    for name, _ in rec._fields_:
        assert dt.fields[name][1] == getattr(rec, name).offset, name
    assert dt["name"] == "S4"

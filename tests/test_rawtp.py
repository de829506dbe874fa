"""Raw tracepoint arguments by position: read from the kernel's prototype, never assumed.

v6.1 and v6.12 pass mmap_lock's memcg path second; reading position 1 as
`write` there took a pointer's low byte and lost a fork now and then.
"""

from __future__ import annotations

import os

import pytest

from analysis.errors import TracerError
from test_btf import CONST, PTR, STRUCT, TYPEDEF, BlobBuilder
from tracer.host.btf import Btf, load_btf
from tracer.probes import bracket, cycle, rawtp

VMLINUX = "/sys/kernel/btf/vmlinux"

# mmap_lock_acquire_returned's prototype before and after v6.14.
WITH_MEMCG_PATH = ["struct mm_struct *", "char *", "_Bool", "_Bool"]
WITHOUT = ["struct mm_struct *", "_Bool", "_Bool"]


def lock_blob(with_memcg_path: bool) -> Btf:
    """A BTF blob declaring btf_trace_mmap_lock_acquire_returned as the kernel does."""
    b = BlobBuilder()
    void_ptr = b.ref(PTR, "", 0)
    mm = b.composite(STRUCT, "mm_struct", 8, [])
    mm_ptr = b.ref(PTR, "", mm)
    char = b.int_("char", 1)
    const_char_ptr = b.ref(PTR, "", b.ref(CONST, "", char))
    boolean = b.int_("_Bool", 1)
    params = [("__data", void_ptr), ("mm", mm_ptr)]
    params += [("memcg_path", const_char_ptr)] if with_memcg_path else []
    params += [("write", boolean), ("success", boolean)]
    proto = b.func_proto(0, params)
    b.ref(TYPEDEF, "btf_trace_mmap_lock_acquire_returned", b.ref(PTR, "", proto))
    return Btf(b.blob())


@pytest.mark.parametrize("with_memcg_path", [True, False])
def test_prototype_read_from_btf(with_memcg_path):
    params = lock_blob(with_memcg_path).tracepoint_params("mmap_lock_acquire_returned")
    assert params == (WITH_MEMCG_PATH if with_memcg_path else WITHOUT)


def test_positions_follow_the_prototype():
    old = rawtp.locate("mmap_lock_acquire_returned", WITH_MEMCG_PATH)
    new = rawtp.locate("mmap_lock_acquire_returned", WITHOUT)
    assert (old["LOCK_WRITE_ARG"], old["LOCK_SUCCESS_ARG"]) == (2, 3)
    assert (new["LOCK_WRITE_ARG"], new["LOCK_SUCCESS_ARG"]) == (1, 2)
    assert old["LOCK_MM_ARG"] == new["LOCK_MM_ARG"] == 0
    released = rawtp.locate("mmap_lock_released", ["struct mm_struct *", "char *", "_Bool"])
    assert released == {"UNLOCK_MM_ARG": 0, "UNLOCK_WRITE_ARG": 2}
    switch = rawtp.locate("sched_switch", ["_Bool", "struct task_struct *", "struct task_struct *", "unsigned int"])
    assert switch == {"SWITCH_NEXT_ARG": 2}


def test_an_unexpected_prototype_is_refused_in_one_line():
    with pytest.raises(TracerError) as err:
        rawtp.locate("mmap_lock_acquire_returned", ["struct mm_struct *", "int"])
    message = str(err.value)
    assert "\n" not in message and "--backend tracepoint" in message and "_Bool" in message


def test_missing_tracepoint_is_a_tracer_error():
    with pytest.raises(TracerError, match="btf_trace_ma_write"):
        lock_blob(True).tracepoint_params("ma_write")


def test_every_program_names_its_positions():
    """Each raw event a program attaches has its argument macros declared (none read by a bare index)."""
    assert set(bracket.RAW_EVENTS) <= set(rawtp.ARGUMENTS)
    assert set(cycle.RAW_EVENTS) <= set(rawtp.ARGUMENTS)
    sources = [bracket.SOURCE, cycle.SOURCE, bracket.SOURCE.with_name("exact.c")]
    for source in sources:
        text = source.read_text()
        assert "ctx->args[0]" not in text and "ctx->args[1]" not in text and "ctx->args[2]" not in text, source


@pytest.mark.skipif(not os.path.exists(VMLINUX), reason="no kernel BTF (/sys/kernel/btf/vmlinux)")
def test_running_kernel_positions_are_consistent():
    """On this kernel: every event the probes read exists, and the mm comes first (as in every version)."""
    btf = load_btf(VMLINUX)
    params = btf.tracepoint_params("mmap_lock_acquire_returned")
    assert params[0] == "struct mm_struct *" and params.count("_Bool") == 2
    memcg_path = "char *" in params  # before v6.14
    macros = rawtp.argument_macros([*bracket.RAW_EVENTS, *cycle.RAW_EVENTS])
    assert macros["LOCK_WRITE_ARG"] == (2 if memcg_path else 1)
    assert macros["UNLOCK_WRITE_ARG"] == macros["LOCK_WRITE_ARG"]

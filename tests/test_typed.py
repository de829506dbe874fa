"""The per-VMA program as a BTF-typed tracepoint (tp_btf), and its raw tracepoint fallback.

In the guests' fact files: whether a kernel's verifier takes the typed
program is exactly what differs between kernels. (The fallback, which is
the same everywhere, is tested in test_record_bpf.py.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from probe_runs import probe_records

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

FIELDS = ("stores", "null_stores", "zero_stores", "other_writes", "leaves")


def _inspect(probe, facts) -> None:
    """What was loaded is the kernel's answer, as doctor's test program predicted it."""
    assert facts.typed_tracepoint_load.ok == (probe.per_vma_program == "tp_btf"), probe.typed_refused
    if probe.per_vma_program == "tp_btf":
        fdinfo = Path(f"/proc/self/fdinfo/{probe._typed.prog_fd}").read_text()
        assert "prog_type:\t26" in fdinfo  # BPF_PROG_TYPE_TRACING
        assert probe._typed.link_fd >= 0 and probe.typed_refused is None
        probe.detach()
        assert probe._typed.link_fd < 0
        probe.attach()
        assert probe._typed.link_fd >= 0
    else:
        assert probe.per_vma_program == "raw_tracepoint"
        assert probe.typed_refused  # says why; the recording keeps it


def test_typed_program_is_what_doctor_says_and_records_what_the_raw_one_does():
    """The per-VMA program the kernel allows (tp_btf: a plain load of ma_state->node) agrees with the raw
    tracepoint one (a probe read) on every count, fork by fork of the same workload."""
    from tracer.host.probe import probe_host

    facts = probe_host(try_load=True, kinds=())
    assert facts.typed_tracepoint_load is not None
    typed, vmas_total = probe_records({}, vmas=300, forks=4, inspect=lambda probe: _inspect(probe, facts))
    raw, _ = probe_records({"typed_ma_write": False}, vmas=300, forks=4)
    assert len(typed) == len(raw) == 4
    for field in FIELDS:
        assert {getattr(r, field) for r in typed} == {getattr(r, field) for r in raw}, field
    # One mas_store() per VMA from v6.8 (__mt_dup); the bulk build before it skips VM_DONTCOPY ones.
    assert all(0 < r.stores <= vmas_total and r.leaves > 1 for r in typed)

"""The per-VMA program as a BTF-typed tracepoint (tp_btf), and its raw tracepoint fallback.

In the guests' fact files too: whether a kernel's verifier takes the typed
program is exactly what differs between kernels.
"""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from probe_runs import probe_records

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

FIELDS = ("stores", "null_stores", "zero_stores", "other_writes", "leaves")


def _bracket(**fields):
    from tracer.host import headers
    from tracer.probes.bracket import BracketConfig, BracketProbe, offsets_from_btf

    headers.apply(headers.resolve_headers())
    return BracketProbe(BracketConfig(**offsets_from_btf(), **fields))


def test_typed_and_raw_per_vma_programs_record_the_same():
    """The tp_btf ma_write (a plain load of ma_state->node) and the raw tracepoint one (a probe read) agree."""
    typed, vmas_total = probe_records({}, vmas=300, forks=6)
    raw, _ = probe_records({"typed_ma_write": False}, vmas=300, forks=6)
    assert len(typed) == len(raw) == 6
    for field in FIELDS:
        assert {getattr(r, field) for r in typed} == {getattr(r, field) for r in raw}, field
    # One mas_store() per VMA from v6.8 (__mt_dup); the bulk build before it skips VM_DONTCOPY ones.
    assert all(0 < r.stores <= vmas_total and r.leaves > 1 for r in typed)


def test_per_vma_program_is_tp_btf_where_the_kernel_attaches_one():
    """Which program runs per VMA is the kernel's answer, and what is loaded is that program."""
    with _bracket() as probe:
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
    with _bracket(level="fork") as probe:
        assert probe.per_vma_program is None and probe._typed is None


def test_a_refused_typed_program_falls_back_to_the_raw_tracepoint(monkeypatch):
    """A verifier that rejects the tp_btf build: the raw tracepoint program records, and the reason is kept."""
    from tracer.host.bpfsys import LoadError
    from tracer.probes.bracket import BracketProbe
    from tracer.probes.typed import TypedTracepoint

    def refuse(self):
        raise LoadError(errno.EACCES, "0: (bf) r6 = r1\nR1 invalid mem access 'scalar'\n")

    loaded = []
    load = BracketProbe.load
    monkeypatch.setattr(TypedTracepoint, "load", refuse)
    monkeypatch.setattr(BracketProbe, "load", lambda self: (loaded.append(self), load(self))[1])
    records, _ = probe_records({}, vmas=100, forks=3)
    (probe,) = loaded
    assert len(records) == 3 and all(r.stores > 0 for r in records)
    assert probe.per_vma_program == "raw_tracepoint"
    if probe.typed_refused.startswith("tp_btf: "):  # this kernel allows tp_btf: the refusal is the one faked here
        assert probe.typed_refused == "tp_btf: EACCES: R1 invalid mem access 'scalar'"
    else:  # refused before the build: the test program already failed, as the probe says
        assert probe.typed_refused.startswith("tp_btf ") or "BTF" in probe.typed_refused

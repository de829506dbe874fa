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


def test_typed_program_is_what_doctor_says_and_counts_the_models_leaves():
    """The per-VMA program the kernel allows reads ma_state->node right: the leaves of every fork are the
    replay model's for the workload's layout (__mt_dup's replace loop, or before v6.8 the node changes of
    the bulk build). One compile: under emulation each costs a minute or more. The same program against
    the raw tracepoint one, fork by fork: test_record_bpf.py (host)."""
    from analysis.attribution.counts import counts_for_layout
    from analysis.model import build_bulk
    from analysis.model.parent import GATE_AREAS
    from analysis.recording.layout import parse_maps
    from kernel_truth import in_kallsyms
    from tracer.host.survey import survey_host

    facts = survey_host(try_load=True, kinds=())
    assert facts.typed_tracepoint_load is not None
    maps: list[str] = []
    records, vmas_total = probe_records({}, vmas=300, forks=4, inspect=lambda probe: _inspect(probe, facts), maps=maps)
    assert len(records) == 4
    layout = [v for v in parse_maps(maps[0]) if v.path not in GATE_AREAS]
    if in_kallsyms("__mt_dup"):
        workload = {"kind": "spawn", "extra_vmas": 300, "layout": "gapped"}
        expected = counts_for_layout(layout, workload, None)[0].predicted_leaves
    else:
        expected = build_bulk(layout).leaves_seen
    assert [r.leaves for r in records] == [expected] * 4
    assert all(0 < r.stores <= vmas_total for r in records)


def test_a_refused_load_says_why():
    """bpfsys.prog_load asks for the verifier's log on the retry, and the error carries its last line."""
    from tracer.host.bpfsys import PROG_TYPE_KPROBE, LoadError, prog_load

    no_exit = bytes.fromhex("b700000000000000")  # r0 = 0, and nothing after it
    with pytest.raises(LoadError) as refused:
        prog_load(PROG_TYPE_KPROBE, no_exit, "forktrace_test", log_size=1 << 16)
    assert refused.value.errno and refused.value.log.strip()
    assert str(refused.value).startswith(("EINVAL: ", "EACCES: ")) and "exit" in str(refused.value)
    with pytest.raises(LoadError) as quiet:
        prog_load(PROG_TYPE_KPROBE, no_exit, "forktrace_test")
    assert quiet.value.log == "" and str(quiet.value) in ("EINVAL", "EACCES")

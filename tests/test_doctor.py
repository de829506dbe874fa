"""tracer doctor: method choice and rendering on synthetic hosts, then this host for real."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

from tracer.host.capabilities import PHASES, TRACEPOINTS, choose_methods, probe_capabilities, render_doctor
from tracer.host.kernel import is_root


def no(reason: str) -> dict:
    return {"available": False, "reason": reason, "errno": None}


def synthetic_host() -> dict:
    """A host shaped like this one: BTF, tracefs, root, every tracepoint, nothing direct."""
    refused = {
        "available": False,
        "reason": "fentry refused by the kernel (EPERM; lockdown=integrity)",
        "errno": "EPERM",
    }
    unbuilt = no("kprobes not built (CONFIG_KPROBES unset)")
    present = {"kallsyms": True, "btf_func": True, "ftrace": "unknown (available_filter_functions: EPERM)"}
    return {
        "kernel": {"release": "6.18.44-test", "version": "#1", "machine": "x86_64"},
        "root": True,
        "lockdown": "integrity",
        "config": {"source": "/proc/config.gz", "options": {"CONFIG_KPROBES": None}},
        "tracefs": "/sys/kernel/tracing",
        "btf": {"present": True, "path": "/sys/kernel/btf/vmlinux", "offsets": {"ma_state.node": 24}, "error": None},
        "bcc": {"importable": True, "version": "0.26.0", "error": None},
        "headers": {"ok": True, "path": "/x", "description": "kernel headers: Debian linux-headers-6.1.0-56 (...)"},
        "perf_event": {"paranoid": 2, "sampling": True},
        "tracepoints": {tp: {"exists": True, "tracefs": True, "btf": True} for tp in TRACEPOINTS},
        "symbols": {
            "dup_mmap": {**present, "names": ["dup_mmap"], "fentry": dict(refused), "kprobe": dict(unbuilt)},
            "__mt_dup": {**present, "names": ["__mt_dup"], "fentry": dict(refused), "kprobe": dict(unbuilt)},
            "mas_store": {**present, "names": ["mas_store"], "fentry": dict(refused), "kprobe": dict(unbuilt)},
            "undo_dup_mmap": {
                "kallsyms": False,
                "names": [],
                "btf_func": None,
                "ftrace": "absent",
                "fentry": no("absent (undo_dup_mmap never landed upstream)"),
                "kprobe": no("absent (undo_dup_mmap never landed upstream)"),
            },
        },
    }


def test_this_kind_of_host_gets_raw_tracepoints_and_brackets():
    methods = choose_methods(synthetic_host())
    assert methods["backend"] == "raw_tracepoint"
    assert list(methods["phases"]) == PHASES
    assert methods["phases"]["dup_mmap"] == "bracket (mmap_lock acquire/release)"
    assert methods["phases"]["mt_dup"] == "bracket-corrected (child lock -> first store, minus one VMA step)"
    assert methods["phases"]["vma_loop"] == "bracket (first -> last mas_store)"
    assert methods["phases"]["undo_dup_mmap"] == "unavailable (symbol absent)"
    assert methods["notes"] == []


def test_without_btf_falls_back_to_classic_tracepoints():
    caps = synthetic_host()
    caps["btf"] = {"present": False, "offsets": {}, "error": "no /sys/kernel/btf/vmlinux"}
    for entry in caps["tracepoints"].values():
        entry["btf"] = None
    methods = choose_methods(caps)
    assert methods["backend"] == "tracepoint"
    assert "no /sys/kernel/btf/vmlinux" in methods["backend_reason"]
    assert methods["phases"]["vma_loop"].startswith("bracket")


def test_btf_whose_offsets_fail_is_not_used():
    caps = synthetic_host()
    caps["btf"]["error"] = "struct ma_state has no member 'node' on this kernel"
    assert choose_methods(caps)["backend"] == "tracepoint"


def test_unmounted_tracefs_with_btf_typedefs_lets_root_use_classic_tracepoints():
    caps = synthetic_host()
    caps["tracefs"] = None
    caps["btf"]["error"] = "struct ma_state has no member 'node' on this kernel"  # offsets unusable
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, exists=True)  # known from btf_trace_* typedefs only
    assert choose_methods(caps)["backend"] == "tracepoint"  # record mounts tracefs as root
    caps["root"] = False
    assert choose_methods(caps)["backend"] is None


def test_nothing_proves_the_tracepoints_exist():
    caps = synthetic_host()
    caps["tracefs"] = None
    caps["btf"] = {"present": False, "offsets": {}, "error": "no BTF"}
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, btf=None, exists=None)
    methods = choose_methods(caps)
    assert methods["backend"] is None
    assert all(m.startswith("unavailable") for m in methods["phases"].values())


def test_no_btf_no_tracefs_not_root_has_no_backend():
    caps = synthetic_host()
    caps.update(root=False, tracefs=None)
    caps["btf"] = {"present": False, "offsets": {}, "error": "no BTF"}
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, btf=None, exists=None)
    assert choose_methods(caps)["backend"] is None


def test_a_raw_tracepoint_that_does_not_load_means_classic_tracepoints():
    caps = synthetic_host()
    caps["raw_tracepoint_load"] = {"ok": False, "errno": "EINVAL", "log": None}
    methods = choose_methods(caps)
    assert methods["backend"] == "tracepoint"
    assert methods["notes"] == ["a raw tracepoint program did not load (EINVAL)"]


def test_missing_ma_write_only_loses_the_store_phases():
    caps = synthetic_host()
    caps["tracepoints"]["maple_tree:ma_write"] = {"exists": False, "tracefs": False, "btf": False}
    phases = choose_methods(caps)["phases"]
    assert phases["dup_mmap"].startswith("bracket")
    for phase in ("mt_dup", "vma_loop", "tail"):
        assert "no maple_tree:ma_write" in phases[phase]


def test_kernel_before_mt_dup_has_no_mt_dup_phase():
    caps = synthetic_host()
    caps["kernel"]["release"] = "6.1.0-56-amd64"
    caps["symbols"]["__mt_dup"] = {"kallsyms": False, "names": [], "fentry": no("x"), "kprobe": no("x")}
    assert choose_methods(caps)["phases"]["mt_dup"].startswith("not applicable (kernel predates __mt_dup, v6.8")


def test_direct_probes_are_reported_but_not_used():
    caps = synthetic_host()
    caps["symbols"]["dup_mmap"]["fentry"] = {"available": True, "reason": "loaded and attached", "errno": None}
    methods = choose_methods(caps)
    assert methods["phases"]["dup_mmap"].startswith("bracket")
    assert methods["notes"] == ["dup_mmap: fentry available; this version uses the tracepoint bracket on every kernel"]


def test_undo_dup_mmap_present_is_not_claimed_measured():
    caps = synthetic_host()
    caps["symbols"]["undo_dup_mmap"]["kallsyms"] = True
    assert choose_methods(caps)["phases"]["undo_dup_mmap"].startswith("unavailable (symbol present")


def test_choose_methods_does_not_modify_caps():
    caps = synthetic_host()
    before = copy.deepcopy(caps)
    choose_methods(caps)
    render_doctor(caps)
    assert caps == before


def test_render_marks_reasons_and_aligns_phases():
    caps = synthetic_host()
    text = render_doctor(caps)
    assert text.startswith("forktrace doctor: Linux 6.18.44-test x86_64")
    assert "✗ fentry         fentry refused by the kernel (EPERM; lockdown=integrity)" in text
    assert "✗ kprobe         kprobes not built (CONFIG_KPROBES unset)" in text
    assert "? ftrace         unknown (available_filter_functions: EPERM)" in text
    assert "✗ undo_dup_mmap" in text and "absent (undo_dup_mmap never landed upstream)" in text
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("record will use: raw_tracepoint"))
    tail = lines[header + 1 :]
    phase_lines = [line for line in tail if line.split()[0] in PHASES]
    assert [line.split()[0] for line in phase_lines] == PHASES
    phases = choose_methods(caps)["phases"]
    columns = {line.index(phases[line.split()[0]]) for line in phase_lines}
    assert len(columns) == 1, "methods start in one column"
    # Unknowns read as unknown: a tracepoint of unknown existence gets "?".
    caps["tracepoints"]["task:task_newtask"] = {"exists": None, "tracefs": None, "btf": None}
    assert "? task:task_newtask" in render_doctor(caps)


def test_render_survives_an_empty_dict():
    text = render_doctor({})
    assert "record will use: nothing" in text


# -- this host, for real ----------------------------------------------------------------


@pytest.fixture(scope="module")
def host_caps():
    if not is_root():
        pytest.skip("probing fentry and loading BPF needs root")
    try:
        import bcc  # noqa: F401
    except ImportError as err:
        pytest.skip(f"cannot import bcc ({err}): install python3-bpfcc")
    return probe_capabilities()


@pytest.mark.bpf
def test_this_host_facts(host_caps):
    symbols = host_caps["symbols"]
    assert symbols["dup_mmap"]["kallsyms"] and symbols["__mt_dup"]["kallsyms"] and symbols["mas_store"]["kallsyms"]
    for name in ("dup_mmap", "__mt_dup", "mas_store"):
        assert symbols[name]["kprobe"] == {
            "available": False,
            "reason": "kprobes not built (CONFIG_KPROBES unset)",
            "errno": None,
        }
        # The kernel's own answer to a real fentry load.
        assert symbols[name]["fentry"]["available"] is False
        assert symbols[name]["fentry"]["errno"] == "EPERM"
        assert "lockdown=integrity" in symbols[name]["fentry"]["reason"]
    assert symbols["undo_dup_mmap"]["kallsyms"] is False
    assert symbols["undo_dup_mmap"]["fentry"]["reason"] == "absent (undo_dup_mmap never landed upstream)"
    assert host_caps["tracepoints"]["maple_tree:ma_write"]["exists"] is True
    assert host_caps["tracepoints"]["maple_tree:ma_write"]["btf"] is True
    assert host_caps["btf"]["offsets"]["ma_state.node"] == 24
    assert host_caps["headers"]["ok"] and host_caps["headers"]["compiles"]
    assert host_caps["raw_tracepoint_load"]["ok"] and host_caps["perf_event"]["sampling"]
    assert host_caps["methods"]["backend"] == "raw_tracepoint"
    json.dumps(host_caps)  # JSON-able as is


@pytest.mark.bpf
def test_this_host_render(host_caps):
    text = render_doctor(host_caps)
    assert "record will use: raw_tracepoint" in text
    assert "undo_dup_mmap    unavailable (symbol absent)" in text


@pytest.mark.bpf
def test_cli_doctor_json_is_one_document():
    if not is_root():
        pytest.skip("probing fentry needs root")
    out = subprocess.run(
        [sys.executable, "-m", "tracer.cli", "doctor", "--json"],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["methods"]["phases"]["undo_dup_mmap"] == "unavailable (symbol absent)"
    assert "Failed to load" not in out.stderr and "bpf:" not in out.stderr  # libbpf noise is captured


def test_without_loading_nothing_is_claimed_about_fentry():
    caps = probe_capabilities(try_load=False)
    dup = caps["symbols"]["dup_mmap"]
    if dup["kallsyms"] and caps["btf"]["present"] and not dup["ftrace"].startswith("notrace"):
        assert dup["fentry"]["available"] is None
        assert dup["fentry"]["reason"].startswith("not tried (try_load=False")
    assert caps["raw_tracepoint_load"] is None
    assert "? fentry" in render_doctor(caps) or not dup["kallsyms"]

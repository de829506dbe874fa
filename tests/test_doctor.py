"""tracer doctor: facts, method choice and rendering on synthetic hosts, then this host for real.

The real-host tests compare what doctor says with what the running kernel
allows, found independently (tests/kernel_truth.py), so they hold on any kernel.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys

import pytest

import kernel_truth
from analysis.errors import UsageError
from tracer.host.doctor import doctor_json, render_doctor
from tracer.host.facts import HostFacts
from tracer.host.kernel import is_root
from tracer.host.methods import BACKENDS, DOCTOR_PHASES, choose_methods
from tracer.host.survey import TARGET_SYMBOLS, TRACEPOINT_NAMES, survey_host
from tracer.probes import bracket

PHASES = list(DOCTOR_PHASES)
TRACEPOINTS = TRACEPOINT_NAMES


def no(reason: str) -> dict:
    return {"available": False, "reason": reason, "errno": None}


def plan(caps: dict) -> dict:
    """The method plan for a host given as doctor's JSON, as doctor's JSON."""
    return choose_methods(HostFacts.from_dict(caps)).to_dict()


def render(caps: dict) -> str:
    facts = HostFacts.from_dict(caps)
    return render_doctor(facts, choose_methods(facts))


# What doctor notes on a host like this one, where nothing attaches to dup_mmap.
NO_EXACT_HERE = (
    "no exact probes: dup_mmap: fentry: fentry refused by the kernel (EPERM; lockdown=integrity);"
    " kprobe: kprobes not built (CONFIG_KPROBES unset)"
)


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
    methods = plan(synthetic_host())
    assert methods["backend"] == "raw_tracepoint"
    assert list(methods["phases"]) == PHASES
    assert methods["phases"]["dup_mmap"] == "bracket (mmap_lock acquire/release)"
    assert methods["phases"]["mt_dup"] == "bracket-corrected (child lock -> first store, minus one VMA step)"
    assert methods["phases"]["vma_loop"] == "bracket (first -> last mas_store)"
    assert methods["phases"]["undo_dup_mmap"] == "unavailable (symbol absent)"
    assert methods["notes"] == [NO_EXACT_HERE]  # doctor says why nothing is timed exactly


def test_without_btf_falls_back_to_classic_tracepoints():
    caps = synthetic_host()
    caps["btf"] = {"present": False, "offsets": {}, "error": "no /sys/kernel/btf/vmlinux"}
    for entry in caps["tracepoints"].values():
        entry["btf"] = None
    methods = plan(caps)
    assert methods["backend"] == "tracepoint"
    assert "no /sys/kernel/btf/vmlinux" in methods["backend_reason"]
    assert methods["phases"]["vma_loop"].startswith("bracket")


def test_btf_whose_offsets_fail_is_not_used():
    caps = synthetic_host()
    caps["btf"]["error"] = "struct ma_state has no member 'node' on this kernel"
    assert plan(caps)["backend"] == "tracepoint"


def test_unmounted_tracefs_with_btf_typedefs_lets_root_use_classic_tracepoints():
    caps = synthetic_host()
    caps["tracefs"] = None
    caps["btf"]["error"] = "struct ma_state has no member 'node' on this kernel"  # offsets unusable
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, exists=True)  # known from btf_trace_* typedefs only
    assert plan(caps)["backend"] == "tracepoint"  # record mounts tracefs as root
    caps["root"] = False
    assert plan(caps)["backend"] is None


def test_nothing_proves_the_tracepoints_exist():
    caps = synthetic_host()
    caps["tracefs"] = None
    caps["btf"] = {"present": False, "offsets": {}, "error": "no BTF"}
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, btf=None, exists=None)
    methods = plan(caps)
    assert methods["backend"] is None
    assert all(m.startswith("unavailable") for m in methods["phases"].values())


def test_no_btf_no_tracefs_not_root_has_no_backend():
    caps = synthetic_host()
    caps.update(root=False, tracefs=None)
    caps["btf"] = {"present": False, "offsets": {}, "error": "no BTF"}
    for entry in caps["tracepoints"].values():
        entry.update(tracefs=None, btf=None, exists=None)
    assert plan(caps)["backend"] is None


def test_a_raw_tracepoint_that_does_not_load_means_classic_tracepoints():
    caps = synthetic_host()
    caps["raw_tracepoint_load"] = {"ok": False, "errno": "EINVAL", "log": None}
    methods = plan(caps)
    assert methods["backend"] == "tracepoint"
    assert methods["notes"] == ["a raw tracepoint program did not load (EINVAL)", NO_EXACT_HERE]


def test_missing_ma_write_only_loses_the_store_phases():
    caps = synthetic_host()
    caps["tracepoints"]["maple_tree:ma_write"] = {"exists": False, "tracefs": False, "btf": False}
    phases = plan(caps)["phases"]
    assert phases["dup_mmap"].startswith("bracket")
    for phase in ("mt_dup", "vma_loop", "tail"):
        assert "no maple_tree:ma_write" in phases[phase]


def test_kernel_before_mt_dup_names_the_bulk_build():
    caps = synthetic_host()
    caps["kernel"]["release"] = "6.1.0-56-amd64"
    caps["symbols"]["__mt_dup"] = {"kallsyms": False, "names": [], "fentry": no("x"), "kprobe": no("x")}
    assert plan(caps)["phases"]["mt_dup"].startswith("bracket-corrected (bulk build: child lock -> first store")


ATTACHED = {"available": True, "reason": "loaded and attached", "errno": None}


def test_fentry_on_dup_mmap_times_it_exactly_beside_the_bracket():
    caps = synthetic_host()
    caps["symbols"]["dup_mmap"]["fentry"] = dict(ATTACHED)
    methods = plan(caps)
    assert methods["backend"] == "raw_tracepoint"  # the bracket still gives the per-VMA phases
    assert methods["phases"]["dup_mmap"].startswith("exact (fentry/fexit on dup_mmap: exact_dup_mmap_ns")
    assert methods["phases"]["vma_loop"] == "bracket (first -> last mas_store)"
    assert methods["exact"] == {"dup_mmap": {"via": "fentry", "symbol": "dup_mmap"}}
    assert methods["notes"][0] == "exact probes time dup_mmap (fentry) per dup_mmap call"
    assert "exact: __mt_dup not timed: fentry: fentry refused by the kernel (EPERM; lockdown=integrity);" \
        " kprobe: kprobes not built (CONFIG_KPROBES unset)" in methods["notes"]


def test_each_function_gets_the_best_probe_it_allows():
    caps = synthetic_host()
    caps["symbols"]["dup_mmap"]["fentry"] = dict(ATTACHED)
    caps["symbols"]["dup_mmap"]["kprobe"] = dict(ATTACHED)
    caps["symbols"]["__mt_dup"]["kprobe"] = dict(ATTACHED)  # kprobe only: fentry still refused
    caps["symbols"]["vm_area_dup"] = {
        "kallsyms": True, "names": ["vm_area_dup.cold", "vm_area_dup"], "fentry": dict(ATTACHED), "kprobe": dict(ATTACHED),
    }
    facts = HostFacts.from_dict(caps)
    exact = choose_methods(facts).exact
    assert {fn: (a.via, a.symbol) for fn, a in exact.items()} == {
        "dup_mmap": ("fentry", "dup_mmap"),
        "__mt_dup": ("kprobe", "__mt_dup"),
        "vm_area_dup": ("fentry", "vm_area_dup"),
    }
    assert str(choose_methods(facts).phases["mt_dup"]) == "exact (kprobe/kretprobe on __mt_dup: exact_mt_dup_sum_ns)"
    # Forcing a kind uses it wherever it attaches, and only there.
    forced = choose_methods(facts, forced="fentry").exact
    assert {fn: a.via for fn, a in forced.items()} == {"dup_mmap": "fentry", "vm_area_dup": "fentry"}


def test_children_are_not_probed_without_dup_mmap():
    caps = synthetic_host()
    caps["symbols"]["__mt_dup"]["kprobe"] = dict(ATTACHED)
    assert choose_methods(HostFacts.from_dict(caps)).exact == {}


def test_undo_dup_mmap_present_is_not_claimed_measured():
    caps = synthetic_host()
    caps["symbols"]["undo_dup_mmap"]["kallsyms"] = True
    assert plan(caps)["phases"]["undo_dup_mmap"].startswith("unavailable (symbol present")


def test_choose_methods_does_not_modify_facts():
    facts = HostFacts.from_dict(synthetic_host())
    before = copy.deepcopy(facts)
    render_doctor(facts, choose_methods(facts))
    assert facts == before


def test_render_marks_reasons_and_aligns_phases():
    caps = synthetic_host()
    text = render(caps)
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
    phases = plan(caps)["phases"]
    columns = {line.index(phases[line.split()[0]]) for line in phase_lines}
    assert len(columns) == 1, "methods start in one column"
    # Unknowns read as unknown: a tracepoint of unknown existence gets "?".
    caps["tracepoints"]["sched:sched_process_fork"] = {"exists": None, "tracefs": None, "btf": None}
    assert "? sched:sched_process_fork" in render(caps)


def test_render_says_which_per_vma_program_record_builds():
    caps = synthetic_host()
    assert "as tp_btf" not in render(caps)  # not tried: nothing claimed
    caps["typed_tracepoint_load"] = {"ok": True, "errno": None, "log": None}
    assert "✓ maple_tree:ma_write as tp_btf          attaches: record's per-VMA program reads ma_state" in render(caps)
    caps["typed_tracepoint_load"] = {"ok": False, "errno": "EPERM", "log": "attach"}
    text = render(caps)
    assert "✗ maple_tree:ma_write as tp_btf          refused (attach EPERM): record's per-VMA program is a raw" in text
    assert plan(caps)["backend"] == "raw_tracepoint"  # a refused tp_btf costs speed, not the backend


def test_render_survives_an_empty_dict():
    text = render({})
    assert "? lockdown         unknown" in text
    assert "record will use: nothing" in text


# -- other kernels, synthetic ---------------------------------------------------------------


def debian_6_1_host() -> dict:
    """Debian 6.1-like: fentry and kprobes attach to dup_mmap; no __mt_dup (bulk build); lib/ is notrace."""
    caps = synthetic_host()
    caps["kernel"]["release"] = "6.1.0-56-amd64"
    caps["lockdown"] = "none"
    caps["config"] = {"source": "/boot/config-6.1.0-56-amd64", "options": {"CONFIG_KPROBES": "y"}}
    attached = {"available": True, "reason": "loaded and attached", "errno": None}
    caps["symbols"]["dup_mmap"].update(ftrace="traceable", fentry=dict(attached), kprobe=dict(attached))
    caps["symbols"]["vm_area_dup"] = {
        "kallsyms": True, "names": ["vm_area_dup"], "btf_func": True, "ftrace": "traceable",
        "fentry": dict(attached), "kprobe": dict(attached),
    }
    notrace = "notrace (lib/ built without ftrace hooks)"
    caps["symbols"]["mas_store"].update(
        ftrace=notrace, fentry=no(notrace), kprobe=no(f"{notrace}; CONFIG_KPROBE_EVENTS_ON_NOTRACE unset")
    )
    absent = no("absent (kernel predates __mt_dup, v6.8)")
    caps["symbols"]["__mt_dup"] = {
        "kallsyms": False, "names": [], "btf_func": None, "ftrace": "absent", "fentry": absent, "kprobe": dict(absent),
    }
    return caps


def debian_6_12_host() -> dict:
    """Debian 6.12-like: dup_mmap inlined into copy_process, so not a symbol; __mt_dup present."""
    caps = synthetic_host()
    caps["kernel"]["release"] = "6.12.48+deb12-amd64"
    caps["lockdown"] = "none"
    inlined = no("inlined (no symbol on this kernel)")
    caps["symbols"]["dup_mmap"] = {
        "kallsyms": False, "names": [], "btf_func": None, "ftrace": "absent", "fentry": inlined, "kprobe": dict(inlined),
    }
    return caps


def test_debian_6_1_like_host():
    methods = plan(debian_6_1_host())
    assert methods["backend"] == "raw_tracepoint"
    assert methods["phases"]["mt_dup"] == (
        "bracket-corrected (bulk build: child lock -> first store, minus one VMA step"
        " (kernel predates __mt_dup, v6.8))"
    )
    assert methods["phases"]["dup_mmap"] == (
        "exact (fentry/fexit on dup_mmap: exact_dup_mmap_ns; bracket kept in dup_mmap_ns)"
    )
    assert methods["exact"] == {
        "dup_mmap": {"via": "fentry", "symbol": "dup_mmap"},
        "vm_area_dup": {"via": "fentry", "symbol": "vm_area_dup"},
    }
    assert methods["notes"][:3] == [
        "exact probes time dup_mmap (fentry), vm_area_dup (fentry) per dup_mmap call",
        "exact: __mt_dup not timed: absent (kernel predates __mt_dup, v6.8)",
        "exact: mas_store not timed: fentry: notrace (lib/ built without ftrace hooks);"
        " kprobe: notrace (lib/ built without ftrace hooks); CONFIG_KPROBE_EVENTS_ON_NOTRACE unset",
    ]
    # The bracket alone, when forced: the exact probes are named, not used.
    alone = choose_methods(HostFacts.from_dict(debian_6_1_host()), forced="tracepoint")
    assert alone.exact == {} and alone.phases["dup_mmap"].kind == "bracket"
    assert "dup_mmap: fentry and kprobe available; not used with --backend tracepoint" in alone.notes
    kprobes = choose_methods(HostFacts.from_dict(debian_6_1_host()), forced="kprobe")
    assert kprobes.backend == "raw_tracepoint" and kprobes.reason.startswith("BTF gives")
    assert {fn: a.via for fn, a in kprobes.exact.items()} == {"dup_mmap": "kprobe", "vm_area_dup": "kprobe"}
    text = render(debian_6_1_host())
    assert "✓ fentry         loaded and attached" in text and "✓ kprobe         loaded and attached" in text
    assert "✓ ftrace         traceable" in text
    assert "✗ ftrace         notrace (lib/ built without ftrace hooks)" in text
    assert "✗ __mt_dup         not in kallsyms" in text and "absent (kernel predates __mt_dup, v6.8)" in text
    assert "✓ lockdown         none" in text


def test_debian_6_12_like_host():
    caps = debian_6_12_host()
    methods = plan(caps)
    assert methods["backend"] == "raw_tracepoint"
    assert methods["phases"]["dup_mmap"] == "bracket (mmap_lock acquire/release)"  # the bracket needs no symbol
    assert methods["phases"]["mt_dup"].startswith("bracket-corrected")
    assert methods["exact"] == {}  # nothing to time exactly: dup_mmap is inlined
    inlined = "inlined (no symbol on this kernel)"
    assert methods["notes"] == [f"no exact probes: dup_mmap: fentry: {inlined}; kprobe: {inlined}"]
    text = render(caps)
    assert "✗ dup_mmap         not in kallsyms" in text and "inlined (no symbol on this kernel)" in text


def test_phase_methods_are_typed():
    facts = HostFacts.from_dict(debian_6_1_host())
    phases = choose_methods(facts).phases
    assert phases["dup_mmap"].kind == "exact"
    assert phases["mt_dup"].kind == "bracket-corrected" and phases["mt_dup"].applicable
    assert phases["vma_loop"].kind == "bracket" and phases["undo_dup_mmap"].kind == "unavailable"
    assert choose_methods(HostFacts.from_dict(synthetic_host())).phases["mt_dup"].kind == "bracket-corrected"


# -- --backend -----------------------------------------------------------------------------


def test_forcing_the_preferred_backend_keeps_its_reason():
    facts = HostFacts.from_dict(synthetic_host())
    assert choose_methods(facts, forced="raw_tracepoint") == choose_methods(facts)


def test_forcing_another_usable_backend_says_so():
    forced = choose_methods(HostFacts.from_dict(synthetic_host()), forced="tracepoint")
    assert (forced.backend, forced.reason) == ("tracepoint", "forced by --backend")
    assert str(forced.phases["vma_loop"]) == "bracket (first -> last mas_store)"


def test_forcing_an_unusable_backend_names_what_is_missing():
    caps = synthetic_host()
    caps["btf"] = {"present": False, "offsets": {}, "error": "no /sys/kernel/btf/vmlinux"}
    forced = choose_methods(HostFacts.from_dict(caps), forced="raw_tracepoint")
    assert forced.backend is None
    assert forced.reason == "--backend raw_tracepoint is not usable here: no /sys/kernel/btf/vmlinux"
    with pytest.raises(UsageError, match="unknown backend 'uprobe'"):
        choose_methods(HostFacts.from_dict(caps), forced="uprobe")


@pytest.mark.parametrize("kind", ["fentry", "kprobe"])
def test_forcing_an_exact_backend_the_host_refuses_names_what_is_missing(kind):
    facts = HostFacts.from_dict(synthetic_host())
    forced = choose_methods(facts, forced=kind)
    assert forced.backend is None and forced.exact == {}
    why = getattr(facts.symbol("dup_mmap"), kind).reason
    assert forced.reason == f"--backend {kind} is not usable here: {kind} on dup_mmap: {why}"


# -- facts as JSON -----------------------------------------------------------------------------


@pytest.mark.parametrize("host", [synthetic_host, debian_6_1_host, debian_6_12_host])
def test_facts_round_trip_through_json(host):
    facts = HostFacts.from_dict(host())
    doc = json.loads(json.dumps(facts.to_dict()))
    assert HostFacts.from_dict(doc) == facts
    assert doc["symbols"]["undo_dup_mmap"]["fentry"]["reason"] == "absent (undo_dup_mmap never landed upstream)"


def test_missing_keys_stay_unknown():
    facts = HostFacts.from_dict({"kernel": {"release": "6.1.0"}, "symbols": {"dup_mmap": {"kallsyms": True}}})
    assert facts.root is None and facts.lockdown == "unknown" and facts.btf.present is None
    assert facts.kernel.version_tuple == (6, 1)
    assert facts.symbol("dup_mmap").fentry.available is None
    assert facts.tracepoint("maple_tree:ma_write").exists is None
    assert HostFacts.from_dict(None) == HostFacts() == HostFacts.from_dict({"btf": "garbage", "symbols": []})


def test_doctor_json_is_facts_plus_methods():
    facts = HostFacts.from_dict(synthetic_host())
    doc = doctor_json(facts, choose_methods(facts))
    assert list(doc)[-1] == "methods" and doc["methods"] == plan(synthetic_host())
    assert HostFacts.from_dict(doc) == facts  # a reader ignores the extra key


# -- one list of tracepoints, offsets and backends ---------------------------------------------------


def test_doctor_checks_what_the_bracket_attaches_to_and_reads():
    assert TRACEPOINT_NAMES == tuple(f"{system}:{event}" for system, event in bracket.TRACEPOINTS)
    assert tuple(b.name for b in BACKENDS) == bracket.BACKENDS
    assert PHASES[-1] == "undo_dup_mmap" and "vma_step" not in PHASES  # derived, not measured


def test_probe_without_loading_reports_every_offset_record_reads():
    facts = survey_host(try_load=False)
    if facts.btf.present and not facts.btf.error:
        expected = {f"{struct}.{member}" for struct, member in bracket.BTF_OFFSETS}
        assert set(facts.btf.offsets) == expected and "task_struct.pid" in expected
    assert list(facts.tracepoints) == list(TRACEPOINT_NAMES)
    assert list(facts.symbols) == list(TARGET_SYMBOLS)


# -- this host, for real ----------------------------------------------------------------


@pytest.fixture(scope="module")
def host_facts(bpf_host) -> HostFacts:
    return survey_host(try_load=True)


@pytest.mark.bpf
def test_this_host_symbols_match_kallsyms(host_facts):
    for name in TARGET_SYMBOLS:
        symbol = host_facts.symbols[name]
        assert symbol.kallsyms == kernel_truth.in_kallsyms(name), name
        if not symbol.kallsyms:
            assert symbol.fentry.available is False and symbol.kprobe.available is False
    undo = host_facts.symbols["undo_dup_mmap"]
    if not undo.kallsyms:
        assert undo.fentry.reason == "absent (undo_dup_mmap never landed upstream)"


@pytest.mark.bpf
def test_this_host_probe_answers_match_real_attach_attempts(host_facts):
    """fentry and kprobe, per symbol: doctor's yes/no is what an attach attempt of our own gets."""
    from tracer.host import headers

    headers.apply(headers.resolve_headers())
    kprobes_built = kernel_truth.in_kallsyms("register_kprobe")
    truth_lockdown = kernel_truth.lockdown()
    present = tuple(name for name, symbol in host_facts.symbols.items() if symbol.kallsyms)
    truth = {how: kernel_truth.attach_results(how, present) for how in ("fentry", "kprobe")}
    for name in present:
        symbol = host_facts.symbols[name]
        for how, check in (("fentry", symbol.fentry), ("kprobe", symbol.kprobe)):
            if check.reason == "not tried (fentry attaches)":
                assert how == "kprobe" and symbol.fentry.available is True  # doctor stops at the first that attaches
                continue
            assert check.available is not None, f"{name} {how}: root must get an answer"
            assert check.available == truth[how][name], f"{name} {how}: {check.reason}"
            if check.available:
                assert check.reason == "loaded and attached"
            elif check.errno is not None and truth_lockdown in ("integrity", "confidentiality"):
                assert f"lockdown={truth_lockdown}" in check.reason  # the likely cause, named
        if not kprobes_built:
            assert symbol.kprobe.reason.startswith("kprobes not built")


@pytest.mark.bpf
def test_this_host_facts(host_facts):
    assert host_facts.root is True
    assert host_facts.lockdown == kernel_truth.lockdown()  # known although securityfs may have been unmounted
    assert host_facts.perf_event.sampling == (host_facts.lockdown != "confidentiality")
    for name, tp in host_facts.tracepoints.items():
        assert tp.exists == kernel_truth.tracepoint_in_kernel(name.split(":")[1]), name
        assert tp.btf == tp.exists  # BTF present (bpf_host): every tracepoint has its btf_trace_ typedef
    assert host_facts.btf.present and host_facts.btf.error is None
    assert host_facts.btf.offsets == {
        f"{struct}.{member}": offset
        for (struct, member), offset in zip(bracket.BTF_OFFSETS, bracket.offsets_from_btf().values())
    }
    assert host_facts.headers.ok and host_facts.headers.compiles
    assert host_facts.raw_tracepoint_load is not None and host_facts.raw_tracepoint_load.ok
    assert host_facts.load_skipped is None
    assert choose_methods(host_facts).backend == "raw_tracepoint"
    json.dumps(host_facts.to_dict())  # JSON-able as is


@pytest.mark.bpf
def test_this_host_render(host_facts):
    text = render_doctor(host_facts, choose_methods(host_facts))
    assert "record will use: raw_tracepoint" in text
    if not host_facts.symbols["undo_dup_mmap"].kallsyms:
        assert "undo_dup_mmap    unavailable (symbol absent)" in text
    assert f"lockdown         {kernel_truth.lockdown()}" in text


@pytest.mark.bpf
def test_cli_doctor_json_is_one_document(bpf_host, capfd, monkeypatch):
    """In this process (a new one costs a minute under emulation); capfd sees what C code writes to fd 1 and 2."""
    from tracer.cli import main

    monkeypatch.setattr(sys, "argv", ["tracer", "doctor", "--json"])
    with pytest.raises(SystemExit) as exited:
        main()
    out = capfd.readouterr()
    assert exited.value.code in (0, None), out.err
    doc = json.loads(out.out)
    undo_seen = kernel_truth.in_kallsyms("undo_dup_mmap")
    assert doc["methods"]["phases"]["undo_dup_mmap"] == (
        "unavailable (symbol present; no probe the kernel allows)" if undo_seen else "unavailable (symbol absent)"
    )
    facts = HostFacts.from_dict(doc)
    assert facts.to_dict() == {k: v for k, v in doc.items() if k != "methods"}
    assert "Failed to load" not in out.err and "bpf:" not in out.err  # libbpf noise is captured


def test_without_loading_nothing_is_claimed_about_fentry():
    facts = survey_host(try_load=False)
    dup = facts.symbols["dup_mmap"]
    if dup.kallsyms and facts.btf.present and not dup.ftrace.startswith("notrace"):
        assert dup.fentry.available is None
        assert dup.fentry.reason.startswith("not tried (try_load=False")
    assert facts.raw_tracepoint_load is None and facts.typed_tracepoint_load is None
    assert "? fentry" in render_doctor(facts, choose_methods(facts)) or not dup.kallsyms


def test_fresh_machine_lockdown_and_backend(tmp_path):
    """With securityfs and tracefs unmounted (a fresh boot), doctor as root still knows lockdown."""
    if not is_root():
        pytest.skip("mounting securityfs needs root")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import json; from tracer.host.survey import survey_host; from tracer.host.methods import choose_methods;"
        " f = survey_host(try_load=False);"
        " print(json.dumps({'lockdown': f.lockdown, 'tracefs': f.tracefs, 'backend': choose_methods(f).backend}))"
    )
    script = (
        "umount /sys/kernel/security 2>/dev/null; umount /sys/kernel/tracing 2>/dev/null;"
        " { umount -R /sys/kernel/debug || umount /sys/kernel/debug; } 2>/dev/null; exec \"$0\" -c \"$1\""
    )
    out = subprocess.run(
        ["unshare", "-m", "sh", "-c", script, sys.executable, code],
        capture_output=True, text=True, cwd=root, timeout=120, env={**os.environ, "PYTHONPATH": root},
    )
    assert out.returncode == 0, out.stderr
    found = json.loads(out.stdout)
    assert found["lockdown"] == kernel_truth.lockdown() != "unknown"
    assert found["tracefs"] is None
    assert found["backend"] in ("raw_tracepoint", "tracepoint")  # root: record mounts tracefs if needed


def test_doctor_imports_neither_numpy_nor_the_probe_loaders():
    """doctor asks the kernel through the host layer alone: its import chain stays small."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = (
        "import sys; from tracer.host.survey import survey_host; from tracer.host.methods import choose_methods;"
        " from tracer.host.doctor import render_doctor, doctor_json;"
        " f = survey_host(try_load=False); p = choose_methods(f); render_doctor(f, p); doctor_json(f, p);"
        " print(' '.join(m for m in ('numpy', 'pandas', 'pyarrow', 'tracer.probes.bracket') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=root, timeout=120,
                         env={**os.environ, "PYTHONPATH": root})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == ""

"""tracer.host.machine: the machine's set-up read from a made-up /proc and /sys, and compare flagging it."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis.compare.context import recording_context
from tracer.host.machine import machine_facts, preempt_model, vulnerability_summary


def tree(root: Path, files: dict[str, str]) -> Path:
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text + "\n")
    return root


CPU = "sys/devices/system/cpu"
HOST = {
    "proc/cmdline": "root=/dev/vda isolcpus=1 nohz_full=1 mitigations=off quiet",
    "proc/loadavg": "0.52 0.40 0.31 2/210 4242",
    "proc/self/cgroup": "0::/system.slice/bench.service",
    "sys/fs/cgroup/system.slice/bench.service/cpu.max": "50000 100000",
    "sys/fs/cgroup/system.slice/cpu.max": "max 100000",
    "sys/kernel/mm/transparent_hugepage/enabled": "always [madvise] never",
    "sys/kernel/mm/transparent_hugepage/defrag": "always defer defer+madvise [madvise] never",
    f"{CPU}/smt/control": "on",
    f"{CPU}/nohz_full": "1",
    f"{CPU}/vulnerabilities/meltdown": "Not affected",
    f"{CPU}/vulnerabilities/spectre_v2": "Mitigation: Retpolines; STIBP: disabled",
    f"{CPU}/vulnerabilities/spec_store_bypass": "Vulnerable",
    f"{CPU}/cpu1/cpufreq/scaling_min_freq": "1500000",
    f"{CPU}/cpu1/cpufreq/scaling_max_freq": "3500000",
    f"{CPU}/cpu1/cpufreq/scaling_cur_freq": "3400000",
    f"{CPU}/cpu1/cpufreq/scaling_driver": "acpi-cpufreq",
    f"{CPU}/cpufreq/boost": "1",
}


def test_every_fact_is_read_from_proc_and_sys(tmp_path):
    facts = machine_facts(cpu=1, root=tree(tmp_path, HOST), config={"CONFIG_PREEMPT_VOLUNTARY": "y"})
    assert facts["thp"] == "madvise" and facts["thp_defrag"] == "madvise"
    assert facts["smt"] == "on" and facts["nohz_full"] == "1"
    assert facts["boot_params"] == {"isolcpus": "1", "nohz_full": "1", "mitigations": "off"}
    assert facts["mitigations"] == "1 mitigated, 1 vulnerable, 1 not affected"
    assert facts["frequency"] == {"cpu": 1, "driver": "acpi-cpufreq", "min_khz": 1500000, "max_khz": 3500000,
                                  "cur_khz": 3400000, "boost": True}
    assert facts["loadavg"] == [0.52, 0.40, 0.31]
    assert facts["cpu_quota"] == "50000/100000 us at /system.slice/bench.service"
    assert facts["preempt"] == "voluntary"


def test_a_bare_host_says_nothing_rather_than_guessing(tmp_path):
    facts = machine_facts(root=tmp_path)
    assert all(value in (None, {}) for value in facts.values()), facts


def test_cgroup_v1_quota_and_no_limit(tmp_path):
    v1 = tree(tmp_path / "a", {"proc/self/cgroup": "4:cpu,cpuacct:/jobs\n1:memory:/",
                               "sys/fs/cgroup/cpu,cpuacct/jobs/cpu.cfs_quota_us": "25000",
                               "sys/fs/cgroup/cpu,cpuacct/jobs/cpu.cfs_period_us": "100000"})
    assert machine_facts(root=v1)["cpu_quota"] == "25000/100000 us at /jobs"
    unlimited = tree(tmp_path / "b", {"proc/self/cgroup": "1:cpu:/", "sys/fs/cgroup/cpu/cpu.cfs_quota_us": "-1",
                                      "sys/fs/cgroup/cpu/cpu.cfs_period_us": "100000"})
    assert machine_facts(root=unlimited)["cpu_quota"] == "max"


@pytest.mark.parametrize(
    "files, config, version, want",
    [
        ({"sys/kernel/debug/sched/preempt": "none (voluntary) full lazy"}, None, None, "voluntary"),
        ({"proc/cmdline": "preempt=full"}, {"CONFIG_PREEMPT_DYNAMIC": "y", "CONFIG_PREEMPT_NONE": "y"}, None, "full"),
        ({"proc/cmdline": "quiet"}, {"CONFIG_PREEMPT_DYNAMIC": "y", "CONFIG_PREEMPT_NONE": "y"}, None, "none"),
        ({}, None, "#1 SMP PREEMPT_RT Debian", "rt"),
        ({}, None, "#1 SMP PREEMPT_DYNAMIC", None),
    ],
)
def test_preemption_model(tmp_path, files, config, version, want):
    assert preempt_model(tree(tmp_path, files), config, version) == want


def test_vulnerability_summary_counts_kinds():
    assert vulnerability_summary(None) is None
    assert vulnerability_summary({"a": "Mitigation: x", "b": "Mitigation: y", "c": "Unknown: z"}) == "2 mitigated, 1 other"


def _meta(host: dict, level: str = "phase", hz: int | None = None) -> dict:
    return {"host": host, "level": level, "sample": {"hz": hz, "stacks": []} if hz else None}


def test_compare_flags_level_sampling_and_the_machine_loudly():
    host = {"hostname": "h", "preempt": "none", "thp": "madvise", "smt": "on", "mitigations": "3 mitigated",
            "isolated_cpus": None, "nohz_full": None, "boot_params": {}, "cpu_quota": "max", "frequency": None,
            "loadavg": [0.5, 0.4, 0.3]}
    other = {**host, "thp": "always", "cpu_quota": "50000/100000 us at /x", "loadavg": [3.0, 2.0, 1.0],
             "frequency": {"min_khz": 1500000, "max_khz": 3500000, "driver": "acpi-cpufreq", "boost": True}}
    items = {i.key: i for i in recording_context([_meta(host)], [_meta(other, "full", 4999)])}
    loud = {k for k, i in items.items() if i.loud}
    assert {"level", "sampling", "thp", "cpu quota", "frequency"} <= loud
    assert (items["sampling"].base, items["sampling"].new) == ("off", "4999 Hz")
    assert items["frequency"].new == "1500-3500 MHz (acpi-cpufreq), boost on"
    assert items["load"].differs and not items["load"].loud  # shown, not a reason to distrust
    assert not ({"preempt", "smt", "mitigations", "isolated"} & loud)


def test_a_recording_without_the_machine_facts_is_not_a_loud_difference():
    old = {"hostname": "h"}
    new = {"hostname": "h", "preempt": "none", "thp": "madvise", "smt": "on", "frequency": None, "cpu_quota": "max"}
    items = {i.key: i for i in recording_context([_meta(old)], [_meta(new)])}
    assert items["thp"].differs and not items["thp"].loud
    assert not any(i.loud for i in items.values()), [i for i in items.values() if i.loud]

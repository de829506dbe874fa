"""What differs between the two sides besides the change under test.

A reviewer must see at once when a "regression" is really a different host,
CPU, pinning, governor, measuring method or recording level, or a machine set
up differently (preemption model, THP, SMT, mitigations, isolated CPUs,
frequency range, CPU quota). Each item is shown side by side;
items whose difference invalidates a timing comparison are `loud` and are
printed first, in capitals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Sequence

__all__ = ["ContextItem", "recording_context", "benchmark_context", "LOUD_KEYS"]

# Differences that make the timings incomparable, not merely different. The
# workload and layout are not here: forks are compared group by group (same
# workload, layout and VMAs), and a pairing of unlike groups is warned about
# where it is made.
LOUD_KEYS = (
    "host", "cpu model", "methods", "timed", "per-VMA", "backend", "cpu pinning", "governor", "level", "sampling",
)
# The machine's set-up (tracer.host.machine): as loud, where both sides recorded
# it; recordings made before these were kept say nothing, which is not a difference.
LOUD_WHEN_KNOWN = ("preempt", "thp", "smt", "mitigations", "isolated", "frequency", "cpu quota")


@dataclass
class ContextItem:
    key: str
    base: str
    new: str

    @property
    def differs(self) -> bool:
        return self.base != self.new

    @property
    def mixed(self) -> bool:
        """A side whose files disagree among themselves on an item that matters."""
        return self.key in LOUD_KEYS and (self.base.startswith("mixed:") or self.new.startswith("mixed:"))

    @property
    def loud(self) -> bool:
        known = "?" not in (self.base, self.new)
        return (self.differs and (self.key in LOUD_KEYS or (self.key in LOUD_WHEN_KNOWN and known))) or self.mixed


def _side_value(metas: Sequence[Mapping[str, Any]], get: Callable[[Mapping[str, Any]], Any]) -> str:
    """One side's value; 'mixed: a, b' when its files disagree; '?' when none says."""
    values: list[str] = []
    for meta in metas:
        try:
            value = get(meta)
        except (KeyError, TypeError, AttributeError):
            value = None
        text = "?" if value is None or value == "" else str(value)
        if text not in values:
            values.append(text)
    if not values:
        return "?"
    return values[0] if len(values) == 1 else "mixed: " + ", ".join(values)


def _dict(meta: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = meta.get(key)
    return value if isinstance(value, Mapping) else {}


def _methods(meta: Mapping[str, Any]) -> str | None:
    """'bracket (mt_dup: bracket-corrected)': the usual method, then the exceptions."""
    # The method's name, without the explanation in parentheses that follows it.
    methods = {str(k): str(v).split(" (")[0] for k, v in _dict(meta, "methods").items()}
    if not methods:
        return None
    hows = list(methods.values())
    usual = max(sorted(set(hows)), key=hows.count)
    others = "; ".join(f"{phase}: {how}" for phase, how in sorted(methods.items()) if how != usual)
    return usual + (f" ({others})" if others else "")


def _pinning(meta: Mapping[str, Any]) -> str:
    cpu = _dict(meta, "workload").get("cpu")
    return f"cpu {cpu}" if cpu is not None else "not pinned"


def _workload(meta: Mapping[str, Any]) -> str | None:
    w = _dict(meta, "workload")
    if w.get("kind") == "spawn":
        return f"spawn {w.get('extra_vmas')} extra VMAs" + (" touched" if w.get("touch") else "")
    if w.get("kind") == "command":
        return "command: " + " ".join(map(str, w.get("command") or []))
    return _dict(meta, "targets").get("mode")


def _layout(meta: Mapping[str, Any]) -> str | None:
    w = _dict(meta, "workload")
    if w.get("kind") == "spawn":
        return str(w.get("layout") or "gapped")
    return None


def _per_vma_program(meta: Mapping[str, Any]) -> str | None:
    """tp_btf, raw_tracepoint or tracepoint; "none" at level fork; None when the recording predates the key."""
    kind = _dict(meta, "per_vma_program").get("type")
    if kind is None and "per_vma_program" in meta:
        return "none"
    return kind


def _sampling(meta: Mapping[str, Any]) -> str:
    """'4999 Hz', or 'off': a sampled run carries the sampler's cost in its timings."""
    hz = _dict(meta, "sample").get("hz")
    return f"{hz} Hz" if hz else "off"


def _isolated(meta: Mapping[str, Any]) -> str | None:
    """Isolated and tickless CPUs (sysfs), with the boot parameters that asked for them."""
    host = _dict(meta, "host")
    if "preempt" not in host:  # recorded before the machine's facts were kept
        return None
    boot = _dict(host, "boot_params")
    parts = [f"isolated {host.get('isolated_cpus') or boot.get('isolcpus') or 'none'}",
             f"nohz_full {host.get('nohz_full') or boot.get('nohz_full') or 'none'}"]
    return ", ".join(parts)


def _frequency(meta: Mapping[str, Any]) -> str | None:
    """'1500-3500 MHz (acpi-cpufreq), boost on'; 'no cpufreq' where the host has none."""
    host = _dict(meta, "host")
    if "frequency" not in host:
        return None
    f = host.get("frequency")
    if not isinstance(f, Mapping):
        return "no cpufreq"
    mhz = lambda khz: "?" if khz is None else f"{khz // 1000}"  # noqa: E731
    boost = "" if f.get("boost") is None else f", boost {'on' if f['boost'] else 'off'}"
    return f"{mhz(f.get('min_khz'))}-{mhz(f.get('max_khz'))} MHz ({f.get('driver') or '?'}){boost}"


def _load(meta: Mapping[str, Any]) -> str | None:
    """The 1-minute load average when the run began: shown, never a reason to distrust."""
    load = _dict(meta, "host").get("loadavg")
    return f"{load[0]:.1f}" if isinstance(load, list) and load else None


def recording_context(base: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[ContextItem]:
    """The context of two sets of recordings, from their metadata."""
    base, new = list(base), list(new)
    getters: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
        ("kernel", lambda m: _dict(m, "kernel").get("release")),
        ("host", lambda m: _dict(m, "host").get("hostname")),
        ("cpu model", lambda m: _dict(m, "host").get("cpu_model")),
        ("cpu pinning", _pinning),
        ("governor", lambda m: _dict(m, "host").get("governor")),
        ("frequency", _frequency),
        ("preempt", lambda m: _dict(m, "host").get("preempt")),
        ("thp", lambda m: _dict(m, "host").get("thp")),
        ("smt", lambda m: _dict(m, "host").get("smt")),
        ("mitigations", lambda m: _dict(m, "host").get("mitigations")),
        ("isolated", _isolated),
        ("cpu quota", lambda m: _dict(m, "host").get("cpu_quota")),
        ("load", _load),
        ("level", lambda m: m.get("level") or "phase"),
        ("sampling", _sampling),
        ("backend", lambda m: m.get("backend")),
        ("methods", _methods),
        ("timed", lambda m: f"{m.get('stores_timed') or 'sparse'} stores"),
        ("per-VMA", _per_vma_program),
        ("algorithm", lambda m: _dict(m, "algorithm").get("name")),
        ("workload", _workload),
        ("layout", _layout),
        ("tool", lambda m: m.get("tool_version")),
    ]
    return [ContextItem(key, _side_value(base, get), _side_value(new, get)) for key, get in getters]


def _kernel_of_platform(platform: str | None) -> str | None:
    """pyperf's 'platform' ('Linux-6.18.0-1-amd64-x86_64-with-glibc2.36') -> the release."""
    if not platform or not platform.startswith("Linux-"):
        return platform
    rest = platform[len("Linux-") :]
    for arch in ("-x86_64", "-aarch64", "-arm64", "-riscv64", "-ppc64le", "-s390x", "-i686"):
        if arch in rest:
            return rest.split(arch, 1)[0]
    return rest


def _governor_of_cpu_config(config: str | None) -> str | None:
    """pyperf's 'cpu_config' ('0-1=driver:acpi-cpufreq, governor:performance; ...')."""
    if not config:
        return None
    found = sorted({part.split(":", 1)[1] for part in config.replace(";", ",").split(",") if part.strip().startswith("governor:")})
    return ", ".join(found) or None


def benchmark_context(base: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[ContextItem]:
    """The context of two sets of pyperf benchmarks, from their metadata."""
    base, new = list(base), list(new)
    getters: list[tuple[str, Callable[[Mapping[str, Any]], Any]]] = [
        ("kernel", lambda m: m.get("kernel_release") or _kernel_of_platform(m.get("platform"))),
        ("host", lambda m: m.get("hostname")),
        ("cpu model", lambda m: m.get("cpu_model_name")),
        ("cpu pinning", lambda m: f"cpu {m['spawn_cpu']}" if m.get("spawn_cpu") is not None else "not pinned"),
        ("governor", lambda m: m.get("governor") or _governor_of_cpu_config(m.get("cpu_config"))),
        ("methods", lambda m: m.get("forktrace_method")),
        ("workload", lambda m: f"spawn {m['spawn_vmas']} extra VMAs" if m.get("spawn_vmas") is not None else m.get("name")),
        ("layout", lambda m: m.get("spawn_layout")),
        ("tool", lambda m: m.get("forktrace_version")),
    ]
    return [ContextItem(key, _side_value(base, get), _side_value(new, get)) for key, get in getters]

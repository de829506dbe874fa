"""What the running kernel allows, as typed facts: what `tracer doctor` reports.

The types only hold facts; tracer/host/survey.py gathers them (side effects),
tracer/host/methods.py decides from them, tracer/host/doctor.py renders them.
A recording saves `HostFacts.to_dict()` as its `probes` metadata, and
`HostFacts.from_dict()` reads it back, also from recordings of older versions:
a key that is missing stays unknown (None), never guessed.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

__all__ = [
    "BccFacts",
    "BtfFacts",
    "ConfigFacts",
    "HeadersFacts",
    "HostFacts",
    "KernelFacts",
    "LoadCheck",
    "PerfFacts",
    "ProbeCheck",
    "SymbolFacts",
    "TracepointFacts",
    "MT_DUP_SINCE",
    "kernel_version",
]

# __mt_dup (copy the whole tree, then replace entries) replaced the bulk build in v6.8.
MT_DUP_SINCE = (6, 8)

# Kernel config options doctor reports and the decisions read.
CONFIG_OPTIONS = (
    "CONFIG_KPROBES",
    "CONFIG_KPROBE_EVENTS_ON_NOTRACE",
    "CONFIG_FUNCTION_TRACER",
    "CONFIG_DEBUG_INFO_BTF",
    "CONFIG_BPF_EVENTS",
)


def kernel_version(release: str | None) -> tuple[int, int] | None:
    """'6.18.44-fc-v595' -> (6, 18); None when the release does not say."""
    m = re.match(r"(\d+)\.(\d+)", release or "")
    return (int(m[1]), int(m[2])) if m else None


def _dict(value: Any) -> Mapping[str, Any]:
    """`value` if it is a mapping, else empty: old or hand-edited metadata may hold anything."""
    return value if isinstance(value, Mapping) else {}


@dataclass(frozen=True)
class KernelFacts:
    """uname of the running kernel."""

    release: str | None = None
    version: str | None = None
    machine: str | None = None

    @property
    def version_tuple(self) -> tuple[int, int] | None:
        return kernel_version(self.release)

    @classmethod
    def from_dict(cls, d: Any) -> KernelFacts:
        d = _dict(d)
        return cls(release=d.get("release"), version=d.get("version"), machine=d.get("machine"))


@dataclass(frozen=True)
class ConfigFacts:
    """The kernel config options that matter here; source None when no config file was found."""

    source: str | None = None
    options: dict[str, str | None] = field(default_factory=dict)

    def get(self, name: str) -> str | None:
        return self.options.get(name)

    @classmethod
    def from_dict(cls, d: Any) -> ConfigFacts:
        d = _dict(d)
        return cls(source=d.get("source"), options=dict(_dict(d.get("options"))))


@dataclass(frozen=True)
class BtfFacts:
    """The kernel's own BTF, and the struct offsets read from it ("struct.member" -> bytes)."""

    present: bool | None = None
    path: str | None = None
    offsets: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    @property
    def usable(self) -> bool:
        """Present and every offset the probes need was found."""
        return bool(self.present) and not self.error

    @classmethod
    def from_dict(cls, d: Any) -> BtfFacts:
        d = _dict(d)
        return cls(present=d.get("present"), path=d.get("path"), offsets=dict(_dict(d.get("offsets"))), error=d.get("error"))


@dataclass(frozen=True)
class BccFacts:
    importable: bool | None = None
    version: str | None = None
    error: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> BccFacts:
        d = _dict(d)
        return cls(importable=d.get("importable"), version=d.get("version"), error=d.get("error"))


@dataclass(frozen=True)
class HeadersFacts:
    """Kernel headers for bcc; compiles is None until a test program was built with them."""

    ok: bool | None = None
    path: str | None = None
    description: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    compiles: bool | None = None

    @classmethod
    def from_dict(cls, d: Any) -> HeadersFacts:
        d = _dict(d)
        return cls(
            ok=d.get("ok"),
            path=d.get("path"),
            description=d.get("description"),
            env=dict(_dict(d.get("env"))),
            compiles=d.get("compiles"),
        )


@dataclass(frozen=True)
class PerfFacts:
    """perf_event_paranoid, and whether kernel stacks may be sampled."""

    paranoid: int | None = None
    sampling: bool | None = None

    @classmethod
    def from_dict(cls, d: Any) -> PerfFacts:
        d = _dict(d)
        return cls(paranoid=d.get("paranoid"), sampling=d.get("sampling"))


@dataclass(frozen=True)
class TracepointFacts:
    """Seen in tracefs events/? Has a btf_trace_<name> typedef (raw tracepoint)? None: could not look."""

    exists: bool | None = None
    tracefs: bool | None = None
    btf: bool | None = None

    @classmethod
    def from_dict(cls, d: Any) -> TracepointFacts:
        d = _dict(d)
        return cls(exists=d.get("exists"), tracefs=d.get("tracefs"), btf=d.get("btf"))


@dataclass(frozen=True)
class ProbeCheck:
    """Can one kind of probe (fentry, kprobe) attach to a symbol: yes, no or not tried (None), and why."""

    available: bool | None = None
    reason: str = ""
    errno: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> ProbeCheck:
        d = _dict(d)
        return cls(available=d.get("available"), reason=d.get("reason") or "", errno=d.get("errno"))


@dataclass(frozen=True)
class LoadCheck:
    """The kernel's answer to loading one test program: ok, its errno, bcc's last word."""

    ok: bool | None = None
    errno: str | None = None
    log: str | None = None

    @classmethod
    def from_dict(cls, d: Any) -> LoadCheck | None:
        if not isinstance(d, Mapping):
            return None
        return cls(ok=d.get("ok"), errno=d.get("errno"), log=d.get("log"))


@dataclass(frozen=True)
class SymbolFacts:
    """One kernel function fork() goes through: its symbols, and how it could be probed."""

    kallsyms: bool | None = None
    names: tuple[str, ...] = ()  # every kallsyms symbol of it, compiler clones included
    btf_func: bool | None = None
    ftrace: str = "unknown"  # "traceable", "notrace (...)", "absent" or "unknown (...)"
    fentry: ProbeCheck = field(default_factory=ProbeCheck)
    kprobe: ProbeCheck = field(default_factory=ProbeCheck)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["names"] = list(self.names)
        return d

    @classmethod
    def from_dict(cls, d: Any) -> SymbolFacts:
        d = _dict(d)
        return cls(
            kallsyms=d.get("kallsyms"),
            names=tuple(d.get("names") or ()),
            btf_func=d.get("btf_func"),
            ftrace=d.get("ftrace") or "unknown",
            fentry=ProbeCheck.from_dict(d.get("fentry")),
            kprobe=ProbeCheck.from_dict(d.get("kprobe")),
        )


@dataclass(frozen=True)
class HostFacts:
    """Everything doctor reports and the method choice depends on.

    lockdown is "none", "integrity", "confidentiality" or "unknown" (as
    kernel.lockdown_mode() says it). load_skipped says why no test program was
    loaded (None: they were).
    """

    kernel: KernelFacts = field(default_factory=KernelFacts)
    root: bool | None = None
    lockdown: str = "unknown"
    config: ConfigFacts = field(default_factory=ConfigFacts)
    tracefs: str | None = None
    btf: BtfFacts = field(default_factory=BtfFacts)
    bcc: BccFacts = field(default_factory=BccFacts)
    headers: HeadersFacts = field(default_factory=HeadersFacts)
    perf_event: PerfFacts = field(default_factory=PerfFacts)
    tracepoints: dict[str, TracepointFacts] = field(default_factory=dict)
    raw_tracepoint_load: LoadCheck | None = None
    # A test tp_btf program on maple_tree:ma_write (compiler-free): whether record's
    # per-VMA program can be BTF-typed (plain reads) rather than a raw tracepoint.
    typed_tracepoint_load: LoadCheck | None = None
    load_skipped: str | None = None
    symbols: dict[str, SymbolFacts] = field(default_factory=dict)

    def tracepoint(self, name: str) -> TracepointFacts:
        """Facts on one tracepoint ("system:event"); all unknown if it was not looked at."""
        return self.tracepoints.get(name) or TracepointFacts()

    def symbol(self, name: str) -> SymbolFacts:
        """Facts on one function; all unknown if it was not looked at."""
        return self.symbols.get(name) or SymbolFacts()

    def to_dict(self) -> dict[str, Any]:
        """JSON-able, with the keys `doctor --json` has always used."""
        return {
            "kernel": asdict(self.kernel),
            "root": self.root,
            "lockdown": self.lockdown,
            "config": asdict(self.config),
            "tracefs": self.tracefs,
            "btf": asdict(self.btf),
            "bcc": asdict(self.bcc),
            "headers": asdict(self.headers),
            "perf_event": asdict(self.perf_event),
            "tracepoints": {name: asdict(tp) for name, tp in self.tracepoints.items()},
            "raw_tracepoint_load": asdict(self.raw_tracepoint_load) if self.raw_tracepoint_load else None,
            "typed_tracepoint_load": asdict(self.typed_tracepoint_load) if self.typed_tracepoint_load else None,
            "load_skipped": self.load_skipped,
            "symbols": {name: symbol.to_dict() for name, symbol in self.symbols.items()},
        }

    @classmethod
    def from_dict(cls, d: Any) -> HostFacts:
        """Read back to_dict()'s output (e.g. a recording's `probes`); missing keys stay unknown."""
        d = _dict(d)
        return cls(
            kernel=KernelFacts.from_dict(d.get("kernel")),
            root=d.get("root"),
            lockdown=d.get("lockdown") or "unknown",
            config=ConfigFacts.from_dict(d.get("config")),
            tracefs=d.get("tracefs"),
            btf=BtfFacts.from_dict(d.get("btf")),
            bcc=BccFacts.from_dict(d.get("bcc")),
            headers=HeadersFacts.from_dict(d.get("headers")),
            perf_event=PerfFacts.from_dict(d.get("perf_event")),
            tracepoints={name: TracepointFacts.from_dict(tp) for name, tp in _dict(d.get("tracepoints")).items()},
            raw_tracepoint_load=LoadCheck.from_dict(d.get("raw_tracepoint_load")),
            typed_tracepoint_load=LoadCheck.from_dict(d.get("typed_tracepoint_load")),
            load_skipped=d.get("load_skipped"),
            symbols={name: SymbolFacts.from_dict(s) for name, s in _dict(d.get("symbols")).items()},
        )

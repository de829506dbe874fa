"""The recording format: one Parquet file per `tracer record` run, self-describing.

Owned here, below both sides: tracer/ writes recordings, analysis/ reads them,
and neither knows the other's internals. schema (columns, metadata keys,
version), phases (the one list of phases and how they derive from the
bracket), reader, writer.
"""

from importlib import import_module

# Loaded on first use: `tracer doctor` needs the phase list, not pandas and
# pyarrow, and under emulation their import costs a minute.
_HOME = {
    "PHASE_NAMES": "phases",
    "PHASES": "phases",
    "Phase": "phases",
    "derive_phases": "phases",
    "Recording": "reader",
    "load_recording": "reader",
    "FORMAT_VERSION": "schema",
    "write_recording": "writer",
}

__all__ = [
    "FORMAT_VERSION",
    "PHASES",
    "PHASE_NAMES",
    "Phase",
    "Recording",
    "derive_phases",
    "load_recording",
    "write_recording",
]


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_HOME[name]}"), name)

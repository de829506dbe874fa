"""The recording format: one Parquet file per `tracer record` run, self-describing.

Owned here, below both sides: tracer/ writes recordings, analysis/ reads them,
and neither knows the other's internals. schema (columns, metadata keys,
version), phases (the one list of phases and how they derive from the
bracket), reader, writer.
"""

from analysis.recording.phases import PHASE_NAMES, PHASES, Phase, derive_phases
from analysis.recording.reader import Recording, load_recording
from analysis.recording.schema import FORMAT_VERSION
from analysis.recording.writer import check_writable, write_recording

__all__ = [
    "FORMAT_VERSION",
    "PHASES",
    "PHASE_NAMES",
    "Phase",
    "Recording",
    "check_writable",
    "derive_phases",
    "load_recording",
    "write_recording",
]

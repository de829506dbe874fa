"""Read a recording: the fork rows with derived phases, and the metadata document.

The only reader of the format: everything that opens a recording (report,
model, compare) comes through load_recording(), so a format change is checked
in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import InputError, TracerError
from analysis.files import open_input
from analysis.recording.layout import Vma, parse_maps
from analysis.recording.phases import derive_phases
from analysis.recording.schema import (FORK_SCHEMA, FORMAT_VERSION, MAX_METADATA_DEPTH, METADATA_KEY, REQUIRED_COLUMNS,
                                       metadata_problem, with_defaults)

if TYPE_CHECKING:  # table.to_pandas() imports it where a recording is loaded; summaries never need it
    import pandas as pd

__all__ = ["Recording", "load_recording"]

# Anything pyarrow raises on a file it cannot decode: ArrowInvalid and friends
# (ArrowException), ArrowIOError (an OSError), and plain errors from codecs.
_READ_ERRORS = (pa.ArrowException, OSError, ValueError, EOFError, IndexError, KeyError)


@dataclass
class Recording:
    """One recording: its fork rows (raw + derived phases) and its metadata document."""

    path: Path
    forks: pd.DataFrame
    meta: dict[str, Any] = field(default_factory=dict)

    def maps(self) -> list[tuple[int, str, list[Vma]]]:
        """Parent VMA layouts saved with the recording, as (pid, comm, VMAs)."""
        layouts = []
        for i, entry in enumerate(self.meta.get("maps") or []):
            try:
                pid, comm, text = int(entry["pid"]), str(entry.get("comm", "")), entry["maps"]
                layouts.append((pid, comm, parse_maps(text)))
            except (KeyError, TypeError, ValueError, AttributeError) as err:
                raise TracerError(f"{self.path}: saved maps entry {i} is unusable: {err}") from None
        return layouts


def load_recording(path: Path | str) -> Recording:
    """Read a recording written by analysis.recording.writer, refusing anything else.

    Every failure is an InputError whose one line names the file. Only a
    regular file is opened (a FIFO would hang the reader); the metadata is
    checked against METADATA_TYPES once, here, so no consumer meets a type
    it does not expect.
    """
    path = Path(path)
    with open_input(path, "recording") as f:
        return _load(path, f)


def _load(path: Path, f) -> Recording:
    try:
        # Verifies page CRCs when the writer stored them; harmless when it did not.
        parquet = pq.ParquetFile(f, page_checksum_verification=True)
        schema = parquet.schema_arrow
    except _READ_ERRORS as err:
        raise InputError(f"{path} is not a readable Parquet file (truncated or corrupt?): {_first_line(err)}") from None

    meta = _read_metadata(path, schema.metadata or {})
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise InputError(f"{path} lacks fork columns: {', '.join(missing)}")

    try:
        table = with_defaults(parquet.read(columns=[n for n in FORK_SCHEMA.names if n in schema.names]))
    except _READ_ERRORS as err:
        raise InputError(f"{path} is corrupt: {_first_line(err)}") from None
    try:
        table = table.cast(FORK_SCHEMA.remove_metadata())
    except _READ_ERRORS as err:
        raise InputError(f"{path}: fork columns have unexpected types: {_first_line(err)}") from None
    nulls = [name for name in table.column_names if table.column(name).null_count]
    if nulls:
        raise InputError(f"{path}: fork columns hold null values: {', '.join(nulls)}")
    forks = table.to_pandas()
    return Recording(path=path, forks=derive_phases(forks), meta=meta)


def _read_metadata(path: Path, kv: dict[bytes, bytes]) -> dict[str, Any]:
    """The forktrace JSON document, checked for a version this reader understands and for its types."""
    raw = kv.get(METADATA_KEY)
    if raw is None:
        raise InputError(f"{path} is a Parquet file but not a forktrace recording (no {METADATA_KEY.decode()!r} metadata)")
    too_deep = InputError(f"{path}: forktrace metadata is nested deeper than {MAX_METADATA_DEPTH} levels")
    try:
        meta = json.loads(raw)
    except RecursionError:
        raise too_deep from None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InputError(f"{path}: forktrace metadata is not valid JSON: {_first_line(err)}") from None
    if _nesting(meta) > MAX_METADATA_DEPTH:
        raise too_deep
    if not isinstance(meta, dict):
        raise InputError(f"{path}: forktrace metadata is not a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise InputError(f"{path}: forktrace metadata has no valid format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise InputError(
            f"{path} has recording format {version}, newer than this forktrace reads ({FORMAT_VERSION}); upgrade forktrace"
        )
    problem = metadata_problem(meta)
    if problem:
        raise InputError(f"{path}: forktrace metadata: {problem}")
    return meta


def _nesting(doc: Any) -> int:
    """How deep lists and objects nest in a parsed JSON document (iteratively: no recursion to overflow)."""
    deepest, stack = 0, [(doc, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            item = list(item.values())
        if isinstance(item, list):
            deepest = max(deepest, depth + 1)
            if depth + 1 > MAX_METADATA_DEPTH:
                break
            stack += [(x, depth + 1) for x in item if isinstance(x, (dict, list))]
    return deepest


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    return text.splitlines()[0]

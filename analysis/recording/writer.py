"""Encode a recording (rows, derived phases, metadata) and write it through analysis.files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.files import write_file
from analysis.recording.phases import derive_phases
from analysis.recording.schema import COLUMN_DEFAULTS, FORK_SCHEMA, FORMAT_VERSION, METADATA_KEY, PHASE_SCHEMA, with_defaults

__all__ = ["encode_recording", "write_recording", "write_table"]


def _with_phases(table: pa.Table) -> pa.Table:
    """Append the derived phase columns, computed the one way readers compute them."""
    phases = derive_phases(table.to_pandas())
    for field in PHASE_SCHEMA:
        table = table.append_column(field, pa.array(phases[field.name].to_numpy(), type=field.type))
    return table


def encode_recording(rows: pa.Table | Iterable[Mapping[str, Any]], metadata: Mapping[str, Any]) -> pa.Table:
    """Fork rows (a table of FORK_SCHEMA, or dicts) with the derived phases and the metadata document."""
    if isinstance(rows, pa.Table):
        table = with_defaults(rows.select([n for n in FORK_SCHEMA.names if n in rows.column_names])).cast(FORK_SCHEMA)
    else:
        table = pa.Table.from_pylist([{**COLUMN_DEFAULTS, **row} for row in rows], schema=FORK_SCHEMA)
    table = _with_phases(table)
    doc = {"format_version": FORMAT_VERSION, **metadata}
    return table.replace_schema_metadata({METADATA_KEY: json.dumps(doc, default=str).encode()})


def write_table(table: pa.Table, out: BinaryIO) -> None:
    """An encoded recording into an open binary file: zstd, with page checksums the reader verifies."""
    pq.write_table(table, out, compression="zstd", write_page_checksum=True)


def write_recording(
    path: Path | str,
    rows: pa.Table | Iterable[Mapping[str, Any]],
    metadata: Mapping[str, Any],
    keep_old: bool = False,
) -> str | None:
    """Encode and write a recording atomically (analysis.files: temp name, fsync, rename).

    A reader sees the whole file or none of it; an interrupted write leaves
    any previous file intact. With keep_old, an existing file is kept as
    FILE.old (or the first free FILE.old.N), whose name is returned.
    """
    table = encode_recording(rows, metadata)  # before any file exists: bad rows leave nothing behind
    return write_file(Path(path), lambda out: write_table(table, out), keep_old=keep_old)

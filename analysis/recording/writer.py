"""Write a recording atomically: a reader sees the whole file or none of it."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import TracerError
from analysis.recording.phases import derive_phases
from analysis.recording.schema import COLUMN_DEFAULTS, FORK_SCHEMA, FORMAT_VERSION, METADATA_KEY, PHASE_SCHEMA, with_defaults

__all__ = ["check_writable", "write_recording"]


def check_writable(path: Path) -> Path:
    """Fail before tracing starts, not after, if `path` cannot be written."""
    path = Path(path)
    if path.is_dir():
        raise TracerError(f"output {path} is a directory; give a file name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TracerError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TracerError(f"cannot write {path}: directory {parent} is not writable")
    if path.exists() and not os.access(path, os.W_OK):
        raise TracerError(f"cannot write {path}: file is not writable")
    return path


def _with_phases(table: pa.Table) -> pa.Table:
    """Append the derived phase columns, computed the one way readers compute them."""
    phases = derive_phases(table.to_pandas())
    for field in PHASE_SCHEMA:
        table = table.append_column(field, pa.array(phases[field.name].to_numpy(), type=field.type))
    return table


def write_recording(
    path: Path, rows: pa.Table | Iterable[Mapping[str, Any]], metadata: Mapping[str, Any]
) -> None:
    """Write fork rows (a table of FORK_SCHEMA, or dicts) and the metadata document, atomically.

    The table goes to a temporary file in the same directory, is fsync'd, then
    renamed over `path`; an interrupted write leaves any previous file intact.
    """
    path = check_writable(Path(path))
    if isinstance(rows, pa.Table):
        table = with_defaults(rows.select([n for n in FORK_SCHEMA.names if n in rows.column_names])).cast(FORK_SCHEMA)
    else:
        table = pa.Table.from_pylist([{**COLUMN_DEFAULTS, **row} for row in rows], schema=FORK_SCHEMA)
    table = _with_phases(table)
    doc = {"format_version": FORMAT_VERSION, **metadata}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(doc, default=str).encode()})
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp makes 0600; a recording is an ordinary file (0666 less umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as out:
            pq.write_table(table, out, compression="zstd", write_page_checksum=True)
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:
        dirfd = os.open(path.parent or ".", os.O_RDONLY)
        try:
            os.fsync(dirfd)
        finally:
            os.close(dirfd)
    except OSError:
        pass

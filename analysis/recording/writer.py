"""Write a recording atomically: a reader sees the whole file or none of it."""

from __future__ import annotations

import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import pyarrow as pa
import pyarrow.parquet as pq

from analysis.errors import TracerError
from analysis.recording.phases import derive_phases
from analysis.recording.schema import COLUMN_DEFAULTS, FORK_SCHEMA, FORMAT_VERSION, METADATA_KEY, PHASE_SCHEMA, with_defaults

__all__ = ["TEMP_PREFIX", "check_name_length", "check_writable", "write_recording"]

# Temporary files are named .forktrace-XXXXXXXX.tmp whatever the recording is
# called, so a name close to NAME_MAX still has a temporary name that fits.
TEMP_PREFIX = ".forktrace-"


def check_writable(path: Path) -> Path:
    """Fail before tracing starts, not after, if `path` cannot be written as a new regular file.

    Refuses what a rename would destroy rather than write: a device, FIFO or
    socket (perf writes through them; a recording in /dev/full is no use), a
    symbolic link (renaming over it would replace the link, and following it as
    root is how files outside the directory get clobbered), and a read-only file
    (root may write it, but its mode says the user meant to keep it).
    """
    path = Path(path)
    check_name_length(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        st = None
    except OSError as err:
        raise TracerError(f"cannot write {path}: {err.strerror}") from None
    if st is not None:
        if stat.S_ISLNK(st.st_mode):
            raise TracerError(f"output {path} is a symbolic link; give the path of the file itself")
        if stat.S_ISDIR(st.st_mode):
            raise TracerError(f"output {path} is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise TracerError(f"output {path} is {_kind(st.st_mode)}, not a regular file; give a file name")
        if not st.st_mode & 0o222:
            raise TracerError(f"output {path} is read-only; remove it or give another name")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise TracerError(f"cannot write {path}: directory {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise TracerError(f"cannot write {path}: directory {parent} is not writable")
    return path


def check_name_length(path: Path) -> None:
    """The file system's NAME_MAX for `path`'s last component (the temporary name is short)."""
    parent = path.parent if str(path.parent) else Path(".")
    try:
        name_max = os.pathconf(parent, "PC_NAME_MAX")
    except (OSError, ValueError):  # no such directory (reported after): the usual limit
        name_max = 255
    size = len(os.fsencode(path.name))
    if size > name_max:
        raise TracerError(f"cannot write {path.name[:40]}...: file name is {size} bytes, longer than {name_max} allowed here")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _with_phases(table: pa.Table) -> pa.Table:
    """Append the derived phase columns, computed the one way readers compute them."""
    phases = derive_phases(table.to_pandas())
    for field in PHASE_SCHEMA:
        table = table.append_column(field, pa.array(phases[field.name].to_numpy(), type=field.type))
    return table


def write_recording(
    path: Path,
    rows: pa.Table | Iterable[Mapping[str, Any]],
    metadata: Mapping[str, Any],
    backup: Path | None = None,
) -> None:
    """Write fork rows (a table of FORK_SCHEMA, or dicts) and the metadata document, atomically.

    The table goes to a temporary file in the same directory, is fsync'd, then
    renamed over `path`; an interrupted write leaves any previous file intact.
    With `backup`, an existing `path` is first renamed to it (perf's
    perf.data -> perf.data.old), once the new file is complete.
    """
    path = check_writable(Path(path))
    if isinstance(rows, pa.Table):
        table = with_defaults(rows.select([n for n in FORK_SCHEMA.names if n in rows.column_names])).cast(FORK_SCHEMA)
    else:
        table = pa.Table.from_pylist([{**COLUMN_DEFAULTS, **row} for row in rows], schema=FORK_SCHEMA)
    table = _with_phases(table)
    doc = {"format_version": FORMAT_VERSION, **metadata}
    table = table.replace_schema_metadata({METADATA_KEY: json.dumps(doc, default=str).encode()})
    fd, tmp = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=path.parent or ".")
    try:
        # mkstemp makes 0600; a recording is an ordinary file (0666 less umask).
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)
        with os.fdopen(fd, "wb") as out:
            pq.write_table(table, out, compression="zstd", write_page_checksum=True)
            out.flush()
            os.fsync(out.fileno())
        if backup is not None and os.path.lexists(path):
            os.replace(path, backup)
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

"""Where a recording goes: checked before tracing, kept whatever happens after.

As perf record does with perf.data, an existing output file is kept as
FILE.old rather than overwritten. Anything a rename would destroy (a device,
FIFO, socket, symbolic link, directory, read-only file) is refused before BPF
is loaded. A recording is only known to be writable once it is written, so a
write that still fails (disk full, directory gone) saves the data under a short
name in $TMPDIR (or the output's directory) and says where, in one line.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from analysis.errors import TracerError
from analysis.recording.writer import TEMP_PREFIX, check_name_length, check_writable, write_recording

__all__ = ["MIN_FREE_BYTES", "backup_path", "prepare_output", "save_recording"]

# Below this much free space the recording of even a short run may not fit
# (about 170 bytes a fork, plus metadata and VMA layouts): refuse up front.
MIN_FREE_BYTES = 1 << 20


def backup_path(path: Path) -> Path:
    """FILE.old: where an existing FILE is kept."""
    return path.with_name(path.name + ".old")


def prepare_output(path: Path) -> Path:
    """Every check of the output that can be made before tracing; returns the path."""
    path = check_writable(path)
    directory = path.parent if str(path.parent) else Path(".")
    if path.exists():
        old = backup_path(path)
        check_name_length(old)
        try:
            st = os.lstat(old)
        except FileNotFoundError:
            pass
        else:
            if not stat.S_ISREG(st.st_mode):
                raise TracerError(f"{path} exists and {old.name}, where it would be kept, is not a regular file")
    # The only sure test of a directory is to create a file in it (EROFS, quota, inodes).
    try:
        fd, probe = tempfile.mkstemp(prefix=TEMP_PREFIX, suffix=".tmp", dir=directory)
        os.close(fd)
        os.unlink(probe)
        fs = os.statvfs(directory)
    except OSError as err:
        raise TracerError(f"cannot write {path}: {err.strerror}") from None
    free = fs.f_bavail * fs.f_frsize
    if free < MIN_FREE_BYTES:
        raise TracerError(f"cannot write {path}: only {free // 1024} KiB free in {directory}")
    return path


def save_recording(
    path: Path, forks: pa.Table, meta: Mapping[str, Any], log: Callable[[str], None]
) -> Path:
    """Write the recording to `path` (an existing file kept as FILE.old), or else somewhere.

    Returns the path written. If `path` cannot be written the data goes to a
    fallback file and a TracerError names both; if nothing can be written the
    error says the recording is lost.
    """
    old = backup_path(path)
    had_file = os.path.lexists(path)
    try:
        write_recording(path, forks, meta, backup=old)
    except (OSError, TracerError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        for fallback in _fallbacks(path, err):
            try:
                write_recording(fallback, forks, meta)
            except (OSError, TracerError):
                continue
            raise TracerError(f"could not write {path} ({reason}); the recording was saved as {fallback}") from None
        raise TracerError(f"could not write {path} ({reason}), nor a fallback file; the recording is lost") from None
    if had_file:
        log(f"kept the previous {path.name} as {old.name}")
    return path


def _fallbacks(path: Path, err: BaseException) -> list[Path]:
    """Short names in $TMPDIR, then beside the output (which helps when the name was the problem)."""
    name = f"forktrace-saved-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.parquet"
    places = [Path(tempfile.gettempdir()) / name]
    directory = path.parent if str(path.parent) else Path(".")
    if isinstance(err, OSError) and err.errno in (errno.ENAMETOOLONG, errno.EEXIST, errno.EISDIR):
        places.insert(0, directory / name)
    else:
        places.append(directory / name)
    return places

"""Where a recording goes (`record -o`): checked before tracing, kept whatever happens after.

The one place of the -o policy: options.validate() calls prepare_output()
before BPF is loaded, record() calls save_recording() after tracing; the file
mechanics (directory checks, temporary name, fsync, rename, FILE.old) are
analysis.files', used by every command that writes.

As perf record does with perf.data, an existing output file is kept as
FILE.old (then FILE.old.1 .. .9: a kept recording is never replaced).
Anything a rename would destroy (a device, FIFO, socket, symbolic link,
directory, read-only file, another user's file in /tmp) is refused before
BPF is loaded. The directory is opened and checked then, and written through
that descriptor at the end: swapping it for a link meanwhile changes nothing.
A recording is only known to be writable once it is written, so a write that
still fails (disk full, name taken) saves the data under an unpredictable
name in $TMPDIR (or the output's directory) and says where, in one line.
"""

from __future__ import annotations

import errno
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

import pyarrow as pa

from analysis.errors import TracerError, UsageError
from analysis.files import Directory, WriteError
from analysis.recording.writer import encode_recording, write_table

__all__ = ["MIN_FREE_BYTES", "FALLBACK_PREFIX", "Output", "prepare_output", "save_recording"]

# Below this much free space the recording of even a short run may not fit
# (about 170 bytes a fork, plus metadata and VMA layouts): refuse up front.
MIN_FREE_BYTES = 1 << 20
FALLBACK_PREFIX = "forktrace-saved-"


@dataclass
class Output:
    """A checked output: its path, and its directory held open until the recording is written."""

    path: Path
    directory: Directory

    def close(self) -> None:
        self.directory.close()


def prepare_output(path: Path) -> Output:
    """Every check of the output that can be made before tracing (UsageError: exit 2)."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise UsageError(f"output {path} is a directory; give a file name")
    directory = Directory.open(path.parent if str(path.parent) else Path("."))
    try:
        directory.check_target(path.name, keep_old=True)
        # The only sure test of a directory is to create a file in it (EROFS, quota, inodes).
        try:
            name, fd = directory.temp_file()
            os.close(fd)
            os.unlink(name, dir_fd=directory.fd)
            fs = os.fstatvfs(directory.fd)
        except OSError as err:
            raise UsageError(f"cannot write {path}: {err.strerror}") from None
        free = fs.f_bavail * fs.f_frsize
        if free < MIN_FREE_BYTES:
            raise UsageError(f"cannot write {path}: only {free // 1024} KiB free in {directory.path}")
    except BaseException:
        directory.close()
        raise
    return Output(path, directory)


def save_recording(
    output: Output | Path, forks: pa.Table, meta: Mapping[str, Any], log: Callable[[str], None]
) -> Path:
    """Write the recording (an existing file kept as FILE.old), or else somewhere it says.

    Returns the path written. If the output cannot be written the data goes to
    a fallback file and a TracerError names both; if nothing can be written the
    error says the recording is lost.
    """
    if not isinstance(output, Output):
        output = prepare_output(Path(output))
    path = output.path
    table = encode_recording(forks, meta)
    fill = lambda out: write_table(table, out)  # noqa: E731
    try:
        kept = output.directory.write(path.name, fill, keep_old=True)
    except (WriteError, UsageError) as err:  # disk full; or the name was changed under us meanwhile
        reason = err.reason if isinstance(err, WriteError) else str(err)
        for place in _fallbacks(output, err):
            try:
                directory = place()
                try:
                    saved = directory.save_new(FALLBACK_PREFIX, ".parquet", fill)
                finally:
                    if directory is not output.directory:
                        directory.close()
            except (OSError, TracerError):
                continue
            raise TracerError(f"could not write {path} ({reason}); the recording was saved as {saved}") from None
        raise TracerError(f"could not write {path} ({reason}), nor a fallback file; the recording is lost") from None
    finally:
        output.close()
    if kept:
        log(f"kept the previous {path.name} as {kept}")
    return path


def _fallbacks(output: Output, err: BaseException) -> list[Callable[[], Directory]]:
    """$TMPDIR, then the output's directory (first when the name itself was the problem)."""
    tmp = lambda: Directory.open(tempfile.gettempdir())  # noqa: E731
    here = lambda: output.directory  # noqa: E731  the one checked before tracing, held open
    if isinstance(err, UsageError) or getattr(err, "reason", "") == os.strerror(errno.ENAMETOOLONG):
        return [here, tmp]
    return [tmp, here]

"""Read a process's VMA layout and identity from /proc, with one-line errors.

/proc/PID/maps is not an atomic snapshot: the kernel builds it piece by piece
as it is read, so it is consistent only while the process leaves its mappings
alone (the spawn workload blocks on stdin while its maps are read). Parsing
the text is analysis.layout's job, not this module's.
"""

from __future__ import annotations

import errno
import os

from analysis.errors import TracerError

__all__ = ["read_maps", "pid_exists", "comm_of"]


def _check_pid(pid: int) -> int:
    # bool is an int; pid 0 and negatives mean process groups to kill(2).
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        raise TracerError(f"not a process id: {pid!r}")
    return pid


def _read_proc(pid: int, name: str) -> str:
    path = f"/proc/{_check_pid(pid)}/{name}"
    try:
        with open(path, encoding="utf-8", errors="surrogateescape") as f:
            return f.read()
    except (FileNotFoundError, ProcessLookupError):
        raise TracerError(f"no process with pid {pid}") from None
    except PermissionError:
        raise TracerError(
            f"cannot read {path}: permission denied (needs ptrace access to the process; run as root)"
        ) from None
    except OSError as err:
        if err.errno == errno.ESRCH:
            raise TracerError(f"process {pid} exited while {path} was read") from None
        raise TracerError(f"cannot read {path}: {err.strerror}") from None


def read_maps(pid: int) -> str:
    """The raw text of /proc/PID/maps (for analysis.layout.parse_maps).

    Includes the [vsyscall] gate area where the architecture has one; the
    kernel shows it but keeps it out of the mm's maple tree.

    >>> read_maps(os.getpid()).count("\\n") > 0
    True
    """
    return _read_proc(pid, "maps")


def pid_exists(pid: int) -> bool:
    """Whether a process (or thread) with this id exists, zombies included."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def comm_of(pid: int) -> str:
    """The process's comm (its executable name cut to 15 bytes), as in trace events."""
    return _read_proc(pid, "comm").rstrip("\n")

"""An unprivileged attacker for the safety tests (and scripts/hostile.py): uid 65534 planting names.

The tool runs as root; the attacker is `setpriv --reuid=65534 --regid=65534
--clear-groups`, given a directory it may write. Each arena is a fresh
directory under /tmp that both can reach, removed afterwards.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

NOBODY = 65534
PROTECTED_SYMLINKS = Path("/proc/sys/fs/protected_symlinks")


def can_attack() -> str | None:
    """Why this host cannot run the attacker, or None."""
    if os.geteuid() != 0:
        return "needs root (the victim) to start an unprivileged attacker"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux)"
    return None


def as_attacker(script: str, *args: str) -> None:
    """Run a Python script as uid/gid 65534 with no groups (the system python: no venv needed)."""
    subprocess.run(
        ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "/usr/bin/python3", "-c", script, *args],
        check=True, timeout=120,
    )


@contextlib.contextmanager
def arena():
    """A directory both root and the attacker can reach (0755, root's), with a victim file in it."""
    base = Path(tempfile.mkdtemp(prefix="forktrace-hostile-", dir="/tmp"))
    try:
        base.chmod(0o755)
        victim = base / "victim"
        victim.write_text("precious\n")
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def attacker_dir(base: Path, name: str = "att") -> Path:
    """A directory owned by the attacker."""
    d = base / name
    d.mkdir()
    os.chown(d, NOBODY, NOBODY)
    return d


def shared_dir(base: Path, name: str, mode: int) -> Path:
    """A root-owned directory of `mode` (0o777: writable by all, not sticky; 0o1777: as /tmp)."""
    d = base / name
    d.mkdir()
    d.chmod(mode)
    return d


PLANT_LINKS = """
import os, sys
target, directory, *names = sys.argv[1:]
for name in names:
    try:
        os.symlink(target, os.path.join(directory, name))
    except FileExistsError:
        pass
"""

PLANT_DIRS = """
import os, sys
directory, *names = sys.argv[1:]
for name in names:
    os.makedirs(os.path.join(directory, name), exist_ok=True)
"""


def plant_links(target: Path, directory: Path, names: list[str]) -> None:
    as_attacker(PLANT_LINKS, str(target), str(directory), *names)


def plant_dirs(directory: Path, names: list[str]) -> None:
    as_attacker(PLANT_DIRS, str(directory), *names)


@contextlib.contextmanager
def symlinks_followed():
    """fs.protected_symlinks = 0 for the duration (system-wide: restored after), so the kernel does not hide a defect."""
    old = PROTECTED_SYMLINKS.read_text().strip()
    if old != "0":
        PROTECTED_SYMLINKS.write_text("0")
    try:
        yield
    finally:
        if old != "0":
            PROTECTED_SYMLINKS.write_text(old)

"""The running kernel as the tracer needs to know it: uname, lockdown, config, tracefs.

Everything here reads /proc and /sys; only `ensure_tracefs()` and
`lockdown_mode(mount=True)` may change the system (by mounting a pseudo
filesystem), and only when asked to. Paths are parameters so that tests can
point them at fake files.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import gzip
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import TracerError

__all__ = [
    "KernelConfig",
    "VMLINUX_BTF",
    "btf_present",
    "ensure_tracefs",
    "find_tracefs",
    "is_root",
    "kernel_config",
    "lockdown_mode",
    "mount_points",
    "perf_event_paranoid",
    "uname",
]

VMLINUX_BTF = "/sys/kernel/btf/vmlinux"
TRACEFS_MOUNTPOINT = "/sys/kernel/tracing"
SECURITYFS_MOUNTPOINT = "/sys/kernel/security"
LOCKDOWN_FILE = SECURITYFS_MOUNTPOINT + "/lockdown"


def uname() -> dict[str, str]:
    """{release, version, machine} of the running kernel, as a recording stores it."""
    u = os.uname()
    return {"release": u.release, "version": u.version, "machine": u.machine}


def is_root() -> bool:
    """Effective uid 0: what BPF loading, mounting and kallsyms addresses need here."""
    return os.geteuid() == 0


def btf_present(path: str = VMLINUX_BTF) -> bool:
    """The kernel exposes its own BTF (CONFIG_DEBUG_INFO_BTF=y)."""
    return os.path.exists(path)


_OCTAL_ESCAPE = re.compile(r"\\([0-7]{3})")


def mount_points(fstype: str, mounts: str = "/proc/mounts") -> list[str]:
    """Mount points of every filesystem of type `fstype`, in mount order."""
    points = []
    with open(mounts) as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == fstype:
                # /proc/mounts escapes blanks in paths as octal (\040).
                points.append(_OCTAL_ESCAPE.sub(lambda m: chr(int(m[1], 8)), fields[1]))
    return points


def find_tracefs(mounts: str = "/proc/mounts") -> str | None:
    """The tracing directory if tracefs (or debugfs/tracing) is mounted, else None.

    tracefs itself is preferred; older setups reach it through debugfs, where
    the kernel automounts it under `tracing/`.
    """
    for point in mount_points("tracefs", mounts):
        if os.path.isdir(os.path.join(point, "events")):
            return point
    for point in mount_points("debugfs", mounts):
        tracing = os.path.join(point, "tracing")
        if os.path.isdir(os.path.join(tracing, "events")):
            return tracing
    return None


def _mount(fstype: str, target: str) -> None:
    """mount(2) a pseudo filesystem ("nodev" source), raising TracerError on failure."""
    libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
    if libc.mount(b"nodev", target.encode(), fstype.encode(), 0, None) != 0:
        err = ctypes.get_errno()
        raise TracerError(f"cannot mount {fstype} at {target}: {os.strerror(err)}")


def ensure_tracefs(mounts: str = "/proc/mounts", mount: bool = True) -> str:
    """The tracing directory, mounting tracefs at /sys/kernel/tracing if needed.

    A fresh machine may have no tracefs mounted; bcc needs it for classic
    tracepoints (event ids and formats). Mounting is announced on stderr,
    since it outlives the tracer.
    """
    found = find_tracefs(mounts)
    if found:
        return found
    if not mount:
        raise TracerError(f"tracefs is not mounted; run: mount -t tracefs nodev {TRACEFS_MOUNTPOINT}")
    if not is_root():
        raise TracerError(
            f"tracefs is not mounted and mounting it needs root: mount -t tracefs nodev {TRACEFS_MOUNTPOINT}"
        )
    _mount("tracefs", TRACEFS_MOUNTPOINT)
    print(f"tracer: mounted tracefs at {TRACEFS_MOUNTPOINT}", file=sys.stderr)
    return TRACEFS_MOUNTPOINT


def lockdown_mode(mount: bool = False, mounts: str = "/proc/mounts", lockdown_file: str = LOCKDOWN_FILE) -> str:
    """"none", "integrity" or "confidentiality"; "unknown" if it cannot be read.

    The file lives in securityfs, which may be unmounted: then the answer is
    "unknown" unless the caller asks us to mount it (root only). With
    securityfs mounted but no lockdown file, the lockdown LSM is not active,
    which is "none".
    """
    if not os.path.exists(lockdown_file):
        securityfs = mount_points("securityfs", mounts)
        if securityfs:
            return "none"
        if not (mount and is_root()):
            return "unknown"
        _mount("securityfs", SECURITYFS_MOUNTPOINT)
        print(f"tracer: mounted securityfs at {SECURITYFS_MOUNTPOINT}", file=sys.stderr)
        if not os.path.exists(lockdown_file):
            return "none"
    try:
        text = Path(lockdown_file).read_text()
    except OSError:
        return "unknown"
    # The active mode is bracketed: "none [integrity] confidentiality".
    for word in text.split():
        if word.startswith("[") and word.endswith("]"):
            return word[1:-1]
    return "unknown"


@dataclass(frozen=True)
class KernelConfig:
    """The running kernel's .config: options set (CONFIG_X -> "y", "m", "64", '"str"')."""

    source: str
    options: dict[str, str] = field(repr=False)

    def get(self, name: str) -> str | None:
        """The option's value, None when "is not set" (or unknown to this kernel)."""
        return self.options.get(name)

    def enabled(self, name: str) -> bool:
        """Built in or as a module."""
        return self.options.get(name) in ("y", "m")


def parse_config(text: str) -> dict[str, str]:
    """CONFIG_X=value lines to a dict; "# CONFIG_X is not set" lines are left out."""
    options = {}
    for line in text.splitlines():
        if line.startswith("CONFIG_") and "=" in line:
            name, value = line.split("=", 1)
            options[name] = value.strip()
    return options


def kernel_config(release: str | None = None, candidates: list[str] | None = None) -> KernelConfig | None:
    """The running kernel's config from /proc/config.gz or /boot/config-RELEASE, or None.

    /proc/config.gz exists only with CONFIG_IKCONFIG_PROC; distributions ship
    /boot/config-* instead.
    """
    release = release or os.uname().release
    for path in candidates or ["/proc/config.gz", f"/boot/config-{release}"]:
        try:
            raw = Path(path).read_bytes()
        except OSError:
            continue
        if path.endswith(".gz"):
            try:
                raw = gzip.decompress(raw)
            except (OSError, EOFError):
                continue
        return KernelConfig(source=path, options=parse_config(raw.decode(errors="replace")))
    return None


def perf_event_paranoid(path: str = "/proc/sys/kernel/perf_event_paranoid") -> int | None:
    """kernel.perf_event_paranoid, None if unreadable."""
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None

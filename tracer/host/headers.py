"""Kernel headers for bcc: find them, or build a merged view of Debian's split trees.

bcc compiles its C against kernel headers. It looks at /lib/modules/RELEASE/build
(and .../source) or at $BCC_KERNEL_SOURCE, one directory used as both the
build and the source tree. A kernel without packaged headers (a custom or
cloud build such as this host's 6.18) has neither.

Debian splits one header set in two packages:
  /usr/src/linux-headers-VER-common   arch/*/include, include/ (the sources)
  /usr/src/linux-headers-VER-FLAVOUR  include/generated, arch/*/include/generated, .config
Pointing BCC_KERNEL_SOURCE at either one alone fails (the generated headers
or the sources are missing), so we build a merged view in our own cache: a
tree of symlinks into both, directories present in both merged recursively,
the flavour tree winning where both have the same file. Nothing outside the
cache is ever written.

Headers of another version than the running kernel are good enough for what
bcc needs (types of helpers and context); struct layouts of the running
kernel come from BTF (tracer.host.btf), never from these headers.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from analysis.errors import TracerError

__all__ = ["Headers", "apply", "debian_flavour", "find_debian_headers", "merge_trees", "resolve_headers"]

# Debian's flavour for each uname machine: linux-headers-VER-<flavour>.
_DEBIAN_FLAVOURS = {
    "x86_64": "amd64",
    "aarch64": "arm64",
    "i686": "686",
    "ppc64le": "powerpc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}

_VIEW_STAMP = ".forktrace-view.json"
_VIEW_FORMAT = 1


@dataclass(frozen=True)
class Headers:
    """Where bcc's kernel headers come from.

    path: the tree bcc compiles against; description: one line for `record`
    and `doctor`; env: variables to set before creating a BPF object.
    """

    path: str
    description: str
    env: dict[str, str] = field(default_factory=dict)


def apply(headers: Headers) -> None:
    """Export headers.env into os.environ, where bcc's loader reads it."""
    os.environ.update(headers.env)


def debian_flavour(machine: str) -> str | None:
    """'x86_64' -> 'amd64': the suffix of Debian's arch-specific header package."""
    return _DEBIAN_FLAVOURS.get(machine)


def _version_key(version: str) -> tuple[int, ...]:
    """'6.12.38+deb12' -> (6, 12, 38, 12); '6.1.0-56' -> (6, 1, 0, 56): sorts newest last."""
    return tuple(int(n) for n in re.findall(r"\d+", version))


@dataclass(frozen=True)
class DebianHeaders:
    """One installed Debian header set: both halves of linux-headers-VERSION."""

    version: str
    common: str
    flavoured: str
    flavour: str


def find_debian_headers(src_root: str = "/usr/src", flavour: str = "amd64") -> tuple[DebianHeaders | None, list[str]]:
    """The newest version with both -common and -FLAVOUR trees, and notes on incomplete ones.

    Notes name versions where only one half is installed, for the error message.
    """
    pattern = re.compile(rf"^linux-headers-(\d+\.\d+\S*?)-(common|{re.escape(flavour)})$")
    halves: dict[str, dict[str, str]] = {}
    try:
        entries = sorted(os.listdir(src_root))
    except OSError:
        entries = []
    for entry in entries:
        m = pattern.match(entry)
        path = os.path.join(src_root, entry)
        if m and os.path.isdir(path):
            halves.setdefault(m[1], {})[m[2]] = path
    complete = [v for v, h in halves.items() if "common" in h and flavour in h]
    notes = [
        f"{os.path.basename(next(iter(h.values())))} without its "
        f"-{'common' if 'common' not in h else flavour} half"
        for v, h in sorted(halves.items())
        if v not in complete
    ]
    if not complete:
        return None, notes
    newest = max(complete, key=_version_key)
    h = halves[newest]
    return DebianHeaders(newest, h["common"], h[flavour], flavour), notes


def merge_trees(base: str, overlay: str, dest: str) -> None:
    """Fill `dest` with symlinks so that it looks like `base` and `overlay` merged.

    An entry in one tree only becomes a symlink to it. A directory in both is
    created and merged recursively, unless both resolve to the same directory
    (Debian's scripts/ and tools/ links): then one link. Anything else present
    in both (files, a file against a directory) links to `overlay`.
    Links are absolute, so relative links inside the packages keep working.
    """
    os.makedirs(dest, exist_ok=True)
    base_names = set(os.listdir(base))
    overlay_names = set(os.listdir(overlay))
    for name in sorted(base_names | overlay_names):
        b, o, d = os.path.join(base, name), os.path.join(overlay, name), os.path.join(dest, name)
        if name not in overlay_names:
            os.symlink(os.path.abspath(b), d)
        elif name not in base_names:
            os.symlink(os.path.abspath(o), d)
        elif os.path.isdir(b) and os.path.isdir(o) and os.path.realpath(b) != os.path.realpath(o):
            merge_trees(b, o, d)
        else:
            os.symlink(os.path.abspath(o), d)


def default_cache_dir() -> Path:
    """$XDG_CACHE_HOME/forktrace/headers, else ~/.cache/forktrace/headers."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "forktrace" / "headers"


def _merged_dirs(base: str, overlay: str, rel: str = ".") -> list[str]:
    """The directories merge_trees() creates (present in both trees), relative paths."""
    merged = [rel]
    b_dir, o_dir = os.path.join(base, rel), os.path.join(overlay, rel)
    for name in sorted(set(os.listdir(b_dir)) & set(os.listdir(o_dir))):
        b, o = os.path.join(b_dir, name), os.path.join(o_dir, name)
        if os.path.isdir(b) and os.path.isdir(o) and os.path.realpath(b) != os.path.realpath(o):
            merged += _merged_dirs(base, overlay, os.path.join(rel, name))
    return merged


def _stamp(found: DebianHeaders) -> dict:
    """What the view was built from: a different stamp means rebuild.

    Files are links, so new contents show through; only entries added to or
    removed from a merged directory need a rebuild, and those change its mtime.
    """
    def mtime(tree: str, rel: str) -> int:
        return os.stat(os.path.join(tree, rel)).st_mtime_ns

    return {
        "format": _VIEW_FORMAT,
        "common": found.common,
        "flavoured": found.flavoured,
        "mtimes_ns": [
            [rel, mtime(found.common, rel), mtime(found.flavoured, rel)]
            for rel in _merged_dirs(found.common, found.flavoured)
        ],
    }


def _view_is_current(view: Path, stamp: dict) -> bool:
    try:
        return json.loads((view / _VIEW_STAMP).read_text()) == stamp
    except (OSError, ValueError):
        return False


def build_view(found: DebianHeaders, cache_dir: Path) -> Path:
    """The merged view for `found` in cache_dir, (re)built only if missing or stale.

    Built in a temporary directory beside it and renamed into place, so a
    reader never sees half a view; a stale view is moved aside, then removed.
    """
    view = cache_dir / f"linux-headers-{found.version}-{found.flavour}"
    try:
        stamp = _stamp(found)
    except OSError as err:
        raise TracerError(f"cannot read kernel headers in {found.common}: {err}") from None
    if _view_is_current(view, stamp):
        return view
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{view.name}.", dir=cache_dir))
        try:
            merge_trees(found.common, found.flavoured, str(tmp))
            (tmp / _VIEW_STAMP).write_text(json.dumps(stamp, indent=1) + "\n")
            if view.exists() or view.is_symlink():
                stale = Path(tempfile.mkdtemp(prefix=f".{view.name}.stale.", dir=cache_dir))
                os.rename(view, stale / "view")
                os.rename(tmp, view)
                shutil.rmtree(stale)
            else:
                os.rename(tmp, view)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    except OSError as err:
        if _view_is_current(view, stamp):  # another tracer built it meanwhile
            return view
        raise TracerError(f"cannot build the kernel header view in {cache_dir}: {err.strerror or err}") from None
    return view


def _tilde(path: str | Path) -> str:
    """Abbreviate the home directory as ~ for one-line messages."""
    home = os.path.expanduser("~")
    path = str(path)
    return "~" + path[len(home) :] if home not in ("", "/") and path.startswith(home + os.sep) else path


def resolve_headers(
    cache_dir: str | Path | None = None,
    *,
    release: str | None = None,
    machine: str | None = None,
    environ: dict[str, str] | None = None,
    modules_root: str = "/lib/modules",
    src_root: str = "/usr/src",
) -> Headers:
    """Kernel headers bcc can compile against, in this order of preference.

    1. $BCC_KERNEL_SOURCE if the user set it (bcc's loader honours it first, so we do too);
    2. /lib/modules/RELEASE/build, the running kernel's own headers;
    3. the newest installed Debian header set, as a merged view in cache_dir.
    Raises TracerError naming the package to install when none is usable.
    """
    u = os.uname()
    release = release or u.release
    machine = machine or u.machine
    environ = os.environ if environ is None else environ

    user_source = environ.get("BCC_KERNEL_SOURCE")
    if user_source:
        if not os.path.isdir(user_source):
            raise TracerError(f"BCC_KERNEL_SOURCE={user_source} is not a directory")
        return Headers(user_source, f"kernel headers: {user_source} (from BCC_KERNEL_SOURCE)", {})

    build = os.path.join(modules_root, release, "build")
    if os.path.isdir(build):
        return Headers(build, f"kernel headers: {build} (the running kernel's own)", {})

    flavour = debian_flavour(machine)
    found, notes = find_debian_headers(src_root, flavour) if flavour else (None, [])
    if found is None:
        package = f"linux-headers-{flavour}" if flavour else "your distribution's kernel headers"
        hint = f" (found {'; '.join(notes)})" if notes else ""
        raise TracerError(
            f"no kernel headers for {release}{hint}; install {package} (Debian) or linux-headers-{release}"
        )
    view = build_view(found, Path(cache_dir) if cache_dir is not None else default_cache_dir())
    description = (
        f"kernel headers: Debian linux-headers-{found.version} "
        f"(merged view in {_tilde(view)}; no headers for {release})"
    )
    return Headers(str(view), description, {"BCC_KERNEL_SOURCE": str(view)})

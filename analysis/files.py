"""Every file forktrace writes, and every input it opens, goes through here.

The tool runs as root and is pointed at /tmp and shared directories, so a
name in a directory may have been planted by another user. The rules:

Writing (Directory):
- The output directory is opened once, by walking its path from / one
  component at a time (openat with O_NOFOLLOW; a symbolic link on the way is
  followed by hand, and only if it could not have been planted by another
  user). Every directory on the way must be owned by root, by us, or (under
  sudo) by the invoking user, and be writable by no one else unless it is
  sticky (as /tmp). Directories the tool creates are made 0755 (less umask)
  and checked again after creation. Everything is then written relative to
  the directory's file descriptor: a directory swapped for a symbolic link
  after the check changes nothing.
- A file is written to a temporary name made with O_EXCL|O_NOFOLLOW and 128
  random bits, flushed, fsync'd, then renamed over its name; the directory is
  fsync'd. Nothing is ever opened for writing under a name that existed, and
  a rename replaces a name, never what a link points at. A failed write (disk
  full) leaves no temporary file and the previous file untouched.
- An existing file that would be replaced must be a regular file (not a
  link, directory or device), writable by its mode, and, in a directory
  others may write, ours. With keep_old, it is kept as NAME.old, or the first
  free NAME.old.1 .. NAME.old.9 (perf keeps one .old; we never drop one):
  the kept name is made with link(), which never replaces a name, then the
  new file is renamed over NAME, so NAME always exists.
- Fallback files (a recording that could not go where asked) get names made
  as the temporary ones: unpredictable, created with O_EXCL.

Reading (open_input, read_input): an input must be a regular file, opened
without blocking (a FIFO would hang the reader) and read up to a bound.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Callable, Union

from analysis.errors import InputError, TracerError, UsageError

__all__ = [
    "Directory",
    "Lock",
    "MAX_OLD",
    "TEMP_PREFIX",
    "WriteError",
    "backup_names",
    "check_input",
    "open_input",
    "read_input",
    "write_file",
]

# Temporary names are .forktrace-<32 hex>.tmp whatever the target is called,
# so a target name close to NAME_MAX still has a temporary name that fits.
TEMP_PREFIX = ".forktrace-"
MAX_OLD = 9  # NAME.old, then NAME.old.1 .. NAME.old.9; then refuse
MAX_SYMLINKS = 40  # as the kernel's path walk (ELOOP)

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

Fill = Union[bytes, Callable[[BinaryIO], None]]


class WriteError(TracerError):
    """A write that failed while working (disk full, I/O error): `reason` is the system's word for it."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(f"cannot write {path}: {reason}")
        self.path = Path(path)
        self.reason = reason


def _trusted_uids() -> set[int]:
    uids = {0, os.geteuid()}
    if os.geteuid() == 0 and os.environ.get("SUDO_UID", "").isdigit():
        uids.add(int(os.environ["SUDO_UID"]))
    return uids


def _trusted_gids() -> set[int]:
    gids = {0, os.getegid()}
    if os.geteuid() == 0 and os.environ.get("SUDO_GID", "").isdigit():
        gids.add(int(os.environ["SUDO_GID"]))
    return gids


def _untrusted_dir(st: os.stat_result) -> str | None:
    """Why another user could change this directory's entries, or None."""
    if st.st_uid not in _trusted_uids():
        return f"is owned by uid {st.st_uid}, who could replace what is written there"
    sticky = bool(st.st_mode & stat.S_ISVTX)
    if st.st_mode & stat.S_IWOTH and not sticky:
        return "is writable by every user and not sticky"
    if st.st_mode & stat.S_IWGRP and not sticky and st.st_gid not in _trusted_gids():
        return f"is writable by group {st.st_gid}"
    return None


def _shared(st: os.stat_result) -> bool:
    """A sticky directory others may write (as /tmp): names in it may be theirs."""
    return bool(st.st_mode & stat.S_ISVTX and st.st_mode & (stat.S_IWOTH | stat.S_IWGRP))


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "a special file"


def _short(name: str) -> str:
    return name if len(name) <= 48 else f"{name[:24]}...{name[-16:]}"


def _strerror(err: OSError) -> str:
    return err.strerror or os.strerror(err.errno or 0) or type(err).__name__


class Directory:
    """An output directory, opened and checked once; every write is relative to its descriptor."""

    def __init__(self, path: Path, fd: int, shared: bool):
        self.path = path
        self.fd = fd
        self.shared = shared  # sticky and writable by others: existing names may be theirs

    # -- opening ------------------------------------------------------------
    @classmethod
    def open(cls, path: Path | str, create: bool = False, what: str = "output directory") -> "Directory":
        """Walk `path` from / checking each directory (see the module docstring); create missing ones if asked."""
        path = Path(path)
        shown = path
        parts = list(Path(os.path.abspath(path)).parts[1:])
        fd = os.open("/", _DIR_FLAGS)
        stack: list[int] = []
        links = 0
        try:
            st = os.fstat(fd)
            cls._check(st, Path("/"), what, shown)
            where = Path("/")
            while parts:
                part = parts.pop(0)
                if part in ("", "."):
                    continue
                if part == "..":
                    if stack:
                        os.close(fd)
                        fd = stack.pop()
                        where = where.parent
                    continue
                try:
                    lst = os.stat(part, dir_fd=fd, follow_symlinks=False)
                except FileNotFoundError:
                    if not create:
                        raise UsageError(f"{what} {shown}: {where / part} does not exist") from None
                    try:
                        os.mkdir(part, 0o755, dir_fd=fd)
                    except FileExistsError:
                        pass  # made meanwhile: checked as any other below
                    lst = os.stat(part, dir_fd=fd, follow_symlinks=False)
                if stat.S_ISLNK(lst.st_mode):
                    links += 1
                    if links > MAX_SYMLINKS:
                        raise UsageError(f"{what} {shown}: too many levels of symbolic links")
                    if _shared(os.fstat(fd)) and lst.st_uid not in _trusted_uids():
                        raise UsageError(
                            f"{what} {shown}: {where / part} is a symbolic link owned by uid {lst.st_uid} "
                            "in a directory other users can write; refusing to follow it"
                        )
                    target = os.readlink(part, dir_fd=fd)
                    if target.startswith("/"):
                        while stack:
                            os.close(fd)
                            fd = stack.pop()
                        where = Path("/")
                    parts[:0] = [p for p in target.split("/") if p]
                    continue
                if not stat.S_ISDIR(lst.st_mode):
                    raise UsageError(f"{what} {shown}: {where / part} is {_kind(lst.st_mode)}, not a directory")
                nfd = os.open(part, _DIR_FLAGS, dir_fd=fd)
                stack.append(fd)
                fd = nfd
                where = where / part
                st = os.fstat(fd)
                cls._check(st, where, what, shown)
        except OSError as err:
            cls._close_all(fd, stack)
            raise UsageError(f"{what} {shown}: {_strerror(err)}") from None
        except BaseException:
            cls._close_all(fd, stack)
            raise
        for parent in stack:
            os.close(parent)
        return cls(path, fd, _shared(st))

    @staticmethod
    def _check(st: os.stat_result, where: Path, what: str, shown: Path) -> None:
        why = _untrusted_dir(st)
        if why is not None:
            at = "" if where == Path(os.path.abspath(shown)) else f": {where}"
            raise UsageError(f"refusing to write into {what} {shown}{at}, which {why}")

    @staticmethod
    def _close_all(fd: int, stack: list[int]) -> None:
        for f in [fd, *stack]:
            try:
                os.close(f)
            except OSError:
                pass

    def subdirectory(self, name: str) -> "Directory":
        """NAME inside this directory, created if missing, checked as the rest."""
        return Directory.open(self.path / name, create=True)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Directory":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- names --------------------------------------------------------------
    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.stat(name, dir_fd=self.fd, follow_symlinks=False)
        except FileNotFoundError:
            return None

    def exists(self, name: str) -> bool:
        return self._lstat(name) is not None

    def names(self) -> list[str]:
        return os.listdir(self.fd)

    def name_max(self) -> int:
        try:
            return os.fpathconf(self.fd, "PC_NAME_MAX")
        except (OSError, ValueError):
            return 255

    def check_target(self, name: str, keep_old: bool = False) -> None:
        """Refuse, before any work, a name that cannot be written as a new regular file (UsageError)."""
        shown = self.path / name
        limit = self.name_max()
        size = len(os.fsencode(name))
        if size > limit:
            raise UsageError(f"cannot write {_short(name)}: file name is {size} bytes, longer than the {limit} allowed here")
        st = self._lstat(name)
        if st is None:
            return
        if stat.S_ISLNK(st.st_mode):
            raise UsageError(f"output {shown} is a symbolic link; give the path of the file itself")
        if stat.S_ISDIR(st.st_mode):
            raise UsageError(f"output {shown} is a directory; give a file name")
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"output {shown} is {_kind(st.st_mode)}, not a regular file; give a file name")
        if not st.st_mode & 0o222:
            raise UsageError(f"output {shown} is read-only; remove it or give another name")
        if self.shared and st.st_uid not in _trusted_uids():
            raise UsageError(f"output {shown} belongs to uid {st.st_uid}; refusing to replace another user's file")
        if keep_old:
            self._free_old(name)

    def _free_old(self, name: str) -> str:
        """The name NAME would be kept under: the first of backup_names(NAME) that is free."""
        limit = self.name_max()
        for old in backup_names(name):
            size = len(os.fsencode(old))
            st = self._lstat(old) if size <= limit else None
            if st is None:
                if size > limit:
                    raise UsageError(
                        f"cannot keep the existing {_short(name)} as {_short(old)}: that name would be {size} bytes, "
                        f"over the {limit} allowed here; give a shorter name or remove the file"
                    )
                return old
        raise UsageError(
            f"{self.path / name} exists and so do {name}.old and {name}.old.1 .. .old.{MAX_OLD}: "
            "remove some kept files or give another name"
        )

    # -- writing ------------------------------------------------------------
    def temp_file(self, prefix: str = TEMP_PREFIX, suffix: str = ".tmp", mode: int = 0o600) -> tuple[str, int]:
        """(name, fd) of a new file with an unpredictable name, made with O_EXCL|O_NOFOLLOW."""
        flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        for _ in range(100):
            name = f"{prefix}{secrets.token_hex(16)}{suffix}"
            try:
                return name, os.open(name, flags, mode, dir_fd=self.fd)
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free temporary name")

    def write(self, name: str, fill: Fill, keep_old: bool = False, mode: int | None = None) -> str | None:
        """Write NAME atomically (see the module docstring); returns the name an existing file was kept under.

        `fill` is the content, or a function that writes it to a binary file.
        Refusals of the name are UsageError; failures while writing are WriteError.
        """
        self.check_target(name, keep_old=keep_old)
        shown = self.path / name
        try:
            tmp, fd = self.temp_file()
        except OSError as err:
            raise WriteError(shown, _strerror(err)) from None
        kept: str | None = None
        try:
            if mode is None:
                umask = os.umask(0)
                os.umask(umask)
                mode = 0o666 & ~umask
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as out:
                fd = -1
                if isinstance(fill, (bytes, bytearray, memoryview)):
                    out.write(fill)
                else:
                    fill(out)
                out.flush()
                os.fsync(out.fileno())
            if keep_old and self._lstat(name) is not None:
                kept = self._keep(name)
            os.replace(tmp, name, src_dir_fd=self.fd, dst_dir_fd=self.fd)
        except BaseException as err:
            if fd >= 0:
                os.close(fd)
            self._unlink(tmp)
            if kept is not None:
                self._unlink(kept)  # the file is still under its own name
            if isinstance(err, OSError):
                raise WriteError(shown, _strerror(err)) from None
            raise
        self.sync()
        return kept

    def _keep(self, name: str) -> str:
        """Link NAME to its first free backup name; link() never replaces an existing name."""
        for _ in range(MAX_OLD + 1):
            old = self._free_old(name)
            try:
                os.link(name, old, src_dir_fd=self.fd, dst_dir_fd=self.fd, follow_symlinks=False)
                return old
            except FileExistsError:
                continue  # taken meanwhile: the next one
            except OSError as err:
                if err.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.EMLINK):
                    raise
                # A file system without hard links: a rename, once the name is seen free.
                if self._lstat(old) is None:
                    os.rename(name, old, src_dir_fd=self.fd, dst_dir_fd=self.fd)
                    return old
        raise UsageError(f"cannot find a free name to keep {self.path / name}")

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(name, dir_fd=self.fd)
        except OSError:
            pass

    def sync(self) -> None:
        try:
            os.fsync(self.fd)
        except OSError:
            pass

    def save_new(self, prefix: str, suffix: str, fill: Fill) -> Path:
        """A new file under an unpredictable name (a fallback save); never replaces anything."""
        name, fd = self.temp_file(prefix=prefix, suffix=suffix)
        try:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(fd, 0o666 & ~umask)
            with os.fdopen(fd, "wb") as out:
                fd = -1
                if isinstance(fill, (bytes, bytearray, memoryview)):
                    out.write(fill)
                else:
                    fill(out)
                out.flush()
                os.fsync(out.fileno())
        except BaseException:
            if fd >= 0:
                os.close(fd)
            self._unlink(name)
            raise
        self.sync()
        return self.path / name

    def lock(self, name: str, what: str) -> "Lock":
        """An exclusive flock on NAME (made 0600 if missing): a second holder is refused in one line."""
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, 0o600, dir_fd=self.fd)
        except OSError as err:
            raise UsageError(f"cannot lock {self.path}: {name}: {_strerror(err)}") from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid not in _trusted_uids():
            os.close(fd)
            raise UsageError(f"cannot lock {self.path}: {name} is not a regular file of ours")
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            os.close(fd)
            raise TracerError(
                f"{self.path} is in use by another {what}" + (f" (pid {holder})" if holder.isdigit() else "")
                + "; wait for it or give another directory"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return Lock(fd)


class Lock:
    """Held until released or the process exits (flock)."""

    def __init__(self, fd: int):
        self.fd = fd

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "Lock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def backup_names(name: str) -> list[str]:
    """Where an existing NAME may be kept, in order: NAME.old, NAME.old.1 .. NAME.old.MAX_OLD."""
    return [f"{name}.old"] + [f"{name}.old.{i}" for i in range(1, MAX_OLD + 1)]


def write_file(path: Path | str, fill: Fill, keep_old: bool = False, create_dir: bool = False) -> str | None:
    """Write one file safely (Directory.write) into its directory, opened and checked for this write."""
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise UsageError(f"{path}: give a file name")
    with Directory.open(path.parent, create=create_dir) as directory:
        return directory.write(path.name, fill, keep_old=keep_old)


# -- inputs ---------------------------------------------------------------------


def open_input(path: Path | str, what: str = "input") -> BinaryIO:
    """Open a regular file for reading; anything else (FIFO, device, directory, socket) is an InputError.

    O_NONBLOCK while opening: opening a FIFO would otherwise wait for a writer.
    """
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise InputError(f"{what} {path} does not exist") from None
    except PermissionError:
        raise InputError(f"{what} {path} is not readable (permission denied)") from None
    except OSError as err:
        raise InputError(f"cannot open {what} {path}: {_strerror(err)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise InputError(f"{what} {path} is {_kind(st.st_mode)}, not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def check_input(path: Path | str, what: str = "input") -> None:
    """Refuse a path that is not a regular file, without opening it (for readers that take a name)."""
    open_input(path, what).close()


def read_input(path: Path | str, what: str, max_bytes: int) -> bytes:
    """A regular file's content, refused (InputError) beyond `max_bytes`."""
    with open_input(path, what) as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise InputError(f"{what} {path} is larger than {max_bytes:,} bytes; refusing to read it")
    return data

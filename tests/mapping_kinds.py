"""A process per kind of mapping that fork() treats specially, each forking FORKS times.

Run as a script under `tracer record -- python mapping_kinds.py OUT.json`: for
each kind a child process maps LONE one-page private anonymous VMAs, each
between holes, plus the kind's own mapping(s), then forks FORKS times; OUT.json
gets {pid: kind}. The kinds are what real programs use beside fork(): RDMA,
DPDK and QEMU mark buffers MADV_DONTFORK (VM_DONTCOPY: the child gets no
copy), others wipe on fork, ask for huge pages, lock, share or map a file.
"""

from __future__ import annotations

import ctypes
import json
import mmap
import os
import sys
import tempfile

PAGE = mmap.PAGESIZE
LONE = 40
FORKS = 15
MANY = 40  # more VM_DONTCOPY VMAs than the bracket times stores for blindly (UNSEEN_STORES)
MADV_WIPEONFORK = 18  # uapi/asm-generic/mman-common.h; Python's mmap module may lack the name

# kind -> VM_DONTCOPY VMAs it adds (what dup_mmap must not copy)
KINDS = {
    "plain": 0,
    "dontfork": 1,
    "dontfork_adjacent": 1,  # the middle page of three: its neighbours touch it (an exact-fit clear)
    "dontfork_many": MANY,
    # every other page of one mapping: exact-fit clears, which v6.12+ trace not at all; more than
    # the bracket times blindly, so there the last store is missed (and said so)
    "dontfork_many_adjacent": MANY,
    "wipeonfork": 0,
    "hugepage": 0,
    "mlock": 0,
    "shared": 0,
    "file": 0,
}

_PRIVATE = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS
_keep: list[object] = []  # mappings live until the process exits


def _lone(pages: int = 1, flags: int = _PRIVATE, fileno: int = -1) -> mmap.mmap:
    """A mapping with a hole after it: map one page more, unmap that page."""
    libc = ctypes.CDLL(None, use_errno=True)
    m = mmap.mmap(fileno, PAGE * (pages + 1), flags=flags)
    addr = ctypes.addressof(ctypes.c_char.from_buffer(m))
    # munmap of the last page leaves the mmap object's length stale; it is never touched there.
    assert libc.munmap(ctypes.c_void_p(addr + PAGE * pages), ctypes.c_size_t(PAGE)) == 0
    _keep.append(m)
    return m


def _address(m: mmap.mmap) -> int:
    return ctypes.addressof(ctypes.c_char.from_buffer(m))


def _madvise(addr: int, length: int, advice: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.madvise(ctypes.c_void_p(addr), ctypes.c_size_t(length), advice) != 0:
        raise OSError(ctypes.get_errno(), f"madvise({advice}): {os.strerror(ctypes.get_errno())}")


def set_up(kind: str) -> None:
    for _ in range(LONE):
        _lone()[0] = 1
    if kind == "dontfork":
        m = _lone(4)
        _madvise(_address(m), 4 * PAGE, mmap.MADV_DONTFORK)
    elif kind == "dontfork_adjacent":
        m = mmap.mmap(-1, 3 * PAGE, flags=_PRIVATE)
        _keep.append(m)
        _madvise(_address(m) + PAGE, PAGE, mmap.MADV_DONTFORK)  # splits the VMA in three
    elif kind == "dontfork_many":
        for _ in range(MANY):
            _madvise(_address(_lone()), PAGE, mmap.MADV_DONTFORK)
    elif kind == "dontfork_many_adjacent":
        m = mmap.mmap(-1, (2 * MANY + 1) * PAGE, flags=_PRIVATE)
        _keep.append(m)
        for i in range(MANY):
            _madvise(_address(m) + (2 * i + 1) * PAGE, PAGE, mmap.MADV_DONTFORK)
    elif kind == "wipeonfork":
        m = _lone(4)
        m[0] = 1
        _madvise(_address(m), 4 * PAGE, MADV_WIPEONFORK)
    elif kind == "hugepage":
        m = _lone(512)
        _madvise(_address(m), 512 * PAGE, mmap.MADV_HUGEPAGE)
        m[0] = 1
    elif kind == "mlock":
        m = _lone(4)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.mlock(ctypes.c_void_p(_address(m)), ctypes.c_size_t(4 * PAGE)) != 0:
            raise OSError(ctypes.get_errno(), "mlock")
    elif kind == "shared":
        _lone(4, flags=mmap.MAP_SHARED | mmap.MAP_ANONYMOUS)[0] = 1
    elif kind == "file":
        f = tempfile.TemporaryFile()
        f.truncate(5 * PAGE)
        _keep.append(f)
        _lone(4, flags=mmap.MAP_PRIVATE, fileno=f.fileno())[0] = 1
    elif kind != "plain":
        raise ValueError(kind)


def run_kind(kind: str) -> None:
    """In a child of the driver: set up, then fork FORKS times (child exits at once)."""
    set_up(kind)
    for _ in range(FORKS):
        pid = os.fork()
        if pid == 0:
            os._exit(0)
        os.waitpid(pid, 0)


def main(out: str) -> int:
    pids = {}
    for kind in KINDS:
        pid = os.fork()
        if pid == 0:
            try:
                run_kind(kind)
            except BaseException as e:  # noqa: BLE001 - say why, then fail the kind
                print(f"{kind}: {e}", file=sys.stderr)
                os._exit(1)
            os._exit(0)
        _, status = os.waitpid(pid, 0)
        if status != 0:
            return 1
        pids[pid] = kind
    with open(out, "w") as f:
        json.dump(pids, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))

"""Shared test setup: what the host can do, and the rule that BPF tests never skip silently.

A test that needs BPF asks for the `bpf_host` fixture. On a host that truly
lacks a capability (not root, no bcc, no tracepoint), it skips and names the
capability. Where FORKTRACE_REQUIRE_BPF=1 (set by .ci/run on the CI host,
which has them all), such a skip is turned into a failure instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TRACER = [sys.executable, "-m", "tracer.cli"]


def missing_bpf_capability() -> str | None:
    """Why this host cannot load the bracket, or None if it can."""
    if os.geteuid() != 0:
        return "not root (BPF needs CAP_BPF/CAP_PERFMON; run the tests as root)"
    try:
        import bcc  # noqa: F401
    except ImportError:
        return "bcc not importable (install python3-bpfcc; use a venv with --system-site-packages)"
    if not Path("/sys/kernel/btf/vmlinux").exists():
        return "no kernel BTF (/sys/kernel/btf/vmlinux)"
    kallsyms = Path("/proc/kallsyms").read_text()
    for tracepoint in ("ma_write", "mmap_lock_acquire_returned", "mmap_lock_released", "sched_process_fork"):
        # Every tracepoint has an iterator symbol __traceiter_<name> (v5.10+).
        if f" __traceiter_{tracepoint}\n" not in kallsyms:
            return f"tracepoint {tracepoint} not in this kernel"
    if shutil.which("cc") is None:
        return "no C compiler for the spawn workload (apt-get install gcc)"
    return None


@pytest.fixture(scope="session")
def bpf_host() -> None:
    reason = missing_bpf_capability()
    if reason is None:
        return
    if os.environ.get("FORKTRACE_REQUIRE_BPF") == "1":
        pytest.fail(f"BPF tests are required here (FORKTRACE_REQUIRE_BPF=1) but: {reason}")
    pytest.skip(f"needs BPF: {reason}")


@pytest.fixture
def tmpfs(tmp_path):
    """tmpfs(size): a small tmpfs under tmp_path, unmounted after the test: a disk that can be filled."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tmpfs")
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        mnt = tmp_path / f"tmpfs-{len(mounted)}"
        mnt.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mnt)], check=True)
        mounted.append(mnt)
        return mnt

    try:
        yield mount
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", str(mnt)], check=True)


def hangup_default() -> None:
    """Popen preexec_fn for a tracer a test sends SIGHUP: a suite started under nohup passes SIGHUP on
    ignored, and the tracer rightly keeps it ignored (tracer/record/stopping.py), so the test would wait
    forever for an exit that never comes."""
    signal.signal(signal.SIGHUP, signal.SIG_DFL)

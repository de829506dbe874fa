"""`tracer record` and friends on bad input: one line, non-zero exit, no recording.

And on interruption: Ctrl-C ends a recording cleanly and writes all of it.
"""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from analysis.recording import load_recording
from conftest import ROOT, TRACER


def run(*args: str, user: int | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [*TRACER, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        user=user,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess, *words: str) -> None:
    assert proc.returncode != 0
    err = proc.stderr.strip()
    assert "Traceback" not in err
    last = err.splitlines()[-1]
    assert last.startswith("tracer: error:"), err
    for word in words:
        assert word in last, last


@pytest.mark.parametrize(
    "args, words",
    [
        (["record", "-p", "999999999", "-d", "1"], ["no such process", "999999999"]),
        (["record", "-q", "--", "no-such-command-forktrace"], ["command not found", "no-such-command-forktrace"]),
        (["record", "--spawn", "10", "-o", "/nonexistent-dir/x.parquet"], ["does not exist"]),
        (["record", "--spawn", "10", "-o", "/tmp"], ["directory"]),
        (["record", "--spawn", "10", "-p", "1"], ["choose one target"]),
        (["record", "--forks", "10"], ["--spawn"]),
        (["record", "--spawn", "-5"], [">= 0"]),
        (["record", "--spawn", "10", "-d", "0"], ["positive"]),
        (["record", "--spawn", "10", "--backend", "uprobe", "-o", "/tmp/forktrace-test-never.parquet"], ["unknown backend"]),
        (["record", "--spawn", "10", "--level", "vma", "-o", "/tmp/forktrace-test-never.parquet"], ["unknown level", "vma"]),
        (["record", "--spawn", "10", "--level", "fork", "--sample", "99", "-o", "/tmp/forktrace-test-never.parquet"], ["--level full"]),
        (["report", "/nonexistent.parquet"], ["nonexistent.parquet"]),
        (["report", "/etc/passwd"], ["/etc/passwd"]),
        (["report", "--format", "xml", "/etc/passwd"], ["--format"]),
        (["model", "--vmas", "10", "--maps", "/etc/passwd"], []),
        (["model", "--maps", "/etc/passwd"], ["/etc/passwd"]),
    ],
)
def test_bad_input_is_one_line(args, words):
    proc = run(*args)
    assert_one_line_error(proc, *words)
    assert not os.path.exists("/tmp/forktrace-test-never.parquet")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to an unprivileged user")
def test_not_root_is_one_line(tmp_path):
    tmp_path.chmod(0o777)
    proc = run("record", "--spawn", "0", "-o", str(tmp_path / "x.parquet"), user=65534)
    assert_one_line_error(proc, "root")
    assert not list(tmp_path.iterdir())


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_ctrl_c_writes_a_complete_recording(tmp_path):
    path = tmp_path / "int.parquet"
    proc = subprocess.Popen(
        [*TRACER, "record", "--spawn", "50", "-d", "60", "-o", str(path)],
        cwd=ROOT, stderr=subprocess.PIPE, text=True,
    )
    while not (line := proc.stderr.readline()).startswith("tracing"):
        assert line, "tracer exited before tracing"
    # Let some forks happen, then interrupt as a terminal would (the workload
    # runs in its own session, so only the tracer gets it).
    subprocess.run(["sleep", "1"])
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 0, rest
    rec = load_recording(path)
    workload = rec.meta["workload"]
    assert workload["stop"] == "signal"
    assert workload["forks"] > 0
    # Every fork the workload made is in the recording, none half-written.
    assert len(rec.forks[rec.forks.pid == workload["pid"]]) == workload["forks"]
    assert not rec.forks.failed.any()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["int.parquet"]


def test_missing_bcc_is_one_line(tmp_path):
    # As on a host without python3-bpfcc: the import of bcc fails.
    code = "import sys; sys.modules['bcc'] = None; from tracer.cli import main; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "record", "--spawn", "0", "-o", str(tmp_path / "x.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )
    if os.geteuid() != 0:
        assert_one_line_error(proc, "root")
    else:
        assert_one_line_error(proc, "bcc")
    assert not list(tmp_path.iterdir())


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: without it record stops at the root check")
def test_unusable_headers_are_one_line(tmp_path):
    env = {**os.environ, "BCC_KERNEL_SOURCE": str(tmp_path / "no-such-headers")}
    proc = subprocess.run(
        [*TRACER, "record", "--spawn", "0", "-o", str(tmp_path / "x.parquet")],
        cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
    )
    assert_one_line_error(proc, "BCC_KERNEL_SOURCE")
    assert not (tmp_path / "x.parquet").exists()


# --- output files: refused before tracing, never destroyed --------------------------------


def _special_output(kind: str, tmp_path):
    """An output a rename would destroy; returns (path, a function describing it now)."""
    path = tmp_path / "out.parquet"
    if kind == "device":
        return Path("/dev/full"), lambda: stat.S_ISCHR(os.lstat("/dev/full").st_mode)
    if kind == "fifo":
        os.mkfifo(path)
        return path, lambda: stat.S_ISFIFO(os.lstat(path).st_mode)
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        return path, lambda: stat.S_ISSOCK(os.lstat(path).st_mode)
    if kind == "symlink":
        (tmp_path / "target").write_text("keep me")
        path.symlink_to("target")
        return path, lambda: path.is_symlink() and (tmp_path / "target").read_text() == "keep me"
    if kind == "read-only":
        path.write_text("keep me")
        path.chmod(0o444)
        return path, lambda: path.read_text() == "keep me" and not os.stat(path).st_mode & 0o222
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind, words",
    [
        ("device", ["character device"]),
        ("fifo", ["FIFO"]),
        ("socket", ["socket"]),
        ("symlink", ["symbolic link"]),
        ("read-only", ["read-only"]),
    ],
)
def test_output_a_rename_would_destroy_is_refused_before_tracing(tmp_path, kind, words):
    path, unchanged = _special_output(kind, tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    proc = run("record", "--spawn", "10", "-o", str(path))
    assert_one_line_error(proc, str(path), *words)
    assert "loading BPF" not in proc.stderr
    assert unchanged()
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_file_name_too_long_for_the_file_system_is_refused_before_tracing(tmp_path):
    name_max = os.pathconf(tmp_path, "PC_NAME_MAX")
    proc = run("record", "--spawn", "10", "-o", str(tmp_path / ("x" * (name_max + 1))))
    assert_one_line_error(proc, "file name", str(name_max))
    assert "loading BPF" not in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize(
    "args, words",
    [
        (["-d", "nan"], ["-d", "nan"]),
        (["-d", "inf"], ["-d", "inf"]),
        (["-d", "-1"], ["-d"]),
        (["-d", "0"], ["-d"]),
        (["--spawn", "99999999"], ["--spawn", "99999999"]),
        (["--spawn", "10", "-d", "2e6"], ["duration"]),
        (["--spawn", "MAX_MAP_COUNT"], ["max_map_count"]),
        (["--spawn", "10", "--sample", "-1"], ["--sample"]),
    ],
)
def test_range_errors_come_before_bpf_is_loaded(tmp_path, args, words):
    limit = Path("/proc/sys/vm/max_map_count").read_text().strip()
    args = [limit if a == "MAX_MAP_COUNT" else a for a in args]
    proc = run("record", *args, "-o", str(tmp_path / "x.parquet"))
    assert_one_line_error(proc, *words)
    assert "loading BPF" not in proc.stderr
    assert not list(tmp_path.iterdir())


def test_command_that_cannot_run_exits_as_a_shell_would(tmp_path):
    not_executable = tmp_path / "script"
    not_executable.write_text("echo hi\n")
    proc = run("record", "-o", str(tmp_path / "x.parquet"), "--", "no-such-command-forktrace")
    assert_one_line_error(proc, "command not found")
    assert proc.returncode == 127
    proc = run("record", "-o", str(tmp_path / "x.parquet"), "--", str(not_executable))
    assert_one_line_error(proc, "not an executable")
    assert proc.returncode == 126
    assert sorted(p.name for p in tmp_path.iterdir()) == ["script"]

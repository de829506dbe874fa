"""`tracer record` and friends on bad input: one line, non-zero exit, no recording.

And on interruption: Ctrl-C ends a recording cleanly and writes all of it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

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

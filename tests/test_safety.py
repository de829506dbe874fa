"""Issue 19: every writer safe as root, every reader bounded, every stop obeyed.

One test (or more) per defect, numbered as in the issue. The security cases
use an unprivileged attacker (uid 65534, tests/hostile.py) planting names in
a directory it may write; the victim is a file of root's that must come out
untouched. Cases in a sticky world-writable directory (as /tmp) need the
kernel's fs.protected_symlinks off to show anything, which is system-wide:
those are marked system_wide.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from analysis.errors import InputError, TracerError, UsageError
from analysis.files import Directory, open_input, read_input, write_file
from conftest import ROOT, TRACER, hangup_default
from hostile import (arena, attacker_dir, can_attack, plant_dirs, plant_links, shared_dir, symlinks_followed)
from recordings import default_metadata, fork_rows, write_costed, write_synthetic

needs_attacker = pytest.mark.skipif(can_attack() is not None, reason=str(can_attack()))


def tracer(*args: str, timeout: float = 120, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*TRACER, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def recordings(directory: Path, n: int = 2) -> list[Path]:
    from recordings import write_costed

    costs = {"stores": 300.0}
    return [write_costed(directory / f"r{i}.parquet", 100 * (i + 1), costs, 5_000.0, n=30) for i in range(n)]


# -- 1-5: root follows an attacker's names -----------------------------------------


@needs_attacker
@pytest.mark.parametrize("owner", ["attacker", "world-writable"])
def test_1_sweep_refuses_a_directory_another_user_can_write(owner):
    with arena() as base:
        out = attacker_dir(base) if owner == "attacker" else shared_dir(base, "ww", 0o777)
        names = [".index.json.tmp", "index.json", "report.md", "report.json"]
        plant_links(base / "victim", out, names)
        proc = tracer("sweep", "-o", str(out), "--force", "--vmas", "0", "--forks", "10")
        assert proc.returncode == 2
        assert "refusing to write into output directory" in one_line(proc)
        assert (base / "victim").read_text() == "precious\n"


@needs_attacker
def test_1_5_a_directory_under_an_attackers_directory_is_refused_too():
    # Whoever owns a parent can swap the child for a link mid-run (case 5): refused before any work.
    with arena() as base:
        parent = attacker_dir(base)
        mine = parent / "mine"
        mine.mkdir()
        for args in (["sweep", "-o", str(mine), "--force", "--vmas", "0"],
                     ["record", "--spawn", "0", "-n", "1", "-o", str(mine / "r.parquet")]):
            proc = tracer(*args)
            assert proc.returncode == 2, proc.stderr
            assert f"which is owned by uid 65534" in one_line(proc)
        assert os.listdir(mine) == []


def test_5_the_directory_checked_before_tracing_is_the_one_written(tmp_path):
    # -o DIR/x.parquet, DIR swapped for a link to another directory mid-run: the write goes to the
    # directory that was checked (held open), never through the link.
    from tracer.record.output import prepare_output, save_recording

    out, elsewhere = tmp_path / "out", tmp_path / "elsewhere"
    out.mkdir()
    elsewhere.mkdir()
    (elsewhere / "x.parquet").write_text("someone else's")
    output = prepare_output(out / "x.parquet")
    out.rename(tmp_path / "moved")
    out.symlink_to(elsewhere)
    rows = fork_rows(3)
    save_recording(output, rows, default_metadata(rows), print)
    assert (elsewhere / "x.parquet").read_text() == "someone else's"
    assert sorted(os.listdir(elsewhere)) == ["x.parquet"]
    assert sorted(os.listdir(tmp_path / "moved")) == ["x.parquet"]


@needs_attacker
def test_2_report_plot_refuses_an_attackers_directory(tmp_path):
    rec = recordings(tmp_path, 1)[0]
    with arena() as base:
        out = attacker_dir(base)
        plant_links(base / "victim", out, ["attribution.png", "attribution.svg"])
        proc = tracer("report", str(rec), "--plot", str(out))
        assert proc.returncode == 2 and "refusing to write into --plot directory" in one_line(proc)
        assert proc.stdout == ""  # refused before any work
        assert (base / "victim").read_text() == "precious\n"


@needs_attacker
@pytest.mark.system_wide
def test_2_report_plot_in_a_sticky_directory_never_follows_a_planted_link(tmp_path):
    rec = recordings(tmp_path, 1)[0]
    with arena() as base, symlinks_followed():
        shared = shared_dir(base, "tmp", 0o1777)
        out = shared / "plots"
        out.mkdir()
        out.chmod(0o1777)
        plant_links(base / "victim", out, ["attribution.png"])
        proc = tracer("report", str(rec), "--plot", str(out))
        assert proc.returncode == 2 and "symbolic link" in one_line(proc)
        assert (base / "victim").read_text() == "precious\n"


@needs_attacker
@pytest.mark.system_wide
def test_3_compare_plot_temp_names_cannot_be_planted(tmp_path):
    a, b = recordings(tmp_path, 2)
    with arena() as base, symlinks_followed():
        shared = shared_dir(base, "tmp", 0o1777)
        # Every name the old writer could have used: .NAME.tmp<pid>.png for every pid.
        plant_links(base / "victim", shared, [f".cmp.png.tmp{pid}.png" for pid in range(1, 32769)])
        proc = tracer("compare", str(a), str(b), "--plot", str(shared / "cmp.png"))
        assert proc.returncode == 0, proc.stderr
        assert (base / "victim").read_text() == "precious\n"
        plot = shared / "cmp.png"
        assert not plot.is_symlink() and plot.read_bytes()[:4] == b"\x89PNG"


@needs_attacker
def test_4_fallback_names_cannot_be_planted(tmp_path, monkeypatch):
    import tempfile

    from tracer.record.output import save_recording

    rows = fork_rows(4)
    with arena() as base:
        shared = shared_dir(base, "tmp", 0o1777)
        monkeypatch.setattr(tempfile, "tempdir", str(shared))
        # The old names: forktrace-saved-<second>-<pid>.parquet for the next seconds, planted as directories.
        now = time.time()
        names = [f"forktrace-saved-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now + s))}-{os.getpid()}.parquet"
                 for s in range(-2, 30)]
        plant_dirs(shared, names)
        out = tmp_path / "out"
        out.mkdir()
        (out / "r.parquet").mkdir()  # the output cannot be written: the recording goes to a fallback
        with pytest.raises(UsageError):
            from tracer.record.output import prepare_output

            prepare_output(out / "r.parquet")
        output = _output_bypassing_checks(out / "r.parquet")
        with pytest.raises(TracerError, match="saved as") as err:
            save_recording(output, rows, default_metadata(rows), print)
        saved = Path(str(err.value).rsplit("saved as ", 1)[1])
        assert saved.parent in (shared, out) and saved.is_file() and saved.stat().st_uid == 0


def _output_bypassing_checks(path: Path):
    from tracer.record.output import Output

    return Output(path, Directory.open(path.parent))


# -- 6-8: data destroyed ---------------------------------------------------------------


def test_6_7_a_kept_recording_is_never_replaced(tmp_path):
    for i in range(3):
        write_file(tmp_path / "r.parquet", f"run {i}".encode(), keep_old=True)
    assert (tmp_path / "r.parquet").read_text() == "run 2"
    assert (tmp_path / "r.parquet.old").read_text() == "run 0"
    assert (tmp_path / "r.parquet.old.1").read_text() == "run 1"


def test_6_the_report_of_a_forced_sweep_covers_only_its_own_recordings(tmp_path, monkeypatch):
    from tracer import sweep as sweep_mod

    out = tmp_path / "s"
    out.mkdir()
    stale = recordings(out, 3)  # an earlier sweep's files in the directory
    opts = sweep_mod.SweepOptions(output=out, vmas=(100,), layouts=("gapped",))
    new = write_costed(out / sweep_mod.recording_name("gapped", 100), 100, {"stores": 300.0}, 5_000.0, n=30)
    opts.recordings = [{"file": new.name, "layout": "gapped", "extra_vmas": 100}]
    sweep_mod.write_index(opts)
    sweep_mod.write_report(opts, lambda msg: None)
    index = json.loads((out / "index.json").read_text())
    report = json.loads((out / "report.json").read_text())
    assert [r["file"] for r in index["recordings"]] == [new.name]
    assert report.get("recordings", [str(new)]) in ([str(new)], [new.name])
    assert all(p.exists() for p in stale)


def test_8_a_second_sweep_into_a_locked_directory_is_refused_in_one_line(tmp_path):
    from tracer.sweep import LOCK

    out = tmp_path / "s"
    out.mkdir()
    with Directory.open(out) as d, d.lock(LOCK, "sweep"):
        proc = tracer("sweep", "-o", str(out), "--force", "--vmas", "0", "--forks", "10")
    assert proc.returncode == 1
    assert one_line(proc) == f"tracer: error: {out} is in use by another sweep (pid {os.getpid()}); wait for it or give another directory"
    assert os.listdir(out) == [LOCK]


# -- 11-14: readers --------------------------------------------------------------------


@pytest.fixture
def fifo(tmp_path):
    path = tmp_path / "fifo.parquet"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("args", [
    ["report", "{fifo}"],
    ["compare", "{good}", "{fifo}"],
    ["compare", "{good_json}", "{fifo_json}"],
    ["model", "--recording", "{fifo}"],
    ["model", "--maps", "{fifo}"],
    ["report", "{dir}"],
])
def test_11_a_fifo_is_refused_not_waited_on(tmp_path, fifo, args):
    good = recordings(tmp_path, 1)[0]
    fifo_json = tmp_path / "fifo.json"
    os.mkfifo(fifo_json)
    good_json = tmp_path / "good.json"
    good_json.write_text('{"benchmarks": []}')
    d = tmp_path / "d"
    d.mkdir()
    os.mkfifo(d / "x.parquet")
    subs = {"fifo": fifo, "good": good, "fifo_json": fifo_json, "good_json": good_json, "dir": d}
    proc = tracer(*[a.format(**subs) for a in args], timeout=60)
    assert proc.returncode == 2
    assert "is a FIFO, not a regular file" in one_line(proc)


def test_12_model_maps_reads_a_bounded_amount():
    proc = tracer("model", "--maps", "/dev/zero", timeout=60)
    assert proc.returncode == 2 and "not a regular file" in one_line(proc)


def test_12_a_maps_file_beyond_the_largest_real_one_is_refused(tmp_path):
    from analysis.model.render import MAX_MAPS_LINES

    line = "7f0000000000-7f0000001000 rw-p 00000000 00:00 0\n"
    big = tmp_path / "maps"
    big.write_text(line * (MAX_MAPS_LINES + 1))
    proc = tracer("model", "--maps", str(big), timeout=60)
    assert proc.returncode == 2 and "lines" in one_line(proc)


class Deep:
    """Objects nested `levels` deep, written as text (see _write_raw_metadata)."""

    def __init__(self, levels: int):
        self.levels = levels


def deep(n: int) -> Deep:
    return Deep(n)


@pytest.mark.parametrize("meta, args", [
    ({"workload": deep(5000)}, ["report", "{rec}"]),
    ({"workload": deep(5000)}, ["compare", "{rec}", "{rec2}"]),
    ({"workload": deep(5000)}, ["model", "--recording", "{rec}"]),
    ({"workload": deep(5000)}, ["report", "{rec2}", "--predict", "{rec}"]),
    ({"maps": 5}, ["model", "--recording", "{rec}"]),
    ({"maps": 5}, ["report", "{rec}"]),
    ({"sample": [1, 2]}, ["report", "--format", "folded", "{rec}"]),
    ({"sample": {"hz": 99, "stacks": [5]}}, ["report", "--format", "folded", "{rec}"]),
    ({"workload": [1]}, ["report", "{rec}"]),
])
def test_13_bad_metadata_is_one_line_naming_the_file(tmp_path, meta, args):
    rows = fork_rows(5)
    rec = tmp_path / "bad.parquet"
    _write_raw_metadata(rec, rows, {**default_metadata(rows), **meta})
    rec2 = write_synthetic(tmp_path / "good.parquet")
    proc = tracer(*[a.format(rec=rec, rec2=rec2) for a in args], timeout=60)
    assert proc.returncode == 2, proc.stderr
    line = one_line(proc)
    assert str(rec) in line and "metadata" in line, line


def _write_raw_metadata(path: Path, rows, meta) -> None:
    """A recording whose metadata is written as given (json.dumps itself would recurse on deep nesting)."""
    import pyarrow.parquet as pq

    from analysis.recording.schema import METADATA_KEY
    from analysis.recording.writer import encode_recording

    deep_keys = {k for k, v in meta.items() if isinstance(v, Deep)}
    text = json.dumps({"format_version": 2, **{k: (f"@@{k}" if k in deep_keys else v) for k, v in meta.items()}})
    for k in deep_keys:
        n = meta[k].levels
        text = text.replace(json.dumps(f"@@{k}"), '{"a":' * n + "1" + "}" * n)
    pq.write_table(encode_recording(rows, {}).replace_schema_metadata({METADATA_KEY: text.encode()}), path)


def test_13_a_corrupt_file_among_good_ones_is_named(tmp_path):
    good = recordings(tmp_path, 2)
    bad = tmp_path / "r9.parquet"
    bad.write_bytes(b"PAR1" + b"\0" * 100)
    proc = tracer("report", str(tmp_path))
    assert proc.returncode == 2 and str(bad) in one_line(proc)
    assert good


@pytest.fixture
def small_fs(tmpfs):
    """A 256k tmpfs: a disk that can be filled."""
    return tmpfs("256k")


def _fill(directory: Path) -> None:
    with open(directory / "filler", "wb", buffering=0) as out:
        try:
            while True:
                out.write(b"\0" * 4096)
        except OSError:
            pass


def test_14_disk_full_while_plotting_is_one_line_and_leaves_no_truncated_file(tmp_path, small_fs):
    recs = recordings(tmp_path, 2)
    plots = small_fs / "plots"
    plots.mkdir()
    _fill(small_fs)
    filler = small_fs / "filler"
    os.truncate(filler, filler.stat().st_size - 24 * 1024)  # a few KiB free: a small file may fit, not all plots
    proc = tracer("report", *map(str, recs), "--plot", str(plots))
    assert proc.returncode == 1
    assert "No space left on device" in one_line(proc)
    for p in plots.iterdir():
        assert not p.name.startswith(".forktrace-")
        if p.suffix == ".svg":
            assert p.read_text().rstrip().endswith("</svg>")


def test_14_disk_full_writing_the_sweeps_report_leaves_the_previous_one_whole(small_fs):
    (small_fs / "report.md").write_text("# previous report\n")
    _fill(small_fs)
    with pytest.raises(TracerError, match="No space left on device"):
        write_file(small_fs / "report.md", b"# new report\n" * 10_000)
    assert (small_fs / "report.md").read_text() == "# previous report\n"
    assert sorted(os.listdir(small_fs)) == ["filler", "report.md"]


# -- 15-19: messages and exit codes ---------------------------------------------------------


def test_15_every_vma_count_is_checked_before_the_first_recording(tmp_path):
    proc = tracer("sweep", "-o", str(tmp_path / "s"), "--vmas", "0,70000000", "--forks", "10")
    assert proc.returncode == 2 and "--vmas 70000000" in one_line(proc)
    assert not (tmp_path / "s").exists()


def test_18_compare_calls_a_non_json_file_what_it_is(tmp_path):
    a = tmp_path / "a.json"
    a.write_text("not json at all")
    b = tmp_path / "b.json"
    b.write_text("also not")
    proc = tracer("compare", str(a), str(b))
    assert proc.returncode == 2
    line = one_line(proc)
    assert "recordings" not in line and str(a) in line and "JSON" in line


def test_19_exit_codes_follow_one_rule(tmp_path):
    # 2: refused before any work (command line, input, output); 1: failed while working; 128+N: stopped.
    bad = tmp_path / "bad.parquet"
    bad.write_text("nope")
    (tmp_path / "link.parquet").symlink_to(bad)
    cases = [
        (["record", "-p", "999999999", "-d", "1"], 2),  # a missing -p
        (["record", "--spawn", "0", "-o", str(tmp_path / "link.parquet")], 2),  # a refused -o
        (["report", str(bad)], 2),
        (["model", "--recording", str(bad)], 2),
        (["model", "--maps", str(tmp_path / "missing")], 2),
        (["report", str(tmp_path / "missing.parquet")], 2),
    ]
    for args, code in cases:
        proc = tracer(*args, timeout=60, cwd=tmp_path)
        assert proc.returncode == code, (args, proc.stderr)
        one_line(proc)


def test_19_pid_without_an_mm_is_refused(tmp_path):
    proc = tracer("record", "-p", "2", "-d", "1", timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    assert "kernel thread" in one_line(proc)
    assert os.listdir(tmp_path) == []


def test_readers_refuse_special_files_directly(tmp_path, fifo):
    with pytest.raises(InputError, match="FIFO"):
        open_input(fifo, "recording")
    with pytest.raises(InputError, match="character device"):
        read_input("/dev/zero", "maps", 1024)
    big = tmp_path / "big"
    big.write_bytes(b"x" * 2048)
    with pytest.raises(InputError, match="larger than 1,024 bytes"):
        read_input(big, "maps", 1024)


# -- 9, 10, 16: stops --------------------------------------------------------------------


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([*TRACER, *args], cwd=ROOT, stderr=subprocess.PIPE, text=True, preexec_fn=hangup_default)


def _wait_for(proc: subprocess.Popen, text: str) -> list[str]:
    seen = []
    while text not in (line := proc.stderr.readline()):
        if not line:
            proc.wait(timeout=60)
            pytest.fail("exited before " + text + ": " + "".join(seen))
        seen.append(line)
    return seen


def _wait_for_child(pid: int, comm: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        out = subprocess.run(["ps", "-o", "comm=", "--ppid", str(pid)], capture_output=True, text=True).stdout
        if any(line.startswith(comm) for line in out.split()):
            return
        time.sleep(0.05)
    pytest.fail(f"no {comm} child of {pid}")


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_9_sighup_ends_the_whole_sweep_with_index_and_report_and_the_cut_recording_marked(tmp_path):
    out = tmp_path / "s"
    proc = _start(["sweep", "-o", str(out), "--vmas", "0,100", "--layout", "gapped", "--forks", "2000000",
                   "--sample", "0"], tmp_path)
    _wait_for(proc, "[1/2]")
    _wait_for_child(proc.pid, "spawn")  # the workload runs: BPF is attached, tracing
    time.sleep(0.5)
    proc.send_signal(signal.SIGHUP)
    _, rest = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGHUP, rest
    assert "[2/2]" not in rest  # the sweep ended, not only the recording
    assert rest.strip().splitlines()[-1].startswith("tracer: error: SIGHUP: sweep stopped (1 of 2 recordings, spawn-gapped-00000.parquet cut short)")
    index = json.loads((out / "index.json").read_text())
    assert [(r["file"], r["cut_by"]) for r in index["recordings"]] == [("spawn-gapped-00000.parquet", "SIGHUP")]
    assert index["stopped"]["signal"] == "SIGHUP"
    assert "Sweep stopped by SIGHUP after 1 of 2 recordings" in (out / "report.md").read_text()
    assert json.loads((out / "report.json").read_text())["sweep_stopped"]["cut"] == "spawn-gapped-00000.parquet"


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_16_a_stop_while_the_next_recording_loads_keeps_what_the_sweep_has(tmp_path):
    out = tmp_path / "s"
    proc = _start(["sweep", "-o", str(out), "--vmas", "0,100", "--layout", "gapped", "--forks", "50", "--sample", "0",
                   "-q"], tmp_path)
    _wait_for(proc, "[2/2]")
    proc.send_signal(signal.SIGINT)
    rest = proc.stderr.read()
    assert proc.wait(timeout=120) == 128 + signal.SIGINT, rest
    assert "nothing recorded" not in rest and "before tracing started" not in rest
    assert "SIGINT: sweep stopped" in rest and "index and report written" in rest
    assert json.loads((out / "index.json").read_text())["recordings"][0]["file"] == "spawn-gapped-00000.parquet"


def test_10_sigterm_to_bench_stops_pyperf_and_its_workers(tmp_path):
    out = tmp_path / "b"
    proc = _start(["bench", "--vmas", "0", "-o", str(out), "-p", "3", "-n", "100", "-l", "200"], tmp_path)
    children: list[str] = []
    deadline = time.monotonic() + 120
    while len(children) < 2 and time.monotonic() < deadline:  # pyperf, and one of its workers
        pyperf = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)], capture_output=True, text=True).stdout.split()
        children = pyperf + [w for p in pyperf for w in subprocess.run(
            ["ps", "-o", "pid=", "--ppid", p], capture_output=True, text=True).stdout.split()]
        time.sleep(0.1)
    assert len(children) >= 2, "pyperf never started a worker"
    proc.send_signal(signal.SIGTERM)
    rest = proc.stderr.read()
    assert proc.wait(timeout=60) == 128 + signal.SIGTERM, rest
    assert "bench stopped" in rest.strip().splitlines()[-1]
    for pid in children:
        assert not Path(f"/proc/{pid}").exists() or "Z" in Path(f"/proc/{pid}/stat").read_text().split()[2]
    time.sleep(1.0)
    assert not out.exists() or os.listdir(out) == []  # nothing written after the tracer exited

"""`tracer sweep --vary` follows the sweep's safety rules (docs/safety.md), mostly without loading BPF.

Refusals before any work are exit 2 in one line; the directory is walked and
checked (an attacker's directory, or a link an attacker planted in a sticky
one, is refused), locked with the sweep's lock, and written through its
descriptor, atomically. The stop path runs the real recording loop with the
BPF load and each run's tracing replaced by synthetic recordings written the
way the real run writes them; one short BPF test stops a real run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from analysis.errors import TracerError, UsageError
from analysis.files import TEMP_PREFIX, Directory
from conftest import ROOT, TRACER
from hostile import arena, attacker_dir, can_attack, plant_links, shared_dir
from recordings import MONO_BASE_NS, costed_rows, default_metadata, spawn_maps
from tracer import experiment
from tracer.experiment import DESIGN, FIT_FILES, ExperimentOptions, check, plan_runs
from tracer.sweep import LOCK

needs_attacker = pytest.mark.skipif(can_attack() is not None, reason=str(can_attack()))
needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="run_experiment refuses a non-root user before any work")

SMALL = ["--vary", "cache", "--vmas", "100", "--runs", "2", "--forks", "5", "--sample", "0"]


def tracer(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def one_line(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    return lines[0]


def options(out: Path, **kw) -> ExperimentOptions:
    return ExperimentOptions(output=out, factors=("cache",), vmas=(100,), runs=2, forks=5, evict_mb=4, **kw)


# -- refused before any work: exit 2 ---------------------------------------------------


def test_check_refuses_before_any_work(tmp_path, monkeypatch):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UsageError, match="not empty; give --force"):
        check(options(tmp_path))
    check(options(tmp_path, force=True))
    with pytest.raises(UsageError, match="not a directory"):
        check(options(tmp_path / "mine.txt"))
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(UsageError, match="not a directory"):
        check(options(tmp_path / "dangling"))
    # vm.max_map_count is host state, not the command line's form, but still known before any work.
    from tracer.workload import spawn

    monkeypatch.setattr(spawn, "_max_map_count", lambda: 50)
    with pytest.raises(UsageError, match=r"--vmas 100: .*max_map_count is 50"):
        check(options(tmp_path / "new"))
    assert sorted(os.listdir(tmp_path)) == ["dangling", "mine.txt"]


def test_cli_refuses_a_non_empty_directory_in_one_line(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    proc = tracer("sweep", *SMALL, "-o", str(out))
    assert proc.returncode == 2
    assert one_line(proc) == (f"tracer: error: output directory {out} is not empty; "
                              "give --force to replace the experiment's files in it")
    assert os.listdir(out) == ["mine.txt"]
    (tmp_path / "f").write_text("x")
    proc = tracer("sweep", *SMALL, "-o", str(tmp_path / "f"))
    assert proc.returncode == 2 and "exists and is not a directory" in one_line(proc)


@needs_attacker
@pytest.mark.parametrize("case", ["attacker", "world-writable", "link-in-sticky"])
def test_an_output_directory_another_user_controls_is_refused(case):
    with arena() as base:
        precious = base / "precious"  # root's directory, with a file in it
        precious.mkdir()
        (precious / "design.json").write_text("precious\n")
        if case == "attacker":
            out = attacker_dir(base)
            plant_links(base / "victim", out, [DESIGN, f".{DESIGN}.tmp", *FIT_FILES])
        elif case == "world-writable":
            out = shared_dir(base, "ww", 0o777)
            plant_links(base / "victim", out, [DESIGN, f".{DESIGN}.tmp", *FIT_FILES])
        else:  # as /tmp: the attacker plants the name the tool will be given, pointing at root's directory
            sticky = shared_dir(base, "tmp", 0o1777)
            plant_links(precious, sticky, ["out"])
            out = sticky / "out"
        proc = tracer("sweep", *SMALL, "-o", str(out), "--force")
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc)
        if case == "link-in-sticky":
            assert "is a symbolic link owned by uid 65534 in a directory other users can write; refusing to follow it" in line
        else:
            assert "refusing to write into output directory" in line
        assert (base / "victim").read_text() == "precious\n"
        assert sorted(os.listdir(precious)) == ["design.json"]
        assert (precious / "design.json").read_text() == "precious\n"


def test_a_locked_directory_is_refused_in_one_line(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    with Directory.open(out) as d, d.lock(LOCK, "sweep"):
        proc = tracer("sweep", *SMALL, "-o", str(out), "--force")
    assert proc.returncode == 1  # as the sweep's: the directory is busy, not the command line wrong
    assert one_line(proc) == f"tracer: error: {out} is in use by another sweep (pid {os.getpid()}); wait for it or give another directory"
    assert os.listdir(out) == [LOCK]


# -- the recording loop without BPF ---------------------------------------------------------


@pytest.fixture
def handlers():
    """StopRequests leaves stop signals ignored once one came (the process is finishing): restore them."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class FakeProbes:
    closed = False

    def close(self) -> None:
        self.closed = True


class FakeLab:
    """_load_probes and _record_run replaced: each run writes a synthetic recording as the real one does."""

    def __init__(self, monkeypatch, stop_at: dict[int, int] | None = None, while_running=None):
        self.stop_at = stop_at or {}  # run order -> signal the run sends itself while its workload "runs"
        self.while_running = while_running
        self.runs: list[int] = []
        self.probes = FakeProbes()
        monkeypatch.setattr(experiment, "_load_probes", self.load)
        monkeypatch.setattr(experiment, "_record_run", self.record)

    def load(self, opts, plan, log):
        return None, self.probes, None, None, None, None

    def record(self, opts, run, evict, base, probes, router, facts, plan_m, hdrs, stop, directory, log) -> bool:
        from tracer.record.output import save_recording

        self.runs.append(run.order)
        if self.while_running is not None:
            self.while_running(run)
        cut = False
        if run.order in self.stop_at:
            os.kill(os.getpid(), self.stop_at[run.order])
            deadline = time.monotonic() + 10
            while not stop.requested and time.monotonic() < deadline:
                time.sleep(0.01)
            assert stop.requested
        forks = 10 if stop.requested else 30  # the workload, stopped, forked less
        cut = stop.requested
        maps = spawn_maps(run.vmas)
        workload = {"kind": "spawn", "pid": 4242, "extra_vmas": run.vmas, "forks": forks, "forks_per_sec": 1000.0,
                    **run.level.options(evict)}
        rows = costed_rows(forks, stores=run.vmas + 20, total_ns=5_000.0 + 300 * run.vmas + 10 * run.order,
                           noise_ns=50.0, seed=run.order)
        meta = default_metadata(rows, workload=workload,
                                maps=[{"pid": 4242, "comm": "spawn", "ts_mono_ns": MONO_BASE_NS, "maps": maps}])
        meta["experiment"] = {"factor": run.level.factor, "level": run.level.name, "rep": run.rep, "order": run.order}
        save_recording(experiment._output(directory, opts.output / run.file), rows, meta, log)
        return cut


@needs_root
def test_design_files_are_written_atomically_through_the_directory(tmp_path, monkeypatch):
    out = tmp_path / "d"
    out.mkdir()
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    # The names the old writer used for its temporary files, planted as links to the victim.
    for name in (DESIGN, *FIT_FILES):
        (out / f".{name}.tmp").symlink_to(victim)
    (out / DESIGN).write_text('{"recorded": []}\n')
    os.link(out / DESIGN, out / "kept.json")  # a second name for the old design.json: must keep its content
    lab = FakeLab(monkeypatch)
    opts = options(out, force=True)
    assert experiment.run_experiment(opts) == out
    assert lab.runs == list(range(4)) and lab.probes.closed
    assert victim.read_text() == "precious\n"
    assert (out / "kept.json").read_text() == '{"recorded": []}\n'  # renamed over, never rewritten in place
    design = json.loads((out / DESIGN).read_text())
    assert [e["file"] for e in design["recorded"]] == [r.file for r in plan_runs(("cache",), (100,), 2)]
    assert design["stopped"] is None
    assert json.loads((out / FIT_FILES[0]).read_text())["runs"] == 4
    assert (out / FIT_FILES[1]).read_text().startswith("designed experiment: 4 runs")
    assert not [n for n in os.listdir(out) if n.startswith(TEMP_PREFIX) and n.endswith(".tmp")]


@needs_root
def test_every_name_is_checked_before_the_first_run(tmp_path, monkeypatch):
    out = tmp_path / "d"
    out.mkdir()
    lab = FakeLab(monkeypatch)
    first = plan_runs(("cache",), (100,), 2)[-1].file  # the last run's name: refused before the first run
    (out / first).mkdir()
    with pytest.raises(UsageError, match=f"output {out / first} is a directory"):
        experiment.run_experiment(options(out, force=True))
    os.rmdir(out / first)
    (out / FIT_FILES[1]).symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UsageError, match="is a symbolic link"):
        experiment.run_experiment(options(out, force=True))
    assert lab.runs == []
    assert not (tmp_path / "elsewhere").exists()


@needs_root
def test_a_second_sweep_into_a_running_experiment_is_refused(tmp_path, monkeypatch):
    out = tmp_path / "d"
    seen = []

    def second_sweep(run):
        if not seen:
            seen.append(tracer("sweep", "-o", str(out), "--force", "--vmas", "0", "--forks", "10"))

    FakeLab(monkeypatch, while_running=second_sweep)
    experiment.run_experiment(options(out))
    assert seen[0].returncode == 1
    assert one_line(seen[0]) == f"tracer: error: {out} is in use by another sweep (pid {os.getpid()}); wait for it or give another directory"
    assert sorted(os.listdir(out)) == sorted([LOCK, DESIGN, *FIT_FILES, *(r.file for r in plan_runs(("cache",), (100,), 2))])


@needs_root
def test_a_stop_writes_the_run_under_way_and_a_design_of_what_was_recorded(tmp_path, monkeypatch, handlers):
    out = tmp_path / "d"
    lab = FakeLab(monkeypatch, stop_at={1: signal.SIGTERM})
    plan = plan_runs(("cache",), (100,), 2)
    logged = []
    with pytest.raises(TracerError) as err:
        experiment.run_experiment(options(out), logged.append)
    assert err.value.exit_code == 128 + signal.SIGTERM
    assert str(err.value) == (f"SIGTERM: sweep --vary stopped (2 of 4 runs, {plan[1].file} cut short); "
                              f"design.json and the fit written in {out}")
    assert lab.runs == [0, 1] and lab.probes.closed  # the experiment ended, not only the run
    design = json.loads((out / DESIGN).read_text())
    assert [(e["file"], e.get("cut_by")) for e in design["recorded"]] == [(plan[0].file, None), (plan[1].file, "SIGTERM")]
    assert design["stopped"] == {"signal": "SIGTERM", "recorded": 2, "planned": 4, "cut": plan[1].file}
    assert json.loads((out / FIT_FILES[0]).read_text())["design_stopped"]["cut"] == plan[1].file
    assert (out / FIT_FILES[1]).read_text().splitlines()[1] == f"Stopped by SIGTERM after 2 of 4 runs; {plan[1].file} was cut short."
    assert sorted(os.listdir(out)) == sorted([LOCK, DESIGN, *FIT_FILES, plan[0].file, plan[1].file])


@needs_root
def test_a_stop_when_the_fit_cannot_be_made_says_so_in_one_line(tmp_path, monkeypatch, handlers):
    from analysis.attribution import design as design_mod

    def refuse(runs, **kw):
        raise ValueError(f"{len(runs)} runs: too few to fit\nsecond line")

    monkeypatch.setattr(design_mod, "design_fit", refuse)
    out = tmp_path / "d"
    FakeLab(monkeypatch, stop_at={0: signal.SIGHUP})
    logged = []
    with pytest.raises(TracerError) as err:
        experiment.run_experiment(options(out), logged.append)
    assert err.value.exit_code == 128 + signal.SIGHUP
    assert "\n" not in str(err.value) and str(err.value).endswith(f"; design.json written, no fit in {out}")
    assert "no fit over the 1 runs recorded: 1 runs: too few to fit" in logged
    assert json.loads((out / FIT_FILES[0]).read_text())["fit"] is None
    assert (out / FIT_FILES[1]).read_text().startswith("no fit (stopped by SIGHUP after 1 of 4 runs")
    # Without a stop, a fit that fails is a failure of the command, not hidden.
    FakeLab(monkeypatch)
    with pytest.raises(ValueError, match="too few"):
        experiment.run_experiment(options(tmp_path / "full"))


@needs_root
def test_a_stop_while_bpf_loads_records_nothing_and_exits_128_plus_n(tmp_path, monkeypatch, handlers):
    out = tmp_path / "d"
    lab = FakeLab(monkeypatch)

    def load_then_interrupted(opts, plan, log):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
        return lab.load(opts, plan, log)

    monkeypatch.setattr(experiment, "_load_probes", load_then_interrupted)
    with pytest.raises(TracerError) as err:
        experiment.run_experiment(options(out))
    assert err.value.exit_code == 128 + signal.SIGINT
    assert str(err.value) == f"SIGINT: sweep --vary stopped (0 of 4 runs); nothing recorded in {out}"
    assert lab.runs == [] and os.listdir(out) == [LOCK]


# -- one real stop (BPF): the run under way is cut, written and named --------------------------


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_sigterm_cuts_the_run_under_way_and_ends_the_experiment(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen([*TRACER, "sweep", "--vary", "weight", "--vmas", "100", "--runs", "2", "--forks", "2000000",
                             "--sample", "0", "-o", str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        while "[1/8]" not in (line := proc.stderr.readline()):
            assert line, "exited before its first run"
        deadline = time.monotonic() + 60
        while "spawn" not in subprocess.run(["ps", "-o", "comm=", "--ppid", str(proc.pid)], capture_output=True,
                                            text=True).stdout:
            assert time.monotonic() < deadline, "no workload started"
            time.sleep(0.05)
        time.sleep(0.5)  # 2,000,000 forks: the workload is still running when the stop comes
        proc.send_signal(signal.SIGTERM)
        rest = proc.stderr.read()
        assert proc.wait(timeout=120) == 128 + signal.SIGTERM, rest
    finally:
        if proc.poll() is None:
            proc.kill()
    design = json.loads((out / DESIGN).read_text())
    [entry] = design["recorded"]
    assert entry["cut_by"] == "SIGTERM" and "[2/8]" not in rest
    assert rest.strip().splitlines()[-1] == (f"tracer: error: SIGTERM: sweep --vary stopped (1 of 8 runs, {entry['file']} "
                                             f"cut short); design.json and the fit written in {out}")
    from analysis.recording import load_recording

    rec = load_recording(out / entry["file"])
    assert rec.meta["experiment"]["cut_by"] == "SIGTERM"
    assert len(rec.forks) < 2_000_000  # what was traced until the stop, not the run asked for
    assert json.loads((out / FIT_FILES[0]).read_text())["design_stopped"]["cut"] == entry["file"]

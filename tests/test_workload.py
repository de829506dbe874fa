"""The spawn workload and /proc readers, run for real (no BPF, no mocks).

What is checked is what the tracer relies on: at "ready" the process holds
exactly VMAS extra one-page VMAs, each isolated by holes (two maple tree slots
apiece), and has not forked yet; the loop does what it reports; bad input is
one line and exit status 2; and no workload outlives its context.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from analysis.recording.layout import Vma, parse_maps
from analysis.errors import TracerError, UsageError
from tracer.host.procmaps import comm_of, pid_exists, read_maps
from tracer.workload.spawn import SOURCE, SpawnResult, SpawnWorkload, build_spawn, run_spawn

PAGE = os.sysconf("SC_PAGE_SIZE")
ULONG_MAX = 2**64 - 1
GATE_AREA = "[vsyscall]"  # shown in /proc/PID/maps, not in the mm's maple tree


@pytest.fixture(scope="module", autouse=True)
def private_cache(tmp_path_factory: pytest.TempPathFactory):
    """Build into a throwaway cache, not the user's ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        del os.environ["XDG_CACHE_HOME"]
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(scope="module")
def binary(private_cache) -> Path:
    return build_spawn()


def run_binary(binary: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binary), *args],
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def tree_vmas(maps_text: str) -> list[Vma]:
    return [v for v in parse_maps(maps_text) if v.path != GATE_AREA]


def tree_slots(vmas: list[Vma]) -> int:
    """Slots of a process's maple tree: one per VMA, one per maximal unmapped range."""
    if not vmas:
        return 1
    gaps = (vmas[0].start != 0) + sum(a.end != b.start for a, b in zip(vmas, vmas[1:]))
    gaps += vmas[-1].end - 1 != ULONG_MAX
    return len(vmas) + gaps


def isolated_page_run(vmas: list[Vma]) -> list[Vma]:
    """The longest run of one-page anonymous rw-p VMAs spaced exactly one page apart."""
    best: list[Vma] = []
    run: list[Vma] = []
    for vma in vmas:
        lone_page = vma.end - vma.start == PAGE and vma.perms == "rw-p" and vma.inode == 0 and not vma.path
        if not lone_page:
            run = []
        elif run and vma.start == run[-1].end + PAGE:
            run.append(vma)
        else:
            run = [vma]
        if len(run) > len(best):
            best = list(run)
    return best


def smaps_rss_kb(pid: int) -> dict[int, int]:
    """VMA start -> Rss in kB, from /proc/PID/smaps."""
    rss: dict[int, int] = {}
    start = None
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = re.match(r"([0-9a-f]+)-[0-9a-f]+ ", line)
            if head:
                start = int(head.group(1), 16)
            elif line.startswith("Rss:") and start is not None:
                rss[start] = int(line.split()[1])
    return rss


@pytest.fixture(scope="module")
def baseline_vmas(binary) -> int:
    """mm->map_count of the workload with no extra VMAs."""
    with SpawnWorkload(0, forks=1) as spawn:
        return spawn.start().vmas_total


# --- building -----------------------------------------------------------------


def test_build_is_cached_and_keyed_by_source(tmp_path):
    source = tmp_path / "spawn.c"
    source.write_bytes(SOURCE.read_bytes())
    first = build_spawn(source, cache=tmp_path / "cache")
    built_at = first.stat().st_mtime_ns
    assert build_spawn(source, cache=tmp_path / "cache") == first
    assert first.stat().st_mtime_ns == built_at, "an unchanged source was rebuilt"

    source.write_bytes(SOURCE.read_bytes() + b"\n/* edited */\n")
    second = build_spawn(source, cache=tmp_path / "cache")
    assert second != first and os.access(second, os.X_OK)
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.endswith(".tmp")]


def test_build_without_compiler_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(TracerError, match="apt-get install gcc"):
        build_spawn(cache=tmp_path)


def test_build_failure_is_one_line(tmp_path):
    source = tmp_path / "broken.c"
    source.write_text("int main(void) { return }\n")
    with pytest.raises(TracerError, match="compiling") as err:
        build_spawn(source, cache=tmp_path / "cache")
    assert "\n" not in str(err.value)
    assert not list((tmp_path / "cache").iterdir()), "a failed build left a file in the cache"


# --- the layout at "ready" ------------------------------------------------------


@pytest.mark.parametrize("extra", [0, 200, 1000])
def test_ready_layout_has_the_extra_isolated_vmas(extra, baseline_vmas):
    with SpawnWorkload(extra, forks=1) as spawn:
        ready = spawn.start()
        vmas = tree_vmas(read_maps(ready.pid))
        children = Path(f"/proc/{ready.pid}/task/{ready.pid}/children")
        forked = children.read_text().split() if children.exists() else []

    assert ready.vmas_total == len(vmas), "ready's count is not /proc/PID/maps minus the gate area"
    assert ready.vmas_total - baseline_vmas == extra
    assert forked == [], "the workload forked before go"
    if extra == 0:
        return
    run = isolated_page_run(vmas)
    assert len(run) == extra
    before = vmas[vmas.index(run[0]) - 1]
    after = vmas[vmas.index(run[-1]) + 1]
    assert before.end <= run[0].start - PAGE and after.start >= run[-1].end + PAGE, "run is not bounded by holes"
    without_run = [v for v in vmas if v not in set(run)]
    assert tree_slots(vmas) - tree_slots(without_run) == 2 * extra


@pytest.mark.parametrize("touch", [False, True])
def test_touch_makes_each_extra_page_resident(touch):
    extra = 64
    with SpawnWorkload(extra, forks=1, touch=touch) as spawn:
        ready = spawn.start()
        run = isolated_page_run(tree_vmas(read_maps(ready.pid)))
        rss = smaps_rss_kb(ready.pid)
    assert len(run) == extra
    assert {rss[v.start] for v in run} == ({PAGE // 1024} if touch else {0})


def test_cpu_pins_the_workload():
    cpu = max(os.sched_getaffinity(0))
    with SpawnWorkload(0, forks=1, cpu=cpu) as spawn:
        ready = spawn.start()
        assert os.sched_getaffinity(ready.pid) == {cpu}


def test_unusable_cpu_is_a_usage_error():
    if (os.cpu_count() or 0) >= 1024:
        pytest.skip("CPU 1023 may exist here")
    with pytest.raises(UsageError, match="--cpu 1023"):
        run_spawn(0, forks=1, cpu=1023)


def test_too_many_vmas_names_max_map_count():
    limit = int(Path("/proc/sys/vm/max_map_count").read_text())
    with pytest.raises(TracerError, match="max_map_count") as err:
        run_spawn(limit, forks=1)
    assert not isinstance(err.value, UsageError)


# --- the loop ---------------------------------------------------------------------


def test_forks_are_counted(baseline_vmas):
    result = run_spawn(50, forks=300)
    assert (result.forks, result.failed, result.stop, result.fork_errno) == (300, 0, "forks", 0)
    assert result.vmas_total == baseline_vmas + 50
    assert result.forks_per_sec == pytest.approx(result.forks * 1e9 / result.elapsed_ns, abs=0.05)
    # The forking thread's own CPU time: some, and never more than the wall time of its one thread.
    assert 0 < result.cpu_ns <= result.elapsed_ns


def test_seconds_stop_the_loop():
    result = run_spawn(0, seconds=0.2)
    assert result.stop == "seconds"
    assert result.elapsed_ns >= 0.2e9
    assert result.forks >= 1


def test_forks_stop_before_seconds():
    result = run_spawn(0, forks=3, seconds=600)
    assert (result.forks, result.stop) == (3, "forks")


def test_comm_is_the_binary_name(binary):
    with SpawnWorkload(0, forks=1) as spawn:
        ready = spawn.start()
        assert comm_of(ready.pid) == binary.name[:15]


# --- bad input ------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        [],
        ["--vmas", "10"],
        ["--forks", "0"],
        ["--forks", "-5"],
        ["--forks", "12x"],
        ["--forks", " 7"],
        ["--forks", "99999999999999999999999"],
        ["--vmas", "-1", "--forks", "1"],
        ["--seconds", "0"],
        ["--seconds", "nan"],
        ["--seconds", "1e3"],
        ["--seconds", "."],
        ["--forks", "1", "--cpu", "abc"],
        ["--forks", "1", "--bogus"],
        ["--forks", "1", "stray"],
        ["--forks"],
        ["--forks", "1\nsecond line"],
    ],
)
def test_bad_arguments_exit_2_with_one_line(binary, args):
    proc = run_binary(binary, *args)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("spawn: ")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=st.one_of(st.text(max_size=12), st.integers(-5, 2**64).map(str)))
def test_forks_accepts_exactly_positive_decimal_numbers(binary, value):
    value = value.replace("\0", "")  # argv cannot carry NUL
    valid = re.fullmatch(r"[0-9]+", value) is not None and 1 <= int(value) <= 2**62
    # stdin is /dev/null: a valid command line reaches "ready", then sees EOF.
    proc = run_binary(binary, f"--forks={value}")
    assert (proc.returncode == 2) == (not valid)
    assert proc.stderr.count("\n") == 1
    if valid:
        assert proc.returncode == 1 and proc.stdout.startswith("ready ")


def test_eof_before_go_exits_without_forking(binary):
    proc = run_binary(binary, "--forks", "5")
    assert proc.returncode == 1
    assert proc.stdout.startswith("ready ") and proc.stdout.count("\n") == 1
    assert '"go"' in proc.stderr


def test_wrong_go_line_is_refused(binary):
    proc = run_binary(binary, "--forks", "5", stdin="start\n")
    assert proc.returncode == 2 and proc.stdout.count("\n") == 1


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(vmas=-1, forks=1),
        dict(vmas=True, forks=1),
        dict(vmas=1.5, forks=1),
        dict(vmas=0),
        dict(vmas=0, forks=0),
        dict(vmas=0, seconds=0.0),
        dict(vmas=0, seconds=math.nan),
        dict(vmas=0, seconds=math.inf),
        dict(vmas=0, forks=1, cpu=-1),
    ],
)
def test_python_side_refuses_bad_arguments(kwargs):
    with pytest.raises(UsageError):
        SpawnWorkload(**kwargs)


def test_api_misuse_is_a_bug_not_a_user_error():
    spawn = SpawnWorkload(0, forks=1)
    with pytest.raises(RuntimeError):
        spawn.go()
    with pytest.raises(RuntimeError):
        spawn.wait()


# --- results --------------------------------------------------------------------


@given(
    forks=st.integers(0, 2**40),
    failed=st.integers(0, 2**20),
    elapsed_ns=st.integers(0, 2**63),
    rate=st.floats(0, 1e9, allow_nan=False),
    vmas_total=st.integers(0, 2**24),
    stop=st.sampled_from(["forks", "seconds", "fork_failures", "parent_exited"]),
    fork_errno=st.integers(0, 200),
)
def test_result_line_round_trips(forks, failed, elapsed_ns, rate, vmas_total, stop, fork_errno):
    doc = dict(forks=forks, failed=failed, elapsed_ns=elapsed_ns, forks_per_sec=rate,
               vmas_total=vmas_total, stop=stop, fork_errno=fork_errno)
    result = SpawnResult.from_json(json.dumps(doc))
    assert result == SpawnResult(**doc)


@pytest.mark.parametrize(
    "line",
    ["", "not json", "[1, 2]", '{"forks": 1}', '{"forks": "1", "failed": 0, "elapsed_ns": 1, '
     '"forks_per_sec": 1.0, "vmas_total": 1, "stop": "forks", "fork_errno": 0}'],
)
def test_bad_result_line_is_a_tracer_error(line):
    with pytest.raises(TracerError):
        SpawnResult.from_json(line)


# --- cleanup --------------------------------------------------------------------


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt])
def test_leaving_early_kills_a_running_loop(exc):
    with pytest.raises(exc):
        with SpawnWorkload(100, seconds=600) as spawn:
            pid = spawn.start().pid
            spawn.go()
            assert pid_exists(pid)
            raise exc()
    assert not pid_exists(pid)


def test_leaving_before_go_kills_the_waiting_process():
    with SpawnWorkload(0, forks=1) as spawn:
        pid = spawn.start().pid
    assert not pid_exists(pid)


def test_wait_timeout_kills_and_says_so():
    with SpawnWorkload(0, seconds=600) as spawn:
        pid = spawn.start().pid
        spawn.go()
        with pytest.raises(TracerError, match="did not finish"):
            spawn.wait(timeout=0.2)
        assert not pid_exists(pid)


def test_killed_workload_is_reported():
    with SpawnWorkload(0, seconds=600) as spawn:
        pid = spawn.start().pid
        spawn.go()
        os.kill(pid, signal.SIGKILL)
        with pytest.raises(TracerError, match="signal"):
            spawn.wait()


def test_stop_ends_the_loop_with_a_result():
    """SIGTERM (what record sends on Ctrl-C or -d) ends the loop, and the result still comes."""
    with SpawnWorkload(0, seconds=600) as spawn:
        spawn.start()
        spawn.go()
        spawn.stop()
        result = spawn.wait(timeout=60)
    assert result.stop == "signal"


# --- /proc readers --------------------------------------------------------------


def test_read_maps_of_this_process_parses():
    vmas = parse_maps(read_maps(os.getpid()))
    assert any(v.path == "[stack]" for v in vmas)


@pytest.fixture
def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    return int(proc.stdout)


def test_procmaps_on_a_dead_process(dead_pid):
    assert not pid_exists(dead_pid)
    with pytest.raises(TracerError, match=f"no process with pid {dead_pid}"):
        read_maps(dead_pid)
    with pytest.raises(TracerError, match=f"no process with pid {dead_pid}"):
        comm_of(dead_pid)


@pytest.mark.parametrize("pid", [0, -1, True, "1", 1.0])
def test_procmaps_refuses_non_pids(pid):
    assert not pid_exists(pid)
    with pytest.raises(TracerError):
        read_maps(pid)

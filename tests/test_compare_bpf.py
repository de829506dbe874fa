"""compare on real recordings of this host, and `tracer bench` files in pyperf's own tools."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from analysis.compare import compare_recordings
from analysis.recording import load_recording
from conftest import ROOT, TRACER

FORKS = 150


def run(*args, timeout=300):
    return subprocess.run([*TRACER, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_more_vmas_is_found_in_the_vma_loop(tmp_path):
    """100 -> 400 extra VMAs: 300 more VMA steps. The loop is where the time went.

    One tracer process, BPF loaded once: 6 runs of each arm, interleaved, a run id in each. Six, not
    three: with 3 rounds (2 df, Holm over 5 phases) a +146% vma_loop went unflagged (p-adj 0.075)
    once, with the guests busy beside the suite, because one round's ratio was 2.0 and the others 2.7.
    """
    out = tmp_path / "ab"
    proc = run("record", "--spawn", "100,400", "--runs", "6", "--forks", str(FORKS), "--cpu", "0", "-q", "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("loading BPF") == 1
    paths = {v: out / f"spawn{v}" for v in (100, 400)}
    runs = [load_recording(p).meta["run"] for v in paths for p in sorted(paths[v].glob("*.parquet"))]
    assert len({r["id"] for r in runs}) == 12 and len({r["series"] for r in runs}) == 1
    assert sorted((r["arm"], r["index"]) for r in runs) == sorted((f"spawn{v}", i) for v in (100, 400) for i in range(1, 7))
    proc = run("compare", str(paths[100]), str(paths[400]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"]["change"] == "regression"
    assert doc["verdict"]["metric"] == "vma_loop"
    assert doc["warnings"][0].startswith("DIFFERENT WORKLOADS PAIRED")
    (group,) = doc["groups"]
    rows = {r["metric"]: r for r in group["rows"]}
    # The loop grew by more than any other part, in time: what the change should move.
    growth = {p: rows[p]["new_median"] - rows[p]["base_median"] for p in ("mt_dup", "vma_loop", "tail")}
    assert max(growth, key=growth.get) == "vma_loop"
    assert rows["vma_loop"]["change"] == "regression"
    # More VMAs, more leaves: the kernel's own count says the tree changed, not a per-unit cost.
    assert "leaves_observed" in group["shape"]["changed"]
    assert {(r["base_runs"], r["new_runs"], r["spread"]) for r in group["rows"]} == {(6, 6, "paired")}
    # One run a side and no calibration: undecided, with the reason.
    one = sorted(paths[400].glob("*.parquet"))
    single = compare_recordings([load_recording(one[0])], [load_recording(one[1])])
    assert single.verdict.change == "?" and "between-run spread is unknown" in single.verdict.text


@pytest.mark.bpf
@pytest.mark.usefixtures("bpf_host")
def test_a_known_cost_per_store_is_found_and_an_a_a_pair_is_not(tmp_path):
    """Ground truth on real recordings: one series of three interleaved arms, two the same (A/A) and
    one spinning 800 ns in the per-store program (INJECT_STORE), so vma_loop grows by about
    800 ns x 100 stores and nothing else should. The injected arm is flagged in vma_loop, slower,
    far beyond anything the A/A pair shows; the A/A pair's change is small beside it."""
    out = tmp_path / "inj"
    proc = run("record", "--spawn", "100", "--inject-store-ns", "0,0,800", "--runs", "6", "--forks", "30", "-q",
               "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["inject0.1", "inject0.2", "inject800"]

    def rows(base, new):
        proc = run("compare", str(out / base), str(out / new), "--format", "json")
        assert proc.returncode == 0, proc.stderr
        (group,) = json.loads(proc.stdout)["groups"]
        assert {(r["base_runs"], r["new_runs"], r["spread"]) for r in group["rows"]} == {(6, 6, "paired")}
        return {r["metric"]: r for r in group["rows"]}

    aa, inj = rows("inject0.1", "inject0.2"), rows("inject0.1", "inject800")
    assert inj["vma_loop"]["change"] == "regression" and inj["vma_loop"]["delta_pct"] > 30.0
    # Both A/A intervals sit far below the injected change's: the A/A pair did not move like it.
    assert aa["vma_loop"]["ci95_pct"][1] < inj["vma_loop"]["ci95_pct"][0]
    assert abs(aa["vma_loop"]["delta_pct"]) < inj["vma_loop"]["delta_pct"] / 4
    # The spin is inside the loop: the tail after the last store does not grow like it.
    assert inj["tail"]["delta_pct"] < inj["vma_loop"]["delta_pct"] / 4


def test_bench_files_open_in_pyperf(tmp_path):
    """A quick `tracer bench` twice; pyperf stats and compare_to read its files unchanged."""
    dirs = [tmp_path / "a", tmp_path / "b"]
    for d in dirs:
        proc = run("bench", "--vmas", "50", "-p", "2", "-n", "3", "-w", "1", "--min-time", "0.01", "-q", "-o", str(d))
        assert proc.returncode == 0, proc.stderr
        assert "spawn-gapped-50.json" in proc.stdout
    files = [str(d / "spawn-gapped-50.json") for d in dirs]
    stats = subprocess.run([sys.executable, "-m", "pyperf", "stats", files[0]], capture_output=True, text=True)
    assert stats.returncode == 0, stats.stderr
    assert "Number of value per run: 3" in stats.stdout
    cmp = subprocess.run([sys.executable, "-m", "pyperf", "compare_to", *files], capture_output=True, text=True)
    assert cmp.returncode == 0, cmp.stderr
    meta = subprocess.run([sys.executable, "-m", "pyperf", "metadata", files[0]], capture_output=True, text=True)
    assert "spawn_vmas: 50" in meta.stdout and "spawn_layout: gapped" in meta.stdout
    # 2 processes x 3 values: under the threshold, so tracer compare gives no verdict, but reads them.
    proc = run("compare", str(dirs[0]), str(dirs[1]), "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["kind"] == "pyperf" and doc["groups"][0]["rows"][0]["metric"] == "spawn-gapped-50"
    assert doc["groups"][0]["rows"][0]["base_n"] == 6
    # Results are never overwritten.
    again = run("bench", "--vmas", "50", "-o", str(dirs[0]))
    assert again.returncode == 2 and "exists" in again.stderr


def test_bench_bad_arguments(tmp_path):
    for args, message in ((["--vmas", "1,x"], "--vmas"), (["--layout", "diagonal"], "--layout"), (["--vmas", "5,5"], "twice")):
        proc = run("bench", *args, "-o", str(tmp_path / "out"))
        assert proc.returncode == 2 and message in proc.stderr, proc.stderr

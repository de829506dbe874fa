"""compare on synthetic recordings with known shifts, and the `tracer compare` command."""

from __future__ import annotations

import json
import random
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from analysis.compare import compare_components, compare_recordings
from analysis.compare.result import PARTS
from analysis.compare.samples import IMPROVEMENT, REGRESSION, SAME, UNDECIDED
from analysis.recording import Recording, derive_phases
from conftest import ROOT, TRACER
from recordings import MONO_BASE_NS, default_metadata, fork_row, write_synthetic
from analysis.recording.schema import FORK_SCHEMA

RAW = set(FORK_SCHEMA.names)


def noisy_rows(n, *, vmas=200, mt_dup_ns=8_000.0, vma_step_ns=500.0, tail_ns=4_000.0, seed=0, extra_vmas=None):
    """Forks with every phase noisy (as on a real host), around known per-phase costs."""
    rng = random.Random(seed)
    rows, start = [], MONO_BASE_NS
    for i in range(n):
        row = fork_row(
            start,
            vmas=vmas,
            mt_dup_ns=mt_dup_ns * rng.lognormvariate(0, 0.1),
            vma_step_ns=vma_step_ns * rng.lognormvariate(0, 0.05),
            step_jitter_ns=int(vma_step_ns * 0.2),
            tail_ns=int(tail_ns * rng.lognormvariate(0, 0.1)),
            child_pid=10_000 + i,
            rng=rng,
        )
        rows.append(row)
        start = row["ts_parent_unlock"] + 50_000
    return rows


def side(runs, *, seed, forks=40, run_sd=0.04, arm="", name="run", extra_vmas=None, **costs) -> list[Recording]:
    """`runs` recordings of one setup, each a run (its own id) whose conditions scale every phase
    by exp(N(0, run_sd)): the between-run spread a real host shows."""
    rng = random.Random(seed * 7919 + 1)
    base = {"mt_dup_ns": 8_000.0, "vma_step_ns": 500.0, "tail_ns": 4_000.0, **costs}
    out = []
    for i in range(runs):
        factor = rng.lognormvariate(0, run_sd)
        scaled = {k: v * factor for k, v in base.items()}
        rows = noisy_rows(forks, seed=seed * 1000 + i, extra_vmas=extra_vmas, **{k: v for k, v in scaled.items()},
                          **({"vmas": extra_vmas + 30} if extra_vmas is not None else {}))
        run = {"id": f"{name}-{seed}-{i}", "series": f"{name}-{seed}", "index": i + 1, "of": runs, "arm": arm}
        out.append(recording(rows, name=f"{name}-{seed}-{i}.parquet", extra_vmas=extra_vmas, run=run))
    return out


def recording(rows, name="rec.parquet", extra_vmas=None, **meta_overrides) -> Recording:
    """An in-memory recording (no file): what load_recording would return for these rows."""
    meta = default_metadata(rows, **meta_overrides)
    if extra_vmas is not None:
        meta["workload"] = {**meta["workload"], "extra_vmas": extra_vmas}
    return Recording(Path(name), derive_phases(pd.DataFrame(rows)), meta)


def changes(c) -> dict[str, str]:
    return {r.metric: r.change for r in c.rows}


@pytest.mark.parametrize(
    "shift, phase",
    [({"mt_dup_ns": 8_000 * 1.25}, "mt_dup"), ({"vma_step_ns": 500 * 1.1}, "vma_loop"), ({"tail_ns": 4_000 * 0.7}, "tail")],
)
def test_a_shift_in_one_phase_is_flagged_there_only(shift, phase):
    base = side(5, seed=1)
    new = side(5, seed=2, **shift)
    c = compare_recordings(base, new, model=False)
    flagged_parts = {r.metric for r in c.rows if r.significant and r.metric in PARTS}
    assert flagged_parts == {phase}, changes(c)
    assert c.verdict.metric == phase
    expected = IMPROVEMENT if phase == "tail" else REGRESSION
    assert changes(c)[phase] == expected
    assert c.verdict.change == expected
    assert "5 vs 5 runs" in c.verdict.text
    assert {(r.base_runs, r.new_runs, r.spread) for r in c.rows} == {(5, 5, "runs")}
    assert not c.warnings


def test_same_setup_gives_no_change_most_of_the_time():
    """Whole comparisons (5 phases, Holm) of runs of one setup: a family-wise rate near or under 5%.

    Each run moves as a whole (run_sd 5%), far more than its forks' medians do:
    a test of forks would flag most of these pairs.
    """
    trials, false_alarms = 40, 0
    for seed in range(trials):
        c = compare_recordings(side(3, seed=2 * seed, forks=20, run_sd=0.05),
                               side(3, seed=2 * seed + 1, forks=20, run_sd=0.05), model=False, attribute=None)
        false_alarms += c.verdict.change != "~"
        assert all(r.change in (SAME, REGRESSION, IMPROVEMENT) for r in c.rows)
    # Binomial(40, 0.05): mean 2, sd 1.4; Holm keeps the family at or under 5%.
    assert false_alarms <= 6, false_alarms


def test_one_run_a_side_is_undecided_unless_calibrated():
    from analysis.compare.calibration import calibrate_runs
    from analysis.compare.runs import runs_of

    base, new = side(1, seed=3), side(1, seed=4, vma_step_ns=900)
    c = compare_recordings(base, new, model=False)
    assert set(changes(c).values()) == {UNDECIDED} and c.tests == 0
    assert c.verdict.change == "?" and "between-run spread is unknown" in c.verdict.text
    assert changes(c) and c.rows[0].base_runs == 1 and c.rows[0].new_runs == 1
    # The host's A/A spread: the same setup's runs, another series.
    cal = calibrate_runs({170: runs_of(side(8, seed=9))}, "testhost", "6.18.0-test-amd64", "now")
    c = compare_recordings(base, new, model=False, calibration=cal)
    assert changes(c)["vma_loop"] == REGRESSION and {r.spread for r in c.rows} == {"calibration"}
    assert "beyond the calibrated run-to-run spread of vma_loop" in c.verdict.text
    assert any("A/A runs at 170 VMAs" in note for note in c.notes)
    # A calibration of another host is not used, and compare says so.
    other = calibrate_runs({170: runs_of(side(8, seed=9))}, "elsewhere", "6.18.0-test-amd64", "now")
    c = compare_recordings(base, new, model=False, calibration=other)
    assert c.verdict.change == "?" and any("of host elsewhere" in n for n in c.notes)


def test_runs_are_grouped_by_run_id_not_file():
    """Two files of one run are one run; files without a run id are a run each."""
    base = side(3, seed=5)
    new = side(3, seed=6)
    split = [recording(noisy_rows(20, seed=50 + i), name=f"part{i}.parquet", run={"id": "one", "series": "s"}) for i in range(2)]
    c = compare_recordings(base, new + split, model=False)
    assert {r.new_runs for r in c.rows} == {4}
    legacy = [recording(noisy_rows(20, seed=60 + i), name=f"old{i}.parquet") for i in range(3)]
    c = compare_recordings(base, legacy, model=False)
    assert {r.new_runs for r in c.rows} == {3}


def test_runs_with_too_few_forks_are_left_out():
    base = side(3, seed=3)
    small = side(3, seed=4, forks=6)
    c = compare_recordings(base, small, model=False)
    assert set(changes(c).values()) == {UNDECIDED}
    assert c.verdict.change == "?" and c.rows[0].new_runs == 0


def test_mixed_verdict_names_regressions_first():
    base = side(5, seed=11)
    new = side(5, seed=12, mt_dup_ns=8_000 * 1.3, vma_step_ns=500 * 0.85)
    c = compare_recordings(base, new, model=False)
    assert c.verdict.change == "mixed", c.verdict.text
    assert c.verdict.text.startswith("MIXED: mt_dup +"), c.verdict.text
    assert c.verdict.text.index("mt_dup") < c.verdict.text.index("vma_loop")
    assert "slower" in c.verdict.text and "faster" in c.verdict.text
    assert c.verdict.metric == "mt_dup"


def test_groups_match_by_key_and_unmatched_are_listed():
    def sweep(counts, seed, step=500.0):
        return [r for v in counts for r in side(5, seed=seed + v, forks=30, run_sd=0.03, vma_step_ns=step, extra_vmas=v)]

    c = compare_recordings(sweep([100, 400], 0), sweep([100, 400, 1600], 1, step=600.0), model=False)
    assert c.groups == ["spawn 100 extra VMAs, gapped", "spawn 400 extra VMAs, gapped"]
    assert c.unmatched_new == ["spawn 1600 extra VMAs, gapped"] and c.unmatched_base == []
    assert {r.group for r in c.rows if r.metric == "vma_loop" and r.change == REGRESSION} == set(c.groups)
    assert not any("PAIRED" in w for w in c.warnings)


def test_one_group_a_side_with_different_keys_is_paired_loudly():
    c = compare_recordings(
        [recording(noisy_rows(40, seed=1), extra_vmas=100)], [recording(noisy_rows(40, seed=2), extra_vmas=400)], model=False
    )
    assert c.warnings and c.warnings[0].startswith("DIFFERENT WORKLOADS PAIRED")
    assert c.groups == ["spawn 100 extra VMAs, gapped -> spawn 400 extra VMAs, gapped"]


def test_other_host_or_method_is_loud_first():
    base = recording(noisy_rows(40, seed=1))
    new = recording(
        noisy_rows(40, seed=2),
        host={"hostname": "elsewhere", "cpus": 8, "cpu_model": "Other CPU", "lockdown": "none"},
        methods={"dup_mmap": "bracket", "mt_dup": "fentry", "vma_loop": "bracket", "tail": "bracket"},
    )
    c = compare_recordings([base], [new], model=False, resamples=50)
    keys = [w.split(" DIFFERS")[0] for w in c.warnings]
    assert keys == ["HOST", "CPU MODEL", "METHODS"]
    from analysis.compare import render

    text = render(c, "text").splitlines()
    assert text[0].startswith("!!! HOST DIFFERS") and text[1].startswith("!!! CPU MODEL DIFFERS")
    assert "METHODS DIFFERS" in text[2]


def test_tree_shape_change_is_reported_rather_than_a_cost():
    base = recording(noisy_rows(40, seed=1, vmas=200))
    rows = noisy_rows(40, seed=2, vmas=200)
    for row in rows:
        row["leaves"] += 7
    c = compare_recordings([base], [recording(rows)], model=False, resamples=50)
    (shape,) = c.shapes
    assert shape.changed == ["leaves_observed"]
    assert shape.new["leaves_observed"] - shape.base["leaves_observed"] == 7


ATTR = {"copy": {"ns_per_unit": 40.0, "ci95": [38.0, 42.0]}, "replace": {"ns_per_unit": 90.0, "ci95": [85.0, 95.0]},
        "fixed": {"ns_per_unit": 3000.0, "ci95": [2800.0, 3200.0]}}


def test_a_shift_in_one_per_unit_cost_is_flagged_there_only():
    slower_replace = {**ATTR, "replace": {"ns_per_unit": 110.0, "ci95": [104.0, 116.0]}}
    rows = {r.component: r for r in compare_components(ATTR, slower_replace, "g")}
    assert rows["replace"].change == REGRESSION
    assert rows["replace"].delta_pct == pytest.approx(100 * 20 / 90)
    lo, hi = rows["replace"].ci95_pct
    assert lo < rows["replace"].delta_pct < hi and lo > 0
    assert rows["copy"].change == SAME and rows["fixed"].change == SAME
    # Overlapping intervals of nearly equal estimates: no change.
    near = {**ATTR, "copy": {"ns_per_unit": 41.0, "ci95": [39.0, 43.0]}}
    assert {r.component: r.change for r in compare_components(ATTR, near)}["copy"] == SAME
    # A component on one side only is not compared.
    assert [r.component for r in compare_components(ATTR, {"copy": ATTR["copy"], "tracer": ATTR["fixed"]})] == ["copy"]


def test_components_reach_the_verdict_through_the_attribution_hook():
    base = side(4, seed=1, name="base")
    new = side(4, seed=2, vma_step_ns=600, name="new")
    estimates = {"base": ATTR, "new": {**ATTR, "replace": {"ns_per_unit": 120.0, "ci95": [115.0, 125.0]}}}
    c = compare_recordings(base, new, attribute=lambda recs: estimates[recs[0].path.name.split("-")[0]], model=False)
    assert c.verdict.metric == "vma_loop" and c.verdict.component == "replace"
    from analysis.compare.components import COMPONENT_UNITS

    assert COMPONENT_UNITS["replace"] == "per exact-fit mas_store of a VMA"
    assert COMPONENT_UNITS["replace"].removeprefix("per ") in c.verdict.text


def test_bad_attribution_is_a_one_line_error():
    from analysis.errors import TracerError

    with pytest.raises(TracerError, match="ci95"):
        compare_components(ATTR, {"copy": {"ns_per_unit": 50.0, "ci95": [30.0, 40.0]}})


# -- the command ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("cmp")
    out = {}
    for name, kwargs in {"base": {"seed": 1}, "same": {"seed": 2}, "slow": {"seed": 3, "vma_step_ns": 600}}.items():
        (d / name).mkdir()
        for rec in side(4, name=name, **kwargs):
            write_synthetic(d / name / rec.path.name, rec.forks[[c for c in rec.forks.columns if c in RAW]].to_dict("records"), rec.meta)
        out[name] = d / name
    return out


def tracer(*args, cwd=ROOT):
    return subprocess.run([*TRACER, *args], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_cli_text_fits_a_mail_and_names_the_phase(files):
    proc = tracer("compare", str(files["base"]), str(files["slow"]))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert lines[0].startswith("verdict: REGRESSION: vma_loop +")


def test_cli_json_and_markdown(files):
    slow = sorted(files["slow"].glob("*.parquet"))
    proc = tracer("compare", "-b", str(files["base"]), *[a for f in slow for a in ("-n", str(f))], "--format", "json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["verdict"]["metric"] == "vma_loop" and doc["correction"] == "holm"
    assert len(doc["new"]["files"]) == 4 and doc["test"].startswith("welch")
    assert {(row["base_runs"], row["new_runs"]) for row in doc["groups"][0]["rows"]} == {(4, 4)}
    (group,) = doc["groups"]
    assert {row["metric"] for row in group["rows"]} == {
        "dup_mmap", "mt_dup", "vma_loop", "vma_step", "tail"}
    proc = tracer("compare", str(files["base"]), str(files["same"]), "--format", "markdown")
    assert proc.returncode == 0 and "| phase |" in proc.stdout and "**verdict:** no significant change" in proc.stdout


def test_cli_fail_on_regression_exit_codes(files):
    slow = tracer("compare", str(files["base"]), str(files["slow"]), "--fail-on-regression", "5")
    assert slow.returncode == 1, slow.stderr
    beyond = tracer("compare", str(files["base"]), str(files["slow"]), "--fail-on-regression", "500")
    assert beyond.returncode == 0
    same = tracer("compare", str(files["base"]), str(files["same"]), "--fail-on-regression", "0")
    assert same.returncode == 0


@pytest.mark.parametrize(
    "args, message",
    [
        (["missing.parquet", "also-missing.parquet"], "does not exist"),
        (["one.parquet"], "two inputs"),
        (["--format", "yaml"], "--format"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(files, args, message, tmp_path):
    if args == ["one.parquet"]:
        args = [str(files["base"])]
    elif args[0] == "--format":
        args = [str(files["base"]), str(files["same"]), *args]
    proc = tracer("compare", *args, cwd=tmp_path)
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and message in proc.stderr


def test_cli_refuses_mixed_kinds_and_corrupt_files(files, tmp_path):
    bogus = tmp_path / "x.json"
    bogus.write_text('{"not": "pyperf"}')
    proc = tracer("compare", str(files["base"]), str(bogus))
    assert proc.returncode == 2 and "like with like" in proc.stderr
    corrupt = tmp_path / "c.parquet"
    corrupt.write_bytes(b"PAR1 nonsense")
    proc = tracer("compare", str(files["base"]), str(corrupt))
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1


def test_cli_plot_writes_a_figure_and_never_an_input(files, tmp_path):
    out = tmp_path / "cmp.png"
    proc = tracer("compare", str(files["base"]), str(files["slow"]), "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    first = sorted(files["base"].glob("*.parquet"))[0]
    before = first.read_bytes()
    proc = tracer("compare", str(files["base"]), str(files["slow"]), "--plot", str(first))
    assert proc.returncode == 2 and first.read_bytes() == before


def test_per_run_statistic_p10():
    """--per-run p10: each run reduced to its 10th percentile; a shift is still found; a bad name is one line."""
    from analysis.errors import TracerError

    c = compare_recordings(side(5, seed=1), side(5, seed=2, vma_step_ns=600), model=False, statistic="p10")
    assert changes(c)["vma_loop"] == REGRESSION and any("10" in n or "p10" in n for n in c.notes)
    assert c.rows[0].base_median < compare_recordings(side(5, seed=1), side(5, seed=2), model=False).rows[0].base_median
    with pytest.raises(TracerError, match="per-run statistic"):
        compare_recordings(side(2, seed=1), side(2, seed=2), model=False, statistic="mean")


def test_what_the_runs_could_detect_grows_with_the_spread_and_is_named_in_a_quiet_verdict():
    """A 'no change' verdict says below what size a change could have gone unseen; more spread
    between runs, a larger unseen change and more runs needed for 10%."""
    def quiet(run_sd):
        return compare_recordings(side(5, seed=11, run_sd=run_sd), side(5, seed=12, run_sd=run_sd),
                                  model=False, attribute=None)

    tight, loose = quiet(0.02), quiet(0.12)
    assert tight.verdict.change == "~" and "could miss changes below" in tight.verdict.text
    rows = {r.metric: r for r in tight.rows}
    wide = {r.metric: r for r in loose.rows}
    for part in ("mt_dup", "vma_loop", "tail"):
        assert 0 < rows[part].detectable_pct < wide[part].detectable_pct
        assert rows[part].runs_for_10 <= wide[part].runs_for_10
    from analysis.compare.render import render

    text = render(tight, "text")
    assert "detectable at 80% power:" in text and "runs a side for 10% at 90% power:" in text


def test_separate_series_are_named_as_such_and_arms_of_one_series_are_paired():
    """Two `record --runs` series compared: the note says the drift between them is untested.
    The same runs relabelled as the two arms of one interleaved series: tested round by round."""
    base, new = side(4, seed=3, name="s"), side(4, seed=4, name="s")
    separate = compare_recordings(base, new, model=False, attribute=None)
    assert any("not arms of one interleaved series" in n for n in separate.notes)
    assert {r.spread for r in separate.rows} == {"runs"}
    for arm, recs in (("A", base), ("B", new)):
        for r in recs:
            r.meta["run"] = {**r.meta["run"], "series": "one", "arm": arm, "id": f"{arm}-{r.meta['run']['index']}"}
    interleaved = compare_recordings(base, new, model=False, attribute=None)
    assert not any("interleaved series" in n for n in interleaved.notes)
    assert {r.spread for r in interleaved.rows} == {"paired"}

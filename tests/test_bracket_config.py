"""bracket.py's pure side: the -D flags per level and ablation, and how a level resolves."""

from __future__ import annotations

import os

import pytest

from analysis.errors import TracerError, UsageError
from tracer.probes.bracket import ABLATIONS, LEVELS, RAW_EVENTS, SOURCE, BracketConfig, cflags_for
from tracer.probes.rawtp import macros_for
from tracer.record.context import STORE_PHASES, level_methods
from tracer.record.options import DEFAULT_SAMPLE_HZ, RecordOptions, level_and_rate, resolve_options

OFFSETS = {
    "ma_state_node_off": 16,
    "task_pid_off": 2000,
    "mm_map_count_off": 100,
    "arg_macros": {macro: 1 for macro in macros_for(RAW_EVENTS)},
}


def macros(config: BracketConfig) -> set[str]:
    return {flag[2:].split("=")[0] for flag in cflags_for(config) if flag.startswith("-D")}


def test_phase_level_builds_the_whole_program():
    flags = macros(BracketConfig(**OFFSETS))
    assert "NO_PER_VMA" not in flags
    assert not {f for f in flags if f.startswith("ABLATE_")}


def test_fork_level_drops_the_per_vma_program():
    assert "NO_PER_VMA" in macros(BracketConfig(level="fork", **OFFSETS))


def test_full_level_needs_a_sampling_rate():
    with pytest.raises(TracerError, match="sampling rate"):
        cflags_for(BracketConfig(level="full", **OFFSETS))
    assert "SAMPLE" in macros(BracketConfig(level="full", sample_hz=99, **OFFSETS))


@pytest.mark.parametrize("level", ["fork", "phase"])
def test_only_the_level_turns_sampling_on(level):
    """full is the level's word alone: a rate below full is refused, not a hidden way to sample."""
    with pytest.raises(TracerError, match="does not sample"):
        cflags_for(BracketConfig(level=level, sample_hz=99, **OFFSETS))
    assert "SAMPLE" not in macros(BracketConfig(level=level, **OFFSETS))


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_each_ablation_is_one_macro_that_bracket_c_knows(name):
    added = macros(BracketConfig(ablate=(name,), **OFFSETS)) - macros(BracketConfig(**OFFSETS))
    assert len(added) == 1
    (macro,) = added
    assert f"{macro}" in SOURCE.read_text().split("Ablation switches")[1], f"{macro} not described in bracket.c"
    assert f"#ifdef {macro}" in SOURCE.read_text() or f"#ifndef {macro}" in SOURCE.read_text() \
        or f"defined({macro})" in SOURCE.read_text()


def test_unknown_level_and_ablation_are_refused():
    with pytest.raises(TracerError, match="unknown level"):
        cflags_for(BracketConfig(level="vma", **OFFSETS))
    with pytest.raises(TracerError, match="unknown ablation"):
        cflags_for(BracketConfig(ablate=("everything",), **OFFSETS))


def test_cflags_are_pure():
    config = BracketConfig(level="full", sample_hz=99, ablate=("leaves", "timestamp"), **OFFSETS)
    assert cflags_for(config) == cflags_for(config)
    assert f"-DMAX_CPUS={config.max_cpus}" in cflags_for(config)


@pytest.mark.parametrize(
    "level, sample, want_level, want_hz",
    [(None, 0, "phase", 0), (None, 99, "full", 99), ("full", 0, "full", DEFAULT_SAMPLE_HZ),
     ("full", 99, "full", 99), ("fork", 0, "fork", 0), ("phase", 0, "phase", 0)],
)
def test_level_resolves_with_sample(level, sample, want_level, want_hz):
    assert level_and_rate(level, sample) == (want_level, want_hz)


@pytest.mark.parametrize("level", ["fork", "phase"])
def test_sampling_below_full_is_refused(level):
    with pytest.raises(UsageError, match="--level full"):
        level_and_rate(level, 99)


def test_fork_level_says_why_store_phases_are_missing():
    doctor = {"dup_mmap": "bracket", "mt_dup": "bracket-corrected", "vma_loop": "bracket", "tail": "bracket"}
    fork = level_methods(doctor, "fork")
    assert fork["dup_mmap"] == "bracket"
    for phase in STORE_PHASES:
        assert fork[phase].startswith("unavailable") and "--level fork" in fork[phase]
    assert level_methods(doctor, "phase") == doctor == level_methods(doctor, "full")
    assert set(LEVELS) == {"fork", "phase", "full"}


def test_every_store_is_timed_where_the_last_is_not_known_in_advance():
    """Before v6.8 (no __mt_dup) the bulk build's mas_store() calls are not one per VMA."""
    assert "TIME_EVERY_STORE" not in macros(BracketConfig(**OFFSETS))
    assert "TIME_EVERY_STORE" in macros(BracketConfig(time_every_store=True, **OFFSETS))
    both = cflags_for(BracketConfig(time_every_store=True, ablate=("time_every_store",), **OFFSETS))
    assert both.count("-DTIME_EVERY_STORE") == 1


def test_resolving_options_leaves_the_callers_as_they_were(tmp_path):
    """resolve_options() completes a copy: the options a caller built still say what was asked."""
    if os.geteuid() != 0:
        pytest.skip("record's options are complete only for root (it refuses others before that)")
    asked = RecordOptions(spawn_vmas=10, sample_hz=99, output=tmp_path / "r.parquet")
    done = resolve_options(asked)
    assert (asked.forks, asked.level, asked.sample_hz) == (None, None, 99)
    assert (done.forks, done.level, done.sample_hz, done.output) == (1000, "full", 99, tmp_path / "r.parquet")

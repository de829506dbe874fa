"""Command line: tracer doctor | record | report | sweep | fit | model | compare | calibrate | bench.

Thin: parses flags in the style of bcc's tools, calls into tracer/ (side
effects) and analysis/ (pure), and turns TracerError into one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from analysis.errors import TracerError, UsageError
from tracer.workload.spawn import SEED_VMAS

# --vmas of sweep and bench, unless told otherwise.
SEED_VMAS_TEXT = ",".join(map(str, SEED_VMAS))

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Trace where fork() spends its time duplicating the maple tree (dup_mmap).",
)


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What this kernel lets us probe, and which method `record` will use per phase."""
    from tracer.host.doctor import doctor_json, render_doctor
    from tracer.host.methods import choose_methods
    from tracer.host.survey import survey_host

    facts = survey_host(try_load=True)
    plan = choose_methods(facts)
    if json_out:
        import json

        typer.echo(json.dumps(doctor_json(facts, plan), indent=2, default=str))
    else:
        typer.echo(render_doctor(facts, plan))


@app.command()
def record(
    command: Optional[List[str]] = typer.Argument(None, metavar="[-- CMD [ARGS]...]", help="Run CMD and trace it and its descendants."),
    pid: List[int] = typer.Option([], "-p", "--pid", help="Trace this process (repeatable)."),
    spawn: Optional[str] = typer.Option(None, "--spawn", metavar="VMAS", help="Built-in workload: fork+exit+wait loop in a process with VMAS extra VMAs (A,B: two arms)."),
    forks: Optional[int] = typer.Option(None, "--forks", "-n", help="With --spawn: forks to run (default 1000; a run of several: 25)."),
    duration: Optional[float] = typer.Option(None, "-d", "--duration", metavar="SECS", help="Stop after SECS seconds."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="With --spawn: pin the workload to this CPU."),
    touch: bool = typer.Option(False, "--touch", help="With --spawn: touch each extra VMA's page, so fork copies page tables."),
    layout: str = typer.Option("gapped", "--layout", help="With --spawn: gapped (a hole between VMAs) or adjacent (alternating protections)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Recording file (default forktrace-<target>-<kernel>-<time>.parquet)."),
    sample: int = typer.Option(0, "--sample", metavar="HZ", help="Also sample kernel stacks at HZ inside dup_mmap (perf cpu-clock)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Force one: fentry or kprobe (exact probes, beside the preferred bracket), raw_tracepoint or tracepoint (the bracket alone). Default: what doctor chooses."),
    level: Optional[str] = typer.Option(None, "--level", help="fork (dup_mmap only, cheapest), phase (default: phases from per-VMA events) or full (phase plus --sample, default 4999 Hz)."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress line."),
    cycle: Optional[bool] = typer.Option(None, "--cycle/--no-cycle", help="Also time each fork's clone syscall, the child's exit_mmap and the parent's wait (default: on for --spawn)."),
    runs: Optional[int] = typer.Option(None, "--runs", "-r", metavar="N", help="Record N runs (a fresh workload process each, BPF loaded once) into the directory -o (default 1); with A/B arms (--layout A,B, --spawn A,B, -- CMD_A ::: CMD_B) N runs per arm, interleaved (default 80, of 25 forks each with --spawn)."),
    inject: Optional[str] = typer.Option(None, "--inject-store-ns", hidden=True, help="Test only: spin NS per mas_store (NS,NS: arms)."),
) -> None:
    """Trace dup_mmap per fork (system-wide, -p PID, --spawn VMAS, or -- CMD) into a recording."""
    from tracer.record import RecordOptions
    from tracer.record import record as run_record

    spawn_list = _ints(spawn, "--spawn") if spawn is not None else None
    opts = RecordOptions(
        pids=pid, command=command or [], spawn_vmas=spawn_list[0] if spawn_list else None, forks=forks, duration=duration,
        cpu=cpu, touch=touch, output=output, sample_hz=sample, backend=backend, level=level, quiet=quiet, cycle=cycle,
        layout=layout, runs=runs, spawn_list=spawn_list, inject_store_ns=tuple(_ints(inject, "--inject-store-ns")) if inject else (),
    )
    status = run_record(opts).exit_status
    if status:
        raise typer.Exit(status)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise UsageError(f"{flag} takes a number or a comma-separated list of numbers, not {text!r}") from None


@app.command()
def report(
    recordings: List[Path] = typer.Argument(..., metavar="FILE...", help="Recordings of `tracer record`, or directories of them."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, json, markdown, or folded (sampled stacks for flamegraph.pl)."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="DIR", help="Also write plots (PNG and SVG) into DIR."),
    predict: List[Path] = typer.Option([], "--predict", metavar="B", help="Predict B's dup_mmap times from these recordings' costs (repeatable)."),
    by: List[str] = typer.Option([], "--by", metavar="KEY", help="Group runs by a metadata key too: kernel, host, cpu_model, level, or a path like kernel.release (repeatable; summary report)."),
    engine: Optional[str] = typer.Option(None, "--engine", metavar="ENGINE", help="Where summaries are computed: local[:N] (processes, default) or dask://HOST:PORT (summary report)."),
    summary: Optional[bool] = typer.Option(None, "--summary/--detailed", help="Per-run summaries (many files, fast) or the detailed report (attribution). Default: summary above 20 files or 200,000 forks."),
) -> None:
    """Summarise recordings: per-phase latencies, histograms, and where the time goes (attribution).

    Several recordings (or a directory) are grouped by workload and VMA count;
    the fit of phase times on the model's counts runs across the groups.
    Many recordings (a fleet) are reduced to per-run summaries first.
    """
    from tracer.fleet import fleet_report, wants_summary

    if wants_summary(recordings, False if (plot or predict or fmt == "folded") and summary is None else summary, engine, by):
        if plot or predict:
            raise UsageError("--plot and --predict need the detailed report (--detailed)")
        typer.echo(fleet_report(recordings, fmt, by, engine))
        return
    from analysis.report.summary import FORMATS, build_report, render_doc, render_report, report_doc

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fmt == "folded":
        if plot or predict:
            raise UsageError("--format folded takes neither --plot nor --predict")
        typer.echo(render_report(recordings, fmt))
        return
    from analysis.files import Directory

    # The plot directory is made and checked before any work (a refusal is exit 2), written after.
    plots = Directory.open(plot, create=True, what="--plot directory") if plot is not None else None
    if plots is not None:
        from analysis.report.plots import PLOT_FILES

        for name in PLOT_FILES:
            plots.check_target(name)
    inp = build_report(recordings, predict or None)
    typer.echo(render_doc(inp, report_doc(inp), fmt))
    if plots is not None:
        from analysis.report.plots import write_plots

        with plots:
            written = write_plots(inp.attribution, plots)
        typer.echo(f"tracer: wrote {len(written)} plot files to {plot}", err=True)


@app.command()
def sweep(
    output: Path = typer.Option(..., "-o", "--output", help="Directory for the recordings, index.json and the report."),
    vmas: Optional[str] = typer.Option(None, "--vmas", metavar="LIST", help=f"Extra VMA counts, comma-separated (default {SEED_VMAS_TEXT}; with --vary 100,400,1600,6400)."),
    layout: Optional[str] = typer.Option(None, "--layout", metavar="LIST", help="Layouts: adjacent, gapped, or both (default both)."),
    forks: Optional[int] = typer.Option(None, "--forks", "-n", help="Forks per recording (default 1000; with --vary 200)."),
    sample: int = typer.Option(999, "--sample", metavar="HZ", help="Sample kernel stacks at HZ inside dup_mmap (0: off)."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="Pin the workload to this CPU."),
    force: bool = typer.Option(False, "--force", help="Replace the sweep's files in a non-empty directory."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="Only one line per recording."),
    vary: Optional[str] = typer.Option(None, "--vary", metavar="FACTORS", help="A designed experiment instead: shape, cache, weight (comma-separated), one factor at a time at the same VMA counts."),
    runs: Optional[int] = typer.Option(None, "--runs", "-r", help="Runs (fresh workload processes) per cell, the unit of replication, interleaved round by round with BPF loaded once (default 1; with --vary 8)."),
    seed: int = typer.Option(0, "--seed", help="With --vary: the seed of the run order within each block."),
) -> None:
    """Record the built-in workload at each VMA count in each layout, into one directory (--vary: a designed experiment)."""
    from tracer.sweep import DEFAULT_VMAS, SweepOptions, parse_list
    from tracer.sweep import sweep as run_sweep

    if vary is not None:
        from tracer.experiment import DEFAULT_RUNS as DESIGN_RUNS, DEFAULT_VMAS as DESIGN_VMAS
        from tracer.experiment import ExperimentOptions, parse_factors, run_experiment

        if layout is not None:
            raise UsageError("--layout is one of --vary shape's levels; give one or the other")
        run_experiment(
            ExperimentOptions(
                output=output, factors=parse_factors(vary),
                vmas=parse_list(vmas, "--vmas", int) if vmas is not None else DESIGN_VMAS,
                runs=runs if runs is not None else DESIGN_RUNS, forks=forks if forks is not None else 200, sample_hz=sample, cpu=cpu, force=force, seed=seed, quiet=quiet,
            ),
            log=lambda msg: typer.echo(msg, err=True),
        )
        typer.echo(str(output))
        return
    opts = SweepOptions(
        output=output, vmas=parse_list(vmas, "--vmas", int) if vmas is not None else DEFAULT_VMAS,
        layouts=parse_list(layout or "adjacent,gapped", "--layout"),
        forks=forks if forks is not None else 1000, sample_hz=sample, cpu=cpu, force=force, quiet=quiet,
        runs=runs if runs is not None else 1,
    )
    run_sweep(opts, log=lambda msg: typer.echo(msg, err=True))
    typer.echo(str(output))


@app.command()
def calibrate(
    output: Path = typer.Option(..., "-o", "--output", metavar="DIR", help="A new directory for the A/A runs and calibration.json."),
    vmas: str = typer.Option("100,1000,3000", "--vmas", metavar="LIST", help="Extra VMA counts, comma-separated."),
    runs: int = typer.Option(8, "--runs", "-r", metavar="N", help="Runs per VMA count (at least 3)."),
    forks: int = typer.Option(100, "--forks", "-n", help="Forks per run."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="Pin the workload to this CPU."),
) -> None:
    """This host's run-to-run spread per phase (A/A runs of the built-in workload), for compare's single runs."""
    from tracer.calibrate import calibrate as run_calibrate

    path = run_calibrate(output, _ints(vmas, "--vmas"), runs, forks, cpu, log=lambda msg: typer.echo(msg, err=True))
    typer.echo(str(path))


@app.command()
def fit(
    directory: Path = typer.Argument(..., help="A directory written by tracer sweep --vary."),
    fmt: str = typer.Option("text", "--format", help="text or json."),
    predict: Optional[List[str]] = typer.Option(None, "--predict", metavar="LEVEL", help="Fit without this shape level and predict it (repeatable; default every shape level but the default one)."),
) -> None:
    """The cost model fitted across a designed experiment: unit costs, R², residuals, predictions."""
    import json

    from analysis.attribution.design import design_fit, load_design_runs, render_design

    if fmt not in ("text", "json"):
        raise UsageError(f"--format must be text or json, not {fmt!r}")
    runs = load_design_runs(directory)
    known = set(runs.loc[runs["factor"] == "shape", "level"])
    for level in predict or []:
        if level not in known:
            raise UsageError(f"--predict {level}: not a shape level of this design (it has: {', '.join(sorted(known)) or 'none'})")
    doc = design_fit(runs, predict=predict or None, directory=directory)
    typer.echo(json.dumps(doc, indent=2, default=float) if fmt == "json" else render_design(doc))


@app.command()
def model(
    vmas: Optional[int] = typer.Option(None, "--vmas", help="Synthetic layout of N VMAs."),
    gaps: bool = typer.Option(False, "--gaps", help="With --vmas: a hole between every two VMAs."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="A /proc/PID/maps snapshot."),
    recording: Optional[Path] = typer.Option(None, "--recording", help="A recording: use its saved parent layout."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Replay model: tree shape, and dup+replace (v6.8+) vs bulk insert (before) operation counts."""
    from analysis.model.render import run_model

    typer.echo(run_model(vmas=vmas, gaps=gaps, maps=maps, recording=recording, as_json=json_out))


@app.command()
def compare(
    paths: Optional[List[Path]] = typer.Argument(None, metavar="BASE NEW", help="Two recordings, directories of recordings, or pyperf JSON files."),
    base: List[Path] = typer.Option([], "-b", "--base", metavar="FILE|DIR", help="A base input (repeatable; instead of BASE NEW)."),
    new: List[Path] = typer.Option([], "-n", "--new", metavar="FILE|DIR", help="A new input (repeatable; instead of BASE NEW)."),
    fmt: str = typer.Option("text", "--format", "-f", help="text (80 columns), markdown, or json."),
    plot: Optional[Path] = typer.Option(None, "--plot", metavar="FILE", help="Also draw each phase's distributions side by side (.png, .svg, .pdf)."),
    fail_on_regression: Optional[float] = typer.Option(None, "--fail-on-regression", metavar="PCT", help="Exit 1 if a significant regression beyond PCT percent is found."),
    per_run: str = typer.Option("median", "--per-run", help="What each run is reduced to per phase: median, or p10 (10th percentile: steadier on a loaded host, blind to changes of slow forks only)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", metavar="FILE", help="The host's run-to-run spread (tracer calibrate) for single-run sides (default: calibration.json beside the inputs)."),
    by: Optional[str] = typer.Option(None, "--by", metavar="KEY", help="Compare two values of a metadata key (kernel, host, ...) across all the recordings given, each run a unit."),
    by_base: Optional[str] = typer.Option(None, "--by-base", metavar="VALUE", help="With --by: the base side's value (default: the lower of two)."),
    by_new: Optional[str] = typer.Option(None, "--by-new", metavar="VALUE", help="With --by: the new side's value."),
    engine: Optional[str] = typer.Option(None, "--engine", metavar="ENGINE", help="With --by: local[:N] or dask://HOST:PORT."),
) -> None:
    """Did it get slower? Per phase and VMA group, the run as the unit: delta with 95% CI, Welch t across runs, "~" if not significant.

    Exit status: 0, or 1 with --fail-on-regression when a significant regression
    beyond PCT is found; 2 on bad input.
    """
    from tracer.compare import run_compare
    from tracer.fleet import fleet_compare

    try:
        if by is None and (by_base or by_new or engine):
            raise UsageError("--by-base, --by-new and --engine go with --by KEY")
        if by is not None and (base or new or plot):
            raise UsageError("compare --by takes the recordings as FILE|DIR..., without -b/-n or --plot")
        if by is not None:
            text, failed = fleet_compare(paths or [], by, fmt, engine, by_base, by_new, fail_on_regression)
        else:
            text, failed = run_compare(paths or [], base, new, fmt, plot, fail_on_regression, calibration, per_run)
    except TracerError as err:
        err.exit_code = 2  # bad input, as opposed to 1: a regression found (for CI gating)
        raise
    typer.echo(text)
    if failed:
        raise typer.Exit(1)


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": False})
def bench(
    vmas: str = typer.Option(SEED_VMAS_TEXT, "--vmas", help="Extra VMA counts, comma-separated."),
    layout: str = typer.Option("gapped", "--layout", help="Extra VMAs gapped (a hole between each) or adjacent."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="Pin the forking process to this CPU."),
    output: Path = typer.Option(Path("."), "-o", "--output", metavar="DIR", help="Directory for spawn-LAYOUT-N.json (and .parquet)."),
    record_: bool = typer.Option(False, "--record", help="Trace each run with tracer record (root); recording beside the JSON."),
    processes: Optional[int] = typer.Option(None, "-p", "--processes", help="pyperf worker processes."),
    values: Optional[int] = typer.Option(None, "-n", "--values", help="pyperf values per worker."),
    warmups: Optional[int] = typer.Option(None, "-w", "--warmups", help="pyperf warmup values per worker (default: calibrated)."),
    loops: Optional[int] = typer.Option(None, "-l", "--loops", help="Forks per value (default: calibrated by pyperf)."),
    min_time: Optional[float] = typer.Option(None, "--min-time", help="pyperf: minimum seconds per value when calibrating."),
    fast: bool = typer.Option(False, "--fast", help="pyperf --fast: rough answers quickly."),
    rigorous: bool = typer.Option(False, "--rigorous", help="pyperf --rigorous: more processes and values."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="pyperf --quiet."),
) -> None:
    """Forks per second vs extra VMAs through pyperf (files for pyperf stats/hist/compare_to and tracer compare)."""
    from tracer.bench.run import BenchOptions, parse_vmas, run_bench

    pyperf_args: list[str] = []
    for flag, value in (("--processes", processes), ("--values", values), ("--warmups", warmups), ("--loops", loops), ("--min-time", min_time)):
        if value is not None:
            if value < (0 if flag == "--warmups" else 1) and flag != "--min-time" or (flag == "--min-time" and value <= 0):
                raise UsageError(f"{flag} {value}: out of range")
            pyperf_args += [flag, str(value)]
    pyperf_args += ["--fast"] * fast + ["--rigorous"] * rigorous
    opts = BenchOptions(
        vmas=parse_vmas(vmas), layout=layout, cpu=cpu, output=output, record=record_, pyperf_args=pyperf_args, quiet=quiet
    )
    typer.echo(run_bench(opts))


def main() -> None:
    try:
        app()
    except TracerError as err:
        typer.echo(f"tracer: error: {err}", err=True)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        typer.echo("tracer: interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()

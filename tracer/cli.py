"""Command line: tracer doctor | record | report | model.

Thin: parses flags in the style of bcc's tools, calls into tracer/ (side
effects) and analysis/ (pure), and turns TracerError into one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from analysis.errors import TracerError, UsageError

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
    from tracer.host.probe import probe_host

    facts = probe_host(try_load=True)
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
    spawn: Optional[int] = typer.Option(None, "--spawn", metavar="VMAS", help="Built-in workload: fork+exit+wait loop in a process with VMAS extra VMAs."),
    forks: Optional[int] = typer.Option(None, "--forks", "-n", help="With --spawn: forks to run (default 1000)."),
    duration: Optional[float] = typer.Option(None, "-d", "--duration", metavar="SECS", help="Stop after SECS seconds."),
    cpu: Optional[int] = typer.Option(None, "--cpu", help="With --spawn: pin the workload to this CPU."),
    touch: bool = typer.Option(False, "--touch", help="With --spawn: touch each extra VMA's page, so fork copies page tables."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Recording file (default forktrace-<target>-<kernel>-<time>.parquet)."),
    sample: int = typer.Option(0, "--sample", metavar="HZ", help="Also sample kernel stacks at HZ inside dup_mmap (perf cpu-clock)."),
    backend: Optional[str] = typer.Option(None, "--backend", help="Force one: fentry or kprobe (exact probes, beside the preferred bracket), raw_tracepoint or tracepoint (the bracket alone). Default: what doctor chooses."),
    quiet: bool = typer.Option(False, "-q", "--quiet", help="No progress line."),
) -> None:
    """Trace dup_mmap per fork (system-wide, -p PID, --spawn VMAS, or -- CMD) into a recording."""
    from tracer.record import RecordOptions
    from tracer.record import record as run_record

    opts = RecordOptions(
        pids=pid, command=command or [], spawn_vmas=spawn, forks=forks, duration=duration, cpu=cpu,
        touch=touch, output=output, sample_hz=sample, backend=backend, quiet=quiet,
    )
    run_record(opts)


@app.command()
def report(
    recording: Path = typer.Argument(..., help="A recording written by `tracer record`."),
    fmt: str = typer.Option("text", "--format", "-f", help="text, json, or folded (sampled stacks for flamegraph.pl)."),
) -> None:
    """Summarise a recording: per-phase latency percentiles and log2 histograms."""
    from analysis.report.summary import FORMATS, render_report

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    typer.echo(render_report(recording, fmt))


@app.command()
def model(
    vmas: Optional[int] = typer.Option(None, "--vmas", help="Synthetic layout of N VMAs."),
    gaps: bool = typer.Option(False, "--gaps", help="With --vmas: a hole between every two VMAs."),
    maps: Optional[Path] = typer.Option(None, "--maps", help="A /proc/PID/maps snapshot."),
    recording: Optional[Path] = typer.Option(None, "--recording", help="A recording: use its saved parent layout."),
    json_out: bool = typer.Option(False, "--json", help="Machine-readable output."),
) -> None:
    """Replay model: tree shape, and dup+replace (v6.8+) vs bulk insert (before) operation counts."""
    from analysis.model.cli import run_model

    typer.echo(run_model(vmas=vmas, gaps=gaps, maps=maps, recording=recording, as_json=json_out))


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

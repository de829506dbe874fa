"""Command line: tracer doctor | record | report | model.

Thin: parses flags in the style of bcc's tools, calls into tracer/ (side
effects) and analysis/ (pure), and turns TracerError into one line on stderr.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from tracer.errors import TracerError, UsageError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Trace where fork() spends its time duplicating the maple tree (dup_mmap).",
)


def fail(message: str, code: int = 1) -> None:
    typer.echo(f"tracer: error: {message}", err=True)
    raise typer.Exit(code)


@app.command()
def doctor(json_out: bool = typer.Option(False, "--json", help="Machine-readable output.")) -> None:
    """What this kernel lets us probe, and which method `record` will use per phase."""
    from tracer.host.capabilities import probe_capabilities, render_doctor

    caps = probe_capabilities()
    if json_out:
        import json

        typer.echo(json.dumps(caps, indent=2, default=str))
    else:
        typer.echo(render_doctor(caps))


@app.command()
def report(
    recording: Path = typer.Argument(..., help="A recording written by `tracer record`."),
    fmt: str = typer.Option("text", "--format", "-f", help="text or json."),
) -> None:
    """Summarise a recording: per-phase latency percentiles and log2 histograms."""
    from analysis.report import render_report

    if fmt not in ("text", "json"):
        raise UsageError(f"--format must be text or json, not {fmt!r}")
    typer.echo(render_report(recording, fmt))


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

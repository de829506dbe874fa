"""`tracer report` and `tracer compare` over many recordings: when summaries are used, and how.

The rule: the report renders from per-run summaries (analysis.summary) when
asked (--summary, --engine, --by) or when the input is large: more than
FLEET_FILES recordings, or more than FLEET_FORKS forks in all (counted from
the Parquet footers). Otherwise it is the detailed report of one or a few
recordings (attribution, the model check), which loads every fork.
--detailed forces that one. Unreadable files in a summary run are named on
stderr, one line each, and the rest still report.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, Sequence

from analysis.errors import TracerError, UsageError

__all__ = ["FLEET_FILES", "FLEET_FORKS", "wants_summary", "fleet_report", "fleet_compare"]

FLEET_FILES = 20
FLEET_FORKS = 200_000


def _paths(args: Sequence[Path]) -> list[Path]:
    from analysis.frame import recording_paths

    return recording_paths(args)


def wants_summary(args: Sequence[Path], summary: bool | None, engine: str | None, by: Sequence[str]) -> bool:
    """True for the summary report: --summary, --engine or --by, or a large input (see the module docstring)."""
    if summary is not None:
        if summary is False and (engine or by):
            raise UsageError("--detailed takes neither --engine nor --by (they work on summaries)")
        return summary
    if engine or by:
        return True
    paths = _paths(args)
    if len(paths) > FLEET_FILES:
        return True
    import pyarrow.parquet as pq

    from analysis.files import open_input

    forks = 0
    for path in paths:
        try:
            with open_input(path, "recording") as f:  # regular files only: a FIFO would wait for a writer
                forks += pq.read_metadata(f).num_rows
        except Exception:  # the detailed reader names an unreadable file itself
            continue
    return forks > FLEET_FORKS


def _summarize(args: Sequence[Path], by: Sequence[str], engine: str | None, warn: Callable[[str], None]):
    from analysis.summary import parse_engine, summarize_files

    paths = _paths(args)
    summary = summarize_files(paths, by, parse_engine(engine))
    for reason in sorted(summary.skipped.values()):
        warn(f"tracer: skipped: {reason}")
    if not summary.groups:
        raise TracerError(f"none of the {len(paths)} recordings could be read")
    return summary


def fleet_report(args: Sequence[Path], fmt: str, by: Sequence[str], engine: str | None,
                 warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> str:
    from analysis.summary.fleet import FLEET_FORMATS, fleet_doc, render_fleet

    if fmt not in FLEET_FORMATS:
        raise UsageError(f"the summary report's --format is one of {', '.join(FLEET_FORMATS)}, not {fmt!r} (--detailed for the rest)")
    return render_fleet(fleet_doc(_summarize(args, by, engine, warn)), fmt)


def fleet_compare(args: Sequence[Path], by: str, fmt: str, engine: str | None, base_value: str | None,
                  new_value: str | None, fail_on_regression: float | None,
                  warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> tuple[str, bool]:
    """(rendered comparison of runs as units between two values of `by`, whether --fail-on-regression tripped)."""
    from analysis.compare.stats import REGRESSION
    from analysis.summary.units import compare_units, render_units

    if not args:
        raise UsageError("compare --by KEY takes the recordings of both sides: FILE|DIR...")
    if fmt not in ("text", "markdown", "json"):
        raise UsageError(f"--format must be text, markdown or json, not {fmt!r}")
    cmp = compare_units(_summarize(args, [by], engine, warn), by, base_value, new_value)
    failed = fail_on_regression is not None and any(
        r.change == REGRESSION and r.delta_pct is not None and r.delta_pct > fail_on_regression for r in cmp.rows
    )
    return render_units(cmp, fmt), failed

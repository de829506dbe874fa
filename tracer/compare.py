"""`tracer compare`: turn command-line inputs into the two sides and render the result.

The statistics live in analysis.compare; this module only decides what the
arguments mean. BASE and NEW are each a recording, a directory of recordings,
or a pyperf JSON file; -b/--base and -n/--new (repeatable) give several inputs
a side. Both sides must be of one kind: recordings, or pyperf benchmarks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from analysis.errors import UsageError
from analysis.files import check_input

__all__ = ["run_compare", "split_sides"]


def split_sides(paths: Sequence[Path], base: Sequence[Path], new: Sequence[Path]) -> tuple[list[Path], list[Path]]:
    """BASE NEW, or -b ... -n ...: never both, never one side empty."""
    if paths and (base or new):
        raise UsageError("give either BASE NEW or -b/--base and -n/--new, not both")
    if paths:
        if len(paths) != 2:
            raise UsageError(f"compare takes two inputs, BASE and NEW (got {len(paths)}); for several a side use -b FILE -n FILE")
        return [paths[0]], [paths[1]]
    if not base or not new:
        raise UsageError("compare needs a base and a new side: BASE NEW, or -b FILE... -n FILE...")
    return list(base), list(new)


def _expand(paths: Sequence[Path]) -> list[Path]:
    """Directories stand for their recordings and pyperf files."""
    from analysis.compare import is_pyperf_file

    out: list[Path] = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            # A sweep's directory also holds index.json and report.json: only pyperf's own JSON counts.
            benchmarks = [p for p in [*path.glob("*.json"), *path.glob("*.json.gz")] if is_pyperf_file(p, strict=True)]
            found = sorted([*path.glob("*.parquet"), *benchmarks])
            if not found:
                raise UsageError(f"directory {path} holds no recordings (*.parquet) or pyperf files (*.json)")
            out += found
        elif not path.exists():
            raise UsageError(f"{path} does not exist")
        else:
            out.append(path)
    for path in out:  # every input a regular file, before any is read (a FIFO would hang its reader)
        check_input(path)
    return out


def _kind(paths: list[Path], side: str) -> str:
    from analysis.compare import is_pyperf_file

    kinds = {"pyperf" if is_pyperf_file(p) else "recordings" for p in paths}
    if len(kinds) > 1:
        raise UsageError(f"the {side} side mixes recordings and pyperf files; compare one kind at a time")
    return kinds.pop()


def run_compare(
    paths: Sequence[Path],
    base: Sequence[Path],
    new: Sequence[Path],
    fmt: str,
    plot: Path | None = None,
    fail_on_regression: float | None = None,
    calibration: Path | None = None,
    statistic: str = "median",
) -> tuple[str, bool]:
    """(rendered comparison, whether --fail-on-regression tripped).

    calibration: the host's A/A spread (tracer calibrate); without it, a
    calibration.json beside the inputs is used if it is of their host and kernel.
    """
    from analysis.compare import FORMATS, compare_benchmarks, compare_recordings, regressions_beyond, render

    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if fail_on_regression is not None and not fail_on_regression >= 0:
        raise UsageError(f"--fail-on-regression takes a percentage of 0 or more, not {fail_on_regression!r}")
    base_paths, new_paths = split_sides(paths, base, new)
    base_files, new_files = _expand(base_paths), _expand(new_paths)
    if plot is not None:
        from analysis.compare.plot import check_plot_path

        check_plot_path(plot, [str(p) for p in base_files + new_files])
    kind, new_kind = _kind(base_files, "base"), _kind(new_files, "new")
    if kind != new_kind:
        raise UsageError(f"base holds {kind}, new holds {new_kind}: compare like with like")
    if kind == "pyperf":
        comparison = compare_benchmarks(base_files, new_files)
    else:
        from analysis.recording import load_recording

        from analysis.compare.calibration import find_calibration, load_calibration

        found = calibration or find_calibration([*base_paths, *new_paths])
        cal = load_calibration(found) if found is not None else None
        comparison = compare_recordings(
            [load_recording(p) for p in base_files], [load_recording(p) for p in new_files], calibration=cal,
            statistic=statistic,
        )
    text = render(comparison, fmt)
    if plot is not None:
        from analysis.compare.plot import plot_comparison

        for note in plot_comparison(comparison, plot):
            text += f"\n(plot: {note})" if fmt == "text" else ""
    beyond = regressions_beyond(comparison, fail_on_regression) if fail_on_regression is not None else []
    if beyond and fmt == "text":
        text += "\n" + "; ".join(
            f"--fail-on-regression {fail_on_regression:g}: {r.metric} {r.delta_pct:+.1f}%" + (f" in {r.group}" if r.group else "")
            for r in beyond
        )
    return text, bool(beyond)

"""--plot FILE: each compared metric's two distributions side by side.

matplotlib is imported here only, when a plot is asked for: compare itself
must run where matplotlib is not installed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.compare.render import MARKS
from analysis.compare.result import Comparison
from analysis.errors import TracerError, UsageError
from analysis.files import Directory, write_file

__all__ = ["plot_comparison", "check_plot_path", "MAX_GROUPS", "PLOT_SUFFIXES"]

PLOT_SUFFIXES = (".png", ".svg", ".pdf")

MAX_GROUPS = 8  # rows of the figure; a longer sweep plots its first groups and says so


def check_plot_path(path: Path, inputs: list[str]) -> Path:
    """Refuse, before any work, a plot file that cannot be one or would overwrite an input."""
    path = Path(path)
    if path.suffix.lower() not in PLOT_SUFFIXES:
        raise UsageError(f"--plot {path}: give a file ending in {', '.join(PLOT_SUFFIXES)}")
    if any(path.resolve() == Path(i).resolve() for i in inputs):
        raise UsageError(f"--plot {path} is one of the inputs; refusing to overwrite it")
    if path.is_dir() or not (path.parent if str(path.parent) else Path(".")).is_dir():
        raise UsageError(f"--plot {path}: not a file in an existing directory")
    with Directory.open(path.parent if str(path.parent) else Path("."), what="--plot directory") as directory:
        directory.check_target(path.name)
    return path


def plot_comparison(c: Comparison, path: Path) -> list[str]:
    """Write the figure to `path` (format from its suffix); returns notes for the user."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TracerError("--plot needs matplotlib (pip install matplotlib)") from None
    notes = []
    groups = c.groups[:MAX_GROUPS]
    if len(c.groups) > MAX_GROUPS:
        notes.append(f"plot shows the first {MAX_GROUPS} of {len(c.groups)} groups")
    metrics = list(dict.fromkeys(r.metric for r in c.rows if r.group in groups))
    if not metrics:
        raise TracerError("nothing was compared, so there is nothing to plot")
    scale, unit = (1e3, "us") if c.unit == "ns" else (1e-6, "us")
    fig, axes = plt.subplots(
        len(groups), len(metrics), figsize=(2.6 * len(metrics), 2.4 * len(groups) + 0.6), squeeze=False
    )
    for i, group in enumerate(groups):
        for j, metric in enumerate(metrics):
            ax = axes[i][j]
            row = next((r for r in c.rows if r.group == group and r.metric == metric), None)
            base, new = c.values.get((group, metric), (np.array([]), np.array([])))
            data = [np.asarray(v, float) for v in (base, new)]
            data = [v[~np.isnan(v)] / scale for v in data]
            if all(len(v) for v in data):
                ax.violinplot(data, showmedians=True)
            ax.set_xticks([1, 2], ["base", "new"])
            title = metric if row is None else f"{metric} {MARKS[row.change]}"
            if row is not None and row.significant:
                title += f" {row.delta_pct:+.1f}%"
            ax.set_title(title, fontsize=9)
            if j == 0:
                ax.set_ylabel((group + "\n" if group else "") + unit, fontsize=8)
            ax.tick_params(labelsize=7)
    fig.suptitle(c.verdict.text if len(c.verdict.text) < 110 else c.verdict.text[:107] + "...", fontsize=9)
    fig.tight_layout()
    # analysis.files: an unpredictable temporary name, renamed over the target; replaced whole or not at all.
    fmt = path.suffix.lower().lstrip(".")
    try:
        write_file(path, lambda out: fig.savefig(out, format=fmt))
    except ValueError as err:
        raise TracerError(f"cannot write the plot {path}: {err}") from None
    finally:
        plt.close(fig)
    return notes

"""`tracer report --plot DIR`: the sweep as figures (PNG and SVG), drawn with matplotlib.

matplotlib is imported here only, when plots are asked for, so a report
without --plot never pays for (or needs) it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from analysis.attribution.attribute import Attribution
from analysis.attribution.components import COMPONENTS
from analysis.attribution.functions import MEASURED
from analysis.errors import TracerError
from analysis.files import Directory
from analysis.recording import PHASES

__all__ = ["PLOT_FILES", "write_plots"]

PHASES_PLOTTED = tuple(p.name for p in PHASES if not p.derived)
PLOT_FILES = tuple(f"{name}.{ext}" for name in ("latency_vs_vmas", "per_vma_cost", "attribution", "functions_per_vma") for ext in ("png", "svg"))


def write_plots(att: Attribution, outdir: Path | str | Directory) -> list[Path]:
    """Latency vs VMAs per phase (with the fit), per-VMA cost vs VMAs, attribution bars,
    and ns per VMA by kernel function when the recordings sampled stacks.

    Into a directory made (or checked) and written through analysis.files: each
    file appears whole or not at all, and no name there is followed.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise TracerError("--plot needs matplotlib (pip install matplotlib)") from None
    groups = [g for g in att.groups if len(g.forks)]
    if not groups:
        raise TracerError("nothing to plot: no group has a usable fork that copied VMAs")
    if isinstance(outdir, Directory):
        return _draw(att, groups, outdir, plt)
    with Directory.open(Path(outdir), create=True, what="--plot directory") as directory:
        return _draw(att, groups, directory, plt)


def _draw(att: Attribution, groups, outdir: Directory, plt) -> list[Path]:
    vmas = np.array([float(g.forks["stores"].median()) for g in groups])
    order = np.argsort(vmas)
    groups, vmas = [groups[i] for i in order], vmas[order]
    written: list[Path] = []

    def save(fig, name: str) -> None:
        try:
            for ext in ("png", "svg"):
                outdir.write(f"{name}.{ext}", lambda out: fig.savefig(out, format=ext, dpi=120, bbox_inches="tight"))
                written.append(outdir.path / f"{name}.{ext}")
        finally:
            plt.close(fig)

    # Medians: a thread preempted while it holds the mmap locks makes the mean a
    # measure of the machine's load; the fit line is of the means it was fitted to.
    layouts = sorted({g.key.layout for g in groups})
    marks = dict(zip(layouts, "os^dv"))

    def by_layout(layout: str):
        picked = [(g, v) for g, v in zip(groups, vmas) if g.key.layout == layout]
        return [g for g, _ in picked], np.array([v for _, v in picked])

    def tag(layout: str) -> str:
        return f", {layout}" if layout else ""

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layout in layouts:
        gs, vs = by_layout(layout)
        for i, phase in enumerate(PHASES_PLOTTED):
            p50 = [float(np.nanmedian(g.forks[f"{phase}_ns"])) / 1e3 for g in gs]
            ax.plot(vs, p50, marks[layout] + ("-" if layout == layouts[0] else ":"), color=f"C{i}",
                    label=f"{phase} p50{tag(layout)}")
    if att.fit.missing is None:
        xs = np.linspace(0, vmas.max(), 50)
        counts = _interp_counts(groups, vmas, xs)
        point, lo, hi = att.fit.predict(counts)
        ax.plot(xs, point / 1e3, "k--", lw=1, label="dup_mmap fit (of means)")
        ax.fill_between(xs, lo / 1e3, hi / 1e3, color="k", alpha=0.1)
    ax.set_xlabel("VMAs copied per fork")
    ax.set_ylabel("us per fork")
    ax.set_title("dup_mmap phases vs VMAs")
    ax.legend(fontsize="small")
    save(fig, "latency_vs_vmas")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for layout in layouts:
        gs, vs = by_layout(layout)
        per_vma = [float(g.forks["dup_mmap_ns"].median()) / v for g, v in zip(gs, vs)]
        ax.plot(vs, per_vma, marks[layout] + "-", color="C0", label=f"dup_mmap p50 / VMAs{tag(layout)}")
        step = [float(np.nanmedian(g.forks["vma_step_ns"])) for g in gs]
        ax.plot(vs, step, marks[layout] + ":", color="C2", label=f"vma_step p50{tag(layout)}")
    ax.set_xscale("log")
    ax.set_xlabel("VMAs copied per fork")
    ax.set_ylabel("ns per VMA")
    ax.set_title("per-VMA cost vs VMAs (flat = linear)")
    ax.legend(fontsize="small")
    save(fig, "per_vma_cost")

    fig, ax = plt.subplots(figsize=(max(8, 0.5 * len(groups)), 4.5))
    labels = [f"{int(v)}{(g.key.layout or ' ')[0]}" for g, v in zip(groups, vmas)]
    bottom = np.zeros(len(groups))
    for c in COMPONENTS:
        shares = np.array([((g.components.get(c) or {}).get("share") or 0.0) for g in groups])
        ax.bar(labels, shares * 100, bottom=bottom, label=c)
        bottom += shares * 100
    ax.set_xlabel("VMAs copied per fork" + (" (layout initial)" if any(layouts) else ""))
    ax.tick_params(axis="x", labelrotation=45)
    ax.set_ylabel("% of dup_mmap")
    ax.set_title("attribution per component (" + ", ".join(sorted({g.estimate or "none" for g in groups})) + ")")
    ax.legend(loc="upper left", bbox_to_anchor=(1, 1))
    save(fig, "attribution")

    sampled = [(g, v) for g, v in zip(groups, vmas) if g.sample_est is not None]
    if sampled:
        import matplotlib.ticker

        fig, ax = plt.subplots(figsize=(8, 5))
        for i, name in enumerate(_largest_functions([g for g, _ in sampled], FUNCTIONS_PLOTTED)):
            for layout in layouts:
                pts = [(v, g.sample_est.functions().get(name), g.sample_est.vmas) for g, v in sampled
                       if g.key.layout == layout]
                pts = [(v, a, n) for v, a, n in pts if a is not None and n]
                if not pts:
                    continue
                xs = np.array([v for v, _, _ in pts])
                ys = np.array([a.ns_per_fork / n for _, a, n in pts])
                err = np.array([[max(y - a.ci95[0] / n, 0.0), max(a.ci95[1] / n - y, 0.0)] for y, (_, a, n) in zip(ys, pts)]).T
                ax.errorbar(xs, ys, yerr=err, fmt=marks[layout] + ("-" if layout == layouts[0] else ":"), color=f"C{i}",
                            capsize=2, label=f"\u2009{name}{tag(layout)}")  # matplotlib hides labels that start with "_"
        ax.set_xscale("log")
        ax.set_xticks(sorted({float(v) for _, v in sampled}))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%d"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("VMAs copied per fork")
        ax.set_ylabel("ns per VMA (95% CI)")
        ax.set_title("dup_mmap's time by kernel function, per VMA (samples; flat = linear)")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
        save(fig, "functions_per_vma")
    return written


FUNCTIONS_PLOTTED = 8


def _largest_functions(groups, n: int) -> list[str]:
    """The n sampled functions with the largest share of dup_mmap, summed over the groups."""
    weight: dict[str, float] = {}
    for g in groups:
        est = g.sample_est
        for name, a in est.functions().items():
            if name not in MEASURED and est.total_ns:
                weight[name] = weight.get(name, 0.0) + a.ns_per_fork / est.total_ns
    return sorted(weight, key=lambda k: -weight[k])[:n]


def _interp_counts(groups, vmas: np.ndarray, xs: np.ndarray) -> "object":
    import pandas as pd

    from analysis.attribution.counts import COUNT_COLUMNS

    known = [g for g in groups if g.counts is not None]
    vv = np.array([g.counts["stores"] for g in known])
    return pd.DataFrame({c: np.interp(xs, vv, [g.counts[c] for g in known]) for c in COUNT_COLUMNS})

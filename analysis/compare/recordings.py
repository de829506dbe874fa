"""Compare two sets of recordings: per group (workload, layout, VMAs), per phase.

Groups are matched by analysis.frame.GroupKey, so a sweep (0..6400 VMAs) on one
kernel compares against the same sweep on another, group by group. Within a
group the unit is the run (analysis.compare.runs, analysis.compare.across):
each run one median per phase, tested across runs. Groups
found on one side only are listed, not compared. When each side holds exactly
one group and their keys differ (`compare a.parquet b.parquet` of two
different setups), the user named the two files to compare: they are paired,
and a loud warning says the workloads differ.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, Sequence

from analysis.compare.across import RunPair, aa_range_pct, compare_runs
from analysis.compare.algorithm import compare_algorithms, model_report
from analysis.compare.calibration import Calibration
from analysis.compare.components import compare_components, compare_shapes, shape_of
from analysis.compare.context import recording_context
from analysis.compare.result import Comparison
from analysis.compare.runs import STATISTICS, paired_rounds, runs_of
from analysis.errors import TracerError
from analysis.compare.stats import ALPHA, MIN_SAMPLES
from analysis.frame import Group, group_recordings
from analysis.model.parent import saved_parent
from analysis.recording import PHASES, Recording

__all__ = ["compare_recordings", "attributed_costs", "Attribute"]

# Per-unit cost estimates of one group's recordings: {component: {ns_per_unit, ci95}}, or None.
Attribute = Callable[[Sequence[Recording]], Mapping[str, Any] | None]


def _model_shape(parent: tuple[Any, Any] | None) -> dict[str, int] | None:
    """The replay model's parent tree (nodes, height, leaves) from analysis.model.parent.saved_parent, if any."""
    if parent is None:
        return None
    shape = parent[1].tree.shape()
    return {"nodes": shape.nodes, "height": shape.height, "leaves": shape.leaves}


def attributed_costs(recordings: Sequence[Recording]) -> dict[str, Any] | None:
    """One group's per-unit costs from analysis.attribution, as compare_components() reads them."""
    from analysis.attribution.attribute import attribute_groups

    groups = attribute_groups(group_recordings(recordings)).groups
    if len(groups) != 1:
        return None
    costs = {}
    for name, entry in groups[0].components.items():
        ci = entry.get("ci95_per_unit")
        value = entry.get("ns_per_unit")
        if value is not None and ci is not None and ci[0] <= value <= ci[1]:
            costs[name] = {"ns_per_unit": value, "ci95": ci}
    return costs or None


def _pairs(base: list[Group], new: list[Group]) -> tuple[list[tuple[Group, Group]], list[Group], list[Group]]:
    new_by_key = {g.key: g for g in new}
    base_keys = {g.key for g in base}
    pairs = [(g, new_by_key[g.key]) for g in base if g.key in new_by_key]
    if not pairs and len(base) == 1 and len(new) == 1:
        return [(base[0], new[0])], [], []
    return pairs, [g for g in base if g.key not in new_by_key], [g for g in new if g.key not in base_keys]


def _label(b: Group, n: Group) -> str:
    return b.key.label() if b.key == n.key else f"{b.key.label()} -> {n.key.label()}"


def compare_recordings(
    base: Sequence[Recording],
    new: Sequence[Recording],
    *,
    attribute: Attribute | None = attributed_costs,
    model: bool = True,
    alpha: float = ALPHA,
    min_samples: int = MIN_SAMPLES,
    resamples: int = 2000,
    calibration: Calibration | None = None,
    statistic: str = "median",
) -> Comparison:
    """Every phase of every matched group, tested across runs as one family; components and shapes beside.

    calibration: the host's A/A spread, used for rows where a side has one run
    (only if it is of the recordings' host and kernel).
    """
    base_groups, new_groups = group_recordings(base), group_recordings(new)
    pairs, only_base, only_new = _pairs(base_groups, new_groups)
    context = recording_context([r.meta for r in base], [r.meta for r in new])
    warnings = [f"{item.key.upper()} DIFFERS: base {item.base}, new {item.new}" for item in context if item.loud]
    notes: list[str] = []
    if statistic not in STATISTICS:
        raise TracerError(f"the per-run statistic is one of {', '.join(STATISTICS)}, not {statistic!r}")
    if calibration is not None and statistic != "median":
        notes.append(f"not used: the calibration is of per-run medians, these runs are reduced to their {statistic}")
        calibration = None
    calibration = _applicable(calibration, [*base, *new], notes)
    if statistic != "median":
        notes.append(f"each run is reduced to the {statistic} of its forks, not the median")

    run_pairs: list[RunPair] = []
    fork_values: dict[tuple[str, str], tuple] = {}
    components = []
    shapes = []
    labels = []
    tree_sides = []
    separate_series = False  # a group whose sides have runs but are not arms of one series
    for b, n in pairs:
        label = _label(b, n)
        forks_b, forks_n = b.forks, n.forks  # a frame per access: build each once
        fb, fn = forks_b[forks_b["usable"]], forks_n[forks_n["usable"]]
        parent_b = saved_parent(b.recordings[0]) if model else None
        parent_n = saved_parent(n.recordings[0]) if model else None
        labels.append(label)
        if b.key != n.key:
            warnings.append(f"DIFFERENT WORKLOADS PAIRED: base {b.key.label()}, new {n.key.label()}")
        runs_b, runs_n = runs_of(b.recordings), runs_of(n.recordings)
        paired = paired_rounds(runs_b, runs_n)
        separate_series |= not paired and min(len(runs_b), len(runs_n)) >= 2
        for phase in PHASES:
            spread = calibration.spread(phase.name, b.key.vmas) if calibration is not None else None
            run_pairs.append(RunPair(label, phase.name, runs_b, runs_n, spread, paired, statistic))
            fork_values[(label, phase.name)] = (fb[phase.column].to_numpy(float), fn[phase.column].to_numpy(float))
        if attribute is not None:
            components += compare_components(attribute(b.recordings), attribute(n.recordings), label, alpha)
        base_shape = shape_of(fb["leaves"].to_numpy(float), _model_shape(parent_b))
        new_shape = shape_of(fn["leaves"].to_numpy(float), _model_shape(parent_n))
        shapes.append(compare_shapes(label, base_shape, new_shape))
        tree_sides.append(
            (label, (b.recordings, forks_b, model_report(parent_b)), (n.recordings, forks_n, model_report(parent_n)))
        )
    rows = compare_runs(run_pairs, alpha=alpha)
    for pair, row in zip(run_pairs, rows):
        if pair.calibrated is not None:
            row.noise_pct = aa_range_pct(pair.calibrated)
    reasons: dict[str, list[str]] = {}
    for row in rows:
        if not row.decided and row.reason:
            reasons.setdefault(row.reason, []).append(f"{row.group} {row.metric}" if row.group else row.metric)
    for reason, where in reasons.items():
        notes.append(f"undecided ({', '.join(where) if len(where) <= 3 else f'{len(where)} rows'}): {reason}")
    if separate_series:
        notes.append(
            "the sides are not arms of one interleaved series: a drift of the host between the two series "
            "counts as a change, which the runs' spread does not cover (docs/runs.md: separate-series A/A); "
            "for a gate, record both in one command (record --runs N -- A ::: B)"
        )
    used = sorted({p.calibrated.source for p, r in zip(run_pairs, rows) if r.spread == "calibration"})
    if used:
        notes.append("one run a side: the between-run spread is the host's calibration (" + "; ".join(used) + ")")
    if not pairs:
        warnings.append("NO GROUP IN COMMON: nothing was compared")
    comparison = Comparison(
        kind="recordings",
        unit="ns",
        base_files=[str(r.path) for r in base],
        new_files=[str(r.path) for r in new],
        context=context,
        rows=rows,
        components=components,
        shapes=shapes,
        unmatched_base=[g.key.label() for g in only_base],
        unmatched_new=[g.key.label() for g in only_new],
        warnings=warnings,
        notes=notes,
        alpha=alpha,
        min_samples=min_samples,
        groups=labels,
    )
    comparison.values = fork_values
    comparison.calibration = calibration.path if calibration is not None else None
    comparison.algorithm = compare_algorithms(base, new, tree_sides)
    return comparison


def _applicable(calibration: Calibration | None, recordings: Sequence[Recording], notes: list[str]) -> Calibration | None:
    """The calibration if it is of the recordings' host and kernel; else None and a note why."""
    if calibration is None:
        return None
    for rec in recordings:
        host = (rec.meta.get("host") or {}).get("hostname")
        kernel = (rec.meta.get("kernel") or {}).get("release")
        why = calibration.matches(host, kernel)
        if why:
            notes.append(f"not used: {why}")
            return None
    return calibration

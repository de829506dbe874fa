"""`tracer model`: render the replay model for a synthetic, /proc/PID/maps or recorded layout.

run_model() returns the text (or JSON) to print; every input problem becomes a
one-line TracerError.

Which parent tree: a layout alone does not say what history shaped the
parent's tree, so --vmas and --maps build it by top-down mmap order
("mmap_descending"). A recording of the built-in spawn workload does say:
its metadata names the workload (kind "spawn", extra_vmas, layout), so
--recording replays spawn.c's own mmap/munmap/mprotect history
(analysis.model.history) and prints the other build paths' leaf counts beside
it and beside the observed leaves. A recorded process whose history is
unknown (a real application) gets a parent tree with the leaf count its forks
wrote, VMAs spread evenly over the leaves, and the output says how far the
top-down assumption would have been off.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from analysis.recording.layout import Vma
from analysis.model.build import synthetic_layout
from analysis.model.compare import ModelReport, compare_paths, model_leaf_counts
from analysis.model.parent import RecordedTarget, layout_from_maps_text, parent_tree, recording_target
from analysis.model.tree import TreeShape
from analysis.recording import load_recording
from analysis.errors import InputError, TracerError, UsageError
from analysis.files import read_input

__all__ = [
    "run_model",
    "load_maps_layout",
    "load_recording_target",
    "MAX_SYNTHETIC_VMAS",
    "MAX_MAPS_LINES",
]

# Far above vm.max_map_count's default (65530); keeps a typo from running for minutes.
MAX_SYNTHETIC_VMAS = 1_000_000
# --maps: the largest real maps file has vm.max_map_count's highest common setting, 262,144 lines;
# a line is at most an address range, flags, offset, device, inode and a PATH_MAX path.
MAX_MAPS_LINES = 262_144
MAX_MAPS_BYTES = MAX_MAPS_LINES * 256



def run_model(vmas: int | None, gaps: bool, maps: Path | None, recording: Path | None, as_json: bool) -> str:
    """The `tracer model` output for exactly one of --vmas, --maps, --recording."""
    given = [name for name, value in (("--vmas", vmas), ("--maps", maps), ("--recording", recording)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --vmas, --maps, --recording" + (f" (got {', '.join(given)})" if given else ""))
    observed: float | None = None
    extra_vmas: int | None = None
    spawn_layout = "gapped"
    parent = None
    build, reason = "mmap_descending", "a layout alone has no history: top-down mmap order assumed"
    if vmas is not None:
        if vmas < 0 or vmas > MAX_SYNTHETIC_VMAS:
            raise UsageError(f"--vmas must be between 0 and {MAX_SYNTHETIC_VMAS}, not {vmas}")
        layout = synthetic_layout(vmas, gaps=gaps)
        source = f"synthetic: {vmas} one-page VMAs, " + ("a free page between each" if gaps else "adjacent, unmergeable")
    elif maps is not None:
        layout = load_maps_layout(maps)
        source = f"maps: {maps}"
    else:
        assert recording is not None
        target = load_recording_target(recording)
        layout, observed = target.layout, target.observed
        source = f"recording: {recording} ({target.note})"
        chosen = parent_tree(target)
        build, reason, extra_vmas, spawn_layout = chosen.build, chosen.why, chosen.extra_vmas, chosen.spawn_layout
        parent = None if build == "spawn_history" else chosen.tree
    report = compare_paths(
        layout, parent=parent, source=source, parent_build=build, extra_vmas=extra_vmas,
        parent_build_reason=reason, spawn_layout=spawn_layout,
    )
    report.parent_build = build
    if recording is not None:
        others = model_leaf_counts(layout, observed, extra_vmas=extra_vmas, spawn_layout=spawn_layout)
        report.leaf_counts = {"observed_median": observed, "model_parent": report.parent_shape.leaves}
        if build == "observed_leaves":
            report.leaf_counts["observed_leaves"] = report.parent_shape.leaves
        for key in ("spawn_history", "mmap_descending", "bulk_append", "bulk_append_probe_sees"):
            if key in others:
                report.leaf_counts[key] = others[key]
    return _render_json(report) if as_json else _render_text(report)


def load_maps_layout(path: Path) -> list[Vma]:
    """A /proc/PID/maps snapshot as a layout, without gate areas that are not in mm_mt.

    Read from a regular file only (a copy: /proc files are not regular, nor is a FIFO
    or /dev/zero), and only so much of it (MAX_MAPS_BYTES, MAX_MAPS_LINES).
    """
    data = read_input(path, "maps file", MAX_MAPS_BYTES)
    if data.count(b"\n") > MAX_MAPS_LINES:
        raise InputError(f"maps file {path} has more than {MAX_MAPS_LINES:,} lines, more than any real process")
    try:
        text = data.decode()
    except UnicodeDecodeError as err:
        raise InputError(f"maps file {path} is not text: {err.reason} at byte {err.start}") from None
    try:
        return layout_from_maps_text(text, str(path))
    except TracerError as err:
        raise InputError(str(err)) from None


def load_recording_target(path: Path) -> RecordedTarget:
    """The process with the most forks in the recording at `path` (analysis.model.parent.recording_target)."""
    return recording_target(load_recording(path))


# -- rendering ---------------------------------------------------------------------


def _shape_dict(shape: TreeShape) -> dict[str, Any]:
    return {
        "height": shape.height,
        "nodes": shape.nodes,
        "leaves": shape.leaves,
        "internal": shape.internal,
        "nodes_per_level": shape.nodes_per_level,
        "entries": shape.entries,
        "null_slots": shape.null_slots,
        "bytes": shape.bytes,
        "mean_leaf_fill": round(shape.mean_leaf_fill, 2),
        "leaf_fill": {str(k): v for k, v in shape.leaf_fill.items()},
    }


def _render_json(r: ModelReport) -> str:
    doc = {
        "source": r.source,
        "vmas": r.vmas,
        "slots": r.slots,
        "seed_node_estimate": round(r.seed_estimate, 1),
        "parent_build": r.parent_build,
        "parent_build_reason": r.parent_build_reason,
        "shape": {"parent": _shape_dict(r.parent_shape), "old_child": _shape_dict(r.old_child_shape)},
        "new": r.new,
        "old": r.old,
        "side_by_side": [{"metric": m, "new": n, "old": o} for m, n, o in r.rows],
        "leaf_counts": r.leaf_counts,
    }
    return json.dumps(doc, indent=2)


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(  # noqa: E731
        str(c).ljust(w) if i == 0 else str(c).rjust(w) for i, (c, w) in enumerate(zip(cells, widths))
    )
    return [fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def _fmt(v: int | float | None) -> str:
    if v is None:
        return "-"
    return f"{v:,}" if isinstance(v, int) else f"{v:,.1f}"


def _leaf_rows(r: ModelReport) -> list[list[str]]:
    observed = r.leaf_counts.get("observed_median")
    rows = []
    for key, value in r.leaf_counts.items():
        if key == "model_parent":
            continue  # the build path used is marked in its own row
        name = "observed (median)" if key == "observed_median" else key.replace("_", " ")
        if key == r.parent_build:
            name += " (used)"
        diff = "-" if key == "observed_median" or observed is None or value is None else f"{value - observed:+,g}"
        rows.append([name, _fmt(value), diff])
    return rows


def _render_text(r: ModelReport) -> str:
    p, o = r.parent_shape, r.old_child_shape
    out = [
        f"layout: {r.source}",
        f"VMAs {r.vmas:,}, slots S = {r.slots:,} (VMAs + unmapped intervals)",
        f"parent tree: built by {r.parent_build.replace('_', ' ')} (the new path copies it as is)",
        *([f"  why: {r.parent_build_reason}"] if r.parent_build_reason else []),
        "",
        "tree shape",
    ]
    levels = max(p.height, o.height)
    shape_rows = [
        ["height", _fmt(p.height), _fmt(o.height)],
        ["nodes", _fmt(p.nodes), _fmt(o.nodes)],
        ["  leaves", _fmt(p.leaves), _fmt(o.leaves)],
        ["  internal", _fmt(p.internal), _fmt(o.internal)],
    ]
    for d in range(levels):
        shape_rows.append(
            [
                f"  level {d}" + (" (root)" if d == 0 else ""),
                _fmt(p.nodes_per_level[d]) if d < p.height else "-",
                _fmt(o.nodes_per_level[d]) if d < o.height else "-",
            ]
        )
    shape_rows += [
        ["mean leaf fill (slots)", _fmt(p.mean_leaf_fill), _fmt(o.mean_leaf_fill)],
        ["bytes (256 B nodes)", _fmt(p.bytes), _fmt(o.bytes)],
        ["seed estimate (n-1)/15 nodes", _fmt(r.seed_estimate), _fmt(r.seed_estimate)],
    ]
    out += _table(["", "parent (= new child)", "old child (bulk)"], shape_rows)
    out += ["", "leaf fill histogram (slots used: leaves)"]
    fills = sorted(set(p.leaf_fill) | set(o.leaf_fill))
    out += _table(
        ["slots", "parent", "old child"],
        [[str(f), _fmt(p.leaf_fill.get(f, 0)), _fmt(o.leaf_fill.get(f, 0))] for f in fills],
    )
    out += ["", "fork tree work: new path (v6.8+: __mt_dup + replace) vs old (v6.1-v6.7: bulk insert)"]
    out += _table(["", "new", "old"], [[m, _fmt(n), _fmt(v)] for m, n, v in r.rows])
    if r.leaf_counts:
        out += ["", "leaves: recording vs model, per parent build path"]
        out += _table(["", "leaves", "vs observed"], _leaf_rows(r))
    out += ["", "counts are from the replay model (analysis.model), not measured."]
    return "\n".join(out)

"""`tracer model`: render the replay model for a synthetic, /proc/PID/maps or recorded layout.

run_model() returns the text (or JSON) to print; every input problem becomes a
one-line TracerError.
"""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

from analysis.layout import Vma, parse_maps
from analysis.model.build import synthetic_layout
from analysis.model.compare import ModelReport, compare_paths
from analysis.model.tree import TreeShape
from tracer.errors import TracerError, UsageError

__all__ = ["run_model", "load_maps_layout", "load_recording_layout", "MAX_SYNTHETIC_VMAS"]

# Far above vm.max_map_count's default (65530); keeps a typo from running for minutes.
MAX_SYNTHETIC_VMAS = 1_000_000

# Addresses at or above this are not user VMAs in mm->mm_mt (x86-64 [vsyscall] is a gate area).
_GATE_AREAS = ("[vsyscall]",)


def run_model(vmas: int | None, gaps: bool, maps: Path | None, recording: Path | None, as_json: bool) -> str:
    """The `tracer model` output for exactly one of --vmas, --maps, --recording."""
    given = [name for name, value in (("--vmas", vmas), ("--maps", maps), ("--recording", recording)) if value is not None]
    if len(given) != 1:
        raise UsageError("give exactly one of --vmas, --maps, --recording" + (f" (got {', '.join(given)})" if given else ""))
    observed: float | None = None
    observed_note = ""
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
        layout, observed, observed_note = load_recording_layout(recording)
        source = f"recording: {recording} ({observed_note})"
    report = compare_paths(layout, source=source)
    if observed is not None:
        report.leaf_counts = {"observed_median": observed, "model_parent": report.parent_shape.leaves}
    return _render_json(report) if as_json else _render_text(report)


def load_maps_layout(path: Path) -> list[Vma]:
    """A /proc/PID/maps snapshot as a layout, without gate areas that are not in mm_mt."""
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise TracerError(f"cannot read {path}: {getattr(err, 'strerror', None) or err}") from None
    return _layout_from_maps_text(text, str(path))


def _layout_from_maps_text(text: str, what: str) -> list[Vma]:
    try:
        vmas = parse_maps(text)
    except ValueError as err:
        raise TracerError(f"{what} is not a /proc/PID/maps file: {err}") from None
    layout = [v for v in vmas if v.path not in _GATE_AREAS]
    if not layout:
        raise TracerError(f"{what} holds no VMAs")
    return layout


def load_recording_layout(path: Path) -> tuple[list[Vma], float | None, str]:
    """The layout of the process with the most forks in a recording, and its median `leaves`.

    Reads the Parquet metadata directly (pyarrow); to be switched to
    analysis.frame.load_recording() once it exists.
    """
    try:
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
    except (OSError, ValueError) as err:
        raise TracerError(f"cannot read recording {path}: {err}") from None
    except Exception as err:  # pyarrow raises its own ArrowInvalid for non-Parquet files
        raise TracerError(f"{path} is not a Parquet recording: {err}") from None
    meta_raw = (schema.metadata or {}).get(b"forktrace")
    if meta_raw is None:
        raise TracerError(f"{path} has no forktrace metadata: not written by `tracer record`")
    try:
        meta = json.loads(meta_raw)
    except ValueError:
        raise TracerError(f"{path}: forktrace metadata is not valid JSON") from None
    snapshots = meta.get("maps") or []
    if not snapshots:
        raise TracerError(f"{path} holds no /proc/PID/maps snapshot")

    leaves_by_pid: dict[int, list[int]] = {}
    if {"pid", "leaves"} <= set(schema.names):
        table = pq.read_table(path, columns=["pid", "leaves"])
        for pid, leaves in zip(table.column("pid").to_pylist(), table.column("leaves").to_pylist()):
            if leaves:
                leaves_by_pid.setdefault(pid, []).append(leaves)
    pids_with_maps = {s.get("pid") for s in snapshots}
    ranked = sorted((p for p in leaves_by_pid if p in pids_with_maps), key=lambda p: -len(leaves_by_pid[p]))
    if ranked:
        pid = ranked[0]
        snapshot = next(s for s in snapshots if s.get("pid") == pid)
    else:
        snapshot = snapshots[0]
        pid = snapshot.get("pid")
    layout = _layout_from_maps_text(snapshot.get("maps") or "", f"{path} (maps of pid {pid})")
    leaves = leaves_by_pid.get(pid, [])
    observed = statistics.median(leaves) if leaves else None
    note = f"pid {pid} {snapshot.get('comm', '')}".rstrip() + f", {len(leaves)} forks with leaves"
    return layout, observed, note


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


def _render_text(r: ModelReport) -> str:
    p, o = r.parent_shape, r.old_child_shape
    out = [
        f"layout: {r.source}",
        f"VMAs {r.vmas:,}, slots S = {r.slots:,} (VMAs + unmapped intervals)",
        f"parent tree: built by {r.parent_build.replace('_', ' ')} (the new path copies it as is)",
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
        out += ["", "leaves: recording vs model"]
        out += _table(["", "leaves"], [[k.replace("_", " "), _fmt(v)] for k, v in r.leaf_counts.items()])
    out += ["", "counts are from the replay model (analysis.model), not measured."]
    return "\n".join(out)

"""A kernel A/B across v6.8: the two sides build the child's tree by different algorithms.

Before v6.8 dup_mmap() appends each VMA to the child's empty tree in bulk
mode, and most appends emit an ma_write event of their own besides
mas_store()'s (v6.1: mas_wr_node_store() for an append after a gap,
mas_wr_bnode() once the leaf is nearly full; analysis.model.write.
bulk_store_event()); from v6.8 __mt_dup() copies the parent's tree whole
and the VMA loop only replaces entries, one mas_store() each. A per-VMA
probe counts leaves as changes of ma_state->node between mas_store()
events: on the old path a node split is a new node, so the model's
"leaves written" there is what its bulk build would show that probe
(BulkBuild.leaves_seen), not the finished tree's leaf count. A timing difference between
such kernels is an algorithm change, not a regression of one path, so the
comparison shows per group what each side's forks were seen writing beside
the replay model's counts for both paths on that side's layout: a reader
sees which path each kernel ran, and that the model accounts for it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd

from analysis.recording import Recording

__all__ = ["ALGORITHM_NAMES", "AlgorithmChange", "TreeWork", "algorithm_of", "compare_algorithms", "model_report", "tree_work"]

ALGORITHM_NAMES = {
    "mt_dup": "__mt_dup copies the tree, the loop replaces (v6.8+)",
    "bulk_append": "bulk appends build the tree, splitting (v6.1-v6.7)",
    "unknown": "algorithm unknown",
}

# Rows: (label, what the forks were seen doing, the model's count on the old path, on the new path).
# A seen or model value that does not exist for a path is None ("-").
QUANTITIES = (
    "mas_store calls",
    "other ma_write events",
    "leaves written",
    "child tree nodes",
)


@dataclass
class TreeWork:
    """One side of one group: seen per fork (medians) and the model's counts for both paths."""

    algorithm: str
    seen: dict[str, float | None]
    model_old: dict[str, int | None] | None  # None: no layout to model
    model_new: dict[str, int | None] | None
    forks: int


@dataclass
class AlgorithmChange:
    base: str
    new: str
    base_evidence: list[str]
    new_evidence: list[str]
    groups: list[tuple[str, TreeWork, TreeWork]] = field(default_factory=list)

    @property
    def differs(self) -> bool:
        return self.base != self.new


def algorithm_of(recordings: Sequence[Recording]) -> tuple[str, list[str]]:
    """The side's algorithm (name, evidence); 'mixed: a, b' if its files disagree."""
    names, evidence = [], []
    for rec in recordings:
        algo = rec.meta.get("algorithm") if isinstance(rec.meta.get("algorithm"), Mapping) else {}
        name = str(algo.get("name") or "unknown")
        if name not in names:
            names.append(name)
            evidence += [str(e) for e in algo.get("evidence") or []]
    if not names:
        return "unknown", []
    return (names[0] if len(names) == 1 else "mixed: " + ", ".join(names)), evidence


def _median(values: pd.Series) -> float | None:
    values = pd.to_numeric(values, errors="coerce").dropna()
    return float(np.median(values)) if len(values) else None


def seen_per_fork(forks: pd.DataFrame) -> dict[str, float | None]:
    """Medians over usable forks of what the bracket counted inside dup_mmap."""
    usable = forks[forks["usable"]] if "usable" in forks else forks
    stores = usable[["stores", "null_stores", "zero_stores"]].sum(axis=1) if len(usable) else pd.Series(dtype=float)
    return {
        QUANTITIES[0]: _median(stores),
        QUANTITIES[1]: _median(usable["other_writes"]) if "other_writes" in usable else None,
        QUANTITIES[2]: _median(usable["leaves"]) if "leaves" in usable else None,
        QUANTITIES[3]: None,
    }


def model_counts(report: Any) -> tuple[dict[str, int | None], dict[str, int | None]]:
    """(old path, new path) counts from an analysis.model.compare.ModelReport."""
    old, new = report.old, report.new
    old_counts = {
        QUANTITIES[0]: old["stores"],
        QUANTITIES[1]: old["node_store_events"] + old["bnode_events"],
        QUANTITIES[2]: old["leaves_seen"],
        QUANTITIES[3]: report.old_child_shape.nodes,
    }
    new_counts = {
        QUANTITIES[0]: new["ma_write_events"],
        # Only a NULL store (VM_DONTCOPY) can rebuild a node on the new path.
        QUANTITIES[1]: 0 if not new["stores_null"] else None,
        QUANTITIES[2]: new["leaves_written"],
        QUANTITIES[3]: new["nodes_copied"],
    }
    return old_counts, new_counts


def model_report(parent: tuple[Any, Any] | None) -> Any | None:
    """Both paths modelled on a recording's parent (analysis.model.parent.saved_parent), or None."""
    from analysis.errors import TracerError
    from analysis.model.compare import compare_paths

    if parent is None:
        return None
    target, tree = parent
    try:
        return compare_paths(target.layout, parent=tree.tree)
    except (TracerError, ValueError):
        return None


def tree_work(recordings: Sequence[Recording], forks: pd.DataFrame, algorithm: str, report: Any | None) -> TreeWork:
    """One side of one group; report: model_report() of its first recording, or None."""
    old, new = model_counts(report) if report is not None else (None, None)
    usable = int(forks["usable"].sum()) if "usable" in forks else len(forks)
    seen = seen_per_fork(forks)
    if any(rec.meta.get("level") == "fork" for rec in recordings):
        seen = dict.fromkeys(seen)  # --level fork: no per-VMA program counted anything
    return TreeWork(algorithm, seen, old, new, usable)


# One side of one matched group: its recordings, their fork frame, model_report() (or None).
Side = tuple[Sequence[Recording], pd.DataFrame, Any]


def compare_algorithms(
    base: Sequence[Recording], new: Sequence[Recording], pairs: Sequence[tuple[str, Side, Side]]
) -> AlgorithmChange:
    """pairs: (label, base side, new side) as compare_recordings matched and framed them."""
    base_name, base_evidence = algorithm_of(base)
    new_name, new_evidence = algorithm_of(new)
    change = AlgorithmChange(base_name, new_name, base_evidence, new_evidence)
    for label, (b_recs, b_forks, b_report), (n_recs, n_forks, n_report) in pairs:
        change.groups.append(
            (label, tree_work(b_recs, b_forks, base_name, b_report), tree_work(n_recs, n_forks, new_name, n_report))
        )
    return change


def fmt_count(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def table(work_base: TreeWork, work_new: TreeWork) -> list[tuple[str, list[str]]]:
    """(quantity, [base seen, base model old, base model new, new seen, new model old, new model new])."""
    rows = []
    for q in QUANTITIES:
        cells = []
        for w in (work_base, work_new):
            cells += [
                fmt_count(w.seen.get(q)),
                fmt_count((w.model_old or {}).get(q)),
                fmt_count((w.model_new or {}).get(q)),
            ]
        rows.append((q, cells))
    return rows


def _side_dict(w: TreeWork) -> dict[str, Any]:
    return {"algorithm": w.algorithm, "forks": w.forks, "seen": w.seen, "model_bulk_append": w.model_old, "model_mt_dup": w.model_new}


def to_dict(change: AlgorithmChange) -> dict[str, Any]:
    return {
        "base": change.base,
        "new": change.new,
        "differs": change.differs,
        "base_evidence": change.base_evidence,
        "new_evidence": change.new_evidence,
        "groups": [{"group": label, "base": _side_dict(b), "new": _side_dict(n)} for label, b, n in change.groups],
    }

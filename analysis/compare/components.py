"""Per-component comparison: which per-unit cost changed, or whether the tree did.

A phase can get slower because each unit of work got dearer (a node copy, an
edge walked, an entry replaced) or because there is more work (the tree has
another shape). The attribution (analysis/attribution) estimates per-unit
costs with intervals; compare takes them as plain data so it does not depend
on how they were fitted:

    {"copy": {"ns_per_unit": 41.0, "ci95": [38.5, 43.6]}, "fixed": {...}, ...}

and the tree's shape from the recordings (`leaves` the kernel wrote) and, where
a layout was saved, from the replay model (nodes, height, leaves).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from analysis.attribution.components import COMPONENT_UNITS as ATTRIBUTION_UNITS
from analysis.attribution.components import UNIT_DOC
from analysis.compare.stats import ALPHA, IMPROVEMENT, REGRESSION, UNDECIDED, decide
from analysis.errors import TracerError

__all__ = ["COMPONENT_UNITS", "ComponentRow", "ShapeChange", "compare_components", "compare_shapes"]

# What one unit of each attribution component is (printed beside its cost).
COMPONENT_UNITS = {name: "per " + UNIT_DOC[unit].split(" (")[0] for name, unit in ATTRIBUTION_UNITS.items()}

_Z95 = 1.959963984540054


@dataclass
class ComponentRow:
    group: str
    component: str
    unit: str
    base_ns: float
    new_ns: float
    base_ci95: tuple[float, float]
    new_ci95: tuple[float, float]
    delta_pct: float
    ci95_pct: tuple[float, float]  # normal interval of the delta, in percent of base
    p: float  # z test of the difference, from the two intervals
    p_adjusted: float  # Holm over the components compared
    change: str

    @property
    def significant(self) -> bool:
        return self.change in (REGRESSION, IMPROVEMENT)


def _estimate(component: str, side: str, entry: Any) -> tuple[float, tuple[float, float]]:
    """(ns_per_unit, (lo, hi)) from one attribution entry, checked."""
    try:
        value = float(entry["ns_per_unit"])
        lo, hi = (float(x) for x in entry["ci95"])
    except (KeyError, TypeError, ValueError):
        raise TracerError(f"{side} attribution of {component!r} needs ns_per_unit and ci95 [lo, hi]") from None
    if not (math.isfinite(value) and math.isfinite(lo) and math.isfinite(hi)) or not lo <= value <= hi:
        raise TracerError(f"{side} attribution of {component!r}: ci95 [{lo}, {hi}] does not hold {value}")
    return value, (lo, hi)


def compare_components(
    base: Mapping[str, Any] | None,
    new: Mapping[str, Any] | None,
    group: str = "",
    alpha: float = ALPHA,
) -> list[ComponentRow]:
    """Compare per-unit costs present on both sides (others are skipped: nothing to compare).

    Each interval is read as estimate +- 1.96 standard errors (asymmetric ones
    by their half-width); the difference of two independent estimates is
    tested with a z test, and its interval is the difference +- 1.96 of the
    combined standard error. Holm over the components of this group.
    """
    if not base or not new:
        return []
    rows: list[ComponentRow] = []
    for name in [c for c in base if c in new]:
        b, b_ci = _estimate(name, "base", base[name])
        n, n_ci = _estimate(name, "new", new[name])
        se = math.hypot((b_ci[1] - b_ci[0]) / (2 * _Z95), (n_ci[1] - n_ci[0]) / (2 * _Z95))
        diff = n - b
        if se > 0:
            p = math.erfc(abs(diff) / se / math.sqrt(2.0))
        else:
            p = 1.0 if diff == 0 else 0.0
        if b > 0:
            pct, ci = 100.0 * diff / b, (100.0 * (diff - _Z95 * se) / b, 100.0 * (diff + _Z95 * se) / b)
        else:
            pct, ci = math.nan, (math.nan, math.nan)
        rows.append(ComponentRow(group, name, COMPONENT_UNITS.get(name, "per unit"), b, n, b_ci, n_ci, pct, ci, p, math.nan, UNDECIDED))
    for row, (p_adjusted, change) in zip(rows, decide([(r.p, r.base_ns, r.new_ns) for r in rows], alpha)):
        row.p_adjusted, row.change = p_adjusted, change
    return rows


@dataclass
class ShapeChange:
    """The tree the forks copied, on each side: did the work change rather than its price?"""

    group: str
    base: dict[str, float | None]  # leaves (observed median), and model nodes/height/leaves if known
    new: dict[str, float | None]
    changed: list[str]  # the measures that differ

    @property
    def any(self) -> bool:
        return bool(self.changed)


SHAPE_MEASURES = ("leaves_observed", "model_nodes", "model_height", "model_leaves")
# How each measure is named in prose: the kernel's own count first, then the model's.
SHAPE_NAMES = {
    "leaves_observed": "leaves written",
    "model_nodes": "model nodes",
    "model_height": "model height",
    "model_leaves": "model leaves",
}


def compare_shapes(group: str, base: Mapping[str, float | None], new: Mapping[str, float | None]) -> ShapeChange:
    """Measures known on both sides that differ (exactly: these are counts, not timings)."""
    changed = [
        m for m in SHAPE_MEASURES if base.get(m) is not None and new.get(m) is not None and base[m] != new[m]
    ]
    return ShapeChange(group, {m: base.get(m) for m in SHAPE_MEASURES}, {m: new.get(m) for m in SHAPE_MEASURES}, changed)


def shape_of(observed_leaves: Sequence[float], model: Mapping[str, int] | None) -> dict[str, float | None]:
    """One side's shape measures: median observed leaves, and the model's shape if any."""
    import numpy as np

    leaves = [x for x in observed_leaves if x > 0]
    out: dict[str, float | None] = {m: None for m in SHAPE_MEASURES}
    if leaves:
        out["leaves_observed"] = float(np.median(leaves))
    if model:
        out["model_nodes"], out["model_height"], out["model_leaves"] = model["nodes"], model["height"], model["leaves"]
    return out

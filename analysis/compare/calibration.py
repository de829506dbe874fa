"""A host's run-to-run spread per phase, from A/A runs (`tracer calibrate`), as a noise floor.

The spread of a phase is the standard deviation of the log per-run medians of
the runs of one setup, kept per calibrated VMA count (the nearest is used),
with its degrees of freedom. compare uses it where a side has a single run, and says
so. It belongs to one host and kernel: a file from elsewhere is not used.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from analysis.compare.across import MIN_FORKS, Spread
from analysis.compare.runs import Run
from analysis.errors import TracerError
from analysis.recording import PHASES

__all__ = ["CALIBRATION_FILE", "Calibration", "calibrate_runs", "load_calibration", "find_calibration"]

# The name `tracer calibrate` writes into its directory, and compare looks for beside its inputs.
CALIBRATION_FILE = "calibration.json"
KIND = "forktrace-calibration"


@dataclass
class Calibration:
    host: str
    kernel: str
    created: str
    # vmas -> phase -> {sigma, df, runs}
    spreads: dict[int, dict[str, dict[str, float]]] = field(default_factory=dict)
    path: str = ""

    def spread(self, phase: str, vmas: int) -> Spread | None:
        """The phase's spread at the calibrated VMA count nearest `vmas` (on a log scale)."""
        near = [v for v in self.spreads if phase in self.spreads[v]]
        if not near:
            return None
        v = min(near, key=lambda c: (abs(math.log1p(c) - math.log1p(max(vmas, 0))), c))
        s = self.spreads[v][phase]
        name = Path(self.path).name if self.path else CALIBRATION_FILE
        return Spread(float(s["sigma"]), int(s["df"]), f"{name}: {int(s['runs'])} A/A runs at {v} VMAs")

    def matches(self, host: str | None, kernel: str | None) -> str:
        """'' when this calibration applies to recordings of host/kernel, else why not."""
        if host and host != self.host:
            return f"calibration {self.path or CALIBRATION_FILE} is of host {self.host}, not {host}"
        if kernel and kernel != self.kernel:
            return f"calibration {self.path or CALIBRATION_FILE} is of kernel {self.kernel}, not {kernel}"
        return ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": KIND,
            "version": 1,
            "host": self.host,
            "kernel": self.kernel,
            "created": self.created,
            "statistic": "sd of log per-run medians (ddof 1)",
            "spreads": {str(v): phases for v, phases in sorted(self.spreads.items())},
        }


def calibrate_runs(runs_by_vmas: Mapping[int, Sequence[Run]], host: str, kernel: str, created: str) -> Calibration:
    """The spread of each phase among A/A runs, per VMA count (at least 2 runs with MIN_FORKS forks)."""
    cal = Calibration(host, kernel, created)
    for vmas, runs in runs_by_vmas.items():
        for phase in PHASES:
            logs = np.log([r.summary[phase.name].median for r in runs
                           if phase.name in r.summary and r.summary[phase.name].n >= MIN_FORKS
                           and r.summary[phase.name].median > 0])
            if len(logs) >= 2:
                cal.spreads.setdefault(int(vmas), {})[phase.name] = {
                    "sigma": float(logs.std(ddof=1)), "df": len(logs) - 1, "runs": len(logs)}
    return cal


def load_calibration(path: Path | str) -> Calibration:
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise TracerError(f"calibration {path} does not exist") from None
    except (OSError, ValueError) as err:
        raise TracerError(f"calibration {path} is not readable JSON: {err}") from None
    if not isinstance(doc, dict) or doc.get("kind") != KIND or not isinstance(doc.get("spreads"), dict):
        raise TracerError(f"{path} is not a forktrace calibration (tracer calibrate writes one)")
    try:
        spreads = {int(v): {p: {k: float(x) for k, x in s.items()} for p, s in phases.items()}
                   for v, phases in doc["spreads"].items()}
    except (TypeError, ValueError, AttributeError):
        raise TracerError(f"{path}: malformed spreads in the calibration") from None
    return Calibration(str(doc.get("host", "")), str(doc.get("kernel", "")), str(doc.get("created", "")), spreads, str(path))


def find_calibration(inputs: Sequence[Path | str]) -> Path | None:
    """A calibration.json beside the inputs (in an input directory, or a file's directory)."""
    for item in inputs:
        item = Path(item)
        for directory in (item, item.parent) if item.is_dir() else (item.parent,):
            candidate = directory / CALIBRATION_FILE
            if candidate.is_file():
                return candidate
    return None

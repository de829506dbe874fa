"""`tracer calibrate`: this host's run-to-run spread per phase, from A/A runs of the built-in workload.

One tracer process (BPF loaded once) records --runs runs at each VMA count,
the counts interleaved round by round (tracer.record.runs), into DIR; the
spread of each phase's per-run median is saved as DIR/calibration.json
(analysis.compare.calibration). compare uses it for sides of a single run,
given --calibration FILE or finding it beside its inputs.
"""

from __future__ import annotations

import json
import os
import platform
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from analysis.errors import UsageError

__all__ = ["calibrate"]


def calibrate(output: Path, vmas: list[int], runs: int, forks: int, cpu: int | None, log: Callable[[str], None]) -> Path:
    from analysis.compare.calibration import CALIBRATION_FILE, calibrate_runs
    from analysis.compare.runs import runs_of
    from analysis.recording import load_recording
    from tracer.record import RecordOptions, record

    if runs < 3:
        raise UsageError("--runs must be at least 3: a spread from fewer runs is not worth a noise floor")
    if not vmas or any(v < 0 for v in vmas):
        raise UsageError("--vmas takes VMA counts of 0 or more")
    opts = RecordOptions(spawn_vmas=vmas[0], spawn_list=sorted(set(vmas)), forks=forks, runs=runs, output=output,
                         quiet=True, cpu=cpu, cycle=False)
    done = record(opts, log=log)
    by_vmas: dict[int, list] = {}
    for path in done.paths:
        rec = load_recording(path)
        by_vmas.setdefault(int(rec.meta["workload"]["extra_vmas"]), []).append(rec)
    cal = calibrate_runs({v: runs_of(recs) for v, recs in by_vmas.items()}, socket.gethostname(), platform.release(),
                         datetime.now(timezone.utc).isoformat(timespec="seconds"))
    path = Path(output) / CALIBRATION_FILE
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(cal.to_dict(), indent=2) + "\n")
    os.replace(tmp, path)
    return path

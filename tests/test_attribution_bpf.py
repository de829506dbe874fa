"""Attribution over a real small sweep on this host: record, then report over the directory."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import ROOT, TRACER

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

SWEEP = (0, 100, 400)


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep")
    for vmas in SWEEP:
        proc = subprocess.run(
            [*TRACER, "record", "--spawn", str(vmas), "--forks", "300", "--cpu", "0", "--sample", "999", "-q",
             "-o", str(out / f"spawn{vmas}.parquet")],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
        )
        assert proc.returncode == 0, proc.stderr
    return out


def test_report_over_a_real_sweep(sweep_dir):
    proc = subprocess.run([*TRACER, "report", str(sweep_dir), "--format", "json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert [g["vmas"] for g in doc["groups"]] == list(SWEEP)
    assert doc["fit"]["missing"] is None and doc["fit"]["cells"] == len(SWEEP)
    for g in doc["groups"]:
        att = g["attribution"]
        assert att is not None, g["estimates_missing"]
        assert math.isclose(sum(e["share"] for e in att.values()), 1.0, abs_tol=1e-9)
        mc = g["model_check"]
        assert mc["source"] == "spawn_history"
        assert mc["observed_leaves"] == mc["predicted_leaves"], mc
    text = subprocess.run([*TRACER, "report", str(sweep_dir)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "the seed's table measured here" in text.stdout

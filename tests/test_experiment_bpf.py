"""A small real designed experiment on this host: tracer sweep --vary, then tracer fit.

Short on purpose (two factors, two counts, two runs a cell, few forks): it
checks that every run is recorded from one BPF load, that the replay model
replays each variant's history (the leaves the kernel wrote, exactly), and
that the fitted components of each cell sum to the fitted time, which is
set against the measured mean with its residual.
"""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from conftest import ROOT, TRACER

pytestmark = [pytest.mark.bpf, pytest.mark.usefixtures("bpf_host")]

VMAS = (60, 600)


@pytest.fixture(scope="module")
def design_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("design")
    proc = subprocess.run(
        [*TRACER, "sweep", "--vary", "shape,weight", "--vmas", ",".join(map(str, VMAS)), "--runs", "2",
         "--forks", "40", "--sample", "0", "-o", str(out), "--force"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("loading BPF") == 1
    return out


def test_designed_sweep_records_every_run_and_the_model_replays_each(design_dir):
    design = json.loads((design_dir / "design.json").read_text())
    assert len(design["recorded"]) == (4 + 4) * len(VMAS) * 2
    proc = subprocess.run([*TRACER, "fit", str(design_dir), "--format", "json"], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["model_check"]["exact"] == doc["model_check"]["runs"] == len(design["recorded"]), doc["model_check"]
    leaves = {(r["level"], r["extra_vmas"]): r["observed_leaves"] for r in doc["per_vma"] if r["factor"] == "shape"}
    assert leaves[("gapped-scatter", 600)] > leaves[("gapped-ascending", 600)] > leaves[("adjacent", 600)]
    fit = doc["models"]["constant"]
    assert not fit.get("missing"), fit.get("missing")
    for cell in fit["cells"]:
        assert math.isclose(sum(cell["components"].values()), cell["fitted_ns"], rel_tol=1e-9)
        assert cell["measured_ns"] > 0 and cell["residual_pct"] is not None
        # The two windows the bracket times split the measured and the fitted time.
        windows = cell["windows"]
        assert 0 < windows["tree"]["measured_ns"] < cell["measured_ns"], windows
        assert math.isclose(windows["tree"]["measured_ns"] + windows["rest"]["measured_ns"], cell["measured_ns"],
                            rel_tol=1e-9)
        assert math.isclose(windows["tree"]["fitted_ns"] + windows["rest"]["fitted_ns"], cell["fitted_ns"], rel_tol=1e-9)
    # __mt_dup copies ~10x the nodes at 600 extra VMAs: its window takes longer.
    tree = {(c["level"], c["extra_vmas"]): c["windows"]["tree"]["measured_ns"] for c in fit["cells"]}
    assert tree[("gapped-ascending", 600)] > 2 * tree[("gapped-ascending", 60)], tree
    assert (design_dir / "design-fit.txt").read_text().startswith("designed experiment:")


def test_bad_factor_is_one_line_before_bpf(tmp_path):
    proc = subprocess.run([*TRACER, "sweep", "--vary", "colour", "-o", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "unknown factor 'colour'" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1

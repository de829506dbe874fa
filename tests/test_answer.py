"""The report's first screen: the answer (dominant functions, the cycle, the per-VMA curve, how sure).

Synthetic sweeps whose stacks give a function a share that grows with the VMA
count: the answer must name it as growing, mark what its interval cannot tell
with '~', call a cause a hypothesis unless an experiment in the recordings
varied it, and come before the tables.
"""

from __future__ import annotations

import json

import pytest

from analysis.recording import load_recording
from analysis.recording.writer import write_recording
from analysis.report.summary import render_report
from recordings import write_costed

ROOT = "entry_SYSCALL_64_after_hwframe;do_syscall_64;__do_sys_clone;kernel_clone;copy_process;dup_mmap"


def stacks(userfaultfd: int) -> list[dict]:
    """A loop whose dup_userfaultfd share is `userfaultfd` samples against a fixed 1000 of the rest."""
    loop = {"vm_area_dup;kmem_cache_alloc_noprof": 500, "security_vm_enough_memory_mm": 300, "mas_store": 200,
            "dup_userfaultfd": userfaultfd}
    out = [{"stack": f"{ROOT};{b}", "phase": "vma_loop", "count": n} for b, n in loop.items()]
    return out + [{"stack": f"{ROOT};__mt_dup;mas_copy_node", "phase": "mt_dup", "count": 100}]


def sweep(tmp_path, experiment: dict | None = None):
    """Three VMA counts, two runs each; dup_userfaultfd's share grows with the count, per-VMA time is flat."""
    for extra, uffd in ((100, 20), (400, 100), (1600, 400)):
        for run in range(2):
            path = write_costed(tmp_path / f"s{extra}-{run}.parquet", extra, {"stores": 500.0}, 20_000.0, n=80,
                                noise_ns=1_000, seed=extra + run, sample={"hz": 999, "stacks": stacks(uffd), "lost": 0})
            if experiment is not None:
                rec = load_recording(path)
                write_recording(path, rec.forks.to_dict("records"), {**rec.meta, "experiment": experiment})
    return tmp_path


def test_the_answer_names_what_dominates_and_what_grew(tmp_path):
    doc = json.loads(render_report([sweep(tmp_path)], "json"))
    a = doc["answer"]
    top = [r["function"] for r in a["dominant"]["top"]]
    assert top[0] == "vm_area_dup" and {"vm_enough_memory", "mas_store", "dup_userfaultfd"} <= set(top)
    (curve,) = a["curves"]
    seg = curve["segments"][-1]
    assert seg["to_vmas"] > seg["from_vmas"]
    grew = {m["function"]: m for m in seg["grew"]}
    assert grew["dup_userfaultfd"]["measured"], grew
    fell = {m["function"] for m in seg["fell"]}
    assert "vm_area_dup" in fell  # its share fell while the per-VMA total stayed put
    assert seg["cause"]["label"] == "hypothesis" and seg["cause"]["tested_by"] is None
    assert a["sureness"]["runs_per_group"] == [2]
    ph = a["phases"]  # the phase split, of the group with the most VMAs
    assert ph["vmas"] == max(p["vmas"] for p in curve["points"]) or ph["vmas"] >= seg["to_vmas"] - 1
    shares = ph["shares_of_mean"]
    assert 0.0 < sum(shares.values()) <= 1.0 + 1e-9 and max(shares, key=shares.get) == "vma_loop"


def test_the_answer_comes_first_and_fits_a_screen(tmp_path):
    text = render_report([sweep(tmp_path)], "text")
    lines = text.splitlines()
    start = lines.index("the answer (details follow)")
    end = lines.index("the evidence")
    assert start <= 2 and end - start <= 45, end - start
    answer = "\n".join(lines[start:end])
    assert "hypothesis" in answer and "no designed experiment" in answer
    assert "dup_userfaultfd +" in answer
    assert max(len(line) for line in lines[start:end]) <= 100
    md = render_report([tmp_path], "markdown")
    assert md.index("## The answer") < md.index("## The evidence") < md.index("### The seed's table")


def test_a_cause_is_labelled_by_the_experiments_the_recordings_carry(tmp_path):
    a = json.loads(render_report([sweep(tmp_path, experiment={"vary": "cache", "cache": "evicted"})], "json"))["answer"]
    assert a["experiments"] == ["cache=evicted, vary=cache"]
    cause = a["curves"][0]["segments"][-1]["cause"]
    assert cause["label"] != "hypothesis" and cause["tested_by"] == ["cache=evicted, vary=cache"]


def test_without_samples_the_answer_says_how_to_get_one(tmp_path):
    path = write_costed(tmp_path / "plain.parquet", 400, {"stores": 500.0}, 20_000.0, n=40)
    a = json.loads(render_report(path, "json"))["answer"]
    assert "record with --level full" in a["missing"]
    assert "record with --level full" in " ".join(render_report(path, "text").split())


def test_one_recording_says_there_is_no_curve(tmp_path):
    path = write_costed(tmp_path / "one.parquet", 400, {"stores": 500.0}, 20_000.0, n=40,
                        sample={"hz": 999, "stacks": stacks(50), "lost": 0})
    text = render_report(path, "text")
    assert text.splitlines()[2] == "the answer (details follow)"
    assert "one VMA count only" in text
    assert "no run-to-run variation" in " ".join(text.split())

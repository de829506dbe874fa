"""A kernel A/B across v6.8: compare names the algorithm change and sets the events seen beside the model."""

from __future__ import annotations

import json

from analysis.compare import compare_recordings
from analysis.compare.algorithm import QUANTITIES
from analysis.compare.render import render_json, render_markdown, render_text
from analysis.model.compare import compare_paths
from analysis.model.parent import recording_target
from analysis.model.parent import parent_tree
from analysis.recording import load_recording
from analysis.recording.writer import write_recording
from recordings import MONO_BASE_NS, default_metadata, fork_rows, spawn_maps

EXTRA = 120
OLD = {"name": "bulk_append", "evidence": ["__mt_dup not in kallsyms"]}
NEW = {"name": "mt_dup", "evidence": ["__mt_dup in kallsyms"]}


def spawn_recording(path, algorithm, kernel, *, other_writes, leaves, n=30, vma_step_ns=600.0):
    maps = spawn_maps(EXTRA)
    workload = {"kind": "spawn", "pid": 4242, "extra_vmas": EXTRA, "forks": n, "layout": "gapped"}
    rows = fork_rows(n, vmas=EXTRA + 7, vma_step_ns=vma_step_ns, leaves=leaves)
    for row in rows:
        row["other_writes"] = other_writes
    meta = default_metadata(
        rows,
        workload=workload,
        algorithm=algorithm,
        kernel={"release": kernel, "version": "#1", "machine": "x86_64"},
        maps=[{"pid": 4242, "comm": "spawn", "ts_mono_ns": MONO_BASE_NS, "maps": maps}],
    )
    write_recording(path, rows, meta)
    return load_recording(path)


def model_of(path):
    target = recording_target(load_recording(path))
    return compare_paths(target.layout, parent=parent_tree(target).tree)


def test_an_algorithm_change_is_shown_with_the_model_for_both_paths(tmp_path):
    base_path, new_path = tmp_path / "v6.1.parquet", tmp_path / "v6.12.parquet"
    model = model_of(spawn_recording(base_path, OLD, "6.1.0-50-amd64", other_writes=0, leaves=1).path)
    # v6.1's extra ma_write events (mas_wr_node_store, mas_wr_bnode) and the leaves a probe sees there.
    extra = model.old["node_store_events"] + model.old["bnode_events"]
    assert extra > model.old["stores_split"] > 0  # most appends trace; the bulk build splits on this layout
    base = spawn_recording(base_path, OLD, "6.1.0-50-amd64", other_writes=extra, leaves=model.old["leaves_seen"])
    new = spawn_recording(new_path, NEW, "6.12.95-amd64", other_writes=0, leaves=model.new["leaves_written"],
                          vma_step_ns=500.0)

    c = compare_recordings([base], [new], attribute=None, resamples=200)

    assert c.algorithm.differs and (c.algorithm.base, c.algorithm.new) == ("bulk_append", "mt_dup")
    (label, b, n), = c.algorithm.groups
    assert b.seen[QUANTITIES[1]] == extra == b.model_old[QUANTITIES[1]]  # seen = bulk model
    assert n.seen[QUANTITIES[1]] == 0 == n.model_new[QUANTITIES[1]]
    assert b.seen[QUANTITIES[2]] == b.model_old[QUANTITIES[2]] and n.seen[QUANTITIES[2]] == n.model_new[QUANTITIES[2]]
    assert b.seen[QUANTITIES[0]] == EXTRA + 7 and b.model_old[QUANTITIES[0]] == model.old["stores"]
    assert n.model_new[QUANTITIES[3]] == model.new["nodes_copied"]  # __mt_dup copies the parent's nodes
    assert "different algorithms (bulk_append -> mt_dup)" in c.verdict.text

    text = render_text(c)
    assert "tree work per fork" in text and "bulk appends" in text and "__mt_dup" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    assert any(line.strip().startswith("other ma_write") and f"{extra:,}" in line for line in text.splitlines())
    context = {line.split()[1]: line for line in text.splitlines() if line.startswith("* ")}
    assert "algorithm" in context
    assert "Tree work per fork" in render_markdown(c)
    doc = json.loads(render_json(c))
    assert doc["algorithm"]["groups"][0]["base"]["seen"][QUANTITIES[1]] == extra


def test_same_algorithm_shows_no_tree_work_section(tmp_path):
    a = spawn_recording(tmp_path / "a.parquet", NEW, "6.12.95-amd64", other_writes=0, leaves=10)
    b = spawn_recording(tmp_path / "b.parquet", NEW, "6.12.95-amd64", other_writes=0, leaves=10)
    c = compare_recordings([a], [b], attribute=None, resamples=200)
    assert not c.algorithm.differs
    assert "tree work per fork" not in render_text(c) and "different algorithms" not in c.verdict.text


def test_fork_level_recordings_show_no_counts_rather_than_zeros(tmp_path):
    a = spawn_recording(tmp_path / "a.parquet", OLD, "6.1.0-50-amd64", other_writes=0, leaves=10)
    b = spawn_recording(tmp_path / "b.parquet", NEW, "6.12.95-amd64", other_writes=0, leaves=10)
    a.meta["level"] = "fork"
    c = compare_recordings([a], [b], attribute=None, resamples=200)
    (_, base, new), = c.algorithm.groups
    assert all(v is None for v in base.seen.values()) and new.seen[QUANTITIES[0]] == EXTRA + 7

"""The model check of one recording: the leaves the kernel wrote beside the leaves the model predicts.

Only a known history predicts anything: for the spawn workload the model
replays spawn.c's history and its leaf count must equal the observed one. A
process of unknown history has no prediction (its tree is built from the
observation, so comparing would check nothing); `predicted_leaves` is None then.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from analysis.model.render import load_recording_target
from analysis.model.parent import parent_tree

__all__ = ["model_check"]


def model_check(path: Path | str) -> dict[str, Any]:
    """{observed_leaves, predicted_leaves, parent_build, reason} for the recording's main process."""
    target = load_recording_target(Path(path))
    chosen = parent_tree(target)
    predicted = chosen.tree.shape().leaves if chosen.build == "spawn_history" else None
    return {"observed_leaves": target.observed, "predicted_leaves": predicted, "parent_build": chosen.build, "reason": chosen.why}

"""The probes of one run, behind the one interface Session polls.

The bracket (dup_mmap) is always loaded; the cycle probe (clone, exit_mmap,
wait) when asked for. Both get the same targets; polling waits on the
bracket's ring buffer and drains the cycle's, which never wakes the reader.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tracer.probes.bracket import BracketProbe
from tracer.probes.cycle import CycleProbe

__all__ = ["ProbeSet"]


@dataclass
class ProbeSet:
    bracket: BracketProbe
    cycle: CycleProbe | None = None

    def add_targets(self, tgids: Iterable[int]) -> None:
        tgids = list(tgids)
        self.bracket.add_targets(tgids)
        if self.cycle is not None:
            self.cycle.add_targets(tgids)

    def poll(self, timeout_ms: int = 100) -> None:
        self.bracket.poll(timeout_ms)
        if self.cycle is not None:
            self.cycle.drain()

    def counters(self) -> dict[str, int]:
        """The bracket's counters (the cycle's go to the recording's `cycle` entry)."""
        return self.bracket.counters()

    def sampled_stacks(self) -> list[dict]:
        return self.bracket.sampled_stacks()

"""The probes of one run, behind the one interface Session polls.

The bracket (dup_mmap) is always loaded; the cycle probe (clone, exit_mmap,
wait) when asked for; the exact probes (fentry/kprobe on dup_mmap and its
callees) where the kernel allows them. All get the same targets; polling
waits on the bracket's ring buffer and drains the others, which never wake
the reader. One object keeps the optional probes without a branch at every
step of Session's loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tracer.probes.bracket import BracketProbe
from tracer.probes.cycle import CycleProbe
from tracer.probes.exact import ExactProbe

__all__ = ["ProbeSet"]


@dataclass
class ProbeSet:
    bracket: BracketProbe
    cycle: CycleProbe | None = None
    exact: ExactProbe | None = None

    def load(self) -> "ProbeSet":
        """Load every probe, or none: one that fails closes those already loaded."""
        # Exact first: it is the one most likely refused (fentry, kprobes), and
        # then nothing else is loaded yet to undo.
        try:
            if self.exact is not None:
                self.exact.load()
            self.bracket.load()
            if self.cycle is not None:
                self.cycle.load()
        except BaseException:
            self.close()
            raise
        return self

    def route(self, on_dup, on_child, on_exact) -> None:
        """Send the records to another run's session (record --runs: the probes stay loaded)."""
        self.bracket.on_dup, self.bracket.on_child = on_dup, on_child
        if self.exact is not None:
            self.exact.on_event = on_exact

    def new_run(self, inject_store_ns: int = 0) -> None:
        """Before each run: no targets, no stacks or cycle records of the last one, counters from here.

        inject_store_ns: the test-only cost bracket.c spins per store (a build with INJECT_STORE).
        """
        self._base = {"bracket": self.bracket.counters(), "cycle": self.cycle.counters() if self.cycle else {},
                      "exact": self.exact.counters() if self.exact else {}}
        self.bracket.new_run(inject_store_ns)
        if self.cycle is not None:
            self.cycle.new_run()
        if self.exact is not None:
            self.exact.new_run()

    def _since(self, part: str, now: dict[str, int]) -> dict[str, int]:
        base = getattr(self, "_base", {}).get(part, {})
        return {k: v - base.get(k, 0) for k, v in now.items()}

    def add_targets(self, tgids: Iterable[int]) -> None:
        tgids = list(tgids)
        self.bracket.add_targets(tgids)
        if self.cycle is not None:
            self.cycle.add_targets(tgids)
        if self.exact is not None:
            self.exact.add_targets(tgids)

    def poll(self, timeout_ms: int = 100) -> None:
        self.bracket.poll(timeout_ms)
        if self.cycle is not None:
            self.cycle.drain()
        if self.exact is not None:
            self.exact.poll(0)

    def counters(self) -> dict[str, int]:
        """The bracket's counters (the cycle's go to the recording's `cycle` entry, the exact ones to `exact`)."""
        return self._since("bracket", self.bracket.counters())

    def cycle_counters(self) -> dict[str, int]:
        """Read while loaded; the cycle's records outlive close(), its counters do not."""
        return self._since("cycle", self.cycle.counters()) if self.cycle is not None else {}

    def exact_counters(self) -> dict[str, int] | None:
        return self._since("exact", self.exact.counters()) if self.exact is not None else None

    def exact_missed(self) -> dict[str, object] | None:
        return self.exact.missed() if self.exact is not None else None

    def sampled_stacks(self) -> list[dict]:
        return self.bracket.sampled_stacks()

    def close(self) -> None:
        """Close every probe; each close is safe on one that never loaded."""
        if self.exact is not None:
            self.exact.close()
        if self.cycle is not None:
            self.cycle.close()
        self.bracket.close()

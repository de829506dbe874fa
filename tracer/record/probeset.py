"""The bracket and, where the kernel allows, exact probes: loaded, fed and polled as one.

Session drives one object; this keeps the exact probes optional without a
branch at every step of the loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

from tracer.probes.bracket import BracketProbe
from tracer.probes.exact import ExactProbe

__all__ = ["ProbeSet"]


@dataclass
class ProbeSet:
    bracket: BracketProbe
    exact: ExactProbe | None = None

    def load(self) -> "ProbeSet":
        # Exact first: if it cannot attach, nothing else is loaded yet to undo.
        if self.exact is not None:
            self.exact.load()
        try:
            self.bracket.load()
        except BaseException:
            self.close()
            raise
        return self

    def add_targets(self, tgids: Iterable[int]) -> None:
        tgids = list(tgids)
        self.bracket.add_targets(tgids)
        if self.exact is not None:
            self.exact.add_targets(tgids)

    def poll(self, timeout_ms: int = 100) -> None:
        self.bracket.poll(timeout_ms)
        if self.exact is not None:
            self.exact.poll(0)

    def counters(self) -> dict[str, int]:
        """The bracket's counters (the exact ones are in exact_counters())."""
        return self.bracket.counters()

    def exact_counters(self) -> dict[str, int] | None:
        return self.exact.counters() if self.exact is not None else None

    def exact_missed(self) -> dict[str, object] | None:
        return self.exact.missed() if self.exact is not None else None

    def sampled_stacks(self) -> list[dict]:
        return self.bracket.sampled_stacks()

    def close(self) -> None:
        if self.exact is not None:
            self.exact.close()
        self.bracket.close()

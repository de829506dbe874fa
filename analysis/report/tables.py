"""One table, two renderings: aligned text (kernel-tool style) or a Markdown pipe table."""

from __future__ import annotations

from typing import Sequence

__all__ = ["render_table"]


def render_table(
    header: Sequence[str], rows: Sequence[Sequence[str]], fmt: str = "text", left: Sequence[int] = (0,)
) -> list[str]:
    """Columns `left` (the first) left-aligned, the others right-aligned; Markdown when fmt == 'markdown'."""
    header = [str(h) for h in header]
    rows = [[str(c) for c in r] for r in rows]
    if fmt == "markdown":
        out = ["| " + " | ".join(header) + " |", "|" + "|".join(":---" if i in left else "---:" for i in range(len(header))) + "|"]
        return out + ["| " + " | ".join(r) + " |" for r in rows]
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]

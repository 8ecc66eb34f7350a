"""Markdown tables: the one writer behind the model card, the assets' metadata and the bench reports.
Only the standard library is imported: every module may import this one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, one line per row, with no padding: a cell is `str(cell)`, None
    an empty cell. Cells are not escaped (a `|` in one splits it)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)

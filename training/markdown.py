"""Markdown tables: the one writer behind the model card, the assets' metadata and the bench reports.
Only the standard library is imported: every module may import this one."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A GitHub-flavoured Markdown table, one line per row, with no padding: a cell is `str(cell)`, None
    an empty cell; a `|` in a cell is escaped and a line break becomes a space, so text from the data
    (a rejection's detail, a file name) never splits a cell or ends the table."""
    lines = ["| " + " | ".join(map(_cell, headers)) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _cell(value: object) -> str:
    return "" if value is None else " ".join(str(value).replace("|", "\\|").splitlines())

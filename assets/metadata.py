"""Small helpers that turn the library's plain stats into Dagster metadata."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import dagster as dg


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MarkdownMetadataValue:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return dg.MetadataValue.md("\n".join(lines))

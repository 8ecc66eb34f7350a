"""Small helpers that turn the library's plain stats into Dagster metadata."""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg

from training.markdown import markdown_table


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MarkdownMetadataValue:
    """`training.markdown.markdown_table` as Dagster metadata."""
    return dg.MetadataValue.md(markdown_table(headers, rows))


def md_image(path: Path | None, alt: str, missing: str) -> dg.MarkdownMetadataValue:
    """A PNG inlined as a base64 data URI, which the UI renders in the materialization's metadata
    with no file server; `missing` when there is no picture."""
    if path is None or not path.is_file():
        return dg.MetadataValue.md(missing)
    return dg.MetadataValue.md(f"![{alt}](data:image/png;base64,{base64.b64encode(path.read_bytes()).decode()})")

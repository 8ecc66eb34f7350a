"""Small helpers that turn the library's plain stats into Dagster metadata."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterable, Sequence
from pathlib import Path

import dagster as dg
from PIL import Image

from training.markdown import markdown_table

THUMBNAIL_PIXELS = 360
"""The longest side of the picture inlined in a materialization's metadata: enough to see a plot's
shape in the UI; the full picture stays on disk, named beside it."""
THUMBNAIL_COLOURS = 16
"""Plots are a few flat colours: a 16-colour palette keeps them recognisable at a third of the bytes."""
MAX_INLINE_BYTES = 8 * 1024
"""The most one picture adds to Dagster's event log (its markdown, thumbnail included): every
materialization's metadata stays in the instance's database for good, one per batch at thousands of
batches. A thumbnail that would be larger is halved until it fits."""


def md_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> dg.MarkdownMetadataValue:
    """`training.markdown.markdown_table` as Dagster metadata."""
    return dg.MetadataValue.md(markdown_table(headers, rows))


def md_image(path: Path | None, alt: str, missing: str) -> dg.MarkdownMetadataValue:
    """A thumbnail of the PNG at `path` inlined as a data URI (the UI renders it with no file server),
    then the full picture's path; at most MAX_INLINE_BYTES in all. `missing` when there is no picture."""
    if path is None or not path.is_file():
        return dg.MetadataValue.md(missing)
    link = f"\n\nfull picture: `{path}`"
    with Image.open(path) as image:  # Pillow refuses decompression bombs (Image.MAX_IMAGE_PIXELS)
        rgba = image.convert("RGBA")
    flat = Image.new("RGB", rgba.size, "white")
    flat.paste(rgba, mask=rgba)
    side = THUMBNAIL_PIXELS
    while side >= 16:
        thumbnail = flat.copy()
        thumbnail.thumbnail((side, side))
        buffer = io.BytesIO()
        thumbnail.quantize(colors=THUMBNAIL_COLOURS).save(buffer, "PNG", optimize=True)
        markdown = f"![{alt}](data:image/png;base64,{base64.b64encode(buffer.getvalue()).decode()}){link}"
        if len(markdown.encode()) <= MAX_INLINE_BYTES:
            return dg.MetadataValue.md(markdown)
        side //= 2
    return dg.MetadataValue.md(f"{alt}: no thumbnail fits the metadata{link}")

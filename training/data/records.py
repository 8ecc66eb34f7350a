"""The record every cleaning step passes along, and the Parquet files kept and rejected records go to.

One schema for all modalities keeps the later stages uniform: `text` holds the document, the source
file or the caption, so difficulty scoring and tokenization read one column whatever the modality.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

MODALITIES = ("text", "code", "image_text")
REDACTED_TYPES = ("email", "phone", "ip", "card", "secret")
"""The kinds of personal data `training/data/filters/pii.py` redacts, in the order they are reported."""


class Reject(NamedTuple):
    reason: str
    """Machine-readable, e.g. `entropy_low`; the metadata counts by it."""
    detail: str = ""
    """For people: the value against the bound, the parser's message."""


@dataclass
class Record:
    id: str
    modality: str
    source: str
    """Path inside the landing zone, starting with the batch: `batch-7/text/a.jsonl:12`."""
    text: str | None = None
    language: str | None = None
    """ISO 639-1 code for text (py3langid's three-letter code where a language has none), the
    Tree-sitter grammar for code; None for captions and records rejected before identification."""
    entropy: float | None = None
    clip_score: float | None = None
    reject: Reject | None = None
    redactions: dict[str, int] | None = None
    """Personal data replaced by placeholders in `text`, counted by type; None when nothing was."""
    metadata: str | None = None
    """What the landing file said about the record beside its content, as a JSON object: a shard
    sample's `.json` member (url, original size, ...), a code row's path. None when nothing."""
    # Image pairs only; never written out.
    image_path: Path | None = field(default=None, repr=False)
    image_bytes: bytes | None = field(default=None, repr=False)
    """The encoded image when it lies inside a landing file (a shard member, a Parquet value), not
    at `image_path`; `ImageDecode` decodes it and lets it go."""
    image: Any = field(default=None, repr=False)
    expected_match: bool | None = None
    """Ground truth from an optional `"match"` field in captions.jsonl, used to measure the CLIP filter."""

    @property
    def batch(self) -> str:
        return self.source.split("/", 1)[0]


KEPT_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("batch", pa.string()),
        ("modality", pa.string()),
        ("source", pa.string()),
        ("text", pa.large_string()),
        ("language", pa.string()),
        ("entropy", pa.float32()),
        ("clip_score", pa.float32()),
        # A struct, not a map or JSON: fixed, typed fields that polars and pyarrow read as columns
        # (`pl.col("redactions").struct.field("email")`, `.struct.unnest()`), summed without parsing.
        ("redactions", pa.struct([(t, pa.int32()) for t in REDACTED_TYPES])),
        ("metadata", pa.large_string()),
    ]
)
REJECTED_SCHEMA = KEPT_SCHEMA.append(pa.field("reason", pa.string())).append(pa.field("detail", pa.string()))


class RecordWriter:
    """Streams records into one Parquet file, a row group per `write` call."""

    def __init__(self, path: Path, rejected: bool):
        self.schema = REJECTED_SCHEMA if rejected else KEPT_SCHEMA
        self.rejected = rejected
        self.rows = 0
        self.text_bytes = 0
        """UTF-8 bytes of `text` written: how much a batch adds to the corpus (the retraining policy)."""
        self.languages: Counter = Counter()
        """Rows written by `language` (rows without one are not counted)."""
        self.redactions: Counter = Counter()
        """Placeholders written, by type."""
        self._writer = pq.ParquetWriter(path, self.schema, compression="zstd")

    def write(self, records: list[Record]) -> None:
        if not records:
            return
        cols: dict[str, list[Any]] = {
            "id": [r.id for r in records],
            "batch": [r.batch for r in records],
            "modality": [r.modality for r in records],
            "source": [r.source for r in records],
            "text": [r.text for r in records],
            "language": [r.language for r in records],
            "entropy": [r.entropy for r in records],
            "clip_score": [r.clip_score for r in records],
            "redactions": [r.redactions for r in records],
            "metadata": [r.metadata for r in records],
        }
        if self.rejected:
            cols["reason"] = [r.reject.reason for r in records]  # type: ignore[union-attr]
            cols["detail"] = [r.reject.detail for r in records]  # type: ignore[union-attr]
        table = pa.table(cols, schema=self.schema)
        self._writer.write_table(table)
        self.rows += len(records)
        self.languages.update(r.language for r in records if r.language is not None)
        for r in records:
            if r.redactions:
                self.redactions.update(r.redactions)
        self.text_bytes += pc.sum(pc.binary_length(table["text"])).as_py() or 0

    def close(self) -> None:
        self._writer.close()

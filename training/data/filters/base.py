"""The one interface every cleaning filter has.

A filter has a short `name` and is called on a chunk of records; it returns, for each record, None
to keep it or a `Reject` with a machine-readable reason. It may annotate the records it sees (the
entropy, the CLIP score) so kept and rejected rows carry the value the decision was made on. The
runner (`training.data.clean`) does the chunking, ordering, counting and writing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence

from training.data.records import Record, Reject

Verdict = Reject | None


class Filter:
    name: str = "filter"

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        return [self.check(r) for r in records]

    def check(self, record: Record) -> Verdict:
        """Per-record filters override this; batched ones (CLIP) override `__call__`."""
        raise NotImplementedError


class Unique(Filter):
    """Keeps the first record for each key; later ones are rejected with `reason`. `seen` carries the
    keys of earlier batches so "first" holds across the landing zone, not only inside one batch."""

    def __init__(self, name: str, key: Callable[[Record], bytes | str], reason: str, seen: Iterable[bytes | str] = ()):
        self.name, self.key, self.reason = name, key, reason
        self.first: dict[bytes | str, str] = dict.fromkeys(seen, "an earlier batch")

    def check(self, record: Record) -> Verdict:
        k = self.key(record)
        if k in self.first:
            return Reject(self.reason, f"first seen at {self.first[k]}")
        self.first[k] = record.source
        return None


def content_key(record: Record) -> bytes:
    return hashlib.blake2b((record.text or "").encode("utf-8"), digest_size=16).digest()


def id_key(record: Record) -> str:
    return record.id


def dedup_filters(seen_content: Iterable[bytes] = (), seen_ids: Iterable[str] = ()) -> list[Filter]:
    """Exact duplicates by content, then repeated ids; both keep the first occurrence."""
    return [
        Unique("dedup", content_key, "duplicate", seen_content),
        Unique("unique_id", id_key, "duplicate_id", seen_ids),
    ]

"""The compact per-batch indexes `build_corpus` checks a new batch against, instead of the earlier
batches' records: sorted key files, and the `source` of one kept row when a rejection names it.

A key file is a 2-D uint64 `.npy`, one row per key: the key (one or two 64-bit words), then the row of
the kept record it belongs to in its batch's corpus Parquet; sorted by key. It is written once, when
its batch is deduplicated, and read in blocks with sorted queries (a merge join: each block is a range
of keys, so it is searched only for the queries in that range). Read, not memory-mapped: the pages of
a mapping read through would count as resident, and a lookup of many keys reads every page anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

BLOCK_ROWS = 1 << 18
"""Key rows read at a time: 4-6 MB, whatever the size of the batch or of the corpus."""


@dataclass
class Reads:
    """What deduplicating new batches read of the earlier ones, per modality (`CorpusReport.reads`)."""

    key_files: int = 0
    key_bytes: int = 0
    signatures: int = 0
    """Signatures of earlier kept records read back: only those of candidates sharing an LSH key."""
    sources: int = 0
    """Earlier kept records whose `source` was read from the corpus Parquet, for a rejection's detail."""
    text_records: int = 0
    """Earlier batches' records read as text: none, they are matched by their keys (the figure is
    here so that the asset's metadata states it)."""


def id_digest(record_id: str) -> bytes:
    """A record id's key in a key file: blake2b-128, personalized so that ids and content hashes
    (`content_digest`), which share the file, never meet."""
    return hashlib.blake2b(record_id.encode("utf-8"), digest_size=16, person=b"kiln.id").digest()


def words(digests: Sequence[bytes]) -> np.ndarray:
    """16-byte digests as two uint64 words each, (n, 2)."""
    return np.frombuffer(b"".join(digests), ">u8").astype(np.uint64).reshape(len(digests), 2)


def sort_keys(table: np.ndarray) -> np.ndarray:
    """The rows of a key table (key words..., row) in key order."""
    order = np.lexsort(table[:, -2::-1].T) if table.shape[1] > 2 else np.argsort(table[:, 0], kind="stable")
    return table[order]


def save(path: Path, table: np.ndarray) -> None:
    """Write a key table, sorted, to `path` (a temporary path: the caller renames it into place)."""
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(sort_keys(table), np.uint64))


def find_sorted(table: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(query index, row) of every entry of a sorted key table equal to a query (queries: the key words)."""
    first = np.ascontiguousarray(table[:, 0])
    lo, hi = np.searchsorted(first, queries[:, 0], "left"), np.searchsorted(first, queries[:, 0], "right")
    n = hi - lo
    q = np.repeat(np.arange(len(queries)), n)
    pos = np.repeat(lo - (np.cumsum(n) - n), n) + np.arange(len(q))
    same = (table[pos, 1:-1] == queries[q, 1:]).all(axis=1)
    return q[same], table[pos[same], -1].astype(np.int64)


def find(paths: Sequence[Path], queries: np.ndarray, reads: Reads, block_rows: int = BLOCK_ROWS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(query index, file index, row) of every entry equal to a query in the key files `paths`, each
    read block by block: memory is a block and the queries, whatever the files' size."""
    order = np.argsort(queries[:, 0], kind="stable")
    queries, firsts = queries[order], queries[order, 0]
    found: list[tuple[np.ndarray, ...]] = [(np.zeros(0, np.int64),) * 3]
    for i, path in enumerate(paths):
        with open(path, "rb") as f:
            read_header = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}[np.lib.format.read_magic(f)]
            (rows, width), fortran, dtype = read_header(f)
            if dtype != np.uint64 or fortran or width != queries.shape[1] + 1:
                raise ValueError(f"{path}: not a key file of {queries.shape[1]}-word keys")
            reads.key_files += 1
            for start in range(0, rows, block_rows):
                n = min(block_rows, rows - start)
                block = np.frombuffer(f.read(n * width * 8), np.uint64).reshape(n, width)
                reads.key_bytes += block.nbytes
                # The block holds the keys from its first to its last: only those queries can match in it.
                a, b = np.searchsorted(firsts, block[0, 0], "left"), np.searchsorted(firsts, block[-1, 0], "right")
                q, r = find_sorted(block, queries[a:b])
                found.append((order[a + q], np.full(len(q), i), r))
    return tuple(np.concatenate(parts) for parts in zip(*found))  # type: ignore[return-value]


class Runs:
    """Sorted key tables in memory: the batch being deduplicated, as it grows. A new table merges
    with the last one while that one is no larger, so few tables are searched and each key is sorted
    again only a few times (an LSM tree's runs)."""

    def __init__(self, width: int):
        self.width, self.tables = width, []

    def add(self, table: np.ndarray) -> None:
        table = sort_keys(table)
        while self.tables and len(self.tables[-1]) <= len(table):
            table = sort_keys(np.concatenate((self.tables.pop(), table)))
        self.tables.append(table)

    def find(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        found = [find_sorted(t, queries) for t in self.tables] or [(np.zeros(0, np.int64),) * 2]
        return np.concatenate([q for q, _ in found]), np.concatenate([r for _, r in found])

    def table(self) -> np.ndarray:
        return np.concatenate([np.zeros((0, self.width), np.uint64), *self.tables])


def sources(corpus: Path, rows: np.ndarray, reads: Reads) -> list[str]:
    """The `source` of kept rows of a corpus Parquet file, reading only the row groups that hold them."""
    f = pq.ParquetFile(corpus)
    starts = np.cumsum([0] + [f.metadata.row_group(g).num_rows for g in range(f.num_row_groups)])
    groups = np.searchsorted(starts, rows, side="right") - 1
    out = [""] * len(rows)
    for g in np.unique(groups):
        column = f.read_row_group(int(g), columns=["source"])["source"]
        for i in np.flatnonzero(groups == g):
            out[i] = column[int(rows[i] - starts[g])].as_py()
    reads.sources += len(rows)
    return out

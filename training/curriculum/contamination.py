"""Decontamination: which training records share an n-gram of words with a held-out record.

Held-out perplexity measures generalisation only if no training record contains held-out text; a
docstring that is a text record and also sits inside a held-out code file turns it into a measure of
memorisation. Two records overlap when they share n consecutive words (n = 13, as GPT-3's
decontamination and lm-evaluation-harness use). Words are kiln's words (the text filter's `WORD`:
runs of letters/digits, one Han/kana character each), lowercased, so differences of case,
punctuation and whitespace still match.

A record of fewer than n words (most captions) has one fingerprint, its whole word sequence: it
overlaps only a record made of the same words (a caption repeated verbatim). A phrase of under n
words inside a longer record ("a red circle on the left") is too common to mean that record leaked.

Memory stays bounded at any scale. A word is a 64-bit id (blake2b of the lowercased word, cached per
distinct word, the cache cleared past `WORD_CACHE` entries); a window of words is a polynomial hash of
its ids mod 2^64, computed for all windows of a chunk at once from prefix sums. The held-out side keeps
each distinct hash as 4 bytes: the hashes are sorted and cut by their top `bits` bits into slots (an
offset per slot, about 8 hashes each), so a slot's hashes need only their next 32 bits; beside them an
int32 array of the first held-out row holding each, and a presence table of the top bits, one bit per
slot of a finer table. Training records stream through in chunks, the presence table ruling out almost
every window in one lookup and a binary search within its slot testing the rest: 53 or more bits of
the hash are compared, so a training corpus of 10^9 windows meets about one false candidate. Every
candidate is confirmed on the words themselves, so neither a false candidate nor a hash collision ever
removes a record. The held-out texts are kept for that as one Arrow string array, or read from a
Parquet file a row group at a time (a Path: kiln's heldout.parquet), so only the row groups of
confirmed candidates are ever read again.

The index holds 8 bytes per distinct held-out n-gram, its slot offsets (4 bytes per 8 n-grams), a
presence table of at most 16 MB and the word cache (about 9 MB when full); given a Parquet file, none
of the held-out text. It is built a chunk at a time: each chunk's hashes deduplicated (keeping the first
row of each) and split by their top bits into buckets, each bucket in memory maps of its own, then
merged bucket by bucket into the arrays, each bucket's maps returned to the system once merged.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import itertools
import mmap
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.data.filters.text import WORD

WORD_CACHE = 1 << 16
"""Distinct words whose ids are kept (about 9 MB); past it the cache starts over. On Zipf-distributed
words (bench/tokenizer_scale.py's records) a cache of 2^16 is as fast as one of 2^20 (150 MB)."""
CHUNK_CHARS = 1 << 21
"""Characters of text hashed at once (a chunk holds at least one record): bounds the per-chunk arrays
whatever the corpus size and however long its records."""

_U64 = 1 << 64
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64: window hashes come from prefix sums
_BASE_INV = pow(_BASE, -1, _U64)
_LENGTH_SALT = np.uint64(0xD6E8FEB86659FD93)  # keeps a short record's whole-sequence hash apart from n-grams
_BUCKET_BITS = 4  # the build's buckets: the top 4 bits of a hash
_BUCKET_EDGES = np.arange(1, 1 << _BUCKET_BITS, dtype=np.uint64) << np.uint64(64 - _BUCKET_BITS)
_BIT = np.array([1 << b for b in range(8)], dtype=np.uint8)
_BUCKET_START = 1 << 12  # a bucket's first capacity, in hashes; it doubles as it fills
_BLOCK = 1 << 20  # hashes set into the presence table at once
_SLOT_HASHES = 8  # the mean number of hashes per slot of the sorted index
_LOW = np.uint64(0xFFFFFFFF)


@dataclass(frozen=True)
class Overlap:
    train: int
    """Row of the training record among the texts passed to `overlaps`."""
    heldout: int
    """Row of one held-out record it shares the words with."""
    start: int
    """Index of the first shared word in the training record."""
    words: int
    """Shared words: n, or the whole record when it has fewer."""


class _WordIds(dict):
    """Raw word -> 64-bit id of the lowercased word (blake2b: the same in every process)."""

    def __missing__(self, word: str) -> int:
        if len(self) >= WORD_CACHE:
            self.clear()
        value = self[word] = int.from_bytes(hashlib.blake2b(word.lower().encode(), digest_size=8).digest(), "little")
        return value


def words(text: str | None) -> list[str]:
    """The words compared: kiln's words, lowercased."""
    return [w.lower() for w in WORD.findall(text or "")]


def shared_text(text: str, start: int, count: int, limit: int = 200) -> str:
    """The original text of `count` words from word `start`, whitespace collapsed: what a person reads."""
    spans = [m.span() for m in itertools.islice(WORD.finditer(text), start, start + count)]
    snippet = " ".join(text[spans[0][0] : spans[-1][1]].split()) if spans else ""
    return snippet if len(snippet) <= limit else snippet[: limit - 1] + "…"


def _mix(h: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads the polynomial hash over all 64 bits."""
    h = h ^ (h >> np.uint64(30))
    h = h * np.uint64(0xBF58476D1CE4E5B9)
    h = h ^ (h >> np.uint64(27))
    h = h * np.uint64(0x94D049BB133111EB)
    return h ^ (h >> np.uint64(31))


def _powers(base: int, count: int) -> np.ndarray:
    out = np.full(count, base, dtype=np.uint64)
    out[0] = 1
    return np.cumprod(out)  # wraps mod 2^64, as intended


def _window_hashes(ids: np.ndarray, begin: np.ndarray, size: np.ndarray) -> np.ndarray:
    """hash(ids[b : b+s]) = sum_t ids[b+t] * BASE^(s-1-t) mod 2^64, for every (b, s) at once:
    with C[k] = sum_{t<k} ids[t] * BASE^-t, it is BASE^(b+s-1) * (C[b+s] - C[b])."""
    total = len(ids)
    if not len(begin):
        return np.zeros(0, np.uint64)
    prefix = np.zeros(total + 1, dtype=np.uint64)
    np.cumsum(ids * _powers(_BASE_INV, total), out=prefix[1:])
    end = begin + size
    h = _powers(_BASE, total)[end - 1] * (prefix[end] - prefix[begin])
    return _mix(h ^ (size.astype(np.uint64) * _LENGTH_SALT))


def fingerprints(texts: Sequence[str | None], n: int, ids: dict | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(hash, row, start) of every n-gram of every text, and of the whole word sequence of a text of
    1 to n-1 words; rows index `texts`, starts count words. Hashes do not depend on the chunking."""
    ids = _WordIds() if ids is None else ids
    lengths = np.zeros(len(texts), dtype=np.int64)

    def each_word() -> Iterator[str]:  # one text's words at a time, not the chunk's as Python strings
        for i, text in enumerate(texts):
            found = WORD.findall(text or "")
            lengths[i] = len(found)
            yield from found

    flat = np.fromiter(map(ids.__getitem__, each_word()), dtype=np.uint64)
    counts = np.where(lengths >= n, lengths - n + 1, np.minimum(lengths, 1))
    row = np.repeat(np.arange(len(texts)), counts)
    start = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
    size = np.minimum(lengths[row], n)
    offsets = np.cumsum(lengths) - lengths
    return _window_hashes(flat, offsets[row] + start, size), row, start


def _chunks(texts: Iterable[str | None], max_chars: int) -> Iterator[list[str | None]]:
    batch: list[str | None] = []
    chars = 0
    for text in texts:
        if batch and chars + len(text or "") > max_chars:
            yield batch
            batch, chars = [], 0
        batch.append(text)
        chars += len(text or "")
    if batch:
        yield batch


def release_memory() -> None:
    """Hand freed memory back to the system between phases: Arrow's allocator and glibc's malloc both keep
    freed pages for reuse, which would otherwise stay resident through the phases that follow."""
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # a C library without malloc_trim keeps its pages: only slower to shrink
        pass


def _mapped(count: int, dtype) -> np.ndarray:
    """An uninitialised array in an anonymous memory map of its own: pages never written take no memory,
    and dropping the array returns its pages to the system at once (malloc may keep freed memory)."""
    dtype = np.dtype(dtype)
    return np.frombuffer(mmap.mmap(-1, max(count, 1) * dtype.itemsize), dtype=dtype, count=count)


class _Bucket:
    """The (hash, row) pairs of one range of hashes, appended a chunk at a time (each chunk's sorted and
    distinct), in memory maps that grow by doubling."""

    def __init__(self):
        self.hashes, self.rows, self.size = _mapped(_BUCKET_START, np.uint64), _mapped(_BUCKET_START, np.int32), 0

    def extend(self, hashes: np.ndarray, rows: np.ndarray) -> None:
        end = self.size + len(hashes)
        if end > len(self.hashes):
            capacity = max(end, 2 * len(self.hashes))
            for name in ("hashes", "rows"):
                old = getattr(self, name)
                grown = _mapped(capacity, old.dtype)
                grown[: self.size] = old[: self.size]
                setattr(self, name, grown)
        self.hashes[self.size : end] = hashes
        self.rows[self.size : end] = rows
        self.size = end

    def distinct(self) -> tuple[np.ndarray, np.ndarray]:
        """Its distinct hashes, sorted, each with its row from the earliest chunk holding it."""
        order = np.argsort(self.hashes[: self.size], kind="stable")  # stable: chunk order among equal hashes
        hashes = self.hashes[order]
        first = np.ones(len(hashes), dtype=bool)
        np.not_equal(hashes[1:], hashes[:-1], out=first[1:])
        return hashes[first], self.rows[order[first]]


def _compact(texts: Sequence[str | None] | pa.Array | pa.ChunkedArray) -> pa.Array | pa.ChunkedArray:
    """The texts as one Arrow string array (their UTF-8 and an 8-byte offset each, where a Python str costs
    57 bytes over its text); an Arrow array or chunked array is kept as it is."""
    if isinstance(texts, (pa.Array, pa.ChunkedArray)):
        return texts
    return pa.array(texts if isinstance(texts, list) else list(texts), pa.large_string())


def _each_text(texts: pa.Array | pa.ChunkedArray, block: int = 4096) -> Iterator[str | None]:
    for lo in range(0, len(texts), block):
        yield from texts.slice(lo, block).to_pylist()


class HeldoutIndex:
    """The distinct n-gram hashes of the held-out records, sorted, each with the first held-out row holding
    it. `texts`: the held-out texts (a sequence, an Arrow array) or a Parquet file with a `text` column."""

    def __init__(self, texts: Sequence[str | None] | pa.Array | pa.ChunkedArray | Path, n: int, max_chars: int = CHUNK_CHARS):
        if n < 1:
            raise ValueError(f"n-gram length must be at least 1, not {n}")
        self.texts, self.n, self.max_chars = texts if isinstance(texts, Path) else _compact(texts), n, max_chars
        self._ids = _WordIds()
        self._build()
        self._heldout = functools.lru_cache(maxsize=256)(self._heldout_fingerprints)
        self._row_group = functools.lru_cache(maxsize=4)(self._read_row_group)

    def _each_heldout(self) -> Iterator[str | None]:
        if not isinstance(self.texts, Path):
            yield from _each_text(self.texts)
            return
        parquet = pq.ParquetFile(self.texts)
        for group in range(parquet.metadata.num_row_groups):  # on this thread: see schedule.stream_texts
            yield from _each_text(parquet.read_row_group(group, columns=["text"], use_threads=False).column(0))

    def _build(self) -> None:
        """Each chunk's distinct hashes (with the first row of each, as a unique over all the chunks'
        hashes in order would keep) split into buckets by their top bits, then the buckets merged in
        order into slots, the presence table set as they are; a bucket's maps are freed once merged."""
        buckets, base = [_Bucket() for _ in range(1 << _BUCKET_BITS)], 0
        for batch in _chunks(self._each_heldout(), self.max_chars):
            h, row, _ = fingerprints(batch, self.n, self._ids)
            h, first = np.unique(h, return_index=True)
            rows = (row[first] + base).astype(np.int32)
            cuts = [0, *np.searchsorted(h, _BUCKET_EDGES).tolist(), len(h)]
            for bucket, lo, hi in zip(buckets, cuts, cuts[1:]):
                bucket.extend(h[lo:hi], rows[lo:hi])
            base += len(batch)
        self.records, total = base, sum(b.size for b in buckets)
        # Slots of about _SLOT_HASHES hashes (at least the buckets' top bits); a presence table of at least
        # 16 bits per hash (so at most ~6% of other windows go on to the search), of 2^16 to 2^27 bits.
        self._bits = int(np.clip(np.ceil(np.log2(total / _SLOT_HASHES + 1)), _BUCKET_BITS, 32))
        bits = int(np.clip(np.ceil(np.log2(16 * total + 1)), 16, 27))
        self._shift, self._present = np.uint64(64 - bits), np.zeros(1 << (bits - 3), dtype=np.uint8)
        self.low, self.rows = np.empty(total, dtype=np.uint32), np.empty(total, dtype=np.int32)
        counts, end = np.zeros(1 << self._bits, dtype=np.int64), 0
        for i in range(len(buckets)):
            h, r = buckets[i].distinct()
            buckets[i] = None  # its maps go back to the system before the next bucket is merged
            for lo in range(0, len(h), _BLOCK):
                block = h[lo : lo + _BLOCK]
                slots, self.low[end + lo : end + lo + len(block)] = self._slot_key(block)
                counts += np.bincount(slots, minlength=len(counts))
                slot = block >> self._shift
                np.bitwise_or.at(self._present, (slot >> np.uint64(3)).astype(np.intp), _BIT[(slot & np.uint64(7)).astype(np.intp)])
            self.rows[end : end + len(h)] = r
            end += len(h)
        # Shrinking in place: the pages past `end` (hashes repeated across chunks) were never written.
        self.low.resize(end, refcheck=False)
        self.rows.resize(end, refcheck=False)
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64 if total >= 1 << 31 else np.int32)
        np.cumsum(counts, out=self.offsets[1:])
        release_memory()  # what reading and hashing the texts left in the allocators

    def __len__(self) -> int:
        return len(self.low)

    def _slot_key(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(slot, key) of each hash: its top `_bits` bits, the slot it falls in, and the next 32, what the slot keeps."""
        return (h >> np.uint64(64 - self._bits)).astype(np.intp), ((h << np.uint64(self._bits)) >> np.uint64(32)).astype(np.uint32)

    def _find(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(found, position): whether each hash's slot holds its next 32 bits, and where (a lower bound)."""
        slot, key = self._slot_key(h)
        lo, hi = self.offsets[slot].astype(np.int64), self.offsets[slot + 1].astype(np.int64)
        end = hi.copy()
        while (open_ := lo < hi).any():  # a binary search in every slot at once: about log2(8) rounds
            mid = (lo + hi) >> 1
            right = open_ & (self.low[np.minimum(mid, len(self.low) - 1)] < key)
            lo = np.where(right, mid + 1, lo)
            hi = np.where(open_ & ~right, mid, hi)
        found = lo < end
        found[found] = self.low[lo[found]] == key[found]
        return found, lo

    def _read_row_group(self, group: int) -> pa.Array:
        return pq.ParquetFile(self.texts).read_row_group(group, columns=["text"], use_threads=False).column(0).combine_chunks()

    @functools.cached_property
    def _group_starts(self) -> np.ndarray:
        meta = pq.ParquetFile(self.texts).metadata
        return np.cumsum([0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)])

    def _text(self, row: int) -> str | None:
        if not isinstance(self.texts, Path):
            return self.texts[row].as_py()
        group = int(np.searchsorted(self._group_starts, row, side="right")) - 1
        return self._row_group(group)[row - int(self._group_starts[group])].as_py()

    def _heldout_fingerprints(self, row: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        text = self._text(row)
        h, _, start = fingerprints([text], self.n, self._ids)
        return words(text), h, start

    def _confirm(self, train_words: list[str], start: int, size: int, h: np.uint64, row: int) -> bool:
        held_words, held_h, held_start = self._heldout(row)
        if size < self.n and len(held_words) != size:
            return False  # under n words only a whole record matches a whole record
        at = held_start[np.flatnonzero(held_h == h)]
        return any(held_words[a : a + size] == train_words[start : start + size] for a in at.tolist())

    def overlaps(self, texts: Iterable[str | None]) -> Iterator[Overlap]:
        """One Overlap per training text that shares n words (or all its words, if fewer) with a
        held-out record: the first confirmed match, in word order."""
        base = 0
        for batch in _chunks(texts, self.max_chars):
            h, row, start = fingerprints(batch, self.n, self._ids)
            hit, at = self._hits(h)
            groups = np.split(np.arange(len(hit)), np.flatnonzero(np.diff(row[hit])) + 1) if len(hit) else []
            for group in groups:
                r = int(row[hit[group[0]]])
                if found := self._first_confirmed(batch[r], hit[group], at[group], h, start):
                    yield Overlap(train=base + r, heldout=found[0], start=found[1], words=found[2])
            base += len(batch)

    def _hits(self, h: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices of the hashes whose top 53+ bits are among the held-out ones, in order; where in the index)."""
        if not len(self.low):
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        slot = h >> self._shift
        maybe = np.flatnonzero(self._present[(slot >> np.uint64(3)).astype(np.intp)] & _BIT[(slot & np.uint64(7)).astype(np.intp)])
        found, at = self._find(h[maybe])
        return maybe[found], at[found]

    def _first_confirmed(self, text, hits, at, h, start) -> tuple[int, int, int] | None:
        train_words = words(text)
        size = min(len(train_words), self.n)
        for i, p in zip(hits.tolist(), at.tolist()):
            for held in self._rows_at(p, h[i]):
                if self._confirm(train_words, int(start[i]), size, h[i], held):
                    return held, int(start[i]), size
        return None

    def _rows_at(self, p: int, h: np.uint64) -> list[int]:
        """The rows of every entry of h's slot from `p` on that holds h's next 32 bits (almost always one:
        two held-out hashes alike in their top 53+ bits are each tried)."""
        end = int(self.offsets[int(h >> np.uint64(64 - self._bits)) + 1])
        q = p + 1
        while q < end and self.low[q] == self.low[p]:
            q += 1
        return self.rows[p:q].tolist()


def find_overlaps(train: Iterable[str | None], heldout: Sequence[str | None], n: int) -> list[Overlap]:
    """Every training text sharing an n-gram of words (or, under n words, all its words) with a held-out text."""
    return list(HeldoutIndex(heldout, n).overlaps(train))

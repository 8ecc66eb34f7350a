"""Near-duplicates across the corpus: the last filter of `build_corpus`, after the exact ones.

A record is a near-duplicate of an earlier kept record (earlier in batch order, or earlier in its
own batch) when the estimated Jaccard similarity of their word-shingle sets reaches
`NearDupConfig.threshold`; the first occurrence is kept, later ones are rejected as `near_duplicate`
with the first kept record's source and the estimate in the detail.

- Shingles: a record is case-folded (so ß and SS, ς and Σ are one) and cut into words (runs of
  letters, digits and `_`; a Han or kana character is a word of its own, as the text filter counts
  words); every `shingle_words` consecutive words are a shingle (a record with fewer words is one
  shingle). Punctuation, case and spacing do not change a record's shingles. Each word is hashed
  by its 64-bit blocks (8 ASCII characters, or 2 code points) and mixed; each shingle is a
  polynomial of its words' hashes, 64 bits, rolled on word by word.
- Signatures: one-permutation MinHash (`signatures`), `permutations` bins of 32-bit values: one
  hash per shingle, where k-permutation MinHash computes k. A chunk goes from text to signatures
  in one compiled pass (numba), with nothing in between but the chunk's units: 2-3 times faster
  than the numpy passes it replaced, which built every word's and shingle's hash as arrays first.
  Chosen by measurement against rensa's R-MinHash and datasketch's MinHash (`bench/near_dup.py`,
  one core): 80K documents/s from the text, where rensa makes 42K from ready shingle hashes once
  its signatures are out of rensa (it hands them out only as Python lists) and datasketch 750; as
  accurate as rensa (RMS error 0.031 against 0.030).
- Index: a signature in `bands` bands, each band (with two values or more) hashed to a 64-bit key,
  and the whole signature as one more. A record sharing a key with a kept record is a candidate; it
  is rejected only when the estimated Jaccard of the two signatures reaches the threshold.
- Persistence, per batch, beside its corpus Parquet and row for row with it (the leading underscore
  keeps them out of Parquet dataset discovery; each written atomically with the batch):
  `_<modality>.minhash.npy`, the kept records' signatures, appended as they are decided;
  `_<modality>.bands.npy`, their LSH keys (full 64 bits) with their rows, sorted
  (`training/data/corpus_index.py`), written when the batch ends. A new batch is matched against
  the earlier ones through their key files, read in blocks with its own keys sorted, one pass per
  window of its records; only the candidates' signatures are read back (a memory map, few pages).
  Nothing of an earlier batch is hashed again or held in memory: memory holds the batch being
  deduplicated (its kept keys in sorted runs) and a block.
"""

from __future__ import annotations

import contextlib
import functools
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

import numba
import numpy as np
import pyarrow as pa

from training.config import NearDupConfig
from training.data import corpus_index
from training.data.corpus_index import Reads
from training.data.filters.base import Filter, Verdict
from training.data.records import Record, Reject
from training.fsutil import atomic_path
from training.layout import band_keys_file, records_file, signatures_file

SIGNATURE_VERSION = 3
"""Bump when words, shingles or signatures are computed differently: the corpus is deduplicated again."""
EMPTY = np.uint32(0xFFFFFFFF)
"""A bin no shingle of the record fell in; a record without words is EMPTY throughout and never
matches (a shingle whose value is all ones counts as none: one in 2^32)."""

_M = np.uint64(0x9E3779B97F4A7C15)  # 2^64/φ, odd: the polynomials' base
_UNSPACED = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")  # as the text filter's word count
_SPACE = 32  # the unit of a character that is no word character
_SPAN_CHARS = 1 << 23  # characters hashed in one pass: its units take at most 32 MB
_ALONE = np.uint32(1 << 31)  # set on the unit of a Han or kana character: a word of its own


@functools.cache
def _ascii_table() -> bytes:
    """`bytes.translate` table of ASCII to units (`_unit`)."""
    return bytes(_unit(chr(b)) for b in range(128)) + b" " * 128


def _unit(c: str) -> int:
    """A character's unit: a Han or kana character is its own word (as the text filter counts
    words), its code point with `_ALONE` set; another word character (a letter, digit or `_`) is its
    lowercase (when that is one code point); anything else is `_SPACE`."""
    if _UNSPACED.match(c):
        return ord(c) | int(_ALONE)
    if c.isalnum() or c == "_":
        return ord(c.lower() if len(c.lower()) == 1 else c)
    return _SPACE


@functools.cache
def _bmp_units() -> np.ndarray:
    return np.array([_unit(chr(c)) for c in range(0x10000)], np.uint32)


def _units(texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """The records as one array of units (`_unit`), and where each record ends in it: ASCII records
    as bytes, through `bytes.translate`; others case-folded, as code points (uint32) through a
    table, the few above 2^16 (emoji, rare Han) one by one."""
    text = "".join(texts)
    if text.isascii():
        ends = np.cumsum(np.fromiter(map(len, texts), np.int64, len(texts)))
        return np.frombuffer(text.encode("ascii").translate(_ascii_table()), np.uint8), ends
    # Case-folded first: what lowercasing one character at a time misses (ß and SS, final ς and Σ, ﬁ
    # and FI) then folds alike. ASCII folds as it lowercases, so ASCII records need none of it.
    folded = [t.casefold() for t in texts]
    ends = np.cumsum(np.fromiter(map(len, folded), np.int64, len(folded)))
    text = "".join(folded)
    points = np.frombuffer(text.encode("utf-32-le", "surrogatepass"), "<u4")  # a lone surrogate: a character
    units = _bmp_units()[points & 0xFFFF]
    astral = np.flatnonzero(points > 0xFFFF)
    if len(astral):
        distinct, inverse = np.unique(points[astral], return_inverse=True)
        units[astral] = np.array([_unit(chr(p)) for p in distinct], np.uint32)[inverse]
    return units, ends


def _compiled(f: Callable) -> Callable:
    """`f` compiled by numba, cached beside this module (or in the user's cache folder) for later
    processes; where neither can be written (a read-only install, no writable home), compiled
    afresh in each process instead of failing the import."""
    try:
        return numba.njit(cache=True, nogil=True)(f)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(f)


@_compiled
def _word(units: np.ndarray, i: int, j: int, narrow: bool) -> np.uint64:
    """The hash of the word units[i:j]: its 64-bit blocks (8 ASCII characters as bytes, or 2 code
    points as 32-bit values, little-endian) as b0 * M + b1 for a word of up to two blocks (b1 = 0
    for one), a polynomial in M of all its blocks for a longer one. So no two words of up to two
    blocks share their hashes, and a word hashes the same whatever record it is in."""
    fit, bits = (8, 8) if narrow else (2, 32)
    blocks = (j - i + fit - 1) // fit
    h = np.uint64(0)
    for b in range(blocks):
        value = np.uint64(0)
        for t in range(min(fit, j - i - b * fit)):
            value |= np.uint64(units[i + b * fit + t] & 0x7FFFFFFF) << np.uint64(bits * t)
        h = h * _M + value
    return h * _M if blocks == 1 else h


@_compiled
def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, of a value or in place of an array: every input bit moves every
    output bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


@_compiled
def _add(h: np.uint64, r: int, sig: np.ndarray, shingles: np.ndarray, out: int) -> int:
    """Shingle h of record r into its one-permutation signature: its low 32 bits pick the bin, its
    high 32 bits are the value, a bin keeps the smallest; and out to `shingles` when it has room."""
    cell = ((h & np.uint64(0xFFFFFFFF)) * np.uint64(sig.shape[1])) >> np.uint64(32)
    sig[r, cell] = min(sig[r, cell], np.uint32(h >> np.uint64(32)))
    if out < len(shingles):
        shingles[out] = h
    return out + 1


@_compiled
def _scan(units: np.ndarray, ends: np.ndarray, k: int, salt: np.uint64, sig: np.ndarray, shingles: np.ndarray, counts: np.ndarray) -> int:
    """Every shingle of every record, in one pass over the units: a word's hash is mixed with the
    salt; a shingle is the polynomial in M of k consecutive words' hashes, or of all of a record's
    words when it has fewer (one at least). `counts` gets the shingles up to each record's end."""
    ring = np.empty(k, np.uint64)  # the record's last k word hashes
    top = np.uint64(1)  # M^(k-1): the oldest word's weight in a shingle
    for _ in range(k - 1):
        top *= _M
    out, i = 0, 0
    for r in range(len(ends)):
        words, oldest, h, end = 0, 0, np.uint64(0), ends[r]
        while i < end:
            u = units[i]
            if u == _SPACE:
                i += 1
                continue
            j, narrow = i + 1, u < 128
            if not u & _ALONE:
                while j < end and units[j] != _SPACE and not units[j] & _ALONE:
                    narrow &= units[j] < 128
                    j += 1
            m = _mix(_word(units, i, j, narrow) + salt)
            i = j
            if words >= k:  # the shingle rolls on: the oldest word out, this one in
                h -= ring[oldest] * top
            h = h * _M + m
            ring[oldest] = m
            oldest = oldest + 1 if oldest + 1 < k else 0
            words += 1
            if words >= k:
                out = _add(h, r, sig, shingles, out)
        if 0 < words < k:  # a record of fewer than k words: one shingle of them all
            out = _add(h, r, sig, shingles, out)
        counts[r] = out
    return out


def _signatures_of(texts: Sequence[str], k: int, seed: int, perms: int, keep_shingles: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(signatures, shingle hashes or none, each record's shingle count so far) of the records."""
    units, ends = _units(texts)
    sig = np.full((len(texts), perms), EMPTY, np.uint32)
    shingles = np.empty(len(units) + len(texts) if keep_shingles else 0, np.uint64)  # at most one per unit, or one per record
    counts = np.zeros(len(texts), np.int64)
    salt = np.uint64((seed * 0x2545F4914F6CDD1D + 1) & (1 << 64) - 1)
    n = _scan(units, ends, k, salt, sig, shingles, counts)
    return sig, shingles[:n], counts


def shingle_hashes(texts: Sequence[str], k: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The 64-bit shingle hashes of the records, flat, and the offsets of each record's (len + 1).
    Word hashes are mixed with the seed, so each seed hashes every shingle differently."""
    _, hashes, counts = _signatures_of(texts, k, seed, 1, True)
    return hashes, np.concatenate(([0], counts)).astype(np.uint64)


def signatures(texts: Sequence[str], cfg: NearDupConfig) -> np.ndarray:
    """MinHash signatures of the records' shingle sets by one-permutation hashing (Li, Owen and
    Zhang, 2012): each shingle hash picks one of `permutations` bins (by its low 32 bits) and a value
    (its high 32 bits); a bin keeps its smallest value; a bin no shingle fell in stays EMPTY.
    uint32, a row per record. ASCII records and the others are hashed apart, so that one non-ASCII
    record does not send a whole chunk through code points."""
    out = np.empty((len(texts), cfg.permutations), np.uint32)
    ascii_ = np.fromiter((t.isascii() for t in texts), bool, len(texts))
    for group in (np.flatnonzero(ascii_), np.flatnonzero(~ascii_)):
        for span in _spans(group, np.fromiter((len(texts[i]) for i in group), np.int64, len(group))):
            out[span] = _signatures_of([texts[i] for i in span], cfg.shingle_words, cfg.seed, cfg.permutations, False)[0]
    return out


def _spans(group: np.ndarray, lengths: np.ndarray) -> Iterator[np.ndarray]:
    """The group's records in runs of about `_SPAN_CHARS` characters (one record at least), so the
    units of one pass stay bounded whatever the records' size."""
    ends = np.cumsum(lengths)
    lo = 0
    while lo < len(group):
        base = ends[lo - 1] if lo else 0
        hi = max(lo + 1, int(np.searchsorted(ends, base + _SPAN_CHARS, side="right")))
        yield group[lo:hi]
        lo = hi


def estimate(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The estimated Jaccard similarity of signatures a[i] and b[i]: the share of equal bins among
    those not EMPTY in both. The bins sample the union's shingles without replacement, so the error
    is no larger than that of as many independent permutations (bench/near_dup.py, edits of every
    strength: RMS error 0.031; rensa's R-MinHash 0.030, datasketch's MinHash 0.041)."""
    either = (a != EMPTY) | (b != EMPTY)
    return ((a == b) & either).sum(axis=1) / np.maximum(either.sum(axis=1), 1)


def bands(sigs: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
    """(record, key) of the LSH keys of the signatures: each band with two values or more, hashed
    to 64 bits with its number (one table holds every band), and the whole signature as one more
    key. A band of one value carries too little evidence: the short records sharing one shingle
    would all share it (measured on the benchmark corpus: 2.2 times the candidates, none of them
    found only so). The whole-signature key still finds short records with the same shingles."""
    n, perms = sigs.shape
    parts = sigs.reshape(n, count, perms // count)
    full = parts != EMPTY
    with np.errstate(over="ignore"):
        h = parts[:, :, 0].astype(np.uint64) + np.arange(count, dtype=np.uint64) * _M
        for j in range(1, parts.shape[2]):
            h *= _M
            h += parts[:, :, j]
        whole = h[:, 0].copy()  # the whole signature: the bands' hashes, chained
        for b in range(1, count):
            whole *= _M
            whole += h[:, b]
        keys = np.concatenate((_mix(h), _mix(whole)[:, None]), axis=1)
    counts = full.sum(axis=2)
    valid = np.concatenate((counts >= 2, counts.any(axis=1, keepdims=True)), axis=1)
    return np.nonzero(valid)[0], keys[valid]


def _write_header(f: BinaryIO, rows: int, perms: int) -> int:
    """Write the .npy header at the file's start; returns its length. numpy leaves room in the
    header for the row count to grow, so it is rewritten in place once the rows are known."""
    f.seek(0)
    np.lib.format.write_array_header_1_0(f, {"descr": "<u4", "fortran_order": False, "shape": (rows, perms)})
    return f.tell()


def _read_header(f: BinaryIO) -> tuple[tuple[int, int], int]:
    np.lib.format.read_magic(f)
    shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
    if dtype != np.dtype("<u4") or fortran or len(shape) != 2:
        raise ValueError(f"{f.name}: not a signature file (uint32 rows)")
    return shape, f.tell()


class _Segment:
    """One batch's kept records in the index: their signature file (rows from `offset`), their LSH
    key file and corpus Parquet, and the row number of the first. The batch being written keeps its
    kept records' sources in memory; an earlier one's are read from its Parquet when one is needed."""

    def __init__(self, path: Path, offset: int, start: int, rows: int, keys: Path, corpus: Path):
        self.path, self.offset, self.start, self.rows, self.keys, self.corpus = path, offset, start, rows, keys, corpus
        self.sources: list[pa.Array] | None = None

    def source(self, local: int, reads: Reads) -> str:
        if self.sources is None:
            return corpus_index.sources(self.corpus, np.array([local]), reads)[0]
        for arr in self.sources:
            if local < len(arr):
                return arr[local].as_py()
            local -= len(arr)
        raise IndexError(local)

    def signatures(self, local: np.ndarray, perms: int) -> np.ndarray:
        mapped = np.memmap(self.path, np.uint32, "r", offset=self.offset, shape=(self.rows, perms))
        return np.array(mapped[local])


class NearDuplicates(Filter):
    """Rejects a record whose estimated Jaccard with an earlier kept record reaches the threshold.

    The last filter of a modality's chain in `build_corpus` before the keys are recorded: what it
    keeps is what the corpus keeps, row for row with the signature file. Batches come in batch order:
    `add` for a cached batch (its files join the index; nothing is read but a header), then for a
    batch to deduplicate `match_earlier` over its records (their matches among the earlier batches,
    by the key files) and `writing` around the chain."""

    name = "near_dup"

    def __init__(self, cfg: NearDupConfig, modality: str, corpus_dir: Path, reads: Reads | None = None):
        self.cfg, self.modality, self.corpus_dir = cfg, modality, corpus_dir
        self.reads = reads or Reads()
        self.segments: list[_Segment] = []
        self.rows = 0
        self.runs = corpus_index.Runs(2)
        """LSH keys and rows of the records kept so far in the batch being written."""
        self.earlier: dict[str, tuple[int, float]] = {}
        """Source -> its best match among the earlier batches (row, estimate), from `match_earlier`."""
        self.window: tuple[dict[str, int], np.ndarray] = ({}, np.zeros((0, cfg.permutations), np.uint32))
        """The signatures of the window `match_earlier` saw, and its records' rows in them by source."""
        self._file: BinaryIO | None = None

    @property
    def settings(self) -> tuple:
        """What persisted signatures and verdicts depend on: part of the corpus cache key."""
        return (self.cfg, "one-permutation MinHash", SIGNATURE_VERSION)

    def path(self, batch: str) -> Path:
        # Beside the batch's corpus Parquet; the leading underscore keeps it out of Parquet dataset discovery.
        return self.corpus_dir / batch / signatures_file(self.modality)

    def keys_path(self, batch: str) -> Path:
        return self.corpus_dir / batch / band_keys_file(self.modality)

    def _corpus(self, batch: str) -> Path:
        return self.corpus_dir / batch / records_file(self.modality)

    def add(self, batch: str) -> None:
        """A cached batch joins the index: its files, as they are (its signature file's header read)."""
        path = self.path(batch)
        with open(path, "rb") as f:
            (rows, perms), offset = _read_header(f)
        if perms != self.cfg.permutations:
            raise ValueError(f"{path} has {perms} permutations, the config {self.cfg.permutations}")
        self.segments.append(_Segment(path, offset, self.rows, rows, self.keys_path(batch), self._corpus(batch)))
        self.rows += rows

    def match_earlier(self, records: Sequence[Record]) -> None:
        """Before a window of the batch being deduplicated goes down the chain: each record's best
        match among the earlier batches' kept records, found through their sorted LSH key files (one
        pass over each), kept by source for `__call__` with the window's signatures."""
        sigs = signatures([r.text or "" for r in records], self.cfg)
        self.window = {r.source: i for i, r in enumerate(records)}, sigs
        rec, keys = bands(sigs, self.cfg.bands)
        earlier = [s for s in self.segments if s.sources is None]  # not the batch being written
        q, files, rows = corpus_index.find([s.keys for s in earlier], keys[:, None], self.reads)
        rows = rows + np.array([s.start for s in earlier] + [0], np.int64)[files]
        for i, row, e in self._scored(sigs, rec[q], rows):  # kept for the whole batch: a chunk may span two windows
            self.earlier.setdefault(records[i].source, (row, e))

    @contextlib.contextmanager
    def writing(self, batch: str) -> Iterator[None]:
        """Deduplicate one batch inside this block: the signatures of the records it keeps go to the
        batch's file as they are kept, their LSH keys (sorted, with their rows) to its key file at
        the end; both appear whole when the block ends without an error."""
        path = self.path(batch)
        with atomic_path(path) as tmp, atomic_path(self.keys_path(batch)) as keys_tmp:
            with open(tmp, "w+b") as f:
                segment = _Segment(tmp, _write_header(f, 0, self.cfg.permutations), self.rows, 0, self.keys_path(batch), self._corpus(batch))
                segment.sources = []
                self.segments.append(segment)
                self._file = f
                try:  # after an error the index holds rows that are in no file: build_corpus stops
                    yield
                    if _write_header(f, segment.rows, self.cfg.permutations) != segment.offset:
                        raise RuntimeError(f"{path}: the header changed length")
                    keys = self.runs.table()
                    keys[:, 1] -= np.uint64(segment.start)
                    corpus_index.save(keys_tmp, keys)
                finally:
                    self._file = None
                    self.runs, self.earlier, self.window = corpus_index.Runs(2), {}, ({}, self.window[1][:0])
        segment.path, segment.sources = path, None  # sources come back from the corpus Parquet if needed

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        if self._file is None:
            raise RuntimeError("NearDuplicates deduplicates a batch only inside writing(batch)")
        if not records:
            return []
        at, window = self.window
        rows = [at.get(r.source) for r in records]
        sigs = window[rows] if None not in rows else signatures([r.text or "" for r in records], self.cfg)
        rec, keys = bands(sigs, self.cfg.bands)
        verdicts: list[Verdict] = [None] * len(records)
        for i, (row, score) in self._matches(records, sigs, rec, keys).items():
            source = records[-1 - row].source if row < 0 else self._source(row)
            verdicts[i] = Reject("near_duplicate", f"first kept at {source}, estimated Jaccard {score:.2f}")
        self._keep(records, sigs, rec, keys, np.array([v is None for v in verdicts]))
        return verdicts

    def _scored(self, sigs: np.ndarray, rec: np.ndarray, rows: np.ndarray) -> list[tuple[int, int, float]]:
        """(record, kept row, estimate) of the candidate pairs whose estimate reaches the threshold:
        by record, the best estimate first, of equals the earliest row."""
        if not len(rec):
            return []
        pairs = np.unique(np.stack((rec, rows), axis=1), axis=0)
        score = estimate(sigs[pairs[:, 0]], self._signatures(pairs[:, 1]))
        ok = score >= self.cfg.threshold - 1e-9
        return sorted(zip(pairs[ok, 0].tolist(), pairs[ok, 1].tolist(), score[ok].tolist()), key=lambda t: (t[0], -t[2], t[1]))

    def _matches(self, records: Sequence[Record], sigs: np.ndarray, rec: np.ndarray, keys: np.ndarray) -> dict[int, tuple[int, float]]:
        """Record -> (its match: a kept record's row, or -1 - its index in this chunk; the estimated
        Jaccard), the best estimate, of equals the earliest record."""
        out: dict[int, tuple[int, float]] = {}
        # Kept records of earlier batches (found by `match_earlier`) and of earlier chunks of this one.
        q, rows = self.runs.find(keys[:, None])
        found = self._scored(sigs, rec[q], rows) + [(i, *self.earlier[r.source]) for i, r in enumerate(records) if r.source in self.earlier]
        for i, row, e in sorted(found, key=lambda t: (t[0], -t[2], t[1])):
            out.setdefault(i, (row, e))
        # Earlier records of this chunk, in order: only a kept one counts.
        later, earlier = _same_key_pairs(rec, keys)
        score = estimate(sigs[later], sigs[earlier])
        ok = score >= self.cfg.threshold - 1e-9
        partners: dict[int, list[tuple[float, int]]] = {}
        for i, j, e in zip(later[ok].tolist(), earlier[ok].tolist(), score[ok].tolist()):
            partners.setdefault(i, []).append((e, -j))  # the best estimate, then the earliest
        for i in sorted(partners):
            kept = [(e, neg_j) for e, neg_j in partners[i] if -neg_j not in out]
            if i not in out and kept:
                e, neg_j = max(kept)
                out[i] = (-1 + neg_j, e)
        return out

    def _keep(self, records: Sequence[Record], sigs: np.ndarray, rec: np.ndarray, keys: np.ndarray, kept: np.ndarray) -> None:
        """Append the kept records' signatures to the batch's file and their LSH keys to the batch's runs."""
        segment = self.segments[-1]
        idx = np.flatnonzero(kept)
        sigs[idx].tofile(self._file)
        segment.sources.append(pa.array([records[i].source for i in idx], pa.string()))  # type: ignore[union-attr]
        indexed = kept[rec]
        self.runs.add(np.stack((keys[indexed], (self.rows + np.cumsum(kept)[rec[indexed]] - 1).astype(np.uint64)), axis=1))
        segment.rows += len(idx)
        self.rows += len(idx)

    def _signatures(self, rows: np.ndarray) -> np.ndarray:
        """Signatures of kept records by row number (few: the candidates), read from their files."""
        if self._file is not None:
            self._file.flush()
        out = np.empty((len(rows), self.cfg.permutations), np.uint32)
        which = np.searchsorted([s.start for s in self.segments], rows, side="right") - 1
        for i in np.unique(which):
            seg, pick = self.segments[i], np.flatnonzero(which == i)
            out[pick] = seg.signatures(rows[pick] - seg.start, self.cfg.permutations)
            if seg.sources is None:
                self.reads.signatures += len(pick)
        return out

    def _source(self, row: int) -> str:
        seg = self.segments[int(np.searchsorted([s.start for s in self.segments], row, side="right")) - 1]
        return seg.source(row - seg.start, self.reads)


def _same_key_pairs(rec: np.ndarray, keys: np.ndarray, cap: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """(later, earlier) pairs of records of one chunk that share a band key; a record is paired with
    at most `cap` earlier ones per key."""
    none = np.zeros(0, np.int64)
    ordered = np.sort(keys)
    repeated = ordered[1:][ordered[1:] == ordered[:-1]]
    if not len(repeated):  # the usual chunk: every key once
        return none, none
    shared = np.isin(keys, repeated)
    rec, keys = rec[shared], keys[shared]
    order = np.argsort(keys, kind="stable")  # stable: records stay in order within a key
    keys, rec = keys[order], rec[order]
    position = np.arange(len(keys))
    group = np.maximum.accumulate(np.where(np.concatenate(([True], keys[1:] != keys[:-1])), position, 0))
    depth = np.minimum(position - group, cap)
    later = np.repeat(position, depth)
    earlier = np.repeat(group, depth) + np.arange(len(later)) - np.repeat(np.cumsum(depth) - depth, depth)
    pairs = np.unique(np.stack((rec[later], rec[earlier]), axis=1), axis=0)
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    return pairs[:, 0], pairs[:, 1]

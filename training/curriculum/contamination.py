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
its ids mod 2^64, computed for all windows of a chunk at once from prefix sums. The held-out side is
one sorted uint64 array (with the row of a held-out record holding each hash) and a presence table of
their top bits; training records stream through in chunks, the table ruling out almost every window
in one lookup and searchsorted testing the rest. A hash match is confirmed on the words themselves,
so a hash collision never removes a record.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from training.data.filters.text import WORD

WORD_CACHE = 1 << 20
"""Distinct words whose ids are kept (about 150 MB); past it the cache starts over."""
CHUNK_CHARS = 1 << 23
"""Characters of text hashed at once (a chunk holds at least one record): bounds the per-chunk arrays
whatever the corpus size and however long its records."""

_U64 = 1 << 64
_BASE = 0x9E3779B97F4A7C15  # odd, so invertible mod 2^64: window hashes come from prefix sums
_BASE_INV = pow(_BASE, -1, _U64)
_LENGTH_SALT = np.uint64(0xD6E8FEB86659FD93)  # keeps a short record's whole-sequence hash apart from n-grams


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
    tokens = [WORD.findall(t or "") for t in texts]
    lengths = np.fromiter(map(len, tokens), dtype=np.int64, count=len(tokens))
    flat = np.fromiter(map(ids.__getitem__, itertools.chain.from_iterable(tokens)), dtype=np.uint64, count=int(lengths.sum()))
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


class HeldoutIndex:
    """The n-gram hashes of the held-out records, sorted, and a held-out row holding each."""

    def __init__(self, texts: Sequence[str | None], n: int, max_chars: int = CHUNK_CHARS):
        if n < 1:
            raise ValueError(f"n-gram length must be at least 1, not {n}")
        self.texts, self.n, self.max_chars = texts, n, max_chars
        self._ids = _WordIds()
        hashes, rows, base = [np.zeros(0, np.uint64)], [np.zeros(0, np.int64)], 0
        for batch in _chunks(texts, max_chars):
            h, row, _ = fingerprints(batch, n, self._ids)
            hashes.append(h)
            rows.append(row + base)
            base += len(batch)
        self.hashes, first = np.unique(np.concatenate(hashes), return_index=True)
        self.rows = np.concatenate(rows)[first].astype(np.int32)
        # A presence table of at least 16 slots per held-out hash (so at most ~6% of other windows go
        # on to searchsorted), of 64 KB to 128 MB.
        self._shift = np.uint64(64 - int(np.clip(np.ceil(np.log2(16 * len(self.hashes) + 1)), 16, 27)))
        self._present = np.zeros(1 << (64 - int(self._shift)), dtype=bool)
        self._present[(self.hashes >> self._shift).astype(np.int64)] = True
        self._heldout = functools.lru_cache(maxsize=256)(self._heldout_fingerprints)

    def _heldout_fingerprints(self, row: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        h, _, start = fingerprints([self.texts[row]], self.n, self._ids)
        return words(self.texts[row]), h, start

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
            hit = self._hits(h)
            groups = np.split(hit, np.flatnonzero(np.diff(row[hit])) + 1) if len(hit) else []
            for group in groups:
                r = int(row[group[0]])
                if found := self._first_confirmed(batch[r], group, h, start):
                    yield Overlap(train=base + r, heldout=found[0], start=found[1], words=found[2])
            base += len(batch)

    def _hits(self, h: np.ndarray) -> np.ndarray:
        """Indices of the hashes present among the held-out ones, in order."""
        if not len(self.hashes):
            return np.zeros(0, np.int64)
        maybe = np.flatnonzero(self._present[(h >> self._shift).astype(np.int64)])
        at = np.minimum(np.searchsorted(self.hashes, h[maybe]), len(self.hashes) - 1)
        return maybe[self.hashes[at] == h[maybe]]

    def _first_confirmed(self, text, group, h, start) -> tuple[int, int, int] | None:
        train_words = words(text)
        size = min(len(train_words), self.n)
        for i in group.tolist():
            held = int(self.rows[np.searchsorted(self.hashes, h[i])])
            if self._confirm(train_words, int(start[i]), size, h[i], held):
                return held, int(start[i]), size
        return None


def find_overlaps(train: Iterable[str | None], heldout: Sequence[str | None], n: int) -> list[Overlap]:
    """Every training text sharing an n-gram of words (or, under n words, all its words) with a held-out text."""
    return list(HeldoutIndex(heldout, n).overlaps(train))

"""Text filters: emptiness, a minimum number of words, and information entropy.

Entropy, as kiln defines it (the source documents keep text whose entropy exceeds 0.8 but do not
say of what): lowercase the text, collapse whitespace and runs of one repeated symbol ("-----" of a
table border carries no more information than "-"), take its overlapping character n-grams
(n = 8), cut them into consecutive windows of W = 1024 n-grams (a last window shorter than W/2
joins the one before), and in each window w compute the Shannon entropy of the n-gram distribution
divided by its maximum, the log of the window's n-gram count:

    H(w) = -sum_g p_g log p_g / log |w|          in [0, 1]

The score is the mean of H(w) weighted by window length: 1 when no n-gram repeats inside a window,
0 when one n-gram fills it. Measured: Python's license (13,900 characters) 0.97, Python's
documentation topics median 0.96 (lowest 0.89), a dozen-word sentence and Chinese prose 0.99-1.0;
"buy now buy now ..." 0.34, "hahaha hahahaha ..." 0.37, "aaaa aaaa ..." 0.27, "aaaa..." 0, one
100-character sentence repeated 0.67. Fixed windows make the score independent of length;
character n-grams make it independent of script and word segmentation.
"""

from __future__ import annotations

import functools
import math
import re
import sys
from collections import Counter
from collections.abc import Sequence

import numpy as np

from training.config import TextFilterConfig
from training.data.filters.base import Filter, Verdict
from training.data.records import Record, Reject

# Scripts written without spaces count one word per character.
_UNSPACED = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
WORD = re.compile(rf"[{_UNSPACED}]|[^\W{_UNSPACED}]+")
_SPACE = re.compile(r"\s+")
_SYMBOL_RUN = re.compile(r"([^\w\s])\1+")


def count_words(text: str) -> int:
    return sum(1 for _ in WORD.finditer(text))


def ngram_entropy(text: str, n: int = 8, window: int = 1024) -> float:
    s = _SYMBOL_RUN.sub(r"\1", _SPACE.sub(" ", text.lower())).strip()
    grams = [s[i : i + n] for i in range(len(s) - n + 1)]
    if len(grams) < 2:
        return 0.0
    starts = list(range(0, len(grams), window))
    if len(starts) > 1 and len(grams) - starts[-1] < window // 2:
        starts.pop()
    bounds = starts[1:] + [len(grams)]
    total = 0.0
    for lo, hi in zip(starts, bounds):
        m = hi - lo
        counts = Counter(grams[lo:hi]).values()
        h = -sum(c / m * math.log(c / m) for c in counts)
        total += h / math.log(m) * m
    return total / len(grams)


_MULT = np.uint64(0x9E3779B97F4A7C15)  # 2^64/φ, odd: the n-gram hash's polynomial base spreads every bit
_WORD_CHAR, _SEPARATOR, _SYMBOL_CHAR, _SPACE_CHAR = 0, 1, 2, 3  # classes; the last two collapse in runs
_ASCII_SEPARATOR = 0x80  # frames ASCII records; the others' is 0xFFFF, or past the last code point
_BUCKET = 64  # rows of one padded sort hold windows within this many n-grams of one another's length


@functools.cache
def _classes(separator: int) -> np.ndarray:
    """The class of every character below `separator` as `re` decides word and whitespace characters
    (the rest are symbols), and of `separator`: a value no record of the stream holds."""
    chars = map(chr, range(separator))
    classes = [_SPACE_CHAR if c.isspace() else _WORD_CHAR if c.isalnum() or c == "_" else _SYMBOL_CHAR for c in chars]
    return np.array(classes + [_SEPARATOR], np.uint8)


@functools.cache
def _blanks(separator: int) -> np.ndarray:
    """Every character up to `separator` as itself, whitespace as a space."""
    table = np.arange(separator + 1, dtype=np.uint16 if separator <= 0xFFFF else np.uint32)
    table[_classes(separator) == _SPACE_CHAR] = 32
    return table


@functools.cache
def _ascii_table() -> bytes:
    """`bytes.translate` table: lowercase and whitespace as a space in one pass in C."""
    return bytes(_blanks(_ASCII_SEPARATOR)[ord(chr(b).lower())] if b <= _ASCII_SEPARATOR else b for b in range(256))


def _stream(texts: Sequence[str]) -> tuple[np.ndarray, int]:
    """The records lowercased, whitespace as a space, in one array with a separator before, between
    and after them: bytes if all are ASCII, else 16-bit code points if they fit, else 32-bit."""
    if all(t.isascii() for t in texts):
        raw = chr(_ASCII_SEPARATOR).join(["", *texts, ""]).encode("latin-1")
        return np.frombuffer(raw.translate(_ascii_table()), np.uint8), _ASCII_SEPARATOR
    lowered = [t.lower() for t in texts]
    # surrogatepass: a lone surrogate (JSON may carry one) is a symbol, as in the definition.
    cp = np.frombuffer("".join(lowered).encode("utf-32-le", "surrogatepass"), "<u4")
    separator = 0xFFFF if cp.max(initial=0) < 0xFFFF else sys.maxunicode + 1
    cp = np.insert(cp, np.cumsum([0] + [len(t) for t in lowered]), separator)
    return _blanks(separator)[cp], separator


def _normalize(chars: np.ndarray, separator: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The definition's normalization of a stream: a space or symbol equal to the character before it
    goes (runs become one), and so does a space after a separator (strip). Returns the stream and its
    records' starts and lengths, these less a trailing space."""
    # Equal neighbours are rare in text: classify just those, not the whole stream.
    same = np.flatnonzero(chars[1:] == chars[:-1]) + 1
    repeat = same[_classes(separator)[chars[same]] >= _SYMBOL_CHAR]
    seps = np.flatnonzero(chars == separator)
    lead = seps[:-1] + 1
    lead = lead[chars[lead] == 32]
    if len(repeat) or len(lead):
        keep = np.ones(len(chars), bool)
        keep[repeat] = keep[lead] = False
        chars = chars[keep]
        seps = np.flatnonzero(chars == separator)
    lengths = np.diff(seps) - 1
    lengths -= (lengths > 0) & (chars[seps[1:] - 1] == 32)  # runs are single by now
    return chars, seps[:-1] + 1, lengths


def _gram_keys(chars: np.ndarray, n: int, size: int) -> np.ndarray:
    """A 64-bit key of the n-gram at each of the first `size` positions (those past the stream's
    end are padding).

    An n-gram of up to 8 bytes, 4 UTF-16 or 2 UTF-32 units is its own key: an unaligned 8-byte view
    of the stream, masked to n units, so such n-grams never collide. Longer ones take a polynomial
    of such blocks mod 2^64 (base P), by doubling: log2 passes over the array instead of n."""
    unit = chars.itemsize
    fit = 8 // unit
    buf = np.concatenate((chars, np.zeros(size + n + fit - len(chars), chars.dtype)))
    packed = np.ndarray((size + n,), "<u8", buf, strides=(unit,))

    def block(units: int) -> np.ndarray:
        return packed if units == fit else packed & np.uint64((1 << (8 * unit * units)) - 1)

    if n <= fit:
        return block(n)
    h, length, blocks = block(fit)[: size + n - fit], fit, 1  # h[i]: the units i .. i+length-1
    with np.errstate(over="ignore"):
        while 2 * length <= n:
            h = h[:-length] * np.uint64(pow(int(_MULT), blocks, 2**64)) + h[length:]
            length, blocks = 2 * length, 2 * blocks
        while length < n:  # the rest a block at a time
            units = min(fit, n - length)
            h = h[:-units] * _MULT + block(units)[length : length + len(h) - units]
            length += units
    return h


def _entropies(chars: np.ndarray, starts: np.ndarray, lengths: np.ndarray, n: int, window: int) -> np.ndarray:
    """The score of every record of a normalized stream."""
    grams = np.maximum(lengths - n + 1, 0)
    scores = np.zeros(len(grams))
    scored = np.flatnonzero(grams >= 2)
    if len(scored) == 0:
        return scores
    # Windows of W n-grams; a last window shorter than W/2 joins the one before.
    g = grams[scored]
    windows = -(-g // window)
    windows -= (windows > 1) & (g - (windows - 1) * window < window // 2)
    row_text = np.repeat(np.arange(len(scored)), windows)
    j = np.arange(len(row_text)) - np.repeat(np.cumsum(windows) - windows, windows)
    row_start = starts[scored][row_text] + j * window
    m = np.where(j == windows[row_text] - 1, g[row_text] - j * window, window)

    # Each window's keys are sorted in a row of their own: a padded 2-D sort stays in cache, unlike
    # one sort of the chunk. Rows of similar length go together so that little of it is padding.
    order = np.argsort(m, kind="stable")
    m, row_text, row_start = m[order], row_text[order], row_start[order]
    widest = int(m[-1])
    keys = np.lib.stride_tricks.sliding_window_view(_gram_keys(chars, n, len(chars) + widest), widest)
    cols = np.arange(widest)
    groups = np.flatnonzero(np.diff((m - 1) // _BUCKET)) + 1
    repeats, row_at, at = [], [], 0  # the groups' flags laid end to end: row r's first flag at row_at[r]
    for lo, hi in zip(np.append(0, groups), np.append(groups, len(m))):
        mr = m[lo:hi, None]
        width = int(mr[-1, 0])
        tail = max(width - _BUCKET, 0)  # every row of the group is full up to here
        k = keys[row_start[lo:hi], :width].view(np.int64)  # numpy sorts signed integers faster
        # Padding sorts last (the maximum), so a row's first m sorted keys are its window's.
        k[:, tail:][cols[tail:width] >= mr] = np.iinfo(np.int64).max
        k.sort(axis=1)
        flat = k.ravel()
        repeat = np.empty(len(flat), bool)  # repeat[i]: key i repeats key i - 1
        np.equal(flat[1:], flat[:-1], out=repeat[1:])
        repeat = repeat.reshape(k.shape)
        repeat[:, 0] = False  # no row continues the one before
        repeat[:, tail:][cols[tail:width] >= mr] = False
        repeats.append(np.flatnonzero(repeat) + at)
        row_at.append(at + width * np.arange(hi - lo))
        at += repeat.size
    # Only repeated n-grams add to sum c log c (c = 1 adds 0): c equal keys are a run of c - 1 flags,
    # and a run never continues into the next row (its first flag is always off).
    flags = np.concatenate(repeats)
    first = np.flatnonzero(np.diff(flags, prepend=-2) != 1)
    c = np.diff(first, append=len(flags)) + 1.0
    row = np.searchsorted(np.concatenate(row_at), flags[first], side="right") - 1
    c_log_c = np.bincount(row, weights=c * np.log(c), minlength=len(m))
    per_window = (np.log(m) - c_log_c / m) / np.log(m)  # H(w) / log|w|, with sum c = m
    scores[scored] = np.bincount(row_text, weights=per_window * m, minlength=len(scored)) / g
    return scores


def ngram_entropies(texts: Sequence[str], n: int = 8, window: int = 1024) -> np.ndarray:
    """`ngram_entropy` of many texts at once, in numpy, for the cleaning runner's chunks.

    A chunk's records are normalized in one stream with separators between them: bytes for the
    ASCII ones, 16- or 32-bit code points for the rest. Every n-gram gets a 64-bit key; each window's
    keys are sorted in a row of a 2-D array and repeats counted as runs. Equal to the per-text
    definition up to float rounding: n-grams of ASCII up to 8 characters (and of up to 4 or 2
    characters otherwise) are their own keys; longer ones are hashed, and two distinct ones of a
    window could share all 64 bits (about m²/2^65 per window of m n-grams: 6e-14 at 1,535; the
    score would move by about 1/m)."""
    scores = np.zeros(len(texts))
    ascii_ = np.fromiter((t.isascii() for t in texts), bool, len(texts))
    for group in (np.flatnonzero(ascii_), np.flatnonzero(~ascii_)):
        if len(group):
            chars, separator = _stream([texts[i] for i in group])
            scores[group] = _entropies(*_normalize(chars, separator), n, window)
    return scores


class NotEmpty(Filter):
    name = "not_empty"

    def check(self, record: Record) -> Verdict:
        return None if record.text and record.text.strip() else Reject("text_empty", "empty or whitespace only")


class MinWords(Filter):
    name = "min_words"

    def __init__(self, min_words: int):
        self.min_words = min_words

    def check(self, record: Record) -> Verdict:
        # Counting stops at the bound: a document's length does not matter once it has enough words.
        n = sum(1 for _ in zip(WORD.finditer(record.text or ""), range(self.min_words)))
        return None if n >= self.min_words else Reject("too_few_words", f"{n} words < {self.min_words}")


class Entropy(Filter):
    name = "entropy"

    def __init__(self, threshold: float, n: int, window: int):
        self.threshold, self.n, self.window = threshold, n, window

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        """A chunk at once (`ngram_entropies`); `check` is the per-record definition."""
        for record, score in zip(records, ngram_entropies([r.text or "" for r in records], self.n, self.window)):
            record.entropy = float(score)
        return [self._verdict(r) for r in records]

    def check(self, record: Record) -> Verdict:
        record.entropy = ngram_entropy(record.text or "", self.n, self.window)
        return self._verdict(record)

    def _verdict(self, record: Record) -> Verdict:
        if record.entropy > self.threshold:
            return None
        return Reject("entropy_low", f"entropy {record.entropy:.3f} <= {self.threshold}")


def text_filters(cfg: TextFilterConfig) -> list[Filter]:
    return [NotEmpty(), MinWords(cfg.min_words), Entropy(cfg.entropy_threshold, cfg.entropy_ngram, cfg.entropy_window)]

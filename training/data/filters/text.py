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


_MULT = np.uint64(0x100000001B3)  # FNV's 64-bit prime as the polynomial base of the n-gram hash


@functools.cache
def _classes() -> tuple[np.ndarray, np.ndarray]:
    """(is_space, is_word) for every code point, as `re` decides whitespace and word characters."""
    chars = [chr(c) for c in range(sys.maxunicode + 1)]
    is_space = np.fromiter((ch.isspace() for ch in chars), bool, len(chars))
    is_word = np.fromiter((ch.isalnum() or ch == "_" for ch in chars), bool, len(chars))
    return is_space, is_word


def _polynomial_hashes(x: np.ndarray, n: int) -> np.ndarray:
    """hash(x[i:i+n]) = sum_k x[i+k]·P^(n-1-k) mod 2^64 for every i, by doubling (a hash of length 2L
    from two of length L): log2(n) passes over the array instead of n."""
    if len(x) < n:
        return np.zeros(0, np.uint64)
    h, length = x, 1
    with np.errstate(over="ignore"):
        while 2 * length <= n:
            h = h[:-length] * np.uint64(pow(int(_MULT), length, 2**64)) + h[length:]
            length *= 2
        while length < n:  # the rest one code point at a time (none when n is a power of two)
            h = h[:-1] * _MULT + x[length:]
            length += 1
    return h


def ngram_entropies(texts: Sequence[str], n: int = 8, window: int = 1024) -> np.ndarray:
    """`ngram_entropy` of many texts at once, in numpy, for the cleaning runner's chunks.

    The normalization works on code points (whitespace runs to one space, runs of one repeated
    symbol to one, trimmed); each n-gram becomes a 64-bit polynomial hash; one sort of a key that
    holds the (text, window) id in its high bits and the hash's top bits below gives the n-gram
    counts as runs. Equal to the per-text definition up to float rounding, unless two n-grams of
    one window agree in the ~50 hash bits the key keeps (chance about 1e-9 per window at 1,024
    n-grams; the window's score would move by about 1/1024)."""
    if not texts:
        return np.zeros(0)
    lowered = [t.lower() for t in texts]
    lengths = np.fromiter((len(t) for t in lowered), np.int64, len(lowered))
    cp = np.frombuffer("".join(lowered).encode("utf-32-le"), np.uint32).astype(np.int64)
    is_space, is_word = _classes()
    space, word = is_space[cp], is_word[cp]
    cp[space] = 32
    first = np.zeros(len(cp), bool)
    first[np.cumsum(lengths)[:-1][lengths[1:] > 0] if len(lengths) > 1 else []] = True
    first[0:1] = True
    same_as_previous = np.concatenate(([False], cp[1:] == cp[:-1])) & ~first
    keep = ~(same_as_previous & (space | ~word))  # a space or symbol repeating the one before
    text_of = np.repeat(np.arange(len(texts)), lengths)
    cp, space, text_of = cp[keep], space[keep], text_of[keep]
    # Trim one leading and one trailing space per text (runs are already single).
    counts = np.bincount(text_of, minlength=len(texts))
    ends = np.cumsum(counts)
    starts = ends - counts
    trim = np.zeros(len(cp), bool)
    nonempty = counts > 0
    trim[starts[nonempty]] |= space[starts[nonempty]]
    trim[ends[nonempty] - 1] |= space[ends[nonempty] - 1]
    cp, text_of = cp[~trim], text_of[~trim]
    lengths = np.bincount(text_of, minlength=len(texts))

    grams = np.maximum(lengths - n + 1, 0)
    if grams.sum() == 0:
        return np.zeros(len(texts))
    h = _polynomial_hashes(cp.astype(np.uint64), n)
    offsets = np.cumsum(lengths) - lengths
    owner = np.repeat(np.arange(len(texts)), grams)
    local = np.arange(grams.sum()) - np.repeat(np.cumsum(grams) - grams, grams)
    h = h[offsets[owner] + local]
    # splitmix64's finalizer: a bijection (no new collisions) that spreads every input bit over the
    # top bits the sort key keeps; the polynomial alone leaves them poorly mixed.
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xFF51AFD7ED558CCD)
        h ^= h >> np.uint64(33)
        h *= np.uint64(0xC4CEB9FE1A85EC53)
        h ^= h >> np.uint64(33)
    # Windows of W n-grams; a last window shorter than W/2 joins the one before.
    windows = np.maximum(-(-grams // window), 1)
    windows -= (windows > 1) & (grams - (windows - 1) * window < window // 2)
    wid = (np.cumsum(windows) - windows)[owner] + np.minimum(local // window, windows[owner] - 1)
    bits = np.uint64(max(1, int(windows.sum()).bit_length()))
    key = np.sort((wid.astype(np.uint64) << (np.uint64(64) - bits)) | (h >> bits))
    runs = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    run_counts = np.diff(np.append(runs, len(key))).astype(np.float64)
    run_window = (key[runs] >> (np.uint64(64) - bits)).astype(np.int64)
    m = np.bincount(wid, minlength=int(windows.sum())).astype(np.float64)
    c_log_c = np.bincount(run_window, weights=run_counts * np.log(run_counts), minlength=len(m))
    with np.errstate(divide="ignore", invalid="ignore"):
        per_window = np.where(m >= 2, (np.log(m) - c_log_c / m) / np.log(m), 0.0)  # H(w) / log|w|
    weighted = np.bincount(np.repeat(np.arange(len(texts)), windows), weights=per_window * m, minlength=len(texts))
    return np.divide(weighted, grams, out=np.zeros(len(texts)), where=grams >= 2)


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

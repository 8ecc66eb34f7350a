"""Language identification of text records: py3langid's model (Lui & Baldwin's langid.py, retrained:
142 classes, byte n-gram features, naive Bayes), which ships inside its wheel, so nothing is
downloaded. Every text record that reaches the filter gets `language` (an ISO 639-1 code); with an
allow-list in `LanguageConfig`, the others are rejected as `language_not_allowed`.

py3langid classifies one document at a time in a Python loop over its bytes (1,200 documents of
1 KB a second on one core here). kiln runs the same model on a chunk at once: the model's byte
automaton steps every document of the chunk with one numpy gather per byte position, one sort of
(document, feature) keys counts each document's features, and torch's embedding bag (a weighted
sum of table rows per document, twice as fast on one core as scipy's sparse product) gives the
naive Bayes scores. Only a prefix of each document is read (`LanguageConfig.prefix_bytes`): the
cost is one automaton step per byte, and a few hundred bytes decide the language almost as well as
the whole document. The result is py3langid's own `classify` of the same prefix
(tests/training/test_language.py checks it), with dialect classes folded into their ISO 639-1
macrolanguage (`MACROLANGUAGE`).
"""

from __future__ import annotations

import contextlib
import functools
import unicodedata
from collections.abc import Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from training.config import LanguageConfig
from training.data.filters.base import Filter, Verdict
from training.data.records import Record, Reject

UNDETERMINED = "und"
"""ISO 639-2's code for a document with no feature the model knows (no letters, no digits)."""

MACROLANGUAGE = {"wuu": "zh", "yue": "zh", "arz": "ar", "ary": "ar", "uzs": "uz", "gug": "gn", "fuv": "ff", "sdh": "ku", "ltg": "lv"}
"""py3langid's classes without an ISO 639-1 code of their own whose macrolanguage has one: Wu and
Cantonese written in Han characters are Chinese (zh) to a corpus, Egyptian Arabic is Arabic. The
remaining classes without a two-letter code (e.g. ace, bcl, crh, zxx: no linguistic content) keep
py3langid's three-letter code."""

_UNSIGNED = {2: np.uint16, 4: np.uint32, 8: np.uint64}


def _array(typed) -> np.ndarray:
    """A stdlib `array` of py3langid's model as a numpy view."""
    return np.frombuffer(typed, _UNSIGNED[typed.itemsize])


class LanguageModel:
    """py3langid's model, scored a chunk of documents at a time."""

    def __init__(self) -> None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        model = LanguageIdentifier.from_model_file(MODEL_FILE)
        self.next_state = _array(model.tk_nextmove).astype(np.int32)
        self.row_base = _array(model.tk_row).astype(np.int32) << 8  # a state's 256 transitions start here
        self.feature = np.asarray(model.tk_output, np.int32)  # the feature a state emits, or -1
        self.log_prob = torch.from_numpy(np.asarray(model.nb_ptc, np.float32))  # features x classes: log P(f | class)
        self.prior = np.asarray(model.nb_pc, np.float32)
        names = [MACROLANGUAGE.get(c, c) for c in model.nb_classes]
        self.codes = sorted(set(names))
        self.code_of = np.array([self.codes.index(c) for c in names])  # class -> code (several classes share one)
        self._log1p = np.zeros(0, np.float32)

    def _weights(self, counts: np.ndarray) -> np.ndarray:
        """log(1 + count), py3langid's weight of a feature seen `count` times, from a table."""
        if len(self._log1p) <= counts.max(initial=0):
            self._log1p = np.log1p(np.arange(2 * counts.max() + 1, dtype=np.float32))
        return self._log1p[counts]

    def classify(self, texts: Sequence[str], prefix_bytes: int) -> list[tuple[str, float]]:
        """(ISO code, probability) of each text, from its first `prefix_bytes` bytes."""
        if not texts:
            return []
        data = [_prefix(t, prefix_bytes) for t in texts]
        lengths = np.fromiter(map(len, data), np.int64, len(data))
        order = np.argsort(-lengths, kind="stable")  # longest first: those still reading are a prefix of the columns
        logits = np.empty((len(texts), len(self.prior)), np.float32)
        logits[order] = self._logits(self._features([data[i] for i in order], lengths[order]))
        # py3langid's argmax, its aliases (srl, sr) and kiln's macrolanguages folded into one code.
        best = self.code_of[logits.argmax(axis=1)]
        # py3langid's probabilities: a softmax at temperature sqrt(bytes), so confidence does not grow with length.
        logits /= np.sqrt(np.maximum(lengths, 1)).astype(np.float32)[:, None]
        probs = np.exp(logits - logits.max(axis=1, keepdims=True))
        top = (probs * (self.code_of == best[:, None])).sum(axis=1) / probs.sum(axis=1)
        codes = np.array(self.codes, object)[best]
        codes[np.isnan(logits[:, 0])] = UNDETERMINED
        return list(zip(codes.tolist(), np.round(np.nan_to_num(top).astype(np.float64), 4).tolist()))

    def _features(self, data: list[bytes], lengths: np.ndarray) -> np.ndarray:
        """The feature the model's automaton emits at each byte (rows) of each document (columns,
        longest first), -1 where none or past the document's end."""
        n, width = len(data), int(lengths[0])
        columns = np.zeros((width, n), np.int32)  # byte i of every document, one contiguous row per i
        columns.T[np.arange(width) < lengths[:, None]] = np.frombuffer(b"".join(data), np.uint8)
        reading = np.searchsorted(-lengths, -np.arange(width), side="left")  # documents longer than i
        state, at = np.zeros(n, np.int32), np.empty(n, np.int32)
        emitted = np.full((width, n), -1, np.int32)
        for i in range(width):
            k = reading[i]
            np.take(self.row_base, state[:k], out=at[:k])
            at[:k] += columns[i, :k]
            np.take(self.next_state, at[:k], out=state[:k])
            np.take(self.feature, state[:k], out=emitted[i, :k])
        return emitted

    def _logits(self, features: np.ndarray) -> np.ndarray:
        """py3langid's naive Bayes score of each class for each document (columns of `features`):
        log P(class) + sum over distinct features f of log(1 + count f) * log P(f | class). NaN
        for a document without features."""
        width, n = features.shape
        if width == 0:  # every document empty
            return np.full((n, len(self.prior)), np.nan, np.float32)
        shift = int(len(self.log_prob)).bit_length()  # a key is (document << shift) | (feature + 1)
        # One sort of (document, feature) keys brings each document's equal features together.
        keys = features.astype(np.int32 if n << shift < 2**31 else np.int64)
        keys += (np.arange(n, dtype=keys.dtype) << shift) + 1  # -1 (no feature) becomes the document's key 0
        keys = np.sort(keys, axis=None)
        first = np.empty(len(keys), bool)
        first[0] = True
        np.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = np.flatnonzero(first)
        counts = np.diff(starts, append=len(keys))
        keys = keys[starts]
        feature = (keys & ((1 << shift) - 1)) - 1
        found = feature >= 0
        docs, feature, counts = keys[found] >> shift, feature[found], counts[found]
        offsets = np.searchsorted(docs, np.arange(n))
        # A weighted sum of table rows per document: exactly what an embedding bag computes.
        with _one_thread():
            sums = F.embedding_bag(
                torch.from_numpy(feature), self.log_prob, torch.from_numpy(offsets.astype(feature.dtype)),
                mode="sum", per_sample_weights=torch.from_numpy(self._weights(counts)),
            ).numpy()
        sums += self.prior
        sums[np.bincount(docs, minlength=n) == 0] = np.nan
        return sums


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    """A chunk's bag is about a millisecond of work: split across torch's threads it took 40% more
    CPU time in all (their spinning), for little less wall time. Cleaning calls torch from one
    thread at a time, so the setting is restored before anything else can use it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _prefix(text: str, size: int) -> bytes:
    """What py3langid reads of `text`: an all-uppercase text lowercased, NFC, UTF-8; cut to `size`
    bytes at a character boundary."""
    head = text[:size]
    if head.isupper():
        head = head.lower()
    if not head.isascii():
        head = unicodedata.normalize("NFC", head)
        data = head.encode("utf-8", "surrogatepass")
        return data[:size].decode("utf-8", "ignore").encode() if len(data) > size else data
    return head.encode("ascii")


@functools.cache
def language_model() -> LanguageModel:
    """Loaded once per process (0.8 s): a cleaning run classifies every batch with it."""
    return LanguageModel()


class LanguageId(Filter):
    """Sets `language` on every text record it sees; with an allow-list, rejects the others."""

    name = "language"

    def __init__(self, cfg: LanguageConfig):
        self.cfg = cfg
        self.allow = frozenset(cfg.allow)

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        found = language_model().classify([r.text or "" for r in records], self.cfg.prefix_bytes)
        for record, (code, _) in zip(records, found):
            record.language = code
        return [self._verdict(code, p) for code, p in found]

    def check(self, record: Record) -> Verdict:
        return self([record])[0]

    def _verdict(self, code: str, probability: float) -> Verdict:
        if not self.allow or code in self.allow:
            return None
        return Reject("language_not_allowed", f"{code} {probability:.2f}")

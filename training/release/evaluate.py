"""Evaluation on the held-out split, which no stage trains on.

- Perplexity, overall, per modality and per difficulty level: exp(summed token NLL / predicted tokens).
  Each record is scored as the trainer saw records (<|begin_of_text|> text <|end_of_text|>), in windows
  of the model's context length. Also per byte: exp(summed NLL / UTF-8 bytes), which does not depend on
  the tokenizer, so models with different tokenizers compare fairly (the regression gate uses it).
- Continuations: each record's beginning (as the difficulty split cuts it) is continued greedily and
  cut to the true continuation's word count, then scored against it with sacrebleu's BLEU and chrF.
- Code: the share of continuations after which the file still parses with Tree-sitter (no ERROR node;
  MISSING nodes are allowed, since a file cut short lacks its closing brackets), beside the same share
  for the true continuations as the reference.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pyarrow.parquet as pq
import sacrebleu
import torch
import torch.nn.functional as F

from training.config import EvaluationConfig
from training.curriculum.difficulty import split_record
from training.data.filters.code import grammars, parser_for
from training.data.filters.text import WORD
from training.data.readers import CODE_LANGUAGES
from training.generate import device_for, encode_records, greedy_continuations


def record_nll(model, tokenizer, texts: list[str], batch_size: int) -> tuple[list[float], list[int], float]:
    """Per record: summed NLL (nats) and predicted tokens; and tokens/s of the forward passes."""
    device = device_for(model)
    window = model.config.max_position_embeddings
    # Every window of every record, remembering which record it belongs to.
    windows: list[tuple[int, list[int]]] = []
    for r, ids in enumerate(encode_records(tokenizer, texts)):
        windows += [(r, ids[s : s + window]) for s in range(0, len(ids), window) if len(ids[s : s + window]) > 1]
    windows.sort(key=lambda w: len(w[1]))  # similar lengths per batch: little padding
    nll, count = [0.0] * len(texts), [0] * len(texts)
    tokens, seconds = 0, 0.0
    for i in range(0, len(windows), batch_size):
        chunk = windows[i : i + batch_size]
        width = max(len(ids) for _, ids in chunk)
        ids = torch.tensor([w + [0] * (width - len(w)) for _, w in chunk], device=device)
        mask = torch.tensor([[1] * len(w) + [0] * (width - len(w)) for _, w in chunk], device=device)
        start = time.perf_counter()
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask, use_cache=False).logits.float()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds += time.perf_counter() - start
        losses = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none") * mask[:, 1:]
        for (record, w), row in zip(chunk, losses.sum(dim=1).tolist()):
            nll[record] += row
            count[record] += len(w) - 1
        tokens += int(mask.sum())
    return nll, count, tokens / seconds if seconds else 0.0


def _summary(nll: float, tokens: int, nbytes: int, records: int) -> dict:
    return {
        "records": records,
        "tokens": tokens,
        "perplexity": round(math.exp(nll / tokens), 4) if tokens else None,
        "byte_perplexity": round(math.exp(nll / nbytes), 4) if nbytes else None,
        "bits_per_byte": round(nll / nbytes / math.log(2), 4) if nbytes else None,
    }


def group(rows: Iterable[tuple[str, float, int, int]]) -> dict[str, dict]:
    acc: dict[str, list] = defaultdict(lambda: [0.0, 0, 0, 0])
    for key, nll, tokens, nbytes in rows:
        a = acc[key]
        a[0], a[1], a[2], a[3] = a[0] + nll, a[1] + tokens, a[2] + nbytes, a[3] + 1
    return {k: _summary(*v) for k, v in sorted(acc.items())}


def cut_to_words(text: str, words: int) -> str:
    spans = [m.end() for m, _ in zip(WORD.finditer(text), range(words))]
    return text[: spans[-1]] if len(spans) == words else text


def parses(language: str, source: str) -> bool:
    """True when Tree-sitter finds no ERROR node in `source` cut after its last complete line (`.h`: with C or C++)."""
    complete = source[: source.rfind("\n") + 1] or source

    def has_error(node) -> bool:
        return node.is_error or (node.has_error and any(has_error(c) for c in node.children))

    return any(not has_error(parser_for(g).parse(complete.encode()).root_node) for g in grammars(language))


def load_heldout(path: Path, max_records: int | None) -> list[dict]:
    """The held-out records; above `max_records`, an evenly spaced subset, so every modality and level
    keeps its share (the file is sorted by modality and id)."""
    records = pq.read_table(path, columns=["id", "modality", "level", "text"]).to_pylist()
    if max_records is None or len(records) <= max_records:
        return records
    return [records[i * len(records) // max_records] for i in range(max_records)]


def evaluate(model, tokenizer, heldout: Path, cfg: EvaluationConfig, span_words: int) -> dict:
    records = load_heldout(heldout, cfg.max_records)
    if not records:
        raise ValueError(f"{heldout} holds no held-out records to evaluate on")
    model.eval()
    texts = [r["text"] for r in records]
    nll, count, tokens_per_s = record_nll(model, tokenizer, texts, cfg.batch_size)
    nbytes = [len(t.encode()) for t in texts]
    rows = list(zip(records, nll, count, nbytes))
    result = {
        "overall": group(("all", n, c, b) for _, n, c, b in rows)["all"],
        "by_modality": group((r["modality"], n, c, b) for r, n, c, b in rows),
        "by_level": group((str(r["level"]), n, c, b) for r, n, c, b in rows),
        "forward_tokens_per_s": round(tokens_per_s, 1),
    }

    splits = [split_record(t, span_words) for t in texts]
    usable = [(r, b, c) for r, (b, c) in zip(records, splits) if c.strip()]
    start = time.perf_counter()
    generated = greedy_continuations(model, tokenizer, [b for _, b, _ in usable], cfg.max_new_tokens, cfg.batch_size)
    result["generation_seconds"] = round(time.perf_counter() - start, 2)
    by_modality: dict[str, tuple[list[str], list[str]]] = defaultdict(lambda: ([], []))
    parse_model, parse_truth = [], []
    for (record, beginning, truth), guess in zip(usable, generated):
        guess = cut_to_words(guess, len(WORD.findall(truth)))
        hyps, refs = by_modality[record["modality"]]
        hyps.append(guess)
        refs.append(truth)
        language = CODE_LANGUAGES.get(Path(record["id"]).suffix.lower()) if record["modality"] == "code" else None
        if language:
            parse_model.append(parses(language, beginning + guess))
            parse_truth.append(parses(language, beginning + truth))
    all_hyps = [h for hs, _ in by_modality.values() for h in hs]
    all_refs = [r for _, rs in by_modality.values() for r in rs]
    result["continuation"] = {
        name: {
            "records": len(h),
            "bleu": round(sacrebleu.corpus_bleu(h, [r]).score, 2),
            "chrf": round(sacrebleu.corpus_chrf(h, [r]).score, 2),
        }
        for name, (h, r) in [("all", (all_hyps, all_refs)), *sorted(by_modality.items())]
    }
    result["code_parseable"] = round(sum(parse_model) / len(parse_model), 4) if parse_model else None
    result["code_parseable_reference"] = round(sum(parse_truth) / len(parse_truth), 4) if parse_truth else None
    result["code_files"] = len(parse_model)
    return result

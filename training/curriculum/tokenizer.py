"""Byte-level BPE tokenizer trained with Hugging Face `tokenizers` on the cleaned training records.

Byte-level means every string (any script, code, emoji) encodes without an unknown token and
decodes back exactly; special tokens use the `<|...|>` form so ordinary text never contains them.
Saved as tokenizer.json + tokenizer_config.json, loadable with `AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow.dataset as ds
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from training.cache import record
from training.config import TokenizerConfig
from training.curriculum.contamination import find_overlaps
from training.curriculum.difficulty import is_heldout
from training.fsutil import atomic_path
from training.generate import encode_records

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>"


STEP, VERSION = "tokenizer", 2  # 2: no special tokens added by the tokenizer itself
"""The tokenizer's step name and logic version in its cache key (training/cache.py): bump VERSION
when this module changes what it writes."""


def fit_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size,
        min_frequency=cfg.min_frequency,
        special_tokens=[PAD, UNK, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer)
    # No post-processor: encoding a text adds no special tokens, as with GPT-2's tokenizer. kiln writes
    # <|begin_of_text|> and <|end_of_text|> around each record itself (training.generate.encode_records),
    # and tools that add their own (lm-evaluation-harness's rolling log-likelihood puts a
    # <|begin_of_text|> in front) then score exactly the tokens training saw, with no token doubled.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, clean_up_tokenization_spaces=False
    )


def save_tokenizer(tok: PreTrainedTokenizerFast, out_dir: Path, key: str | None = None, result: dict | None = None) -> None:
    """Write `tok` to `out_dir` atomically; with `key`, the step's record of `result` goes in last."""
    with atomic_path(out_dir) as tmp:
        tok.save_pretrained(tmp)
        if key is not None:
            record(tmp, STEP, VERSION, key, result or {})


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> PreTrainedTokenizerFast:
    fast = fit_tokenizer(texts, cfg)
    save_tokenizer(fast, out_dir)
    return fast


def bytes_per_token(tokenizer: PreTrainedTokenizerFast, texts: Iterable[tuple[str, str]]) -> dict[str, float]:
    """Bytes per token of (modality, text) pairs, per modality in order of appearance."""
    per_modality: dict[str, list[int]] = {}
    for modality, text in texts:
        acc = per_modality.setdefault(modality, [0, 0])
        acc[0] += len(text.encode())
        acc[1] += len(tokenizer(text, add_special_tokens=False)["input_ids"])
    return {m: round(b / max(t, 1), 3) for m, (b, t) in per_modality.items()}


def round_trip_failures(tokenizer: PreTrainedTokenizerFast, texts: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Ids of (id, text) pairs that do not decode back to exactly themselves."""
    for record_id, text in texts:
        ids = encode_records(tokenizer, [text])[0]
        if tokenizer.decode(ids, skip_special_tokens=True) != text:
            yield record_id


Records = list[tuple[str, str, str]]
"""(modality, id, text) of cleaned records."""

PROBES = [
    ("probe/chinese", "分词器决定了模型看到的基本单位。字节级的方法可以覆盖任何语言。"),
    ("probe/code", "fn main() {\n\tlet v: Vec<i32> = vec![1, 2];\n    println!(\"{:?}\", v);\n}\n"),
    ("probe/mixed", "  leading spaces, tabs\t, émoji 🎉, and a trailing newline\n"),
]
"""Always round-tripped besides the held-out records, so the check covers Chinese and code even when
the held-out share happens to contain neither."""


def split_corpus(corpus_dir: Path, heldout_share: float) -> tuple[Records, Records]:
    """(training, held-out) records of the cleaned corpus, by the difficulty step's held-out rule."""
    rows = ds.dataset(corpus_dir, format="parquet").to_table(columns=["id", "modality", "text"]).to_pylist()
    sides: tuple[Records, Records] = ([], [])
    for r in rows:
        sides[1 if is_heldout(r["modality"], r["id"], heldout_share) else 0].append((r["modality"], r["id"], r["text"]))
    return sides


def training_texts(train: Records, heldout: Records, ngram: int) -> tuple[list[str], int]:
    """The training texts less those the curriculum moves to contaminated.parquet (the curriculum runs
    after the tokenizer, so the same rule is applied here): (texts, records left out)."""
    texts = [t for _, _, t in train]
    overlapping = {o.train for o in find_overlaps(texts, [t for _, _, t in heldout], ngram)}
    return [t for i, t in enumerate(texts) if i not in overlapping], len(overlapping)

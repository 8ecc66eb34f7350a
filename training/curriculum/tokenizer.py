"""Byte-level BPE tokenizer trained with Hugging Face `tokenizers` on the cleaned training records.

Byte-level means every string (any script, code, emoji) encodes without an unknown token and
decodes back exactly; special tokens use the `<|...|>` form so ordinary text never contains them.
Saved as tokenizer.json + tokenizer_config.json, loadable with `AutoTokenizer.from_pretrained(dir)`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from training.cache import record
from training.config import TokenizerConfig
from training.fsutil import atomic_path

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>"


STEP, VERSION = "tokenizer", 1
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
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, tok.token_to_id(BOS)), (EOS, tok.token_to_id(EOS))]
    )
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
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if tokenizer.decode(ids, skip_special_tokens=True) != text:
            yield record_id

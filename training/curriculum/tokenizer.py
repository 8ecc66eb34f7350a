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

from training.config import TokenizerConfig
from training.fsutil import atomic_path

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>"


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig, out_dir: Path) -> PreTrainedTokenizerFast:
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
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK, clean_up_tokenization_spaces=False
    )
    with atomic_path(out_dir) as tmp:
        fast.save_pretrained(tmp)
    return fast


def round_trip_failures(tokenizer: PreTrainedTokenizerFast, texts: Iterable[tuple[str, str]]) -> Iterator[str]:
    """Ids of (id, text) pairs that do not decode back to exactly themselves."""
    for record_id, text in texts:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
        if tokenizer.decode(ids, skip_special_tokens=True) != text:
            yield record_id

"""Byte-level BPE tokenizer trained with Hugging Face `tokenizers` on the cleaned training records.

Byte-level means every string (any script, code, emoji) encodes without an unknown token and
decodes back exactly; special tokens use the `<|...|>` form so ordinary text never contains them.
Saved as tokenizer.json + tokenizer_config.json, loadable with `AutoTokenizer.from_pretrained(dir)`.

What it is fitted on (`fit_corpus_tokenizer`): a bounded, deterministic sample of the corpus's training
split, streamed from the corpus Parquet a record batch at a time in three passes, so memory is set by
the held-out share, the sample and a chunk, never by the whole corpus:
1. the held-out records (the difficulty step's `is_heldout` rule) are collected and the training split's
   text bytes counted; the held-out records make the n-gram index of `contamination.HeldoutIndex`.
2. a training record is in the sample when a hash of its (modality, id), independent of the held-out
   hash, falls under `sample_bytes / training split bytes`; the sampled records of each chunk go
   through the index, which names those sharing `ngram` words with a held-out record (the
   curriculum's contaminated records); the index is then freed.
3. the sample less those records feeds `Tokenizer.train_from_iterator` as a generator, as the stages
   leave them out.
When the training split fits (fraction >= 1) every training record is used, in the order
`pyarrow.dataset` reads the corpus (batch folders, then modality files): the tokenizer is then the one
fitted on the whole split. A record sampled at one fraction is sampled at every larger one: as the corpus
grows and the fraction falls, the sample loses some records and gains some of the new ones, nothing else.

`release_tokenizer` finds the latest release's tokenizer, which `copy_release_tokenizer` reuses instead
of fitting (`TokenizerConfig.source = "release"`).
"""

from __future__ import annotations

import gc
import hashlib
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from training.cache import record
from training.config import TokenizerConfig
from training.curriculum.contamination import HeldoutIndex
from training.curriculum.difficulty import is_heldout
from training.fsutil import atomic_path, sha256_file
from training.generate import encode_records
from training.layout import TOKENIZER_JSON, Layout, latest

PAD, UNK, BOS, EOS = "<|pad|>", "<|unk|>", "<|begin_of_text|>", "<|end_of_text|>"


STEP, VERSION = "tokenizer", 3  # 2: no special tokens added by the tokenizer itself; 3: a bounded sample, or the release's
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




READ_ROWS = 1024
"""Rows read from the corpus at a time: with records of a few KB, a few MB of text per chunk."""
TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json")
"""The files of a Hugging Face tokenizer that a release carries beside its model (those present are copied)."""
_SAMPLE_PERSON = b"kiln-tok-sample"
"""blake2b personalisation: the sample's hash of (modality, id) is independent of the held-out one."""


def in_sample(modality: str, record_id: str, fraction: float) -> bool:
    """Whether a training record is in the tokenizer's sample at `fraction` of the training split;
    deterministic, and a record in the sample at some fraction is in it at every larger one."""
    if fraction >= 1:
        return True
    digest = hashlib.blake2b(f"{modality}\0{record_id}".encode(), digest_size=8, person=_SAMPLE_PERSON).digest()
    return int.from_bytes(digest, "big") / 2**64 < fraction


def _corpus_chunks(corpus_dir: Path, heldout_share: float) -> Iterator[tuple[pa.RecordBatch, list[str], list[str], np.ndarray]]:
    """(record batch of id, modality, text; ids; modalities; held-out mask) of the whole corpus, in the
    order `ds.dataset(corpus_dir).to_table()` reads it, a batch of READ_ROWS rows at a time."""
    for fragment in ds.dataset(corpus_dir, format="parquet").get_fragments():
        for batch in pq.ParquetFile(fragment.path).iter_batches(batch_size=READ_ROWS, columns=["id", "modality", "text"]):
            ids, modalities = batch.column("id").to_pylist(), batch.column("modality").to_pylist()
            held = np.fromiter((is_heldout(m, i, heldout_share) for m, i in zip(modalities, ids)), dtype=bool, count=len(ids))
            yield batch, ids, modalities, held


def heldout_records(corpus_dir: Path, heldout_share: float) -> Iterator[Records]:
    """The held-out (modality, id, text) records of the corpus, a chunk at a time, in corpus order."""
    for batch, ids, modalities, held in _corpus_chunks(corpus_dir, heldout_share):
        if rows := np.flatnonzero(held).tolist():
            texts = batch.column("text").take(pa.array(rows)).to_pylist()
            yield [(modalities[r], ids[r], t) for r, t in zip(rows, texts)]


@dataclass
class Sample:
    """What the tokenizer was fitted on: the record of `fit_corpus_tokenizer`'s sample."""

    sample_bytes: int
    """The configured bound (`TokenizerConfig.sample_bytes`)."""
    split_records: int = 0
    """Records of the training split (the corpus less held-out records)."""
    split_bytes: int = 0
    """Their UTF-8 text bytes: the denominator of `fraction`."""
    fraction: float = 1.0
    """sample_bytes / split_bytes, at most 1: the share of the training split sampled."""
    records: int = 0
    """Sampled records trained on (contaminated ones left out)."""
    bytes: int = 0
    """Their text bytes."""
    left_out_overlapping_heldout: int = 0
    """Sampled records left out for sharing `ngram` words with a held-out record."""


def _sampled_rows(corpus_dir: Path, heldout_share: float, fraction: float) -> Iterator[tuple[int, list[int], pa.RecordBatch]]:
    """(chunk number, rows of the sample in the chunk, the chunk) for every chunk of the corpus."""
    for n, (batch, ids, modalities, held) in enumerate(_corpus_chunks(corpus_dir, heldout_share)):
        yield n, [r for r in np.flatnonzero(~held).tolist() if in_sample(modalities[r], ids[r], fraction)], batch


def _contaminated(corpus_dir: Path, heldout_share: float, fraction: float, index: HeldoutIndex) -> set[tuple[int, int]]:
    """(chunk number, row) of the sampled records sharing `index.n` words with a held-out record, the
    sample streamed through the index a chunk at a time."""
    found: set[tuple[int, int]] = set()
    for n, rows, batch in _sampled_rows(corpus_dir, heldout_share, fraction):
        if rows:
            texts = batch.column("text").take(pa.array(rows)).to_pylist()
            found.update((n, rows[o.train]) for o in index.overlaps(texts))
    return found


def _sampled_texts(corpus_dir: Path, heldout_share: float, contaminated: set[tuple[int, int]], sample: Sample) -> Iterator[str]:
    """The texts of the sample less `contaminated`, in corpus order; counts them into `sample`."""
    for n, rows, batch in _sampled_rows(corpus_dir, heldout_share, sample.fraction):
        for r, text in zip(rows, batch.column("text").take(pa.array(rows)).to_pylist() if rows else []):
            if (n, r) not in contaminated and text is not None:
                sample.records += 1
                sample.bytes += len(text.encode())
                yield text


def fit_corpus_tokenizer(
    corpus_dir: Path, cfg: TokenizerConfig, heldout_share: float, ngram: int
) -> tuple[PreTrainedTokenizerFast, dict]:
    """Fit the tokenizer on the sample of the corpus's training split (see the module docstring);
    returns it with its result: vocab_size, training_records, left_out_overlapping_heldout,
    bytes_per_token of the held-out records by modality, and the sample (`Sample`).

    Three streamed passes: the held-out records and the split's size; the sample through the held-out
    index, keeping only the (chunk, row) of contaminated records; then the sample less those into the
    trainer. The index (its arrays and word ids grow with the held-out share of the corpus: 0.7 GB
    resident at 1M records of 1 KB) is freed before the trainer's memory (which grows with the distinct
    words sampled) is taken, so the peak is the larger of the two, not their sum."""
    sample = Sample(cfg.sample_bytes)
    heldout: list[str] = []  # about heldout_share of the corpus's text: the index keeps it to confirm matches
    for batch, _, _, held in _corpus_chunks(corpus_dir, heldout_share):
        lengths = pc.binary_length(batch.column("text")).fill_null(0).to_numpy(zero_copy_only=False)
        sample.split_records += int((~held).sum())
        sample.split_bytes += int(lengths[~held].sum())
        if rows := np.flatnonzero(held).tolist():
            heldout += batch.column("text").take(pa.array(rows)).to_pylist()
    sample.fraction = min(1.0, cfg.sample_bytes / sample.split_bytes) if sample.split_bytes else 1.0
    index = HeldoutIndex(heldout, ngram)
    contaminated = _contaminated(corpus_dir, heldout_share, sample.fraction, index)
    sample.left_out_overlapping_heldout = len(contaminated)
    del index, heldout
    gc.collect()
    tok = fit_tokenizer(_sampled_texts(corpus_dir, heldout_share, contaminated, sample), cfg)
    held = ((m, t) for chunk in heldout_records(corpus_dir, heldout_share) for m, _, t in chunk)
    result = {
        "source": "train",
        "vocab_size": len(tok),
        "training_records": sample.records,
        "left_out_overlapping_heldout": sample.left_out_overlapping_heldout,
        "bytes_per_token": bytes_per_token(tok, held),
        "sample": asdict(sample) | {"fraction": round(sample.fraction, 6)},
    }
    return tok, result


def release_tokenizer(data_root: Path) -> Path | None:
    """The tokenizer.json of the latest release under `data_root` (its other tokenizer files beside
    it), or None before the first release."""
    release = latest(Layout(data_root).releases)
    if release is not None and (release / TOKENIZER_JSON).is_file():
        return release / TOKENIZER_JSON
    return None


def release_inputs(tokenizer_json: Path) -> list[Path]:
    """The files a tokenizer copied from a release depends on: in its cache key."""
    return [tokenizer_json.parent / name for name in TOKENIZER_FILES]


def copy_release_tokenizer(tokenizer_json: Path, corpus_dir: Path, heldout_share: float, out_dir: Path, key: str) -> dict:
    """Copy the release tokenizer at `tokenizer_json` (and its other files) to `out_dir` atomically,
    with the step's record; returns the result: the release, the file's sha256, vocab_size and the
    bytes per token of the corpus's held-out records (streamed) under that tokenizer."""
    tok = PreTrainedTokenizerFast.from_pretrained(tokenizer_json.parent)
    held = ((m, t) for chunk in heldout_records(corpus_dir, heldout_share) for m, _, t in chunk)
    result = {
        "source": "release",
        "release": tokenizer_json.parent.name,
        "tokenizer_sha256": sha256_file(tokenizer_json),
        "vocab_size": len(tok),
        "bytes_per_token": bytes_per_token(tok, held),
    }
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        for path in release_inputs(tokenizer_json):
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        record(tmp, STEP, VERSION, key, result)
    return result

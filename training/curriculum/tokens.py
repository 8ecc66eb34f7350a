"""Token shards: every record of the cleaned corpus encoded once per tokenizer, batch by batch.

A record is encoded as training sees it (<|begin_of_text|> text <|end_of_text|>, as
`training.generate.encode_records` writes it) and never again: the curriculum counts a stage's tokens
from the stored counts, a stage is a selection of (batch, offset, tokens) into these shards, and
packing a stage copies its tokens from them. A batch's shard is reused while its corpus part and the
tokenizer are unchanged (its key: the tokenizer file's hash and the corpus part's keys from its
manifest), so a new batch is the only one encoded when it lands; a new tokenizer encodes every batch
again.

    $KILN_DATA_DIR/tokenized_corpus/<batch>/
        tokens.bin      the batch's records' tokens, concatenated in file and row order (uint16 while
                        the vocabulary fits in 65,536 ids, as the source documents' does; else uint32)
        index.parquet   file, row, modality, id, offset, tokens: one row per record of the corpus part
        _step.json      the batch's key, and its counts and token type

Memory is bounded by a chunk of records: the text of `CHUNK` records and their ids. The tokenizer's
batch encoding spreads a chunk over every core (Hugging Face tokenizers' own threads).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from training.cache import input_hash, key_of, record, reused
from training.fsutil import atomic_path, remove
from training.layout import BATCH_MANIFEST, STEP_JSON, TOKENIZER_JSON, batch_folders

STEP, VERSION = "tokenized_corpus", 1
"""The shards' step name and logic version in each batch's key: bump VERSION when what is written changes."""
TOKENS_BIN, INDEX = "tokens.bin", "index.parquet"
CHUNK = 2048
"""Records encoded at once."""

INDEX_SCHEMA = pa.schema(
    [("file", pa.string()), ("row", pa.int64()), ("modality", pa.string()), ("id", pa.string()), ("offset", pa.int64()), ("tokens", pa.int64())]
)


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def corpus_files(batch_dir: Path) -> list[Path]:
    """A corpus part's record files, in order (kiln's own files start with `_`)."""
    return sorted(p for p in batch_dir.glob("*.parquet") if p.name[0] not in "._")


def shard_key(batch_dir: Path, tokenizer_dir: Path) -> str:
    """The key a batch's shard is current under: the tokenizer file's content and the corpus part's
    content (the corpus step's key per modality, from its manifest; without one, the files' hashes)."""
    manifest = batch_dir / BATCH_MANIFEST
    entries = json.loads(manifest.read_text()).get("modalities", {}) if manifest.is_file() else {}
    if entries and all("key" in e for e in entries.values()):
        part = {m: e["key"] for m, e in entries.items()}
    else:
        part = {p.name: input_hash(p) for p in corpus_files(batch_dir)}
    return key_of(STEP, VERSION, input_hash(tokenizer_dir / TOKENIZER_JSON), part)


def encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """`training.generate.encode_records`, through the Rust tokenizer's batch encoding without offsets
    (a third faster than the Python wrapper's, the same ids: tests/training/test_tokens.py)."""
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    return [[bos, *e.ids, eos] for e in tokenizer.backend_tokenizer.encode_batch_fast(texts, add_special_tokens=False)]


def _encoded(files: list[Path], tokenizer, chunk: int) -> Iterator[tuple[str, int, pa.RecordBatch, list[list[int]]]]:
    for path in files:
        row = 0
        for part in pq.ParquetFile(path).iter_batches(batch_size=chunk, columns=["modality", "id", "text"]):
            yield path.name, row, part, encode(tokenizer, part.column("text").to_pylist())
            row += part.num_rows


def encode_batch(batch_dir: Path, tokenizer, out: Path, key: str, chunk: int = CHUNK) -> dict:
    """Write one batch's shard into `out` atomically (the record under `key` last); its result."""
    dtype = token_dtype(len(tokenizer))
    records = offset = 0
    with atomic_path(out) as tmp:
        tmp.mkdir()
        with open(tmp / TOKENS_BIN, "wb") as f, pq.ParquetWriter(tmp / INDEX, INDEX_SCHEMA) as index:
            for name, row, part, encoded in _encoded(corpus_files(batch_dir), tokenizer, chunk):
                counts = np.fromiter(map(len, encoded), np.int64, len(encoded))
                np.fromiter(itertools.chain.from_iterable(encoded), dtype, int(counts.sum())).tofile(f)
                starts = offset + np.cumsum(counts) - counts
                index.write_table(pa.table(
                    [pa.array([name] * len(encoded), pa.string()), pa.array(np.arange(row, row + len(encoded))),
                     part.column("modality"), part.column("id"), pa.array(starts), pa.array(counts)],
                    schema=INDEX_SCHEMA,
                ))
                records, offset = records + len(encoded), offset + int(counts.sum())
        result = {"records": records, "tokens": offset, "dtype": dtype.name}
        record(tmp, STEP, VERSION, key, result)
    return result


def encode_corpus(corpus_dir: Path, tokenizer_dir: Path, out_root: Path, log=lambda _: None, chunk: int = CHUNK) -> dict[str, dict]:
    """Bring every batch's shard up to date (encoding only batches whose key changed) and drop the
    shards of batches no longer in the corpus: per batch, its key, counts and whether it was reused."""
    from transformers import AutoTokenizer

    tokenizer = None
    batches = batch_folders(corpus_dir)
    for old in set(batch_folders(out_root)) - set(batches):
        remove(out_root / old)
    out: dict[str, dict] = {}
    for batch in batches:
        key = shard_key(corpus_dir / batch, tokenizer_dir)
        result = reused(out_root / batch, key)
        out[batch] = {"key": key, "reused": result is not None}
        if result is None:
            log(f"encoding {batch}")
            tokenizer = tokenizer or AutoTokenizer.from_pretrained(tokenizer_dir)
            result = encode_batch(corpus_dir / batch, tokenizer, out_root / batch, key, chunk)
        out[batch].update(result)
    return out


class StaleShards(RuntimeError):
    """The token shards do not match the corpus and the tokenizer: tokenized_corpus is to be materialized."""


def current_shards(corpus_dir: Path, tokenizer_dir: Path, out_root: Path) -> dict[str, dict]:
    """Per corpus batch: the key and result of its shard, which must be current; otherwise `StaleShards`
    naming the batches."""
    shards, stale = {}, []
    for batch in batch_folders(corpus_dir):
        key = shard_key(corpus_dir / batch, tokenizer_dir)
        result = reused(out_root / batch, key)
        if result is None:
            stale.append(batch)
        else:
            shards[batch] = {"key": key, **result}
    if stale:
        raise StaleShards(
            f"the token shards of {', '.join(stale)} are missing or were encoded from other records or another "
            "tokenizer: materialize tokenized_corpus first"
        )
    return shards


def shard_dtype(shard: Path) -> np.dtype:
    return np.dtype(json.loads((shard / STEP_JSON).read_text())["result"]["dtype"])


def read_index(out_root: Path, batches: list[str], columns: list[str]) -> pa.Table:
    """The index rows of `batches` (a `batch` column added), no text."""
    parts = []
    for batch in batches:
        t = pq.read_table(out_root / batch / INDEX, columns=columns)
        parts.append(t.append_column("batch", pa.array([batch] * t.num_rows, pa.string())))
    return pa.concat_tables(parts) if parts else INDEX_SCHEMA.empty_table().select(columns).append_column("batch", pa.array([], pa.string()))


def gather(out_root: Path, batch: np.ndarray, offset: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """The tokens of records given as (batch, offset, tokens) arrays, concatenated in the order given
    (int32). Each batch's file is mapped only for the call, so what it read does not stay resident."""
    total = int(tokens.sum())
    out = np.empty(total, np.int32)
    dest = np.cumsum(tokens) - tokens
    for name in np.unique(batch):
        pick = np.flatnonzero(batch == name)
        pick = pick[np.argsort(offset[pick], kind="stable")]  # read the file in order: fewer page faults
        counts = tokens[pick]
        n = int(counts.sum())
        if not n:
            continue
        within = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
        shard = out_root / str(name)
        mapped = np.memmap(shard / TOKENS_BIN, shard_dtype(shard), "r")
        out[np.repeat(dest[pick], counts) + within] = mapped[np.repeat(offset[pick], counts) + within]
        del mapped
    return out

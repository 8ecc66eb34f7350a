"""Token shards: each corpus record encoded once per tokenizer, a batch encoded again only when its
records or the tokenizer change, and what a stage reads is exactly what encoding its texts gives."""

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from training.config import TokenizerConfig
from training.curriculum.tokenizer import train_tokenizer
from training.curriculum.tokens import StaleShards, current_shards, encode_corpus, gather, token_dtype
from training.generate import encode_records

TEXTS = {
    "b1": ["Kilns fire clay until it turns hard.", "数据清洗是训练语言模型之前的工作。", ""],
    "b2": ["def area(r):\n    return 3.14159 * r * r\n", "A red circle on the left. 🎉"],
}


def _corpus(root: Path, texts: dict[str, list[str]]) -> Path:
    for batch, items in texts.items():
        (root / "corpus" / batch).mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": [f"{batch}-{i}" for i in range(len(items))], "modality": ["text"] * len(items), "text": items}),
                       root / "corpus" / batch / "text.parquet", row_group_size=2)
        (root / "corpus" / batch / "_manifest.json").write_text(json.dumps({"modalities": {"text": {"key": "|".join(items)}}}))
    return root / "corpus"


@pytest.fixture
def tok_dir(tmp_path) -> Path:
    train_tokenizer([t for v in TEXTS.values() for t in v] * 5, TokenizerConfig(vocab_size=300), tmp_path / "tok")
    return tmp_path / "tok"


@pytest.mark.parametrize("chunk", [1, 2, 2048])
def test_shards_hold_each_record_as_training_encodes_it(tmp_path, tok_dir, chunk):
    corpus = _corpus(tmp_path, TEXTS)
    shards = encode_corpus(corpus, tok_dir, tmp_path / "shards", chunk=chunk)
    tok = AutoTokenizer.from_pretrained(tok_dir)
    for batch, texts in TEXTS.items():
        index = pq.read_table(tmp_path / "shards" / batch / "index.parquet")
        assert index["id"].to_pylist() == [f"{batch}-{i}" for i in range(len(texts))] and index["row"].to_pylist() == list(range(len(texts)))
        expected = encode_records(tok, texts)
        assert index["tokens"].to_pylist() == [len(e) for e in expected] and shards[batch]["tokens"] == sum(map(len, expected))
        got = gather(tmp_path / "shards", np.array([batch] * index.num_rows, object), index["offset"].to_numpy(), index["tokens"].to_numpy())
        assert got.tolist() == [t for e in expected for t in e]
        assert shards[batch] | {"key": None} == {"key": None, "reused": False, "records": len(texts), "tokens": len(got), "dtype": "uint16"}


def test_only_changed_batches_are_encoded_again(tmp_path, tok_dir):
    corpus = _corpus(tmp_path, TEXTS)
    encode_corpus(corpus, tok_dir, tmp_path / "shards")
    assert {b: s["reused"] for b, s in encode_corpus(corpus, tok_dir, tmp_path / "shards").items()} == {"b1": True, "b2": True}
    _corpus(tmp_path, {"b2": ["another record"], "b3": ["a new batch"]})  # b2 changed, b3 landed
    assert {b: s["reused"] for b, s in encode_corpus(corpus, tok_dir, tmp_path / "shards").items()} == {"b1": True, "b2": False, "b3": False}
    (corpus / "b1" / "text.parquet").unlink()
    (corpus / "b1" / "_manifest.json").unlink()
    (corpus / "b1").rmdir()  # a batch removed: its shard goes too
    assert set(encode_corpus(corpus, tok_dir, tmp_path / "shards")) == {"b2", "b3"} and not (tmp_path / "shards" / "b1").exists()


@pytest.mark.parametrize(
    "change, stale",
    [
        (None, []),
        ("tokenizer", ["b1", "b2"]),
        ("records", ["b2"]),
        ("missing", ["b1"]),
    ],
)
def test_the_curriculum_refuses_shards_that_are_not_current(tmp_path, tok_dir, change, stale):
    corpus = _corpus(tmp_path, TEXTS)
    encode_corpus(corpus, tok_dir, tmp_path / "shards")
    if change == "tokenizer":
        train_tokenizer(["other words entirely"] * 5, TokenizerConfig(vocab_size=280), tok_dir)
    elif change == "records":
        _corpus(tmp_path, {"b2": ["changed"]})
    elif change == "missing":
        (tmp_path / "shards" / "b1" / "tokens.bin").unlink()
    if not stale:
        assert set(current_shards(corpus, tok_dir, tmp_path / "shards")) == {"b1", "b2"}
        return
    with pytest.raises(StaleShards, match=f"shards of {', '.join(stale)} are missing.*materialize tokenized_corpus"):
        current_shards(corpus, tok_dir, tmp_path / "shards")


@pytest.mark.parametrize("vocab, dtype", [(300, np.uint16), (65_536, np.uint16), (65_537, np.uint32), (128_256, np.uint32)])
def test_token_type_fits_the_vocabulary(vocab, dtype):
    assert token_dtype(vocab) == dtype

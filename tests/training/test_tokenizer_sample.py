"""What the tokenizer is fitted on (`training/curriculum/tokenizer.py` fit_corpus_tokenizer): a bounded,
deterministic sample of the training split streamed from the corpus, decontaminated, and the whole split
in corpus order when it fits; or the latest release's tokenizer (`release_tokenizer`, `copy_release_tokenizer`)."""

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from training.config import TokenizerConfig
from training.curriculum import tokenizer as tokenizer_module
from training.curriculum.contamination import find_overlaps
from training.curriculum.difficulty import is_heldout
from training.curriculum.tokenizer import (
    copy_release_tokenizer, fit_corpus_tokenizer, fit_tokenizer, heldout_records, in_sample, release_tokenizer, save_tokenizer,
    train_tokenizer,
)
from training.layout import LATEST, TOKENIZER_JSON

SHARE, NGRAM = 0.05, 13


def _words() -> list[str]:
    from pydoc_data.topics import topics

    return sorted({w for w in " ".join(topics.values()).split() if w.isalpha()})


def write_corpus(root: Path, batches: int = 4, per_modality: int = 300, seed: int = 0) -> Path:
    """A cleaned_corpus/ of `batches` batch folders, a Parquet file per modality (the corpus's columns),
    and manifests with kept_bytes. Texts are unique random words, so they share no 13 words by chance;
    some held-out text records are copied, with a prefix, into the next training record (the
    curriculum's contaminated records)."""
    rng, pool = random.Random(seed), _words()
    corpus = root / "cleaned_corpus"
    for b in range(batches):
        folder = corpus / f"batch-{b:04d}"
        folder.mkdir(parents=True)
        manifest: dict = {"modalities": {}}
        for modality in ("text", "code", "image_text"):
            rows = []
            for i in range(per_modality):
                words = rng.randint(40, 90) if modality != "image_text" else rng.randint(6, 12)
                text = f"{modality} {b} {i}: " + " ".join(rng.choice(pool) for _ in range(words))
                rows.append({"id": f"{modality}-{b}-{i}", "batch": folder.name, "modality": modality, "source": f"{folder.name}/x:{i}", "text": text})
            for i, r in enumerate(rows):
                if is_heldout(modality, r["id"], SHARE) and i % 2 == 0 and i + 1 < len(rows) and modality == "text":
                    rows[i + 1]["text"] = "copied: " + r["text"]
            pq.write_table(pa.Table.from_pylist(rows), folder / f"{modality}.parquet", row_group_size=64)
            manifest["modalities"][modality] = {"kept": len(rows), "kept_bytes": sum(len(r["text"].encode()) for r in rows)}
        (folder / "_manifest.json").write_text(json.dumps(manifest))
    return corpus


def old_training_texts(corpus: Path) -> tuple[list[str], int]:
    """The tokenizer's training texts as kiln chose them before the sample: the whole corpus loaded
    (split_corpus), the held-out rule, then training_texts' decontamination."""
    rows = ds.dataset(corpus, format="parquet").to_table(columns=["id", "modality", "text"]).to_pylist()
    train = [r["text"] for r in rows if not is_heldout(r["modality"], r["id"], SHARE)]
    held = [r["text"] for r in rows if is_heldout(r["modality"], r["id"], SHARE)]
    overlapping = {o.train for o in find_overlaps(train, held, NGRAM)}
    return [t for i, t in enumerate(train) if i not in overlapping], len(overlapping)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("tok"))


def _fit(corpus: Path, monkeypatch, **cfg) -> tuple[list[str], dict]:
    """fit_corpus_tokenizer's result and the texts it fed the trainer, in order."""
    fed: list[str] = []

    def capture(texts, c):
        for t in texts:
            fed.append(t)
            yield t

    monkeypatch.setattr(tokenizer_module, "fit_tokenizer", lambda texts, c: fit_tokenizer(capture(texts, c), c))
    _, result = fit_corpus_tokenizer(corpus, TokenizerConfig(vocab_size=300, **cfg), SHARE, NGRAM)
    return fed, result


def test_a_split_that_fits_is_used_whole_in_corpus_order_to_the_same_bytes(corpus, tmp_path, monkeypatch):
    expected, left_out = old_training_texts(corpus)
    assert left_out > 0  # the fixture plants contaminated records
    fed, result = _fit(corpus, monkeypatch)
    assert fed == expected
    sample = result["sample"]
    assert sample["fraction"] == 1.0 and sample["records"] == result["training_records"] == len(expected)
    assert result["left_out_overlapping_heldout"] == left_out and sample["records"] + left_out == sample["split_records"]
    assert sample["bytes"] == sum(len(t.encode()) for t in expected)
    monkeypatch.undo()
    # The tokenizer itself: byte for byte the one fitted on the old whole-corpus texts.
    cfg = TokenizerConfig(vocab_size=300)
    save_tokenizer(fit_tokenizer(expected, cfg), tmp_path / "old")
    tok, _ = fit_corpus_tokenizer(corpus, cfg, SHARE, NGRAM)
    save_tokenizer(tok, tmp_path / "new")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "new" / name).read_bytes() == (tmp_path / "old" / name).read_bytes()


@pytest.mark.parametrize("share_of_split", [0.1, 0.3, 0.6])
def test_the_sample_is_bounded_deterministic_and_nested(corpus, monkeypatch, share_of_split):
    split_bytes = _fit(corpus, monkeypatch)[1]["sample"]["split_bytes"]
    sample_bytes = int(share_of_split * split_bytes)
    fed, result = _fit(corpus, monkeypatch, sample_bytes=sample_bytes)
    again, _ = _fit(corpus, monkeypatch, sample_bytes=sample_bytes)
    larger, _ = _fit(corpus, monkeypatch, sample_bytes=int(1.5 * sample_bytes))
    assert fed == again  # deterministic
    sample = result["sample"]
    assert sample["fraction"] == pytest.approx(share_of_split, rel=1e-3) and sample["split_bytes"] == split_bytes
    assert abs(sample["bytes"] - sample_bytes) <= 0.15 * sample_bytes  # within sampling noise (the test fails at 0.1)
    assert sample["bytes"] == sum(len(t.encode()) for t in fed) and sample["records"] == len(fed)
    assert set(fed) <= set(larger)  # a larger fraction keeps every record of a smaller one
    whole, _ = old_training_texts(corpus)
    assert [t for t in whole if t in set(fed)] == fed  # a subsequence of the whole split, in its order (texts are unique)


def test_contaminated_and_heldout_records_are_never_fed(corpus, monkeypatch):
    held = [t for chunk in heldout_records(corpus, SHARE) for _, _, t in chunk]
    assert held
    for sample_bytes in (10**9, 60_000):
        fed, result = _fit(corpus, monkeypatch, sample_bytes=sample_bytes)
        assert not set(fed) & set(held)
        assert not find_overlaps(fed, held, NGRAM)
        assert not any(t.startswith("copied: ") for t in fed)
    assert result["left_out_overlapping_heldout"] >= 0


@pytest.mark.parametrize(
    ("modality", "record_id", "fraction", "expected"),
    [("text", "a", 1.0, True), ("text", "a", 1.5, True), ("text", "a", 0.0, False)],
)
def test_in_sample_edges(modality, record_id, fraction, expected):
    assert in_sample(modality, record_id, fraction) is expected


def test_the_sample_hash_is_independent_of_the_heldout_hash():
    ids = [f"r{i}" for i in range(20_000)]
    held = [i for i in ids if is_heldout("text", i, 0.05)]
    sampled = [i for i in held if in_sample("text", i, 0.05)]
    assert 0.02 < len(sampled) / len(held) < 0.09  # about 5% of the held-out, not all of them


@pytest.mark.parametrize(("field", "value"), [("sample_bytes", 0), ("sample_bytes", -5), ("sample_bytes", 1.5), ("source", "latest")])
def test_tokenizer_config_rejects(field, value):
    with pytest.raises(ValueError, match=field):
        TokenizerConfig(**{field: value})


def _release(root: Path, version: str, texts: list[str]) -> Path:
    train_tokenizer(texts, TokenizerConfig(vocab_size=300), root / "releases" / version)
    (root / "releases" / LATEST).write_text(version)
    return root / "releases" / version


def test_release_tokenizer_is_the_latest_releases(tmp_path):
    assert release_tokenizer(tmp_path) is None  # no releases/ yet
    (tmp_path / "releases").mkdir()
    assert release_tokenizer(tmp_path) is None  # no LATEST yet
    _release(tmp_path, "v1", ["kilns fire clay"] * 20)
    newer = _release(tmp_path, "v2", ["glaze melts into glass"] * 20)
    assert release_tokenizer(tmp_path) == newer / TOKENIZER_JSON


def test_copy_release_tokenizer_copies_and_measures(corpus, tmp_path):
    release = _release(tmp_path, "v1", ["kilns fire clay at high temperature"] * 20)
    result = copy_release_tokenizer(release / TOKENIZER_JSON, corpus, SHARE, tmp_path / "tokenizer", "k")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        assert (tmp_path / "tokenizer" / name).read_bytes() == (release / name).read_bytes()
    assert result["source"] == "release" and result["release"] == "v1" and result["vocab_size"] == len(AutoTokenizer.from_pretrained(release))
    assert set(result["bytes_per_token"]) == {"text", "code", "image_text"}
    assert json.loads((tmp_path / "tokenizer" / "_step.json").read_text())["key"] == "k"


# 20 distinct words (as tests/training/test_contamination.py): a run of k words shared is shared by exactly k.
W = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango".split()
FILLER = "zulu yankee xray whiskey victor uniform"


@pytest.mark.parametrize(("shared", "fed"), [(13, False), (12, True), (14, False)])
def test_the_tokenizer_trains_on_the_staged_pool(tmp_path, monkeypatch, shared, fed):
    """The curriculum's rule: a training record sharing 13 words with a held-out record is not trained on."""
    assert is_heldout("text", "h27", SHARE) and not is_heldout("text", "a", SHARE)
    (tmp_path / "b1").mkdir()
    rows = [{"id": "h27", "modality": "text", "text": " ".join(W[:14])}, {"id": "a", "modality": "text", "text": f"{FILLER} {' '.join(W[:shared])}"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "b1" / "text.parquet")
    texts, result = _fit(tmp_path, monkeypatch)
    assert (texts == [rows[1]["text"]]) is fed and result["left_out_overlapping_heldout"] == (not fed)

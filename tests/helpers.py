"""Helpers shared by test modules (fixtures live in conftest.py): a landing batch written for the
cleaning runner and its outputs read back, and an asset materialization's metadata."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
from PIL import Image

from training.config import CleaningConfig
from training.data.clean import Clip, clean_landing, verify_accounting

PROSE = [
    "Kilns fire clay at high temperature until it turns hard and dense.",
    "A curriculum orders training examples from easy to hard and back again.",
    "Tokenizers split text into units that a language model can embed.",
    "数据清洗是训练语言模型之前最费时的工作之一，需要耐心和细致。",
]


def meta(result, key: str) -> dict:
    """The metadata values of the one materialization of asset `key` in a run's `result`."""
    [mat] = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mat.metadata.items()}


def _png(color) -> bytes:
    """A 16 x 16 PNG of one colour."""
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def write_batch(landing: Path, name: str, texts: list[str], ready: bool = True, code: dict | None = None) -> Path:
    """A landing batch: `texts` and a malformed line, two code files (one broken) unless `code` is
    given, a red and a blue square both captioned "a red square"; with _SUCCESS when `ready`."""
    b = landing / name
    (b / "text").mkdir(parents=True)
    lines = [json.dumps({"text": t}) for t in texts] + ["{broken json"]
    (b / "text" / "a.jsonl").write_text("\n".join(lines) + "\n")
    for rel, src in (code or {"ok.py": "x = 1\n", "bad.py": "def f(:\n"}).items():
        (b / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / "code" / rel).write_text(src)
    (b / "images").mkdir()
    (b / "images" / "red.png").write_bytes(_png((255, 0, 0)))
    (b / "images" / "blue.png").write_bytes(_png((0, 0, 255)))
    (b / "images" / "captions.jsonl").write_text(
        json.dumps({"image": "red.png", "caption": "a red square"}) + "\n"
        + json.dumps({"image": "blue.png", "caption": "a red square"}) + "\n"
    )
    if ready:
        (b / "_SUCCESS").touch()
    return b


def redness(images, captions):
    """A transparent test scorer: CLIPScore 2.5 when an image is red and the caption says red."""
    return np.array([2.5 * (np.asarray(i)[..., 0].mean() > 128) * ("red" in c) for i, c in zip(images, captions)])


def clean(landing: Path, out: Path, cfg: CleaningConfig = CleaningConfig(), scorer=lambda: redness, fp="test-scorer"):
    """The cleaning runner on `landing`, writing kept/, rejected/ and batches/ under `out`."""
    clip = Clip(fp, "a test scorer", scorer) if scorer else None
    return clean_landing(landing, out / "kept", out / "rejected", cfg, clip, batches_dir=out / "batches")


def accounting(landing: Path, out: Path):
    return verify_accounting(landing, out / "batches", out / "kept", out / "rejected", CleaningConfig())


def rows(path: Path) -> list[dict]:
    return ds.dataset(path, format="parquet").to_table().to_pylist() if path.exists() else []


def sources(path: Path) -> dict[str, str | None]:
    return {r["source"]: r.get("reason") for r in rows(path)}


def corpus_part(layout, batch: str, texts: list[str]) -> None:
    """A batch's part of the cleaned corpus as `build_corpus` leaves it: records and a manifest naming their content."""
    folder = layout.cleaned_corpus / batch
    folder.mkdir(parents=True, exist_ok=True)
    n = len(texts)
    pq.write_table(
        pa.table({"id": [f"{batch}-{i}" for i in range(n)], "modality": ["text"] * n, "batch": [batch] * n,
                  "source": [f"{batch}/text/a.jsonl:{i + 1}" for i in range(n)], "text": texts}),
        folder / "text.parquet",
    )
    (folder / "_manifest.json").write_text(json.dumps({"content_sha256": {"text": hashlib.sha256("\0".join(texts).encode()).hexdigest()}}))


def token_shards(corpus: Path, root: Path, vocab_size: int = 300) -> tuple[Path, object]:
    """A small tokenizer trained on `corpus`'s texts, and the corpus's token shards: (shards folder, tokenizer)."""
    from training.config import TokenizerConfig
    from training.curriculum.tokenizer import train_tokenizer
    from training.curriculum.tokens import encode_corpus

    texts = ds.dataset(corpus, format="parquet").to_table(columns=["text"])["text"].to_pylist()
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=vocab_size), root / "tokenizer")
    encode_corpus(corpus, root / "tokenizer", root / "tokenized_corpus")
    return root / "tokenized_corpus", tok

"""The tokenizer: byte-level BPE trained on the cleaned training records of all modalities, less those
sharing an n-gram with a held-out record (the curriculum's rule, so it trains on what the stages hold)."""

import dagster as dg
import pyarrow.dataset as ds
from transformers import AutoTokenizer

from assets.cleaning import cleaned_corpus
from assets.resources import Kiln
from training.curriculum.contamination import find_overlaps
from training.curriculum.difficulty import is_heldout
from training.curriculum.tokenizer import round_trip_failures, train_tokenizer

# Always round-tripped besides the held-out records, so the check covers Chinese and code even
# when the held-out share happens to contain neither.
PROBES = [
    ("probe/chinese", "分词器决定了模型看到的基本单位。字节级的方法可以覆盖任何语言。"),
    ("probe/code", "fn main() {\n\tlet v: Vec<i32> = vec![1, 2];\n    println!(\"{:?}\", v);\n}\n"),
    ("probe/mixed", "  leading spaces, tabs\t, émoji 🎉, and a trailing newline\n"),
]


Records = list[tuple[str, str, str]]


def _split(kiln: Kiln) -> tuple[Records, Records]:
    """(training, held-out) records of the cleaned corpus as (modality, id, text)."""
    share = kiln.config.difficulty.heldout_share
    rows = ds.dataset(kiln.layout.cleaned_corpus, format="parquet").to_table(columns=["id", "modality", "text"]).to_pylist()
    sides: tuple[Records, Records] = ([], [])
    for r in rows:
        sides[1 if is_heldout(r["modality"], r["id"], share) else 0].append((r["modality"], r["id"], r["text"]))
    return sides


def _training_texts(train: Records, heldout: Records, ngram: int) -> tuple[list[str], int]:
    """The training texts less those the curriculum moves to contaminated.parquet (the curriculum runs
    after the tokenizer, so the same rule is applied here): (texts, records left out)."""
    texts = [t for _, _, t in train]
    overlapping = {o.train for o in find_overlaps(texts, [t for _, _, t in heldout], ngram)}
    return [t for i, t in enumerate(texts) if i not in overlapping], len(overlapping)


@dg.asset(
    group_name="model",
    deps=[cleaned_corpus],
    kinds={"huggingface"},
    description="Byte-level BPE (Hugging Face tokenizers) trained on the training split of the cleaned "
    "corpus, less records sharing curriculum.ngram (13) words with a held-out record; loadable with "
    "AutoTokenizer.from_pretrained.",
)
def tokenizer(kiln: Kiln) -> dg.MaterializeResult:
    out = kiln.layout.tokenizer
    train, heldout = _split(kiln)
    texts, overlapping = _training_texts(train, heldout, kiln.config.curriculum.ngram)
    tok = train_tokenizer(texts, kiln.config.tokenizer, out)
    per_modality: dict[str, list[int]] = {}
    for modality, _, text in heldout:
        acc = per_modality.setdefault(modality, [0, 0])
        acc[0] += len(text.encode())
        acc[1] += len(tok(text, add_special_tokens=False)["input_ids"])
    return dg.MaterializeResult(
        metadata={
            "vocab_size": len(tok),
            "training_records": len(texts),
            "left_out_overlapping_heldout": overlapping,
            **{f"bytes_per_token/{m}": round(b / max(t, 1), 3) for m, (b, t) in per_modality.items()},
            "path": dg.MetadataValue.path(out),
        }
    )


@dg.asset_check(asset=tokenizer, blocking=True, description="Held-out records (and Chinese and code probes) decode back exactly.")
def tokenizer_round_trip(kiln: Kiln) -> dg.AssetCheckResult:
    tok = AutoTokenizer.from_pretrained(kiln.layout.tokenizer)
    texts = [(f"{m}/{i}", t) for m, i, t in _split(kiln)[1]] + PROBES
    failures = list(round_trip_failures(tok, texts))
    return dg.AssetCheckResult(passed=not failures, metadata={"checked": len(texts), "failures": failures[:20]})

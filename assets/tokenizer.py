"""The tokenizer: byte-level BPE trained on the cleaned training records of all modalities, less those
sharing an n-gram with a held-out record (the curriculum's rule, so it trains on what the stages hold)."""

import dagster as dg
import pyarrow.dataset as ds
from transformers import AutoTokenizer

from assets.cleaning import cleaned_corpus
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from training.curriculum.contamination import find_overlaps
from training.curriculum.difficulty import is_heldout
from training.curriculum.tokenizer import STEP, VERSION, bytes_per_token, fit_tokenizer, round_trip_failures, save_tokenizer

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
def tokenizer(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    out, cfg = kiln.layout.tokenizer, kiln.config
    config = (cfg.tokenizer, cfg.difficulty.heldout_share, cfg.curriculum.ngram)
    key, result = lookup(context, out, STEP, VERSION, config, [kiln.layout.cleaned_corpus])
    was_reused = result is not None
    if result is None:
        train, heldout = _split(kiln)
        texts, overlapping = _training_texts(train, heldout, cfg.curriculum.ngram)
        tok = fit_tokenizer(texts, cfg.tokenizer)
        result = {
            "vocab_size": len(tok),
            "training_records": len(texts),
            "left_out_overlapping_heldout": overlapping,
            "bytes_per_token": bytes_per_token(tok, ((m, t) for m, _, t in heldout)),
        }
        save_tokenizer(tok, out, key, result)
    return dg.MaterializeResult(
        metadata={
            "vocab_size": result["vocab_size"],
            "training_records": result["training_records"],
            "left_out_overlapping_heldout": result["left_out_overlapping_heldout"],
            **{f"bytes_per_token/{m}": v for m, v in result["bytes_per_token"].items()},
            "path": dg.MetadataValue.path(out),
            **key_metadata(key, was_reused),
        }
    )


@dg.asset_check(asset=tokenizer, blocking=True, description="Held-out records (and Chinese and code probes) decode back exactly.")
def tokenizer_round_trip(kiln: Kiln) -> dg.AssetCheckResult:
    tok = AutoTokenizer.from_pretrained(kiln.layout.tokenizer)
    texts = [(f"{m}/{i}", t) for m, i, t in _split(kiln)[1]] + PROBES
    failures = list(round_trip_failures(tok, texts))
    return dg.AssetCheckResult(passed=not failures, metadata={"checked": len(texts), "failures": failures[:20]})

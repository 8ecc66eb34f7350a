"""The tokenizer: byte-level BPE trained on the cleaned training records of all modalities."""

import dagster as dg
import pyarrow.dataset as ds
from transformers import AutoTokenizer

from assets.cleaning import cleaned_corpus
from pipelines.resources import Kiln
from training.data.difficulty import is_heldout
from training.tokenizer import round_trip_failures, train_tokenizer

# Always round-tripped besides the held-out records, so the check covers Chinese and code even
# when the held-out share happens to contain neither.
PROBES = [
    ("probe/chinese", "分词器决定了模型看到的基本单位。字节级的方法可以覆盖任何语言。"),
    ("probe/code", "fn main() {\n\tlet v: Vec<i32> = vec![1, 2];\n    println!(\"{:?}\", v);\n}\n"),
    ("probe/mixed", "  leading spaces, tabs\t, émoji 🎉, and a trailing newline\n"),
]


def _records(kiln: Kiln, heldout: bool) -> list[tuple[str, str, str]]:
    share = kiln.config.difficulty.heldout_share
    rows = ds.dataset(kiln.path("cleaned_corpus"), format="parquet").to_table(columns=["id", "modality", "text"]).to_pylist()
    return [(r["modality"], r["id"], r["text"]) for r in rows if is_heldout(r["modality"], r["id"], share) == heldout]


@dg.asset(
    group_name="model",
    deps=[cleaned_corpus],
    kinds={"huggingface"},
    description="Byte-level BPE (Hugging Face tokenizers) trained on the training split of the cleaned "
    "corpus; loadable with AutoTokenizer.from_pretrained.",
)
def tokenizer(kiln: Kiln) -> dg.MaterializeResult:
    out = kiln.path("tokenizer")
    tok = train_tokenizer((t for _, _, t in _records(kiln, heldout=False)), kiln.config.tokenizer, out)
    per_modality: dict[str, list[int]] = {}
    for modality, _, text in _records(kiln, heldout=True):
        acc = per_modality.setdefault(modality, [0, 0])
        acc[0] += len(text.encode())
        acc[1] += len(tok(text, add_special_tokens=False)["input_ids"])
    return dg.MaterializeResult(
        metadata={
            "vocab_size": len(tok),
            **{f"bytes_per_token/{m}": round(b / max(t, 1), 3) for m, (b, t) in per_modality.items()},
            "path": dg.MetadataValue.path(out),
        }
    )


@dg.asset_check(asset=tokenizer, blocking=True, description="Held-out records (and Chinese and code probes) decode back exactly.")
def tokenizer_round_trip(kiln: Kiln) -> dg.AssetCheckResult:
    tok = AutoTokenizer.from_pretrained(kiln.path("tokenizer"))
    texts = [(f"{m}/{i}", t) for m, i, t in _records(kiln, heldout=True)] + PROBES
    failures = list(round_trip_failures(tok, texts))
    return dg.AssetCheckResult(passed=not failures, metadata={"checked": len(texts), "failures": failures[:20]})

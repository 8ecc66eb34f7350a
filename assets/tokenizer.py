"""The tokenizer: byte-level BPE trained on the cleaned training records of all modalities, less those
sharing an n-gram with a held-out record (the curriculum's rule, so it trains on what the stages hold)."""

import dagster as dg
from transformers import AutoTokenizer

from assets.cleaning import cleaned_corpus
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from training.curriculum.tokenizer import (
    PROBES, STEP, VERSION, bytes_per_token, fit_tokenizer, round_trip_failures, save_tokenizer, split_corpus, training_texts,
)


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
        train, heldout = split_corpus(kiln.layout.cleaned_corpus, cfg.difficulty.heldout_share)
        texts, overlapping = training_texts(train, heldout, cfg.curriculum.ngram)
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
    heldout = split_corpus(kiln.layout.cleaned_corpus, kiln.config.difficulty.heldout_share)[1]
    texts = [(f"{m}/{i}", t) for m, i, t in heldout] + PROBES
    failures = list(round_trip_failures(tok, texts))
    return dg.AssetCheckResult(passed=not failures, metadata={"checked": len(texts), "failures": failures[:20]})

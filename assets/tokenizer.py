"""The tokenizer: byte-level BPE fitted on a bounded, deterministic sample of the cleaned training records
of all modalities, less those sharing an n-gram with a held-out record (the curriculum's rule, so it
trains on what the stages hold); or, with tokenizer.source "release", the latest release's tokenizer."""

import dagster as dg
from transformers import AutoTokenizer

from assets.cleaning import cleaned_corpus
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from training.curriculum.tokenizer import (
    PROBES, STEP, VERSION, copy_release_tokenizer, fit_corpus_tokenizer, heldout_records, release_inputs,
    release_tokenizer, round_trip_failures, save_tokenizer,
)


@dg.asset(
    group_name="model",
    deps=[cleaned_corpus],
    kinds={"huggingface"},
    description="Byte-level BPE (Hugging Face tokenizers) fitted on a sample of at most tokenizer.sample_bytes "
    "of the cleaned corpus's training split, less records sharing curriculum.ngram (13) words with a held-out "
    "record; or the latest release's tokenizer (tokenizer.source \"release\"). Loadable with AutoTokenizer.from_pretrained.",
)
def tokenizer(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    out, cfg, corpus = kiln.layout.tokenizer, kiln.config, kiln.layout.cleaned_corpus
    share = cfg.difficulty.heldout_share
    released = release_tokenizer(kiln.layout.root) if cfg.tokenizer.source == "release" else None
    inputs = [corpus, *(release_inputs(released) if released else [])]
    key, result = lookup(context, out, STEP, VERSION, (cfg.tokenizer, share, cfg.curriculum.ngram), inputs)
    was_reused = result is not None
    if result is None and released:
        result = copy_release_tokenizer(released, corpus, share, out, key)
    elif result is None:
        if cfg.tokenizer.source == "release":
            context.log.info("tokenizer.source is release, but there is no release yet: fitting one")
        tok, result = fit_corpus_tokenizer(corpus, cfg.tokenizer, share, cfg.curriculum.ngram)
        save_tokenizer(tok, out, key, result)
    if result["source"] == "release":
        source = {"source": f"release {result['release']}", "release_tokenizer_sha256": result["tokenizer_sha256"]}
    else:
        source = {
            "source": "trained",
            "training_records": result["training_records"],
            "left_out_overlapping_heldout": result["left_out_overlapping_heldout"],
            **{f"sample/{k}": v for k, v in result["sample"].items()},
        }
    return dg.MaterializeResult(
        metadata={
            "vocab_size": result["vocab_size"],
            **source,
            **{f"bytes_per_token/{m}": v for m, v in result["bytes_per_token"].items()},
            "path": dg.MetadataValue.path(out),
            **key_metadata(key, was_reused),
        }
    )


@dg.asset_check(asset=tokenizer, blocking=True, description="Held-out records (and Chinese and code probes) decode back exactly.")
def tokenizer_round_trip(kiln: Kiln) -> dg.AssetCheckResult:
    tok = AutoTokenizer.from_pretrained(kiln.layout.tokenizer)
    checked, failures = len(PROBES), []
    for chunk in heldout_records(kiln.layout.cleaned_corpus, kiln.config.difficulty.heldout_share):
        checked += len(chunk)
        failures += round_trip_failures(tok, ((f"{m}/{i}", t) for m, i, t in chunk))
    failures += round_trip_failures(tok, PROBES)
    return dg.AssetCheckResult(passed=not failures, metadata={"checked": checked, "failures": failures[:20]})

"""Cleaning assets: the CLIP that scores pairs, each landing batch cleaned as its own partition, and
the deduplicated corpus over every cleaned batch."""

import time

import dagster as dg

from assets.gpus import GPU_STEP
from assets.metadata import md_image, md_table
from assets.resources import Kiln
from training.clip.build import build_clip_model, current_clip
from training.data.clean import build_corpus, clean_batch, corpus_inputs, verify_batch, verify_corpus
from training.data.landing import ready_batch, unusable_batches
from training.data.stats import batch_histograms, summary

LANDING_BATCHES = dg.DynamicPartitionsDefinition(name="landing_batches")
"""One partition per ready landing batch, added (and deleted) by `landing_sensor`."""


@dg.asset(
    group_name="data",
    kinds={"pytorch"},
    **GPU_STEP,
    description="The CLIP scoring image-caption pairs: a configured pretrained CLIP, or kiln's own small CLIP "
    "trained on the landing zone's pairs once enough have landed (first at ClipTrainConfig.min_pairs, again "
    "each time they double). With too few pairs there is no CLIP yet, and pairs wait as clip_unavailable.",
)
def clip_model(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config
    stats = build_clip_model(kiln.landing, kiln.layout.clip_model, cfg.clip, cfg.cleaning.image)
    ev = stats["evaluation"]
    context.log.info(f"CLIP {stats['version']}: {stats['provenance']}; filter on known mismatches: {ev}")
    metadata = {
        "version": stats["version"] or "none",
        "provenance": stats["provenance"],
        "cached": stats["cached"],
        "pairs_scored": ev["pairs_scored"],
        "clip_threshold": ev["threshold"],
    }
    if stats["model"]:
        metadata["model"] = dg.MetadataValue.path(stats["model"])
    for key in ("reason", "pairs", "final_loss", "train_seconds", "parameters", "device"):
        if key in stats:
            metadata[f"train/{key}"] = stats[key]
    for key in ("known_mismatches", "rejected", "precision", "recall", "mean_score_matched", "mean_score_mismatched"):
        if ev.get(key) is not None:
            metadata[f"filter/{key}"] = ev[key]
    return dg.MaterializeResult(metadata=metadata)


def _counts(results) -> dg.MarkdownMetadataValue:
    return md_table(
        ["batch", "modality", "kept", "rejected", "rejected by reason", "cached"],
        [
            (r.batch, r.modality, r.kept, r.rejected, ", ".join(f"{k} {v}" for k, v in sorted(r.reasons.items(), key=lambda kv: -kv[1])) or "-", r.cached)
            for r in results
        ],
    )


@dg.asset(
    group_name="data",
    deps=[clip_model],
    partitions_def=LANDING_BATCHES,
    # A backfill of many batches is one run (one pod on Kubernetes) per batch: kiln's fan-out.
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"parquet"},
    **GPU_STEP,
    description="One landing batch, every record kept (cleaned_batch/<batch>/) or rejected with a reason "
    "(rejected/<batch>/): entropy filter for text, Tree-sitter parse for code, CLIPScore for pairs; the language of "
    "text; personal data (e-mail, phone, IP, card, secret) redacted or rejected in all three.",
)
def cleaned_batch(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config.cleaning
    batch = ready_batch(kiln.landing, context.partition_key)
    clip = current_clip(kiln.layout.clip_model, cfg.image)
    start = time.perf_counter()
    results = clean_batch(batch, kiln.layout.cleaned_batch, kiln.layout.rejected, cfg, clip, context.log.info)
    fresh = [r for r in results if not r.cached]
    return dg.MaterializeResult(
        metadata={
            "counts": _counts(results),
            "kept": sum(r.kept for r in results),
            "rejected": sum(r.rejected for r in results),
            "cleaned": [r.modality for r in fresh],
            "clip": clip.version if clip else "none: pairs rejected as clip_unavailable",
            "records_per_second": round(sum(r.kept + r.rejected for r in fresh) / max(time.perf_counter() - start, 1e-9), 1),
            "path": dg.MetadataValue.path(kiln.layout.cleaned_batch / batch.name),
            # Per modality, cached ones included: records by language, placeholders by type.
            "languages": dg.MetadataValue.json({r.modality: r.languages for r in results if r.languages}),
            "redactions": dg.MetadataValue.json({r.modality: r.redactions for r in results}),
            "redacted": sum(sum(r.redactions.values()) for r in results),
            **_histograms(kiln, batch.name),
        }
    )


def _histograms(kiln: Kiln, batch: str) -> dict:
    """The batch's histograms as one picture in the UI, and their compact numbers."""
    cfg = kiln.config.cleaning
    pictures = batch_histograms(
        kiln.layout.cleaned_batch / batch, kiln.layout.rejected / batch, cfg.text.entropy_threshold, cfg.image.clip_threshold
    )
    metadata = {"histograms": md_image(pictures.path, f"{batch} histograms", "no records to draw"), "histograms/seconds": pictures.seconds}
    if pictures.path:
        metadata["histograms_path"] = dg.MetadataValue.path(pictures.path)
    return metadata | {f"histograms/{k}": dg.MetadataValue.json(v) for k, v in summary(pictures.stats).items()}


@dg.asset_check(
    asset=cleaned_batch,
    partitions_def=LANDING_BATCHES,
    blocking=True,
    description="Per modality of the batch: records in the landing zone (counted independently of the readers) = kept + rejected.",
)
def records_accounted(context: dg.AssetCheckExecutionContext, kiln: Kiln) -> dg.AssetCheckResult:
    batch = ready_batch(kiln.landing, context.partition_key)
    return _accounting(verify_batch(batch, kiln.layout.cleaned_batch, kiln.layout.rejected, kiln.config.cleaning))


def _accounting(rows) -> dg.AssetCheckResult:
    return dg.AssetCheckResult(
        passed=all(r.ok for r in rows),
        metadata={
            "table": md_table(
                ["batch", "modality", "records in", "kept", "rejected", "ok"],
                [(r.batch, r.modality, r.records_in, r.kept, r.rejected, "yes" if r.ok else "**NO**") for r in rows],
            ),
            "unaccounted": sum(abs(r.records_in - r.kept - r.rejected) for r in rows),
        },
    )


@dg.asset(
    group_name="data",
    deps=[cleaned_batch],
    kinds={"parquet"},
    # Follows the batches: any cleaned partition updates it, even while another batch is missing or failed.
    automation_condition=dg.AutomationCondition.eager().without(~dg.AutomationCondition.any_deps_missing()),
    description="Every cleaned batch whose records are all accounted for, deduplicated in batch order (the first occurrence kept; exact duplicates, "
    "then near-duplicates of text and code by MinHash LSH): the corpus the curriculum reads. Incremental: only batches whose records, or an "
    "earlier batch's, changed are redone.",
)
def cleaned_corpus(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    names, pending, swept = corpus_inputs(kiln.landing, kiln.layout.cleaned_batch, kiln.layout.rejected)
    start = time.perf_counter()
    cfg = kiln.config.cleaning
    report = build_corpus(
        kiln.layout.cleaned_batch, names, kiln.layout.cleaned_corpus, kiln.layout.rejected, cfg.chunk_size, context.log.info, cfg.near_dup
    )
    fresh = [f"{r.batch}/{r.modality}" for r in report.results if not r.cached]
    return dg.MaterializeResult(
        metadata={
            "batches": dg.MetadataValue.json(names),
            "kept": sum(r.kept for r in report.results),
            "duplicates": sum(r.rejected for r in report.results),
            "near_duplicates": sum(r.reasons.get("near_duplicate", 0) for r in report.results),
            "deduplicated": dg.MetadataValue.json(fresh),
            "cached": len(report.results) - len(fresh),
            # New batches are checked against the earlier ones' key files, never their text.
            "earlier_batches_read": dg.MetadataValue.json(
                {m: {"key_files": r.key_files, "key_mb": round(r.key_bytes / 2**20, 2), "signatures": r.signatures, "sources": r.sources} for m, r in report.reads.items()}
            ),
            "earlier_text_records_read": sum(r.text_records for r in report.reads.values()),
            "removed_batches": dg.MetadataValue.json(sorted(set(report.removed_batches) | set(swept))),
            "pending_batches": dg.MetadataValue.json(pending),
            "unusable_batches": dg.MetadataValue.json(unusable_batches(kiln.landing)),
            "seconds": round(time.perf_counter() - start, 3),
            "path": dg.MetadataValue.path(kiln.layout.cleaned_corpus),
        }
    )


@dg.asset_check(
    asset=cleaned_corpus, blocking=True, description="Per cleaned batch and modality: its cleaned records = kept in the corpus + duplicates."
)
def corpus_accounted(kiln: Kiln) -> dg.AssetCheckResult:
    return _accounting(verify_corpus(kiln.layout.cleaned_batch, kiln.layout.cleaned_corpus, kiln.layout.rejected))

"""Cleaning assets: the CLIP the image filter uses, and the cleaned corpus with its rejections."""

import time

import dagster as dg

from assets.metadata import GPU_STEP, md_table
from pipelines.resources import Kiln
from training.clip import ClipScorer, build_clip_model, model_fingerprint
from training.data.clean import clean_landing, verify_accounting


@dg.asset(
    group_name="data",
    kinds={"pytorch"},
    **GPU_STEP,
    description="The CLIP model scoring image-caption pairs. Unless a pretrained CLIP is configured, a "
    "small CLIP trained by kiln on the landing zone's own pairs (no pretrained weights offline).",
)
def clip_model(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config
    stats = build_clip_model(kiln.landing, kiln.path("clip_model"), cfg.clip, cfg.cleaning.image)
    ev = stats["evaluation"]
    context.log.info(f"CLIP: {stats['provenance']}; filter on known mismatches: {ev}")
    metadata = {
        "provenance": stats["provenance"],
        "model": dg.MetadataValue.path(stats["model"]),
        "cached": stats.get("cached", False),
        "pairs_scored": ev["pairs_scored"],
        "clip_threshold": ev["threshold"],
    }
    for key in ("pairs", "final_loss", "train_seconds", "parameters", "device"):
        if key in stats:
            metadata[f"train/{key}"] = stats[key]
    for key in ("known_mismatches", "rejected", "precision", "recall", "mean_score_matched", "mean_score_mismatched"):
        if ev.get(key) is not None:
            metadata[f"filter/{key}"] = ev[key]
    return dg.MaterializeResult(metadata=metadata)


@dg.asset(
    group_name="data",
    deps=[clip_model],
    kinds={"parquet"},
    **GPU_STEP,
    description="Every record of every ready landing batch, kept (cleaned_corpus/) or rejected with a "
    "reason (rejected/): entropy filter for text, Tree-sitter parse for code, CLIPScore for pairs.",
)
def cleaned_corpus(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config.cleaning
    clip_ref = cfg.image.clip_model or str(kiln.path("clip_model"))
    start = time.perf_counter()
    scorer: list[ClipScorer] = []

    def load_scorer():  # only called if some batch has pairs to score
        scorer.append(ClipScorer(clip_ref))
        return scorer[0].score

    report = clean_landing(
        kiln.landing, kiln.path("cleaned_corpus"), kiln.path("rejected"), cfg,
        clip_fingerprint=model_fingerprint(clip_ref), clip_scorer=load_scorer, log=context.log.info,
    )
    seconds = time.perf_counter() - start
    fresh = [r for r in report.results if not r.cached]
    totals = report.by_modality()
    reasons = {m: dict(sorted(t["reasons"].items(), key=lambda kv: -kv[1])) for m, t in totals.items()}
    return dg.MaterializeResult(
        metadata={
            "counts": md_table(
                ["modality", "kept", "rejected", "rejected by reason"],
                [(m, t["kept"], t["rejected"], ", ".join(f"{k} {v}" for k, v in reasons[m].items()) or "-") for m, t in totals.items()],
            ),
            "rejected_by_reason": reasons,
            "kept": sum(t["kept"] for t in totals.values()),
            "rejected": sum(t["rejected"] for t in totals.values()),
            "batches": len({r.batch for r in report.results}),
            "cleaned": [f"{r.batch}/{r.modality}" for r in fresh],
            "cached": len(report.results) - len(fresh),
            "removed_batches": report.removed_batches,
            "unrecognized_files": report.unrecognized_files,
            "records_per_second": round(sum(r.kept + r.rejected for r in fresh) / max(seconds, 1e-9), 1),
            "clip_device": str(scorer[0].device) if scorer else "not loaded (no pairs to score)",
            "path": dg.MetadataValue.path(kiln.path("cleaned_corpus")),
        }
    )


@dg.asset_check(asset=cleaned_corpus, blocking=True, description="Per batch and modality, records in = kept + rejected.")
def records_accounted(kiln: Kiln) -> dg.AssetCheckResult:
    rows = verify_accounting(kiln.landing, kiln.path("cleaned_corpus"), kiln.path("rejected"), kiln.config.cleaning)
    bad = [r for r in rows if not r.ok]
    return dg.AssetCheckResult(
        passed=not bad,
        metadata={
            "table": md_table(
                ["batch", "modality", "records in", "kept", "rejected", "ok"],
                [(r.batch, r.modality, r.records_in, r.kept, r.rejected, "yes" if r.ok else "**NO**") for r in rows],
            ),
            "unaccounted": sum(abs(r.records_in - r.kept - r.rejected) for r in rows),
        },
    )

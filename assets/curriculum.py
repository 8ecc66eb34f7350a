"""The curriculum: the records of each pretraining stage, from the difficulty levels and the schedule;
training records sharing an n-gram with the held-out split are moved out of every stage."""

import json

import dagster as dg
from transformers import AutoTokenizer

from assets.difficulty import difficulty_scores
from assets.metadata import md_image, md_table
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from assets.tokens import tokenized_corpus
from training.curriculum.batches import current_scores
from training.curriculum.schedule import STEP, VERSION, build_curriculum, start_line, verify_stages
from training.curriculum.tokens import current_shards
from training.layout import CURRICULUM_JSON, TOKENIZER_JSON
from training.retraining import retraining_pool


@dg.asset(
    group_name="data",
    deps=[difficulty_scores, tokenized_corpus],
    kinds={"parquet"},
    description="Stage schedule over difficulty levels (default: the pendulum 1-2-3-4-5-4-3-2-1); each "
    "stage holds every training record up to its level, in a seeded order. Held-out records stay out, and "
    "so do training records sharing curriculum.ngram (13) words with one (contaminated.parquet). Reads "
    "every batch's difficulty once all are up to date under one predictor; until then it fails, naming them. "
    "A stage is a selection of records' tokens in tokenized_corpus, not a copy of their text.",
)
def curriculum(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    layout, out = kiln.layout, kiln.layout.curriculum
    scores, difficulty = current_scores(layout, kiln.config.difficulty)
    levels = len(kiln.config.difficulty.level_edges) + 1
    shards = current_shards(layout.cleaned_corpus, layout.tokenizer, layout.tokenized_corpus)
    pool = retraining_pool(layout.cleaned_corpus, layout.releases, layout.tokenizer / TOKENIZER_JSON, kiln.config.operation.retraining)
    # The shards' keys stand for the corpus's records and the tokenizer.
    config = (kiln.config.curriculum, levels, difficulty, {b: s["key"] for b, s in shards.items()}, pool)
    key, summary = lookup(context, out, STEP, VERSION, config, scores)
    was_reused = summary is not None
    if summary is None:
        summary = build_curriculum(
            scores, layout.cleaned_corpus, layout.tokenized_corpus, out, kiln.config.curriculum, key, difficulty, levels, shards, pool,
        )
    decontamination = summary["decontamination"]
    picture = out / summary["levels_png"] if summary["levels_png"] else None
    return dg.MaterializeResult(
        metadata={
            "stages": md_table(["stage", "level", "records", "tokens"], [(s["stage"], s["level"], s["records"], s["tokens"]) for s in summary["stages"]]),
            "schedule": summary["schedule"],
            "train_records": summary["train_records"],
            "heldout_records": summary["heldout_records"],
            "contaminated_records": decontamination["removed"],
            **{f"contaminated/{m}": k for m, k in decontamination["by_modality"].items()},
            "levels_by_batch": md_image(picture, "difficulty level by batch", "no records"),
            "levels_by_batch/counts": dg.MetadataValue.json(summary["levels_by_batch"]),
            "difficulty_predictor": summary["difficulty"]["predictor"],
            "start": start_line(summary["start"]),
            "path": dg.MetadataValue.path(out),
            **key_metadata(key, was_reused),
        }
    )


@dg.asset_check(asset=curriculum, description="At least 3 of the 5 difficulty levels hold training records.")
def levels_populated(kiln: Kiln) -> dg.AssetCheckResult:
    present = json.loads((kiln.layout.curriculum / CURRICULUM_JSON).read_text())["levels_present"]
    return dg.AssetCheckResult(passed=len(present) >= 3, metadata={"levels": present})


@dg.asset_check(
    asset=curriculum,
    blocking=True,
    description="Re-read from what training reads (each stage record's tokens, decoded): no stage record shares curriculum.ngram (13) consecutive words (a "
    "shorter record: all its words) with a record of heldout.parquet, so held-out perplexity never measures "
    "memorisation.",
)
def stages_disjoint_from_heldout(kiln: Kiln) -> dg.AssetCheckResult:
    tok = AutoTokenizer.from_pretrained(kiln.layout.tokenizer)
    result = verify_stages(kiln.layout.curriculum, kiln.layout.tokenized_corpus, tok, kiln.config.curriculum.ngram)
    return dg.AssetCheckResult(
        passed=result["overlaps"] == 0,
        metadata={
            "records_checked": result["records_checked"],
            "stage_files": result["stage_files"],
            "heldout_records": result["heldout_records"],
            "overlaps_found": result["overlaps"],
            "examples": dg.MetadataValue.md("\n".join(f"- {e}" for e in result["examples"]) or "none"),
        },
    )

"""Difficulty scores, one landing batch at a time: BERTScore of each record's continuation against its
prediction, in 5 levels (training/curriculum/batches.py)."""

import dagster as dg

from assets.cleaning import LANDING_BATCHES, cleaned_corpus
from assets.gpus import GPU_STEP
from assets.metadata import md_table
from assets.resources import Kiln
from assets.steps import key_metadata
from training.curriculum.batches import score_partition
from training.layout import SCORES


@dg.asset(
    group_name="data",
    deps=[cleaned_corpus],
    partitions_def=LANDING_BATCHES,
    # A rescore of many batches (another predictor) is one run (one GPU pod on Kubernetes) per batch.
    backfill_policy=dg.BackfillPolicy.multi_run(1),
    kinds={"pytorch", "parquet"},
    **GPU_STEP,
    description="BERTScore difficulty in [0, 1], its level (1-5) and the held-out split of every record of one "
    "batch's part of the cleaned corpus (difficulty_scores/<batch>/), scored once per record and predictor "
    "(DifficultyConfig.predictor: persistence by default, a fixed model, or the latest release on a cadence). "
    "The difficulty sensor requests a batch when its corpus part or the predictor changes.",
)
def difficulty_scores(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config.difficulty
    result, key, was_reused = score_partition(kiln.layout, cfg, context.partition_key)
    if was_reused:
        context.log.info(f"reused difficulty_scores {key[:12]}: {result['records']} records, nothing scored")
    else:
        context.log.info(f"difficulty: {result['scored']} records scored, {result['reused']} reused, {result['records_per_second']} records/s")
    width = len(cfg.level_edges) + 1
    return dg.MaterializeResult(
        metadata={
            "levels": md_table(
                ["modality"] + [f"level {k}" for k in range(1, width + 1)],
                [[m] + [h[str(k)] for k in range(1, width + 1)] for m, h in result["histogram"].items()],
            ),
            "records": result["records"],
            # This run's work: a reused partition scored nothing.
            "records_scored": 0 if was_reused else result["scored"],
            "records_reused": result["records"] if was_reused else result["reused"],
            "heldout": result["heldout"],
            "mean_difficulty": result["mean_difficulty"],
            "predictor": result["predictor_id"],
            "encoder": result["encoder"],
            "layer": result["layer"],
            "scorer_key": result["scorer_key"],
            "device": result["device"],
            "records_per_second": result["records_per_second"],
            "path": dg.MetadataValue.path(kiln.layout.difficulty_scores / context.partition_key / SCORES),
            **key_metadata(key, was_reused),
        }
    )

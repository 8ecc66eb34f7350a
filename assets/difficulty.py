"""Difficulty scores: BERTScore of each record's continuation against its prediction, in 5 levels."""

import dagster as dg
import pyarrow.parquet as pq

from assets.cleaning import cleaned_corpus
from assets.gpus import GPU_STEP
from assets.metadata import md_image, md_table
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from training.curriculum.difficulty import STEP, VERSION, Persistence, ReleasedModel, default_encoder, score_difficulty
from training.layout import SCORES, TOKENIZER_JSON, WEIGHTS
from training.release.publish import latest


@dg.asset(
    group_name="data",
    deps=[cleaned_corpus],
    kinds={"pytorch", "parquet"},
    **GPU_STEP,
    description="BERTScore difficulty in [0, 1] and its level (1-5) for every kept record, and the "
    "held-out split. Prediction from the latest release's model, or persistence before the first release.",
)
def difficulty_scores(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg, out = kiln.config.difficulty, kiln.layout.difficulty_scores
    release = latest(kiln.layout.releases)
    encoder = cfg.encoder or default_encoder()
    # The encoder's files and the predictor are inputs: the latest release's model, or persistence before one.
    config = (cfg, release.name if release else "persistence")
    inputs = [kiln.layout.cleaned_corpus, encoder, *([release / WEIGHTS, release / TOKENIZER_JSON] if release else [])]
    key, stats = lookup(context, out, STEP, VERSION, config, inputs)
    was_reused = stats is not None
    if stats is None:
        predictor = ReleasedModel(str(release)) if release else Persistence()
        stats = score_difficulty(kiln.layout.cleaned_corpus, out, cfg, predictor, key)
        context.log.info(f"difficulty: {stats['records']} records at {stats['records_per_second']} records/s")
    width = len(cfg.level_edges) + 1
    picture = out / stats["levels_png"] if stats["levels_png"] else None
    return dg.MaterializeResult(
        metadata={
            "levels": md_table(
                ["modality"] + [f"level {k}" for k in range(1, width + 1)],
                [[m] + [h[str(k)] for k in range(1, width + 1)] for m, h in stats["histogram"].items()],
            ),
            "levels_by_batch": md_image(picture, "difficulty level by batch", "no records"),
            "levels_by_batch/counts": dg.MetadataValue.json(stats["levels_by_batch"]),
            "levels_populated": stats["levels_populated"],
            "records": stats["records"],
            "heldout": stats["heldout"],
            "mean_difficulty": stats["mean_difficulty"],
            "encoder": stats["encoder"],
            "layer": stats["layer"],
            "predictor": stats["predictor"],
            "device": stats["device"],
            "records_per_second": stats["records_per_second"],
            "path": dg.MetadataValue.path(out / SCORES),
            **key_metadata(key, was_reused),
        }
    )


@dg.asset_check(asset=difficulty_scores, description="At least 3 of the 5 levels hold records.")
def levels_populated(kiln: Kiln) -> dg.AssetCheckResult:
    levels = pq.read_table(kiln.layout.difficulty_scores / SCORES, columns=["level"])["level"]
    populated = sorted(set(levels.to_pylist()))
    return dg.AssetCheckResult(passed=len(populated) >= 3, metadata={"levels": populated})

"""The curriculum: the records of each pretraining stage, from the difficulty levels and the schedule."""

import dagster as dg
from transformers import AutoTokenizer

from assets.difficulty import difficulty_scores
from assets.metadata import md_table
from assets.tokenizer import tokenizer
from pipelines.resources import Kiln
from training.data.curriculum import build_curriculum
from training.data.difficulty import SCORES_FILE


@dg.asset(
    group_name="data",
    deps=[difficulty_scores, tokenizer],
    kinds={"parquet"},
    description="Stage schedule over difficulty levels (default: the pendulum 1-2-3-4-5-4-3-2-1); each "
    "stage holds every training record up to its level, in a seeded order. Held-out records stay out.",
)
def curriculum(kiln: Kiln) -> dg.MaterializeResult:
    tok = AutoTokenizer.from_pretrained(kiln.path("tokenizer"))

    def count_tokens(texts: list[str]) -> int:
        return sum(len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]) if texts else 0

    summary = build_curriculum(
        kiln.path("difficulty_scores") / SCORES_FILE, kiln.path("cleaned_corpus"), kiln.path("curriculum"),
        kiln.config.curriculum, count_tokens,
    )
    return dg.MaterializeResult(
        metadata={
            "stages": md_table(["stage", "level", "records", "tokens"], [(s["stage"], s["level"], s["records"], s["tokens"]) for s in summary["stages"]]),
            "schedule": summary["schedule"],
            "train_records": summary["train_records"],
            "heldout_records": summary["heldout_records"],
            "path": dg.MetadataValue.path(kiln.path("curriculum")),
        }
    )

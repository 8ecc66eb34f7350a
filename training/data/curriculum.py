"""The curriculum: which training records each pretraining stage sees, in which order.

Stage i of the schedule (default: the pendulum 1-2-3-4-5-4-3-2-1) has a level k and samples every
training record of level <= k, as DeepSpeed's curriculum raises a difficulty threshold: easy
material first, everything at the peak, and on the way back down the easier levels again, which
consolidates them. Each stage is shuffled with a generator seeded by (seed, stage), so its records
and their order are a pure function of the scores and the config. Held-out records are never in a
stage.

    <out_dir>/stage_01.parquet ...   id, modality, level, text (in training order)
    <out_dir>/heldout.parquet        the held-out records, for evaluation
    <out_dir>/curriculum.json        schedule, seed, per stage: level, records, tokens
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from training.config import CurriculumConfig
from training.fsutil import atomic_path, sha256_file


def stage_file(stage: int) -> str:
    return f"stage_{stage:02d}.parquet"


def build_curriculum(
    scores_path: Path, corpus_dir: Path, out_dir: Path, cfg: CurriculumConfig, count_tokens: Callable[[list[str]], int]
) -> dict:
    if not cfg.schedule:
        raise ValueError("the curriculum schedule is empty")
    scores = pq.read_table(scores_path, columns=["id", "modality", "split", "level"])
    corpus = ds.dataset(corpus_dir, format="parquet").to_table(columns=["id", "modality", "text"])
    joined = scores.join(corpus, keys=["modality", "id"]).sort_by([("modality", "ascending"), ("id", "ascending")])
    train = joined.filter(pc.equal(joined["split"], "train")).drop_columns(["split"])
    heldout = joined.filter(pc.equal(joined["split"], "heldout")).drop_columns(["split"])
    present = set(train["level"].to_pylist())
    stages = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        pq.write_table(heldout, tmp / "heldout.parquet")
        for i, level in enumerate(cfg.schedule, start=1):
            pool = train.filter(pc.less_equal(train["level"], level))
            order = np.random.default_rng([cfg.seed, i]).permutation(pool.num_rows)
            stage = pool.take(pa.array(order, pa.int64()))
            pq.write_table(stage, tmp / stage_file(i))
            stages.append(
                {"stage": i, "level": level, "records": stage.num_rows, "tokens": count_tokens(stage["text"].to_pylist()),
                 "sha256": sha256_file(tmp / stage_file(i))}
            )
        summary = {
            "schedule": list(cfg.schedule),
            "seed": cfg.seed,
            "rule": "stage of level k: every training record of level <= k, shuffled by (seed, stage)",
            "stages": stages,
            "train_records": train.num_rows,
            "heldout_records": heldout.num_rows,
            "levels_present": sorted(present),
        }
        (tmp / "curriculum.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary

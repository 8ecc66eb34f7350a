"""The curriculum: which training records each pretraining stage sees, in which order.

Stage i of the schedule (default: the pendulum 1-2-3-4-5-4-3-2-1) has a level k and samples every
training record of level <= k, as DeepSpeed's curriculum raises a difficulty threshold: easy
material first, everything at the peak, and on the way back down the easier levels again, which
consolidates them. Each stage is shuffled with a generator seeded by (seed, stage), so its records
and their order are a pure function of the scores and the config. Held-out records are never in a
stage, and neither is held-out text: a training record sharing `ngram` consecutive words with a
held-out record (training/curriculum/contamination.py) is moved out of every stage, before stages are
built, into contaminated.parquet. Nothing is lost: training split = staged pool + contaminated.

    <out_dir>/stage_01.parquet ...   id, modality, level, text (in training order)
    <out_dir>/heldout.parquet        the held-out records, for evaluation
    <out_dir>/contaminated.parquet   id, modality, level, text, reason (heldout_overlap), detail
    <out_dir>/curriculum.json        schedule, seed, per stage: level, records, tokens; decontamination;
                                     the difficulty's predictor and each batch's scorer; levels per batch
    <out_dir>/levels_by_batch.png    the share of each difficulty level, per batch
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from training.cache import record
from training.config import CurriculumConfig
from training.curriculum.contamination import HeldoutIndex, shared_text
from training.data.stats import level_histograms
from training.fsutil import atomic_path, sha256_file
from training.layout import CONTAMINATED, CURRICULUM_JSON, HELDOUT, LEVELS_PNG, STAGE_FILES, stage_file

OVERLAP = "heldout_overlap"
STEP, VERSION = "curriculum", 2
"""The step's name and logic version in its cache key (training/cache.py): bump VERSION when this module
(or the decontamination it applies) changes what it writes. 2: scores per batch, the levels picture."""


def iter_texts(column: pa.ChunkedArray, step: int = 65_536):
    """A text column as Python strings, a slice at a time."""
    for i in range(0, len(column), step):
        yield from column.slice(i, step).to_pylist()


def decontaminate(train: pa.Table, heldout: pa.Table, n: int) -> tuple[pa.Table, pa.Table]:
    """(kept, contaminated): training records sharing n words with a held-out record move to
    `contaminated`, with the reason and a detail naming one held-out record and the shared words."""
    index = HeldoutIndex(heldout["text"].to_pylist(), n)
    found = list(index.overlaps(iter_texts(train["text"])))
    rows = pa.array([o.train for o in found], pa.int64())
    mask = np.ones(train.num_rows, dtype=bool)
    mask[rows.to_numpy()] = False
    contaminated = train.take(rows)
    keys = heldout.select(["modality", "id"]).to_pylist()
    details = [
        f"shares {o.words} words with held-out {keys[o.heldout]['modality']}/{keys[o.heldout]['id']}: "
        f"\"{shared_text(text, o.start, o.words)}\""
        for o, text in zip(found, contaminated["text"].to_pylist())
    ]
    contaminated = contaminated.append_column("reason", pa.array([OVERLAP] * len(found), pa.string()))
    return train.filter(pa.array(mask)), contaminated.append_column("detail", pa.array(details, pa.string()))


def by_modality(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table["modality"].to_pylist()).items()))


def verify_stages(out_dir: Path, n: int) -> dict:
    """Re-check a built curriculum from its files alone: no stage record shares n words (or, under n
    words, all its words) with a record of heldout.parquet. Each distinct stage record is checked once."""
    stages = sorted(out_dir.glob(STAGE_FILES))
    columns = ["modality", "id", "text"]
    empty = pa.table({c: pa.array([], pa.string()) for c in columns})
    rows = pa.concat_tables([pq.read_table(p, columns=columns) for p in stages] or [empty])
    distinct = rows.group_by(columns, use_threads=False).aggregate([])
    heldout = pq.read_table(out_dir / HELDOUT, columns=columns)
    found = list(HeldoutIndex(heldout["text"].to_pylist(), n).overlaps(iter_texts(distinct["text"])))
    name = lambda t, i: f"{t['modality'][i].as_py()}/{t['id'][i].as_py()}"  # noqa: E731
    examples = [
        f"{name(distinct, o.train)} shares {o.words} words with held-out {name(heldout, o.heldout)}: "
        f"\"{shared_text(distinct['text'][o.train].as_py(), o.start, o.words)}\""
        for o in found[:10]
    ]
    return {
        "stage_files": len(stages),
        "records_checked": distinct.num_rows,
        "heldout_records": heldout.num_rows,
        "overlaps": len(found),
        "examples": examples,
    }


def build_curriculum(
    scores: Sequence[Path], corpus_dir: Path, out_dir: Path, cfg: CurriculumConfig, count_tokens: Callable[[list[str]], int],
    key: str | None = None, difficulty: dict | None = None, levels: int = 5,
) -> dict:
    """Write the curriculum into `out_dir` atomically (with `key`, the step's record last) from the
    corpus's scores files (one per landing batch), and a picture of the levels of each batch
    (levels_by_batch.png, `levels` of them); `difficulty`: the scores' lineage (predictor, scorer per
    batch), kept in curriculum.json. Returns curriculum.json's content."""
    if not cfg.schedule:
        raise ValueError("the curriculum schedule is empty")
    columns = ["id", "modality", "split", "level"]
    scores_table = ds.dataset(list(scores), format="parquet").to_table(columns=columns) if scores else pa.table(
        {"id": pa.array([], pa.string()), "modality": pa.array([], pa.string()), "split": pa.array([], pa.string()), "level": pa.array([], pa.int8())}
    )
    corpus = ds.dataset(corpus_dir, format="parquet").to_table(columns=["id", "modality", "text"])
    joined = scores_table.join(corpus, keys=["modality", "id"]).sort_by([("modality", "ascending"), ("id", "ascending")])
    split = joined.filter(pc.equal(joined["split"], "train")).drop_columns(["split"])
    heldout = joined.filter(pc.equal(joined["split"], "heldout")).drop_columns(["split"])
    train, contaminated = decontaminate(split, heldout, cfg.ngram)
    present = set(train["level"].to_pylist())
    stages = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        picture, by_batch = level_histograms(list(scores), tmp / LEVELS_PNG, levels)
        pq.write_table(heldout, tmp / HELDOUT)
        pq.write_table(contaminated, tmp / CONTAMINATED)
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
            "levels_by_batch": by_batch,
            "levels_png": LEVELS_PNG if picture else None,
            "difficulty": difficulty or {},
            "decontamination": {
                "rule": f"a training record sharing {cfg.ngram} consecutive words (lowercased; a record of fewer "
                "words: all of them) with a held-out record is in no stage",
                "ngram": cfg.ngram,
                "removed": contaminated.num_rows,
                "by_modality": by_modality(contaminated),
                "training_split_records": split.num_rows,
                "file": CONTAMINATED,
            },
        }
        (tmp / CURRICULUM_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        if key is not None:
            record(tmp, STEP, VERSION, key, summary)
    return summary

"""The curriculum: which training records each pretraining stage sees, in which order.

Stage i of the schedule (default: the pendulum 1-2-3-4-5-4-3-2-1) has a level k and samples every
training record of level <= k, as DeepSpeed's curriculum raises a difficulty threshold: easy
material first, everything at the peak, and on the way back down the easier levels again, which
consolidates them. Each stage is shuffled with a generator seeded by (seed, stage), so its records
and their order are a pure function of the scores and the config. Held-out records are never in a
stage, and neither is held-out text: a training record sharing `ngram` consecutive words with a
held-out record (training/curriculum/contamination.py) is moved out of every stage, before stages are
built, into contaminated.parquet. Nothing is lost: training split = staged pool + contaminated.

A stage is a selection, not a copy: each row names a record's tokens in the token shards
(training/curriculum/tokens.py) by batch, offset and count, so a stage's token count is a sum and
packing it copies tokens, never encodes. Text is read only for the held-out records (kept whole, for
evaluation and as the decontamination index: `DifficultyConfig.heldout_share` of the corpus) and
streamed a chunk at a time for the training records being checked against them; what is held per
training record is its keys (ids, level, where its tokens are), never its text.

    <out_dir>/stage_01.parquet ...   id, modality, level, batch, offset, tokens (in training order)
    <out_dir>/heldout.parquet        the held-out records, for evaluation
    <out_dir>/contaminated.parquet   id, modality, level, text, reason (heldout_overlap), detail
    <out_dir>/curriculum.json        schedule, seed, per stage: level, records, tokens; decontamination;
                                     the difficulty's predictor and each batch's scorer; levels per batch;
                                     the token shards' key per batch
    <out_dir>/levels_by_batch.png    the share of each difficulty level, per batch
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from training.cache import record
from training.config import CurriculumConfig
from training.curriculum.contamination import HeldoutIndex, shared_text
from training.curriculum.tokens import gather, read_index
from training.data.stats import level_histograms
from training.fsutil import atomic_path, sha256_file
from training.layout import CONTAMINATED, CURRICULUM_JSON, HELDOUT, LEVELS_PNG, STAGE_FILES, batch_folders, stage_file

OVERLAP = "heldout_overlap"
STEP, VERSION = "curriculum", 3
"""The step's name and logic version in its cache key (training/cache.py): bump VERSION when this module
(or the decontamination it applies) changes what it writes. 2: scores per batch, the levels picture;
3: stages as selections into the token shards."""

CHUNK = 4096
"""Records whose text (or tokens) are held at once."""
STAGE_COLUMNS = ["id", "modality", "level", "batch", "offset", "tokens"]


def _groups(table: pa.Table, columns: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(values of `columns`, the rows holding them) for each distinct combination, in sorted order."""
    encoded = pc.binary_join_element_wise(*[table[c] for c in columns], "\0").combine_chunks().dictionary_encode()
    values, codes = encoded.dictionary.to_pylist(), encoded.indices.to_numpy(zero_copy_only=False)
    for g in np.argsort(values, kind="stable"):
        yield values[g].split("\0"), np.flatnonzero(codes == g)


def stream_texts(corpus_dir: Path, keys: pa.Table, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """(rows of `keys`, their texts) for records named by batch, file and row in the corpus, a chunk at
    a time, in the corpus's file order."""
    rows = keys["row"].to_numpy()
    for (batch, file), pick in _groups(keys, ["batch", "file"]):
        pick = pick[np.argsort(rows[pick], kind="stable")]
        wanted, base = rows[pick], 0
        for part in pq.ParquetFile(corpus_dir / batch / file).iter_batches(batch_size=chunk, columns=["text"]):
            lo, hi = np.searchsorted(wanted, [base, base + part.num_rows])
            if hi > lo:
                yield pick[lo:hi], part.column(0).take(pa.array(wanted[lo:hi] - base)).cast(pa.large_string())
            base += part.num_rows


def texts_of(corpus_dir: Path, keys: pa.Table) -> pa.Array:
    """The texts of the records `keys` names, in its order, as one Arrow array (for few records: the
    held-out share, the contaminated ones)."""
    rows, parts = [np.zeros(0, np.int64)], [pa.array([], pa.large_string())]
    for r, texts in stream_texts(corpus_dir, keys):
        rows.append(r)
        parts.append(texts)
    return pa.concat_arrays(parts).take(pa.array(np.argsort(np.concatenate(rows), kind="stable")))


@dataclass(frozen=True)
class Pool:
    """The training records the stages draw from when a retraining starts from a release: those of the
    corpus parts it was not trained on (`new`: (batch, modality) pairs), and a deterministic share of
    the others (`replay_share`, by a hash of modality and id), so the model keeps what it knew."""

    release: str
    new: tuple[tuple[str, str], ...]
    replay_share: float

    def draw(self, keys: pa.Table) -> tuple[np.ndarray, np.ndarray]:
        """(new, replayed): masks over the records of `keys`."""
        new = np.zeros(keys.num_rows, bool)
        for b, m in self.new:
            new |= pc.and_(pc.equal(keys["batch"], b), pc.equal(keys["modality"], m)).to_numpy(zero_copy_only=False)
        modality, ids = keys["modality"].to_pylist(), keys["id"].to_pylist()
        replay = np.fromiter((replayed(m, i, self.replay_share) for m, i in zip(modality, ids)), bool, keys.num_rows)
        return new, replay & ~new

    def summary(self, new: np.ndarray, replay: np.ndarray) -> dict:
        return {"from": "release", "release": self.release, "new_parts": [list(p) for p in self.new],
                "new_records": int(new.sum()), "replay_share": self.replay_share, "replayed_records": int(replay.sum())}


def start_line(start: dict) -> str:
    """Where a curriculum's training starts, in words (the asset's metadata, the model card)."""
    if start.get("from") != "release":
        return "from scratch: random weights, every training record"
    return (
        f"from release {start['release']} (its weights and tokenizer): {start['new_records']:,} records landed since it, "
        f"and {start['replayed_records']:,} earlier ones replayed ({start['replay_share']:.0%} of them)"
    )


def replayed(modality: str, record_id: str, share: float) -> bool:
    """Whether an earlier record is replayed: a hash of its own, independent of the held-out split's."""
    h = int.from_bytes(hashlib.blake2b(f"replay\0{modality}\0{record_id}".encode(), digest_size=8).digest(), "big")
    return h / 2**64 < share


KEY_SCHEMA = pa.schema([
    ("id", pa.string()), ("modality", pa.string()), ("split", pa.string()), ("level", pa.int8()), ("batch", pa.string()),
    ("file", pa.string()), ("row", pa.int64()), ("offset", pa.int64()), ("tokens", pa.int64()),
])


def record_keys(scores: Sequence[Path], tokens_dir: Path, batches: list[str]) -> pa.Table:
    """Every scored record's keys and where its tokens are, sorted by (modality, id), with its split: no
    text. Batch by batch: a batch's scores lie row for row with its shard's index, as the difficulty step
    writes them, and are put side by side; other scores are joined on (modality, id), a batch at a time."""
    scored = ds.dataset(list(scores), format="parquet") if scores else None
    parts = []
    for batch in batches:
        index = read_index(tokens_dir, [batch], ["file", "row", "modality", "id", "offset", "tokens"])
        part = scored.to_table(columns=["id", "modality", "split", "level"], filter=pc.field("batch") == batch) if scored else None
        if part is None or part.num_rows == 0:
            continue
        if part.select(["modality", "id"]).equals(index.select(["modality", "id"])):
            part = index.append_column("split", part["split"]).append_column("level", part["level"])
        else:
            part = part.join(index, keys=["modality", "id"])
        parts.append(part.select(KEY_SCHEMA.names).cast(KEY_SCHEMA))
    keys = pa.concat_tables(parts) if parts else KEY_SCHEMA.empty_table()
    return keys.sort_by([("modality", "ascending"), ("id", "ascending")])


def decontaminate(train: pa.Table, heldout: pa.Table, heldout_texts: pa.Array, corpus_dir: Path, n: int) -> tuple[np.ndarray, pa.Table]:
    """(the rows of `train` that stay, the contaminated records): training records sharing n words with
    a held-out record, with the reason and a detail naming one held-out record and the shared words.
    Training texts stream through the held-out index a chunk at a time."""
    index = HeldoutIndex(heldout_texts, n)
    order: list[np.ndarray] = []

    def texts() -> Iterator[str]:
        for rows, chunk in stream_texts(corpus_dir, train):
            order.append(rows)
            yield from chunk.to_pylist()

    found = list(index.overlaps(texts()))
    streamed = np.concatenate(order) if order else np.zeros(0, np.int64)
    hits = sorted(zip(streamed[[o.train for o in found]].tolist(), found), key=lambda t: t[0])
    rows = pa.array([r for r, _ in hits], pa.int64())
    contaminated = train.take(rows).select(["id", "modality", "level"])
    texts_found = texts_of(corpus_dir, train.take(rows)).to_pylist()
    keys = heldout.select(["modality", "id"]).to_pylist()
    details = [
        f"shares {o.words} words with held-out {keys[o.heldout]['modality']}/{keys[o.heldout]['id']}: "
        f"\"{shared_text(text, o.start, o.words)}\""
        for (_, o), text in zip(hits, texts_found)
    ]
    contaminated = contaminated.append_column("text", pa.array(texts_found, pa.large_string()))
    contaminated = contaminated.append_column("reason", pa.array([OVERLAP] * len(hits), pa.string()))
    mask = np.ones(train.num_rows, dtype=bool)
    mask[rows.to_numpy()] = False
    return mask, contaminated.append_column("detail", pa.array(details, pa.string()))


def by_modality(table: pa.Table) -> dict[str, int]:
    return dict(sorted(Counter(table["modality"].to_pylist()).items()))


def _distinct_selections(stages: list[Path]) -> tuple[list[str], np.ndarray]:
    """(batch names, distinct (batch code, offset, tokens) rows) over every stage file."""
    names: list[str] = []
    distinct = np.zeros((0, 3), np.int64)
    for path in stages:
        t = pq.read_table(path, columns=["batch", "offset", "tokens"])
        batch = t["batch"].combine_chunks().dictionary_encode()
        found = batch.dictionary.to_pylist()
        names += [b for b in found if b not in names]
        codes = np.array([names.index(b) for b in found], np.int64)[batch.indices.to_numpy(zero_copy_only=False)]
        rows = np.stack([codes, t["offset"].to_numpy(), t["tokens"].to_numpy()], axis=1)
        del t, batch
        distinct = np.unique(np.concatenate([distinct, rows]), axis=0)
    return names, distinct


def _named(stages: list[Path], names: list[str], wanted: set[tuple[int, int, int]]) -> dict[tuple[int, int, int], str]:
    """modality/id of the stage rows selecting `wanted` (batch code, offset, tokens)."""
    code = {b: i for i, b in enumerate(names)}
    out: dict[tuple[int, int, int], str] = {}
    offsets = pa.array(sorted({k[1] for k in wanted}), pa.int64())
    for path in stages:
        table = pq.read_table(path, columns=["modality", "id", "batch", "offset", "tokens"])
        for r in table.filter(pc.is_in(table["offset"], offsets)).to_pylist():
            if (k := (code[r["batch"]], r["offset"], r["tokens"])) in wanted:
                out.setdefault(k, f"{r['modality']}/{r['id']}")
    return out


def verify_stages(out_dir: Path, tokens_dir: Path, tokenizer, n: int) -> dict:
    """Re-check a built curriculum from what training reads: no stage record's tokens, decoded, share n
    words (or, under n words, all its words) with a record of heldout.parquet. Each distinct selection is
    checked once; memory holds the distinct selections (24 bytes each) and a chunk of text."""
    stages = sorted(out_dir.glob(STAGE_FILES))
    names, distinct = _distinct_selections(stages)
    heldout = pq.read_table(out_dir / HELDOUT, columns=["modality", "id", "text"])

    texts = (t for lo in range(0, len(distinct), CHUNK) for t in texts_at(tokens_dir, tokenizer, names, distinct[lo : lo + CHUNK]))
    found = list(HeldoutIndex(heldout["text"], n).overlaps(texts))
    shown = found[:10]
    wanted = {tuple(distinct[o.train].tolist()) for o in shown}
    named = _named(stages, names, wanted) if wanted else {}
    held = lambda i: f"{heldout['modality'][i].as_py()}/{heldout['id'][i].as_py()}"  # noqa: E731
    examples = []
    for o in shown:
        k = tuple(distinct[o.train].tolist())
        text = texts_at(tokens_dir, tokenizer, names, distinct[o.train : o.train + 1])[0]
        examples.append(f"{named.get(k, k)} shares {o.words} words with held-out {held(o.heldout)}: \"{shared_text(text, o.start, o.words)}\"")
    return {
        "stage_files": len(stages),
        "records_checked": len(distinct),
        "heldout_records": heldout.num_rows,
        "overlaps": len(found),
        "examples": examples,
    }


def texts_at(tokens_dir: Path, tokenizer, names: list[str], rows: np.ndarray) -> list[str]:
    """The decoded tokens of (batch code, offset, tokens) rows."""
    if not len(rows):
        return []
    flat = gather(tokens_dir, np.array(names, object)[rows[:, 0]], rows[:, 1], rows[:, 2])
    return tokenizer.batch_decode([i.tolist() for i in np.split(flat, np.cumsum(rows[:, 2])[:-1])], skip_special_tokens=True)


def build_curriculum(
    scores: Sequence[Path], corpus_dir: Path, tokens_dir: Path, out_dir: Path, cfg: CurriculumConfig,
    key: str | None = None, difficulty: dict | None = None, levels: int = 5, shards: dict[str, dict] | None = None,
    pool: Pool | None = None,
) -> dict:
    """Write the curriculum into `out_dir` atomically (with `key`, the step's record last) from the
    corpus's scores files (one per landing batch) and the token shards of its batches (`shards`: batch ->
    its shard's key, from `tokens.current_shards`; None: every shard under `tokens_dir`), and a picture of
    the levels of each batch (levels_by_batch.png, `levels` of them); `difficulty`: the scores' lineage
    (predictor, scorer per batch), kept in curriculum.json; `pool`: a retraining from a release draws
    its stages from the new records and a replay share (None: every training record). Returns
    curriculum.json's content."""
    if not cfg.schedule:
        raise ValueError("the curriculum schedule is empty")
    batches = sorted(shards) if shards is not None else batch_folders(tokens_dir)
    keys = record_keys(scores, tokens_dir, batches)
    split = keys.filter(pc.equal(keys["split"], "train")).drop_columns(["split"])
    heldout_keys = keys.filter(pc.equal(keys["split"], "heldout")).drop_columns(["split"])
    del keys  # what follows holds the two sides, never a third copy of the keys
    heldout_texts = texts_of(corpus_dir, heldout_keys)
    heldout = heldout_keys.select(["id", "modality", "level"]).append_column("text", heldout_texts)
    kept, contaminated = decontaminate(split, heldout, heldout_texts, corpus_dir, cfg.ngram)
    train, split_records = split.filter(pa.array(kept)), split.num_rows
    del split
    if pool is None:
        start = {"from": "scratch"}
    else:
        new, replay = pool.draw(train)
        start = pool.summary(new, replay)
        train = train.filter(pa.array(new | replay))
    train = train.select(STAGE_COLUMNS)
    present = set(pc.unique(train["level"]).to_pylist())
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
                {"stage": i, "level": level, "records": stage.num_rows, "tokens": int(pc.sum(stage["tokens"]).as_py() or 0),
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
            "token_shards": {b: s["key"] for b, s in (shards or {}).items()},
            "start": start,
            "decontamination": {
                "rule": f"a training record sharing {cfg.ngram} consecutive words (lowercased; a record of fewer "
                "words: all of them) with a held-out record is in no stage",
                "ngram": cfg.ngram,
                "removed": contaminated.num_rows,
                "by_modality": by_modality(contaminated),
                "training_split_records": split_records,
                "file": CONTAMINATED,
            },
        }
        (tmp / CURRICULUM_JSON).write_text(json.dumps(summary, indent=2) + "\n")
        if key is not None:
            record(tmp, STEP, VERSION, key, summary)
    return summary

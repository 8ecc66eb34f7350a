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
from training.curriculum.contamination import HeldoutIndex, release_memory, shared_text
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
STAGE_ROWS = 65_536
"""Stage rows written at once: a stage is written from index arrays, never copied whole."""


def _groups(table: pa.Table, columns: list[str]) -> Iterator[tuple[list[str], np.ndarray]]:
    """(values of `columns`, the rows holding them) for each distinct combination, in sorted order: from
    the columns' dictionary codes, never a string per row."""
    names = [table[c].combine_chunks() for c in columns]
    names = [a if pa.types.is_dictionary(a.type) else a.dictionary_encode() for a in names]
    sizes = [max(len(a.dictionary), 1) for a in names]
    codes = np.zeros(table.num_rows, np.int64)
    for a, size in zip(names, sizes):
        codes = codes * size + a.indices.to_numpy(zero_copy_only=False)
    found, inverse = np.unique(codes, return_inverse=True)
    rows = np.split(np.argsort(inverse, kind="stable"), np.cumsum(np.bincount(inverse, minlength=len(found)))[:-1])
    del codes, inverse  # the caller streams while this generator lives: keep only the groups' rows

    def values(code: int) -> list[str]:
        out = []
        for a, size in zip(reversed(names), reversed(sizes)):
            code, i = divmod(code, size)
            out.append(a.dictionary[i].as_py())
        return out[::-1]

    yield from sorted(zip(map(values, found.tolist()), rows), key=lambda group: group[0])


def stream_texts(corpus_dir: Path, keys: pa.Table, chunk: int = CHUNK) -> Iterator[tuple[np.ndarray, pa.Array]]:
    """(rows of `keys`, their texts) for records named by batch, file and row in the corpus, at most
    `chunk` at a time, in the corpus's file order. A file is read a row group at a time, on this thread
    (Arrow's decoding threads each keep memory of their own), and only the row groups holding a wanted row."""
    rows = keys["row"].to_numpy()
    for (batch, file), pick in _groups(keys, ["batch", "file"]):
        pick = pick[np.argsort(rows[pick], kind="stable")]
        wanted, base = rows[pick], 0
        parquet = pq.ParquetFile(corpus_dir / batch / file)
        for group in range(parquet.metadata.num_row_groups):
            size = parquet.metadata.row_group(group).num_rows
            lo, hi = np.searchsorted(wanted, [base, base + size])
            if hi > lo:
                texts = parquet.read_row_group(group, columns=["text"], use_threads=False).column(0)
                for at in range(lo, hi, chunk):
                    end = min(at + chunk, hi)
                    yield pick[at:end], texts.take(pa.array(wanted[at:end] - base)).combine_chunks().cast(pa.large_string())
            base += size


def texts_of(corpus_dir: Path, keys: pa.Table) -> pa.Array:
    """The texts of the records `keys` names, in its order, as one Arrow array (for few records: the
    held-out share, the contaminated ones)."""
    rows, parts = [np.zeros(0, np.int64)], [pa.array([], pa.large_string())]
    for r, texts in stream_texts(corpus_dir, keys):
        rows.append(r)
        parts.append(texts)
    return pa.concat_arrays(parts).take(pa.array(np.argsort(np.concatenate(rows), kind="stable")))


def write_heldout(corpus_dir: Path, keys: pa.Table, path: Path) -> None:
    """heldout.parquet: the held-out `keys` (id, modality, level), in their order, with their texts. The
    texts stream from the corpus into an Arrow file on disk (in corpus order) and come back in the keys'
    order from its memory map, a row group at a time, so they are never all on the heap."""
    spill, streamed = path.with_name(f".{path.name}.texts.arrow"), []
    with pa.OSFile(str(spill), "wb") as sink, pa.ipc.new_file(sink, pa.schema([("text", pa.large_string())])) as spilled:
        for rows, texts in stream_texts(corpus_dir, keys):
            streamed.append(rows)
            spilled.write_batch(pa.record_batch([texts], names=["text"]))
    at = np.empty(keys.num_rows, np.int64)
    at[np.concatenate(streamed) if streamed else at[:0]] = np.arange(keys.num_rows)
    schema = pa.schema([*RECORD_SCHEMA, ("text", pa.large_string())])
    with pa.memory_map(str(spill)) as mapped, pq.ParquetWriter(path, schema) as out:
        texts = pa.ipc.open_file(mapped).read_all().column("text")
        for lo in range(0, keys.num_rows, HELDOUT_ROWS):
            part = keys.slice(lo, HELDOUT_ROWS).select(RECORD_SCHEMA.names)
            part = part.append_column("text", texts.take(pa.array(at[lo : lo + HELDOUT_ROWS])))
            out.write_table(part.cast(schema), row_group_size=HELDOUT_ROWS)
        del texts
    spill.unlink()


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
        replay = np.zeros(keys.num_rows, bool)
        for lo in range(0, keys.num_rows, CHUNK):  # a chunk of ids as Python strings at a time
            part = keys.slice(lo, CHUNK)
            pairs = zip(part["modality"].to_pylist(), part["id"].to_pylist())
            replay[lo : lo + part.num_rows] = [replayed(m, i, self.replay_share) for m, i in pairs]
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


_NAME = pa.dictionary(pa.int32(), pa.string())
KEY_SCHEMA = pa.schema([
    ("id", pa.string()), ("modality", _NAME), ("split", pa.string()), ("level", pa.int8()), ("batch", _NAME),
    ("file", _NAME), ("row", pa.int32()), ("offset", pa.int64()), ("tokens", pa.int32()),
])
"""A record's keys while the curriculum is built: the modality, batch and file names, the same for
thousands of records, as dictionary codes (4 bytes a record, not the name)."""
RECORD_SCHEMA = pa.schema([("id", pa.string()), ("modality", pa.string()), ("level", pa.int8())])
"""How a record is named in the files the curriculum writes: its stage rows, heldout.parquet, contaminated.parquet."""
STAGE_SCHEMA = pa.schema([*RECORD_SCHEMA, ("batch", pa.string()), ("offset", pa.int64()), ("tokens", pa.int64())])
HELDOUT_ROWS = 1024
"""Rows per row group of heldout.parquet: decontamination reads a confirmed match's held-out text again
by its row group."""


def record_keys(scores: Sequence[Path], tokens_dir: Path, batches: list[str]) -> tuple[pa.Table, pa.Table]:
    """(training keys, held-out keys): every scored record's keys and where its tokens are, no text, in
    batch order. Batch by batch: a batch's scores lie row for row with its shard's index, as the difficulty
    step writes them, and are put side by side; other scores are joined on (modality, id), a batch at a
    time. Each batch is split as it is read, so the two sides are never held together with a third copy."""
    scored = ds.dataset(list(scores), format="parquet") if scores else None
    sides: dict[str, list[pa.Table]] = {"train": [], "heldout": []}
    for batch in batches:
        index = read_index(tokens_dir, [batch], ["file", "row", "modality", "id", "offset", "tokens"])
        part = scored.to_table(columns=["id", "modality", "split", "level"], filter=pc.field("batch") == batch) if scored else None
        if part is None or part.num_rows == 0:
            continue
        if part.select(["modality", "id"]).equals(index.select(["modality", "id"])):
            part = index.append_column("split", part["split"]).append_column("level", part["level"])
        else:
            part = part.join(index, keys=["modality", "id"])
        part = part.select(KEY_SCHEMA.names).cast(KEY_SCHEMA)
        for split, kept in sides.items():
            kept.append(part.filter(pc.equal(part["split"], split)).drop_columns(["split"]))
    empty = KEY_SCHEMA.empty_table().drop_columns(["split"])
    return tuple(pa.concat_tables(kept).combine_chunks() if kept else empty for kept in sides.values())


def key_order(keys: pa.Table) -> np.ndarray:
    """The rows of `keys` in (modality, id) order: the order stages draw records in, whatever the batches'."""
    names = pa.table({"modality": keys["modality"].cast(pa.string()), "id": keys["id"]})
    return pc.sort_indices(names, sort_keys=[("modality", "ascending"), ("id", "ascending")]).to_numpy()


def decontaminate(train: pa.Table, order: np.ndarray, heldout: Path, corpus_dir: Path, n: int) -> tuple[np.ndarray, pa.Table]:
    """(a mask of the rows of `train` that stay, the contaminated records in `order`): training records
    sharing n words with a record of `heldout` (heldout.parquet), with the reason and a detail naming one
    held-out record and the shared words. Training texts stream through the held-out index a chunk at a time."""
    index = HeldoutIndex(heldout, n)
    streamed: list[np.ndarray] = []

    def texts() -> Iterator[str]:
        for rows, chunk in stream_texts(corpus_dir, train):
            streamed.append(rows.astype(np.int32))  # a copy: the view would keep its whole group alive
            yield from chunk.to_pylist()

    found = list(index.overlaps(texts()))
    del index
    at = np.concatenate(streamed)[[o.train for o in found]].astype(np.int64) if found else np.zeros(0, np.int64)
    rank = np.empty(len(order), np.int64)
    rank[order] = np.arange(len(order))
    hits = sorted(zip(at.tolist(), found), key=lambda t: rank[t[0]])
    del rank
    rows = pa.array([r for r, _ in hits], pa.int64())
    contaminated = train.take(rows).select(RECORD_SCHEMA.names).cast(RECORD_SCHEMA)
    texts_found = texts_of(corpus_dir, train.take(rows)).to_pylist()
    keys = pq.read_table(heldout, columns=["modality", "id"])
    details = [
        f"shares {o.words} words with held-out {keys['modality'][o.heldout]}/{keys['id'][o.heldout]}: "
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


_OFFSET_BITS = 40
"""A selection's key: its batch's code above, its offset in the batch's shard (under 2^40 tokens) below."""


def _distinct_selections(stages: list[Path]) -> tuple[list[str], np.ndarray]:
    """(batch names, distinct (batch code, offset, tokens) rows, sorted) over every stage file: a record's
    offset names it within its batch, so each stage row is one int64 key and the merge is a 1-D unique."""
    names: list[str] = []
    keys, tokens = np.zeros(0, np.int64), np.zeros(0, np.int64)
    for path in stages:
        t = pq.read_table(path, columns=["batch", "offset", "tokens"])
        batch = t["batch"].combine_chunks().dictionary_encode()
        found = batch.dictionary.to_pylist()
        names += [b for b in found if b not in names]
        codes = np.array([names.index(b) for b in found], np.int64)[batch.indices.to_numpy(zero_copy_only=False)]
        offset = t["offset"].to_numpy()
        if len(offset) and offset.max() >= 1 << _OFFSET_BITS:
            raise ValueError(f"{path.name}: a token offset past 2^{_OFFSET_BITS}")
        keys, first = np.unique(np.concatenate([keys, (codes << _OFFSET_BITS) | offset]), return_index=True)
        tokens = np.concatenate([tokens, t["tokens"].to_numpy()])[first]
        del t, batch, codes, offset
    return names, np.stack([keys >> _OFFSET_BITS, keys & ((1 << _OFFSET_BITS) - 1), tokens], axis=1)


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
    heldout = pq.read_table(out_dir / HELDOUT, columns=["modality", "id"])

    texts = (t for lo in range(0, len(distinct), CHUNK) for t in texts_at(tokens_dir, tokenizer, names, distinct[lo : lo + CHUNK]))
    found = list(HeldoutIndex(out_dir / HELDOUT, n).overlaps(texts))
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
    train, heldout_keys = record_keys(scores, tokens_dir, batches)
    heldout_keys = heldout_keys.take(pa.array(key_order(heldout_keys)))
    release_memory()
    stages = []
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        write_heldout(corpus_dir, heldout_keys, tmp / HELDOUT)
        release_memory()
        # The training keys are held once, in batch order; the stages are index arrays into them.
        order = key_order(train)
        kept, contaminated = decontaminate(train, order, tmp / HELDOUT, corpus_dir, cfg.ngram)
        staged, split_records = order[kept[order]], train.num_rows
        del order, kept
        release_memory()
        if pool is None:
            start = {"from": "scratch"}
        else:
            new, replay = pool.draw(train)
            start = pool.summary(new[staged], replay[staged])
            staged = staged[(new | replay)[staged]]
        level, tokens = train["level"].to_numpy(), train["tokens"].to_numpy()
        present = set(np.unique(level[staged]).tolist())
        picture, by_batch = level_histograms(list(scores), tmp / LEVELS_PNG, levels)
        pq.write_table(contaminated, tmp / CONTAMINATED)
        for i, level_max in enumerate(cfg.schedule, start=1):
            pick = staged[level[staged] <= level_max]
            rows = pick[np.random.default_rng([cfg.seed, i]).permutation(len(pick))]
            with pq.ParquetWriter(tmp / stage_file(i), STAGE_SCHEMA) as writer:
                for lo in range(0, max(len(rows), 1), STAGE_ROWS):
                    writer.write_table(train.take(pa.array(rows[lo : lo + STAGE_ROWS])).select(STAGE_SCHEMA.names).cast(STAGE_SCHEMA))
            stages.append(
                {"stage": i, "level": level_max, "records": len(rows), "tokens": int(tokens[rows].sum()),
                 "sha256": sha256_file(tmp / stage_file(i))}
            )
        summary = {
            "schedule": list(cfg.schedule),
            "seed": cfg.seed,
            "rule": "stage of level k: every training record of level <= k, shuffled by (seed, stage)",
            "stages": stages,
            "train_records": len(staged),
            "heldout_records": heldout_keys.num_rows,
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

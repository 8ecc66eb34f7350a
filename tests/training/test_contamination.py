"""Decontamination: no training record that shares 13 consecutive words with a held-out record reaches
a stage; it moves to contaminated.parquet, and the curriculum's blocking check re-verifies the files."""

import random
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from training.config import CurriculumConfig
from training.curriculum.contamination import HeldoutIndex, find_overlaps, fingerprints, words
from training.curriculum.schedule import build_curriculum, verify_stages
from training.layout import CONTAMINATED, HELDOUT, stage_file

from tests.helpers import token_shards

# 20 distinct words, so a run of k words shared below is shared by exactly k words, never more.
W = "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa quebec romeo sierra tango".split()
FILLER = "zulu yankee xray whiskey victor uniform"
HAN = "数据清洗是训练语言模型之前最费时的工作之一"  # 21 Han characters: 21 words
DOCSTRING = "Return the number of items in the queue, counting those that are still being processed by a worker."


def _code_with(doc: str) -> str:
    return f'import os\n\n\ndef qsize(self):\n    """{doc}"""\n    return len(self._queue) + os.cpu_count()\n'


def build(tmp_path: Path, train: dict[str, str], heldout: dict[str, str], levels: dict[str, int] | None = None,
          cfg: CurriculumConfig = CurriculumConfig()) -> dict:
    """A curriculum from records given as {id: text} ("modality:id" keys pick a modality; default text)."""
    rows = [(k, t, "train") for k, t in train.items()] + [(k, t, "heldout") for k, t in heldout.items()]
    modality = [k.split(":")[0] if ":" in k else "text" for k, _, _ in rows]
    ids = [k.split(":")[-1] for k, _, _ in rows]
    level = [(levels or {}).get(k, 1) for k, _, _ in rows]
    split = [s for _, _, s in rows]
    pq.write_table(pa.table({"id": ids, "modality": modality, "batch": ["b1"] * len(ids), "split": split, "level": pa.array(level, pa.int8())}), tmp_path / "scores.parquet")
    (tmp_path / "corpus" / "b1").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "modality": modality, "text": [t for _, t, _ in rows]}), tmp_path / "corpus" / "b1" / "all.parquet")
    token_shards(tmp_path / "corpus", tmp_path)
    return build_curriculum([tmp_path / "scores.parquet"], tmp_path / "corpus", tmp_path / "tokenized_corpus", tmp_path / "cur", cfg)


def selecting(tokens: Path, stage: pa.Table, record_id: str, as_id: str) -> pa.Table:
    """`stage` with one more row: the tokens of corpus record `record_id` under the id `as_id`."""
    index = pq.read_table(tokens / "b1" / "index.parquet").to_pylist()
    at = next(r for r in index if r["id"] == record_id)
    row = {"id": as_id, "modality": at["modality"], "level": 1, "batch": "b1", "offset": at["offset"], "tokens": at["tokens"]}
    return pa.concat_tables([stage, pa.Table.from_pylist([row], schema=stage.schema)])


def staged_ids(cur: Path, summary: dict) -> set[str]:
    return {i for s in summary["stages"] for i in pq.read_table(cur / stage_file(s["stage"]))["id"].to_pylist()}


@pytest.mark.parametrize(
    "train, heldout, removed, shared",
    [
        # exactly 13 shared words: removed, the detail names the held-out record and the words
        (f"{FILLER} {' '.join(W[:13])} {FILLER}", f"papa quebec {' '.join(W[:13])} romeo", True, " ".join(W[:13])),
        # 12 shared words: kept
        (f"{FILLER} {' '.join(W[:12])} {FILLER}", f"papa quebec {' '.join(W[:12])} romeo sierra", False, None),
        # case, punctuation and whitespace differ: the same words
        ("Alpha, BRAVO; charlie...\n\tdelta (echo) foxtrot-golf Hotel! india juliet kilo: lima mike. " + FILLER,
         "zz " + " ".join(W[:13]) + " zz", True, "Alpha, BRAVO; charlie... delta (echo) foxtrot-golf Hotel! india juliet kilo: lima mike"),
        # Chinese: every Han character is a word; 13 shared characters match, 12 do not
        ("前言" + HAN[:13] + "。后记", "另外" + HAN[:13] + "。", True, HAN[:13]),
        ("前言" + HAN[:12] + "。后记", "另外" + HAN[:12] + "。", False, None),
        # code containing a held-out docstring (the standard library's docstrings are text records too)
        ("code:queue.py=" + _code_with(DOCSTRING), DOCSTRING, True, DOCSTRING.rstrip(".")[:60]),
        # a record of fewer than 13 words matches only a record of the same words ...
        ("A large purple square, at the bottom", "a large purple square at the bottom.", True, "A large purple square, at the bottom"),
        # ... never a part of a longer record
        ("a large purple square at the bottom", "there is a large purple square at the bottom on a gray background", False, None),
        ("there is a large purple square at the bottom on a gray background", "a large purple square at the bottom", False, None),
    ],
)
def test_overlapping_training_records_leave_every_stage(tmp_path, train, heldout, removed, shared):
    key, text = train.split("=", 1) if train.startswith("code:") else ("t1", train)
    summary = build(tmp_path, {key: text, "t2": FILLER + " nothing in common here"}, {"h1": heldout})
    contaminated = pq.read_table(tmp_path / "cur" / CONTAMINATED).to_pylist()
    tid = key.split(":")[-1]
    assert (tid not in staged_ids(tmp_path / "cur", summary)) is removed
    assert [r["id"] for r in contaminated] == ([tid] if removed else [])
    assert summary["decontamination"]["removed"] == len(contaminated)
    if removed:
        [row] = contaminated
        assert row["reason"] == "heldout_overlap" and row["text"] == text
        assert "held-out text/h1" in row["detail"] and shared in row["detail"]


def test_accounting_on_a_corpus_with_planted_overlaps(tmp_path):
    rng = random.Random(3)
    vocab = [f"w{i}" for i in range(400)]
    sentence = lambda k: " ".join(rng.choice(vocab) for _ in range(k))  # noqa: E731
    heldout = {f"h{i}": sentence(rng.randint(20, 60)) for i in range(20)}
    train = {f"t{i}": sentence(rng.randint(5, 80)) for i in range(300)}
    planted = {f"t{i}" for i in range(0, 300, 30)}
    for i, key in enumerate(sorted(planted)):
        copied = words(heldout[f"h{i}"])[3:16]
        train[key] = f"{sentence(4)} {' '.join(copied).title()} {sentence(4)}"
    train |= {"caption:c1": "A red circle on the left", "caption:c2": "a red circle on the right"}
    heldout |= {"caption:c9": "a red circle, on the LEFT"}
    levels = {k: 1 + i % 5 for i, k in enumerate(train)}
    summary = build(tmp_path, train, heldout, levels)
    cur = tmp_path / "cur"
    contaminated = pq.read_table(cur / CONTAMINATED)
    removed = set(contaminated["id"].to_pylist())
    assert planted | {"c1"} <= removed  # random 400-word sentences rarely share 13 words by chance
    staged = staged_ids(cur, summary)
    # Nothing is lost: the training split is the staged pool plus the contaminated records.
    assert staged.isdisjoint(removed) and staged | removed == {k.split(":")[-1] for k in train}
    d = summary["decontamination"]
    assert d["training_split_records"] == len(train) == summary["train_records"] + d["removed"]
    assert d["by_modality"] == {m: contaminated["modality"].to_pylist().count(m) for m in set(contaminated["modality"].to_pylist())}
    assert d["by_modality"]["caption"] == 1 and d["ngram"] == 13
    assert summary["heldout_records"] == pq.read_table(cur / HELDOUT).num_rows == 21


def _reference(train: list, heldout: list, n: int = 13) -> list[tuple[int, int, int, int]]:
    """(train, heldout, start, words) from sets of word tuples: a training record's first window (in word
    order) that some held-out record holds, with the first held-out record holding it; a record of under
    n words matches only a held-out record of the same words."""
    def grams(t) -> list[tuple[int, tuple]]:
        w = words(t)
        return [(i, tuple(w[i : i + n])) for i in range(len(w) - n + 1)] if len(w) >= n else ([(0, ("whole", *w))] if w else [])

    first: dict[tuple, int] = {}
    for row, t in enumerate(heldout):
        for _, g in grams(t):
            first.setdefault(g, row)
    found = []
    for i, t in enumerate(train):
        if hit := next(((s, g) for s, g in grams(t) if g in first), None):
            found.append((i, first[hit[1]], hit[0], min(len(words(t)), n)))
    return found


@pytest.mark.parametrize(
    "vocab, heldout_records, train_records, max_chars, heldout_as, bucket_start",
    [
        (12, 60, 1500, 100, "list", None),  # short records of 12 words repeat by chance
        (3, 60, 600, 100, "list", None),  # 3 words: 13-grams repeat by chance, several in a record
        (12, 60, 600, 1, "list", None),  # a record per chunk
        (30, 300, 600, 250, "list", None),  # many held-out chunks
        (30, 300, 600, 250, "chunked", 2),  # an Arrow input; buckets that start tiny and grow many times
        (12, 60, 400, 1 << 21, "array", None),  # one chunk
        (12, 0, 50, 100, "list", None),  # nothing held out but the two records below
        (30, 300, 600, 250, "parquet", None),  # heldout.parquet, read again a row group at a time to confirm
        (30, 300, 600, 250, "colliding", None),  # every hash of a slot alike in the 32 bits the index keeps
    ],
)
def test_an_index_over_chunks_matches_a_plain_set_of_ngrams(tmp_path, monkeypatch, vocab, heldout_records, train_records, max_chars, heldout_as, bucket_start):
    """The hashed, chunked index finds exactly what sets of word tuples find (the reference): the same
    training records, held-out record, first shared word and count, whatever the chunking."""
    import training.curriculum.contamination as contamination

    if bucket_start:
        monkeypatch.setattr(contamination, "_BUCKET_START", bucket_start)
    rng = random.Random(vocab * 1000 + heldout_records + max_chars)
    names = [f"v{i}" for i in range(vocab)]
    text = lambda: [rng.choice(names) for _ in range(rng.randint(0, 40))]  # noqa: E731

    def with_span_of(records: list) -> str:
        """A new text holding 13 to 15 words of one of `records` (when it has them): a planted overlap."""
        w, source = text(), words(rng.choice(records) or "") if records else []
        at = rng.randint(0, max(0, len(source) - 15))
        into = rng.randint(0, len(w))
        w[into:into] = source[at : at + rng.randint(13, 15)]
        return " ".join(w)

    heldout: list = []
    for i in range(heldout_records):  # every 5th holds words of an earlier one: an n-gram of several rows
        heldout.append(with_span_of(heldout) if i % 5 == 4 else None if i % 17 == 1 else " ".join(text()))
    train = [with_span_of(heldout) if i % 4 == 0 else " ".join(text()) for i in range(train_records)]
    # Chinese, a caption-length record and its copy, 12 shared Han characters (no overlap).
    heldout += [f"x {HAN} y", "A red circle on the left"]
    train += [f"前言{HAN[3:16]}后记", "a red circle, on the LEFT", f"{FILLER} {HAN[:12]}"]
    expected = _reference(train, heldout)
    assert 1 < len(expected) < len(train) and len({e[1] for e in expected}) > 1
    if heldout_as == "colliding":  # keep the top 8 and the low 24 bits: the index's slots (8 bits here) see only equal keys
        mix = contamination._mix
        monkeypatch.setattr(contamination, "_mix", lambda h: mix(h) & np.uint64(0xFF00000000FFFFFF))
    pq.write_table(pa.table({"text": pa.array(heldout, pa.string())}), tmp_path / "heldout.parquet", row_group_size=16)
    given = {"list": heldout, "colliding": heldout, "array": pa.array(heldout), "parquet": tmp_path / "heldout.parquet",
             "chunked": pa.chunked_array([heldout[:7], heldout[7:]], pa.string())}[heldout_as]
    index = HeldoutIndex(given, 13, max_chars=max_chars)
    assert [(o.train, o.heldout, o.start, o.words) for o in index.overlaps(iter(train))] == expected
    assert len(index) == len(set(fingerprints(heldout, 13)[0].tolist())) and index.records == len(heldout)
    assert [(o.train, o.heldout, o.start, o.words) for o in find_overlaps(train, heldout, 13)] == expected
    whole, _, _ = fingerprints(heldout, 13)
    assert (whole == [h for t in heldout for h in fingerprints([t], 13)[0]]).all()  # independent of the chunking


def test_verify_stages_finds_a_tampered_stage(tmp_path):
    summary = build(tmp_path, {f"t{i}": f"{W[i]} {FILLER} record {i}" for i in range(6)}, {"h1": " ".join(W[:15])})
    cur, tokens = tmp_path / "cur", tmp_path / "tokenized_corpus"
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    clean = verify_stages(cur, tokens, tok, 13)
    assert clean["overlaps"] == 0 and clean["records_checked"] == 6 and clean["stage_files"] == len(summary["stages"])
    # A row naming a clean record's id but the held-out record's tokens: what training would read is checked.
    pq.write_table(selecting(tokens, pq.read_table(cur / stage_file(3)), "h1", "t0"), cur / stage_file(3))
    found = verify_stages(cur, tokens, tok, 13)
    assert found["overlaps"] == 1 and found["records_checked"] == 7
    assert f'text/t0 shares 13 words with held-out text/h1: "{" ".join(W[:13])}"' == found["examples"][0]


def test_the_blocking_asset_check_fails_on_a_tampered_stage(tmp_path):
    from assets.curriculum import stages_disjoint_from_heldout
    from assets.resources import Kiln

    build(tmp_path, {"t1": f"{FILLER} fine", "t2": "a red circle on the left"}, {"h1": " ".join(W[:14])})
    kiln = Kiln(data_dir=str(tmp_path / "data"), landing_dir=str(tmp_path))
    kiln.layout.curriculum.parent.mkdir()
    (tmp_path / "cur").rename(kiln.layout.curriculum)
    (tmp_path / "tokenizer").rename(kiln.layout.tokenizer)
    (tmp_path / "tokenized_corpus").rename(kiln.layout.tokenized_corpus)
    assert stages_disjoint_from_heldout.check_specs and next(iter(stages_disjoint_from_heldout.check_specs)).blocking
    passed = stages_disjoint_from_heldout(kiln=kiln)
    assert passed.passed and passed.metadata["overlaps_found"].value == 0 and passed.metadata["records_checked"].value == 2
    path = kiln.layout.curriculum / stage_file(1)
    stage = pq.read_table(path)
    pq.write_table(selecting(kiln.layout.tokenized_corpus, stage, "h1", "x"), path)
    failed = stages_disjoint_from_heldout(kiln=kiln)
    assert not failed.passed and failed.metadata["overlaps_found"].value == 1 and failed.metadata["records_checked"].value == 3


@pytest.mark.parametrize("ngram", [0, 7])
def test_ngram_below_8_is_rejected(ngram):
    with pytest.raises(ValueError, match="at least 8"):
        CurriculumConfig(ngram=ngram)

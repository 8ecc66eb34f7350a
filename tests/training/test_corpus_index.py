"""The corpus step over per-batch key files: the same verdicts whether batches are deduplicated
together or land one by one, a new batch checked without reading earlier text, no half-written key
file, removed batches, corpora from before the key files; the sorted key files themselves."""

import json
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.training.test_near_dup import DETAIL, _change_word, document
from training.config import CleaningConfig
from training.data import clean as clean_module
from training.data import corpus_index
from training.data.clean import clean_landing, verify_accounting, verify_corpus
from training.data.corpus_index import Reads

A, B, C, D, E, F = (document(i) for i in range(10, 16))

# Batch -> its text records (id, text). Cross-batch: exact copies, reused ids, light edits.
BATCHES = {
    "b1": [("a", A), ("b", B), ("c", C)],
    "b2": [("x1", A), ("a", D), ("x2", _change_word(B)), ("e", E)],
    "b3": [("y1", A), ("e", F), ("y2", _change_word(C)), ("y3", D), ("y4", B.upper()), ("y5", E), ("y6", D)],
}
# Source -> (reason, the first kept record's source): what the rule (first occurrence in batch order
# kept; exact content, then id, then near-duplicates) decides.
EXPECTED = {
    "b2/text/a.jsonl:1": ("duplicate", "b1/text/a.jsonl:1"),  # A again
    "b2/text/a.jsonl:2": ("duplicate_id", "b1/text/a.jsonl:1"),  # id a again, new text D
    "b2/text/a.jsonl:3": ("near_duplicate", "b1/text/a.jsonl:2"),  # B, one word changed
    "b3/text/a.jsonl:1": ("duplicate", "b1/text/a.jsonl:1"),  # A a third time: still b1's
    "b3/text/a.jsonl:2": ("duplicate_id", "b2/text/a.jsonl:4"),  # id e, kept in b2
    "b3/text/a.jsonl:3": ("near_duplicate", "b1/text/a.jsonl:3"),  # C, one word changed
    # y3: D was rejected in b2 (for its id): no kept record holds it, so y3 is kept.
    "b3/text/a.jsonl:5": ("near_duplicate", "b1/text/a.jsonl:2"),  # B in upper case (not b2's edit: rejected)
    "b3/text/a.jsonl:6": ("duplicate", "b2/text/a.jsonl:4"),  # E, kept in b2
    "b3/text/a.jsonl:7": ("duplicate", "b3/text/a.jsonl:4"),  # D again, inside b3
}


def write(landing: Path, name: str) -> None:
    b = landing / name
    (b / "text").mkdir(parents=True)
    (b / "text" / "a.jsonl").write_text("".join(json.dumps({"id": i, "text": t}) + "\n" for i, t in BATCHES[name]))
    (b / "_SUCCESS").touch()


def clean(landing: Path, out: Path, chunk_size: int = 2048):
    return clean_landing(landing, out / "kept", out / "rejected", CleaningConfig(chunk_size=chunk_size), batches_dir=out / "batches")


def verdicts(out: Path) -> dict[str, tuple[str, str]]:
    got = {}
    for path in sorted((out / "rejected").glob("*/text.duplicates.parquet")):
        for r in pq.read_table(path).to_pylist():
            m = DETAIL.fullmatch(r["detail"]) if r["reason"] == "near_duplicate" else None
            got[r["source"]] = (r["reason"], m.group(1) if m else r["detail"].removeprefix("first seen at "))
    return got


def accounted(landing: Path, out: Path) -> bool:
    rows = verify_corpus(out / "batches", out / "kept", out / "rejected")
    rows += verify_accounting(landing, out / "batches", out / "kept", out / "rejected", CleaningConfig())
    return all(r.ok for r in rows)


@pytest.mark.parametrize("landing_order", ["together", "one by one"])
@pytest.mark.parametrize("chunk_size, window", [(2048, None), (2, None), (2, 3)])  # chunks and windows of a batch cut across each other
def test_verdicts_are_the_rule_s_whether_batches_land_together_or_one_by_one(tmp_path, monkeypatch, landing_order, chunk_size, window):
    if window:
        monkeypatch.setattr(clean_module, "WINDOW_ROWS", window)
    landing, out = tmp_path / "landing", tmp_path / "out"
    for name in BATCHES:
        write(landing, name)
        if landing_order == "one by one":
            report = clean(landing, out, chunk_size)
            assert report.deduplicated[0] == (name, "text")  # only the new batch
    if landing_order == "together":
        clean(landing, out, chunk_size)
    assert verdicts(out) == EXPECTED
    assert accounted(landing, out)


def _without_text(path: Path) -> None:
    """Rewrite a corpus Parquet without its text column: reading it would now fail."""
    table = pq.read_table(path)
    pq.write_table(table.drop(["text"]), path)


def test_a_new_batch_reads_only_the_earlier_batches_keys(tmp_path, monkeypatch):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write(landing, "b1")
    write(landing, "b2")
    clean(landing, out)
    for name in ("b1", "b2"):
        _without_text(out / "kept" / name / "text.parquet")
    read_table = pq.read_table

    def guarded(source, *args, columns=None, **kwargs):
        if "/kept/b1/" in str(source) or "/kept/b2/" in str(source):
            assert columns is not None and "text" not in columns, f"read {source} {columns}"
        return read_table(source, *args, columns=columns, **kwargs)

    monkeypatch.setattr(pq, "read_table", guarded)
    write(landing, "b3")
    report = clean(landing, out)
    assert report.deduplicated == [("b3", "text"), ("b3", "code"), ("b3", "image_text")]
    assert verdicts(out) == EXPECTED
    reads = report.reads["text"]
    assert reads.text_records == 0 and reads.key_files == 4 and reads.key_bytes > 0  # b1's and b2's exact and band keys
    assert reads.sources == 5  # the earlier records b3's rejections name


def test_a_batch_that_fails_midway_leaves_no_key_file(tmp_path, monkeypatch):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write(landing, "b1")
    clean(landing, out)
    write(landing, "b2")
    record = clean_module._KeptKeys.__call__
    calls = []

    def dies(self, records):
        calls.append(len(records))
        if len(calls) == 2:
            raise MemoryError("killed")
        return record(self, records)

    monkeypatch.setattr(clean_module._KeptKeys, "__call__", dies)
    with pytest.raises(MemoryError):
        clean(landing, out, chunk_size=2)
    assert not list((out / "kept").glob("b2/*text*"))
    assert not [p for p in out.rglob("*") if ".tmp-" in p.name]
    monkeypatch.undo()
    clean(landing, out, chunk_size=2)
    assert sorted(p.name for p in (out / "kept" / "b2").glob("_text.*")) == ["_text.bands.npy", "_text.keys.npy", "_text.minhash.npy"]
    assert {s: v for s, v in verdicts(out).items() if s.startswith("b2")} == {s: v for s, v in EXPECTED.items() if s.startswith("b2")}


def test_a_removed_batch_takes_its_key_files_and_later_batches_are_judged_again(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    for name in BATCHES:
        write(landing, name)
    clean(landing, out)
    (landing / "b2" / "_SUCCESS").unlink()
    report = clean(landing, out)
    assert report.removed_batches == ["b2"] and not (out / "kept" / "b2").exists()
    assert ("b3", "text") in report.deduplicated
    # Without b2, b3's id e and its E are first occurrences; the rest is as before.
    assert verdicts(out) == {s: v for s, v in EXPECTED.items() if s.startswith("b3") and s not in ("b3/text/a.jsonl:2", "b3/text/a.jsonl:6")}
    assert accounted(landing, out)


def test_a_corpus_from_before_the_key_files_is_deduplicated_again_once(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    for name in BATCHES:
        write(landing, name)
    clean(landing, out)
    for path in [*(out / "kept").rglob("_*.keys.npy"), *(out / "kept").rglob("_*.bands.npy")]:
        path.unlink()
    again = clean(landing, out)
    assert sorted(again.deduplicated) == sorted((b, m) for b in BATCHES for m in ("text", "code", "image_text"))
    assert verdicts(out) == EXPECTED
    assert all(r.cached for r in clean(landing, out).results)


@pytest.mark.parametrize("block_rows", [1, 2, 3, 1000])
def test_a_key_file_finds_every_equal_key_across_its_blocks(tmp_path, block_rows):
    # (key word 1, key word 2, row): key (5, 1) three times, across block boundaries at small blocks.
    table = np.array([[9, 0, 0], [5, 1, 1], [5, 2, 2], [5, 1, 3], [1, 7, 4], [5, 1, 5], [2**64 - 1, 3, 6]], np.uint64)
    path = tmp_path / "keys.npy"
    corpus_index.save(path, table)
    queries = np.array([[5, 1], [4, 4], [2**64 - 1, 3], [9, 1], [1, 7]], np.uint64)
    reads = Reads()
    q, files, rows = corpus_index.find([path, path], queries, reads, block_rows)
    assert sorted(zip(q.tolist(), rows.tolist())) == sorted([(0, 1), (0, 3), (0, 5), (2, 6), (4, 4)] * 2)
    assert sorted(files.tolist()) == [0] * 5 + [1] * 5
    assert reads.key_files == 2 and reads.key_bytes == 2 * table.nbytes


def test_runs_find_what_was_added_in_any_order():
    runs = corpus_index.Runs(2)
    rng = np.random.default_rng(0)
    keys = rng.integers(0, 50, 300, dtype=np.uint64)
    for lo in range(0, 300, 7):
        runs.add(np.stack((keys[lo : lo + 7], np.arange(lo, min(lo + 7, 300), dtype=np.uint64)), axis=1))
    assert len(runs.tables) <= 9
    q, rows = runs.find(np.array([[3], [60]], np.uint64))
    assert sorted(rows.tolist()) == np.flatnonzero(keys == 3).tolist() and set(q.tolist()) <= {0}

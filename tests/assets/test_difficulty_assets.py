"""difficulty_scores (a run per batch), tokenizer and curriculum of the suite's shared run (tests/conftest.py) on the cleaned embedded default."""

import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from tests.helpers import meta as _meta

pytestmark = pytest.mark.slow


def test_materializes_with_checks_passing(downstream):
    _, result, difficulty = downstream
    assert result.success and all(r.success for r in difficulty.values())
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"levels_populated": True, "tokenizer_round_trip": True, "stages_disjoint_from_heldout": True}


def test_each_batch_scores_its_own_records_once(downstream):
    """A run per batch; every record of the batch's corpus part has a difficulty and level, scored now."""
    data, _, difficulty = downstream
    assert set(difficulty) == {"batch-0001", "batch-0002"}
    for batch, result in difficulty.items():
        scores = pq.read_table(data / "difficulty_scores" / batch / "scores.parquet").to_pylist()
        corpus = pq.ParquetDataset(data / "cleaned_corpus" / batch).read(columns=["modality", "id"]).to_pylist()
        assert sorted((s["modality"], s["id"]) for s in scores) == sorted((r["modality"], r["id"]) for r in corpus)
        assert {s["batch"] for s in scores} == {batch}
        assert all(0.0 <= s["difficulty"] <= 1.0 and 1 <= s["level"] <= 5 for s in scores)
        meta = _meta(result, "difficulty_scores")
        assert meta["predictor"] == "persistence" and "minilm" in meta["encoder"].lower()  # the default policy
        # The numbers the UI shows are those of the scores written.
        assert meta["records"] == meta["records_scored"] == len(scores) and meta["records_reused"] == 0
        assert meta["heldout"] == sum(s["split"] == "heldout" for s in scores)
        assert sum(sum(row[1:]) for row in _table_rows(meta["levels"])) == len(scores)


def _table_rows(markdown: str) -> list[list]:
    """The body of a markdown table, first cell as text and the rest as numbers."""
    rows = [line.strip("|").split("|") for line in markdown.splitlines()[2:]]
    return [[r[0].strip(), *(int(c) for c in r[1:])] for r in rows]


def test_the_curriculum_records_which_predictor_scored_each_batch(downstream):
    data, _, difficulty = downstream
    lineage = json.loads((data / "curriculum" / "curriculum.json").read_text())["difficulty"]
    assert lineage["predictor"] == "persistence"
    assert {b: v["scorer_key"] for b, v in lineage["batches"].items()} == {
        b: _meta(r, "difficulty_scores")["scorer_key"] for b, r in difficulty.items()
    }


def test_curriculum_follows_the_presets_schedule_without_heldout_records(downstream):
    """The shared run's preset (smoke) schedules levels 2 then 4; the pendulum itself:
    tests/training/test_curriculum_tokenizer.py."""
    data, result, _ = downstream
    summary = json.loads((data / "curriculum" / "curriculum.json").read_text())
    assert summary["schedule"] == [2, 4] and [s["level"] for s in summary["stages"]] == [2, 4]
    heldout = {(r["modality"], r["id"]) for r in pq.read_table(data / "curriculum" / "heldout.parquet").to_pylist()}
    assert heldout
    for stage in summary["stages"]:
        rows = pq.read_table(data / "curriculum" / f"stage_{stage['stage']:02d}.parquet").to_pylist()
        assert len(rows) == stage["records"] and stage["tokens"] > 0
        assert heldout.isdisjoint((r["modality"], r["id"]) for r in rows)


def test_tokenizer_loads_and_reports_bytes_per_token(downstream):
    data, result, _ = downstream
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    assert len(tok) == 4096
    meta = _meta(result, "tokenizer")
    assert meta["vocab_size"] == 4096
    assert all(meta[f"bytes_per_token/{m}"] > 1.5 for m in ("text", "code", "image_text"))


STEPS = ("tokenizer", "curriculum")


def test_a_second_run_reuses_every_step_and_says_so(cleaned, downstream):
    """The cache rule (training/cache.py): same inputs and config, no work, the same metadata plus "reused";
    a batch's difficulty run again scores nothing."""
    data, first, difficulty = downstream
    pipeline = cleaned[3]
    folders = [data / s for s in STEPS] + [data / d / b for d in ("difficulty_scores", "tokenized_corpus") for b in difficulty]
    stamp = lambda: {p: (p.stat().st_ino, p.stat().st_mtime_ns) for f in folders for p in f.iterdir()}  # noqa: E731
    before = stamp()
    second = pipeline.materialize(" ".join(STEPS[:1] + ("tokenized_corpus",) + STEPS[1:]))
    again = {b: _meta(pipeline.materialize("difficulty_scores", b), "difficulty_scores") for b in difficulty}
    assert second.success and stamp() == before  # not one file written again
    shards = _meta(second, "tokenized_corpus")
    assert (shards["batches_encoded"], shards["batches_reused"]) == (0, len(difficulty)) and shards["records"] == _meta(first, "tokenized_corpus")["records"]
    messages = [e.user_message for e in pipeline.instance.all_logs(second.run_id)]
    for step in STEPS:
        fresh, rerun = _meta(first, step), _meta(second, step)
        assert "reused" not in fresh and rerun.pop("reused") == fresh["key"]
        assert rerun == fresh
        assert f"reused {step} {fresh['key'][:12]}" in messages
    for batch, rerun in again.items():
        fresh = _meta(difficulty[batch], "difficulty_scores")
        assert rerun["reused"] == fresh["key"] and (rerun["records_scored"], rerun["records_reused"]) == (0, fresh["records"])


def test_a_step_whose_output_is_gone_runs_again(cleaned, downstream):
    data, first, _ = downstream
    tokenizer_json = data / "tokenizer" / "tokenizer.json"
    content = tokenizer_json.read_bytes()
    tokenizer_json.unlink()  # the record stays, its output does not
    meta = _meta(cleaned[3].materialize("tokenizer"), "tokenizer")
    assert "reused" not in meta and meta["key"] == _meta(first, "tokenizer")["key"]
    assert tokenizer_json.read_bytes() == content  # trained again, to the same bytes

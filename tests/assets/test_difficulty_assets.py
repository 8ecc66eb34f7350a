"""difficulty_scores, tokenizer and curriculum of the suite's shared run (tests/conftest.py) on the cleaned embedded default."""

import json

import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

pytestmark = pytest.mark.slow


def _meta(result, key):
    [mat] = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mat.metadata.items()}


def test_materializes_with_checks_passing(downstream):
    _, result = downstream
    assert result.success
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert checks == {"levels_populated": True, "tokenizer_round_trip": True, "stages_disjoint_from_heldout": True}


def test_every_kept_record_has_a_difficulty_and_level(downstream):
    data, result = downstream
    scores = pq.read_table(data / "difficulty_scores" / "scores.parquet").to_pylist()
    kept = sum(pq.read_metadata(p).num_rows for p in (data / "cleaned_corpus").glob("*/*.parquet"))
    assert len(scores) == kept
    assert all(0.0 <= s["difficulty"] <= 1.0 and 1 <= s["level"] <= 5 for s in scores)
    meta = _meta(result, "difficulty_scores")
    assert meta["levels_populated"] >= 3 and "minilm" in meta["encoder"].lower()
    assert "persistence" in meta["predictor"]  # no release yet
    # The numbers the UI shows are those of the scores written.
    assert meta["records"] == kept and meta["heldout"] == sum(s["split"] == "heldout" for s in scores) > 0
    assert meta["records_per_second"] > 0


def test_curriculum_follows_the_presets_schedule_without_heldout_records(downstream):
    """The shared run's preset (smoke) schedules levels 2 then 4; the pendulum itself:
    tests/training/test_curriculum_tokenizer.py."""
    data, result = downstream
    summary = json.loads((data / "curriculum" / "curriculum.json").read_text())
    assert summary["schedule"] == [2, 4] and [s["level"] for s in summary["stages"]] == [2, 4]
    heldout = {(r["modality"], r["id"]) for r in pq.read_table(data / "curriculum" / "heldout.parquet").to_pylist()}
    assert heldout
    for stage in summary["stages"]:
        rows = pq.read_table(data / "curriculum" / f"stage_{stage['stage']:02d}.parquet").to_pylist()
        assert len(rows) == stage["records"] and stage["tokens"] > 0
        assert heldout.isdisjoint((r["modality"], r["id"]) for r in rows)


def test_tokenizer_loads_and_reports_bytes_per_token(downstream):
    data, result = downstream
    tok = AutoTokenizer.from_pretrained(data / "tokenizer")
    assert len(tok) == 4096
    meta = _meta(result, "tokenizer")
    assert meta["vocab_size"] == 4096
    assert all(meta[f"bytes_per_token/{m}"] > 1.5 for m in ("text", "code", "image_text"))


STEPS = ("difficulty_scores", "tokenizer", "curriculum")


def test_a_second_run_reuses_every_step_and_says_so(cleaned, downstream):
    """The cache rule (training/cache.py): same inputs and config, no work, the same metadata plus "reused"."""
    data, first = downstream
    pipeline = cleaned[3]
    stamp = lambda: {p: (p.stat().st_ino, p.stat().st_mtime_ns) for s in STEPS for p in (data / s).iterdir()}  # noqa: E731
    before = stamp()
    second = pipeline.materialize(" ".join(STEPS))
    assert second.success and stamp() == before  # not one file written again
    messages = [e.user_message for e in pipeline.instance.all_logs(second.run_id)]
    for step in STEPS:
        fresh, again = _meta(first, step), _meta(second, step)
        assert "reused" not in fresh and again.pop("reused") == fresh["key"]
        assert again == fresh
        assert f"reused {step} {fresh['key'][:12]}" in messages


def test_a_step_whose_output_is_gone_runs_again(cleaned, downstream):
    data, first = downstream
    tokenizer_json = data / "tokenizer" / "tokenizer.json"
    content = tokenizer_json.read_bytes()
    tokenizer_json.unlink()  # the record stays, its output does not
    meta = _meta(cleaned[3].materialize("tokenizer"), "tokenizer")
    assert "reused" not in meta and meta["key"] == _meta(first, "tokenizer")["key"]
    assert tokenizer_json.read_bytes() == content  # trained again, to the same bytes

"""Difficulty per landing batch (training/curriculum/batches.py): the predictor policy and its rounds,
which batches are up to date, and what the curriculum is allowed to read."""

from __future__ import annotations

from dataclasses import replace
from datetime import datetime, timedelta, timezone

import pytest

from tests.helpers import corpus_part
from training.config import DifficultyConfig
from training.curriculum.batches import (
    DifficultyPending,
    NotInCorpus,
    batch_states,
    current_scores,
    predictor_choice,
    score_partition,
)
from training.layout import Layout

CFG = DifficultyConfig(span_words=8)
T0 = datetime(2026, 12, 1, tzinfo=timezone.utc)
TEXTS = [f"record {i} says the kiln fires clay number {i} then cools it slowly over night {i}" for i in range(12)]


def release(layout: Layout, name: str) -> None:
    """A release as the predictor policy sees it: a folder under releases/ and LATEST naming it."""
    (layout.releases / name).mkdir(parents=True)
    (layout.releases / "LATEST").write_text(name)


def test_persistence_and_a_fixed_model_are_named_by_what_predicts(tmp_path):
    layout = Layout(tmp_path)
    assert predictor_choice(layout, CFG).id == "persistence"
    model = tmp_path / "lm"
    model.mkdir()
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        predictor_choice(layout, replace(CFG, predictor=str(model)))
    (model / "config.json").write_text("{}")
    first = predictor_choice(layout, replace(CFG, predictor=str(model)))
    assert first.id.startswith(f"model:{model}@") and first.path == model
    (model / "model.safetensors").write_bytes(b"new weights")  # another model in the same folder: another predictor
    assert predictor_choice(layout, replace(CFG, predictor=str(model))).id != first.id


def test_release_rounds_start_on_the_cadence_and_never_mix(tmp_path):
    layout, cfg = Layout(tmp_path), replace(CFG, predictor="release", rescore_every_days=7)

    def choice(days: float, advance: bool = True) -> str:
        return predictor_choice(layout, cfg, now=T0 + timedelta(days=days), advance=advance).id

    assert choice(0) == "persistence"  # before the first release; the round starts now
    release(layout, "r1")
    assert choice(1) == "persistence"  # a newer release, but within the cadence
    assert choice(8, advance=False) == "persistence"  # only the sensor (or the CLI) starts a round
    assert choice(8) == "release:r1"
    release(layout, "r2")
    assert choice(9) == "release:r1" and choice(14.9) == "release:r1"
    assert choice(15) == "release:r2"
    release(layout, "r3")
    (layout.releases / "r2").rename(layout.releases / "r2-gone")  # the round's release deleted: it ends at once
    assert choice(15.5, advance=False) == "release:r3"
    assert predictor_choice(layout, replace(cfg, rescore_every_days=0), now=T0 + timedelta(days=15.5)).id == "release:r3"


def test_a_batch_is_due_until_scored_under_the_current_key_and_says_why(tmp_path):
    layout = Layout(tmp_path)
    corpus_part(layout, "b1", TEXTS[:6])
    corpus_part(layout, "b2", TEXTS[6:])
    persistence = predictor_choice(layout, CFG)
    assert [(s.batch, s.due) for s in batch_states(layout, CFG, persistence)] == [("b1", "not scored yet"), ("b2", "not scored yet")]
    with pytest.raises(DifficultyPending, match=r"2 of 2 batches .* b1 \(not scored yet\); b2"):
        current_scores(layout, CFG)

    result, key, was_reused = score_partition(layout, CFG, "b1")
    assert (result["records"], result["scored"], was_reused) == (6, 6, False)
    assert [s.due for s in batch_states(layout, CFG, persistence)] == [None, "not scored yet"]
    score_partition(layout, CFG, "b2")
    files, lineage = current_scores(layout, CFG)
    assert files == [layout.difficulty_scores / b / "scores.parquet" for b in ("b1", "b2")]
    assert lineage["predictor"] == "persistence" and lineage["batches"]["b1"]["records"] == 6

    # Another predictor makes every batch due; the curriculum refuses the old scores rather than mix.
    release(layout, "r1")
    by_release = replace(CFG, predictor="release", rescore_every_days=0)
    assert predictor_choice(layout, by_release, advance=True).id == "release:r1"
    assert [s.due for s in batch_states(layout, by_release, predictor_choice(layout, by_release))] == ["scored by persistence, now release:r1"] * 2
    with pytest.raises(DifficultyPending, match="for predictor release:r1"):
        current_scores(layout, by_release)
    # A batch whose corpus part changed is due; the others stay as they are.
    corpus_part(layout, "b2", TEXTS[6:] + ["one more record of the second batch, with words enough to be scored here"])
    assert [s.due for s in batch_states(layout, CFG, persistence)] == [None, "its records or the scoring config changed"]


def test_scoring_again_scores_only_new_records_and_an_unchanged_batch_not_at_all(tmp_path):
    layout = Layout(tmp_path)
    corpus_part(layout, "b1", TEXTS)
    first, key, _ = score_partition(layout, CFG, "b1")
    written = (layout.difficulty_scores / "b1" / "scores.parquet").read_bytes()
    again, same_key, was_reused = score_partition(layout, CFG, "b1")
    assert was_reused and same_key == key and again == first
    assert (layout.difficulty_scores / "b1" / "scores.parquet").read_bytes() == written
    corpus_part(layout, "b1", TEXTS + ["a thirteenth record lands in the batch with its own twelve words"])
    grown, _, was_reused = score_partition(layout, CFG, "b1")
    assert not was_reused and (grown["records"], grown["scored"], grown["reused"]) == (13, 1, 12)


def test_a_batch_without_a_corpus_part_is_an_error_naming_what_to_run(tmp_path):
    with pytest.raises(NotInCorpus, match="materialize cleaned_batch and cleaned_corpus first"):
        score_partition(Layout(tmp_path), CFG, "b9")

"""Where a retraining starts (RetrainingPolicy.start_from): from scratch, every training record from
random weights; from the latest release, its tokenizer and weights, and stages over the records landed
since it plus a replay share of the earlier ones."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.config import CurriculumConfig, ModelConfig, RetrainingPolicy, TrainingConfig
from training.curriculum.schedule import Pool, build_curriculum, replayed, start_line
from training.layout import LINEAGE_JSON, Layout, stage_file
from training.pretrain.plan import stage_specs
from training.retraining import NotTheReleaseTokenizer, retraining_pool, start_tag

from tests.helpers import token_shards

BATCHES = {"b1": 40, "b2": 30, "b3": 20}


def _corpus(layout: Layout, batches: dict[str, int]) -> list[Path]:
    """Corpus parts and scores: record i of a batch is level 1 + i % 5; none is held out (ids start with 'k')."""
    scores = []
    for batch, n in batches.items():
        ids = [f"k-{batch}-{i}" for i in range(n)]
        folder = layout.cleaned_corpus / batch
        folder.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "modality": ["text"] * n, "text": [f"{batch} record {i} about kilns" for i in range(n)]}), folder / "text.parquet")
        manifest = {"content_sha256": {"text": f"sha-{batch}-{n}"}, "modalities": {"text": {"key": f"{batch}-{n}", "kept": n, "kept_bytes": 30 * n, "rejected": 0, "reasons": {}}}}
        (folder / "_manifest.json").write_text(json.dumps(manifest))
        path = layout.difficulty_scores / batch / "scores.parquet"
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.table({"id": ids, "modality": ["text"] * n, "batch": [batch] * n, "split": ["train"] * n,
                                 "level": pa.array([1 + i % 5 for i in range(n)], pa.int8())}), path)
        scores.append(path)
    return scores


def _release(layout: Layout, version: str, batches: list[str]) -> None:
    """A release trained on `batches` as the corpus holds them now, with the current tokenizer."""
    from training.data.clean import lineage

    folder = layout.releases / version
    folder.mkdir(parents=True)
    (folder / LINEAGE_JSON).write_text(json.dumps({"batches": [r for r in lineage(layout.cleaned_corpus) if r["batch"] in batches]}))
    (folder / "tokenizer.json").write_bytes((layout.tokenizer / "tokenizer.json").read_bytes())
    (layout.releases / "LATEST").write_text(version)


@pytest.fixture
def layout(tmp_path) -> Layout:
    layout = Layout(tmp_path / "data")
    _corpus(layout, BATCHES)
    token_shards(layout.cleaned_corpus, layout.root)
    return layout


def _staged(layout: Layout, summary: dict) -> set[str]:
    return {i for s in summary["stages"] for i in pq.read_table(layout.curriculum / stage_file(s["stage"]))["id"].to_pylist()}


@pytest.mark.parametrize("share", [0.0, 0.3, 1.0])
def test_from_a_release_the_stages_hold_the_new_records_and_the_replayed_ones(layout, share):
    _release(layout, "v1", ["b1", "b2"])  # b3 landed since
    pool = retraining_pool(layout.cleaned_corpus, layout.releases, layout.tokenizer / "tokenizer.json", RetrainingPolicy(start_from="release", replay_share=share))
    assert pool == Pool("v1", (("b3", "text"),), share)
    scores = sorted(layout.difficulty_scores.glob("*/scores.parquet"))
    summary = build_curriculum(scores, layout.cleaned_corpus, layout.tokenized_corpus, layout.curriculum, CurriculumConfig(), pool=pool)
    new = {f"k-b3-{i}" for i in range(BATCHES["b3"])}
    earlier = {f"k-{b}-{i}" for b in ("b1", "b2") for i in range(BATCHES[b])}
    replay = {i for i in earlier if replayed("text", i, share)}
    assert _staged(layout, summary) == new | replay
    assert summary["start"] == {"from": "release", "release": "v1", "new_parts": [["b3", "text"]], "new_records": 20,
                                "replay_share": share, "replayed_records": len(replay)}
    assert summary["train_records"] == len(new | replay)
    assert len(replay) == {0.0: 0, 0.3: len(replay) or -1, 1.0: len(earlier)}[share] and (share != 0.3 or len(replay) < len(earlier))
    assert start_line(summary["start"]).startswith("from release v1 (its weights and tokenizer): 20 records landed since it")


def test_from_scratch_or_before_a_release_every_training_record(layout):
    scores = sorted(layout.difficulty_scores.glob("*/scores.parquet"))
    every = {f"k-{b}-{i}" for b, n in BATCHES.items() for i in range(n)}
    for policy in (RetrainingPolicy(), RetrainingPolicy(start_from="release")):  # no release yet: from scratch
        assert retraining_pool(layout.cleaned_corpus, layout.releases, layout.tokenizer / "tokenizer.json", policy) is None
    summary = build_curriculum(scores, layout.cleaned_corpus, layout.tokenized_corpus, layout.curriculum, CurriculumConfig())
    assert _staged(layout, summary) == every and summary["start"] == {"from": "scratch"}
    _release(layout, "v1", list(BATCHES))
    assert retraining_pool(layout.cleaned_corpus, layout.releases, layout.tokenizer / "tokenizer.json", RetrainingPolicy()) is None


def test_a_release_start_refuses_another_tokenizer(layout):
    _release(layout, "v1", ["b1"])
    (layout.releases / "v1" / "tokenizer.json").write_text("{}")
    with pytest.raises(NotTheReleaseTokenizer, match="not release v1's tokenizer: materialize tokenizer"):
        retraining_pool(layout.cleaned_corpus, layout.releases, layout.tokenizer / "tokenizer.json", RetrainingPolicy(start_from="release"))


def test_stage_one_starts_from_the_release_weights(layout):
    stages = [{"stage": 1, "level": 1, "tokens": 4096, "sha256": "a"}, {"stage": 2, "level": 2, "tokens": 4096, "sha256": "b"}]
    model, training = ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=64), TrainingConfig(global_batch=(8,))
    scratch = stage_specs(layout.root, {"stages": stages, "start": {"from": "scratch"}}, model, training, 1)
    release = stage_specs(layout.root, {"stages": stages, "start": {"from": "release", "release": "v1"}}, model, training, 1)
    assert [s.training.init_from for s in scratch] == [None, None]
    assert [s.training.init_from for s in release] == [str(layout.releases / "v1")] * 2  # stage 2 chains from stage 1
    assert scratch[0].fingerprint != release[0].fingerprint


@pytest.mark.parametrize(
    "policy, release, tag",
    [
        (RetrainingPolicy(), "v1", "scratch"),
        (RetrainingPolicy(start_from="release"), "v1", "release v1"),
        (RetrainingPolicy(start_from="release"), None, "scratch (no release yet)"),
    ],
)
def test_the_run_tag_says_where_it_starts(policy, release, tag):
    assert start_tag(policy, release) == tag


@pytest.mark.parametrize("bad, message", [({"start_from": "nowhere"}, "start_from must be one of"), ({"replay_share": 1.5}, r"replay_share must be in \[0, 1\]")])
def test_the_policy_refuses_what_it_cannot_do(bad, message):
    with pytest.raises(ValueError, match=message):
        RetrainingPolicy(**bad)

"""A retraining that starts from the last release (RetrainingPolicy.start_from "release", here through
KILN_START_FROM's resource field) after one more batch lands, on a copy of the suite's shared run: the
release's tokenizer, its weights in stage 1, stages over the new records plus the replay share, and a
release whose model card and lineage say so."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from tests.conftest import Pipeline
from tests.helpers import meta, write_batch
from training.curriculum.schedule import replayed
from training.fsutil import sha256_file
from training.layout import Layout, latest, stage_file

pytestmark = pytest.mark.slow

NEW = [f"Batch four adds record {i}: a kiln fires clay at {900 + 7 * i} degrees and the glaze melts into glass." for i in range(40)]


@pytest.fixture(scope="module")
def retrained(cleaned, lifecycle, tmp_path_factory):
    data, first, _, _ = lifecycle
    assert first.success
    work = tmp_path_factory.mktemp("from-release")
    shutil.copytree(data, work / "data", symlinks=True)
    previous = latest(Layout(work / "data").releases).name  # the shared run's, or one a test published since
    shutil.copytree(cleaned[3].landing, work / "landing", symlinks=True)
    write_batch(work / "landing", "batch-0004", NEW)
    pipeline = Pipeline(work / "data", work / "landing", preset="smoke", start_from="release")
    pipeline.clean()
    assert pipeline.materialize("difficulty_scores", "batch-0004").success
    result = pipeline.materialize(
        "tokenizer tokenized_corpus curriculum pretrain_stage_1 pretrain_stage_2 base_model evaluation quantized_model gguf_model release",
        raise_on_error=False,
    )
    return Layout(work / "data"), previous, result


def test_it_trains_the_new_batch_and_a_replay_from_the_release_weights(retrained):
    layout, previous, result = retrained
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    assert meta(result, "tokenizer")["source"] == f"release {previous}"
    assert sha256_file(layout.tokenizer / "tokenizer.json") == sha256_file(layout.releases / previous / "tokenizer.json")
    assert meta(result, "tokenized_corpus")["batches_encoded"] == 1  # the same tokenizer: only the new batch is encoded
    assert meta(result, "pretrain_stage_1")["initialised_from"] == str(layout.releases / previous)
    curriculum = json.loads((layout.curriculum / "curriculum.json").read_text())
    start = curriculum["start"]
    assert start["from"] == "release" and start["release"] == previous and ["batch-0004", "text"] in start["new_parts"]
    staged = [r for s in curriculum["stages"] for r in pq.read_table(layout.curriculum / stage_file(s["stage"])).to_pylist()]
    earlier = [r for r in staged if r["batch"] != "batch-0004"]
    assert {r["batch"] for r in staged} >= {"batch-0004"} and earlier
    assert all(replayed(r["modality"], r["id"], 0.1) for r in earlier)  # an earlier record only by the replay rule
    assert start["new_records"] > 0 and start["replayed_records"] == len({(r["modality"], r["id"]) for r in earlier})
    assert meta(result, "curriculum")["start"].startswith(f"from release {previous} (its weights and tokenizer)")


def test_its_release_says_where_it_started(retrained):
    layout, previous, result = retrained
    version = meta(result, "release")["version"]
    assert version != previous
    card = (layout.releases / version / "README.md").read_text()
    assert f"Training started from release {previous} (its weights and tokenizer):" in card
    lineage = json.loads((layout.releases / version / "lineage.json").read_text())
    assert lineage["curriculum"]["start"]["release"] == previous

"""The suite's shared lifecycle run (tests/conftest.py: the embedded default landing zone to a release,
the `smoke` preset, one Dagster instance) checked end to end: what the release says of its inputs is
what each step wrote, and every step of the graph ran in it. The steps' own behaviour is tested in
tests/assets/; `make demo` (the same graph on the `tiny` preset, through `dagster asset materialize`)
is what users run, measured by hand in docs/performance.md."""

import json

import dagster as dg
import pyarrow.parquet as pq
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from tests.helpers import meta
from training.fsutil import sha256_file
from training.layout import Layout, duplicates_file, records_file
from training.release.publish import verify

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def release(lifecycle):
    """The release the shared run published (later tests may publish more beside it)."""
    data, result, _, instance = lifecycle
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return Layout(data), data / "releases" / meta(result, "release")["version"], instance


def test_every_step_of_the_graph_ran_once_in_the_shared_run(lifecycle, release):
    _, _, instance = release
    assert instance.get_dynamic_partitions("landing_batches") == ["batch-0001", "batch-0002"]  # batch-0003: no _SUCCESS
    for partitioned in ("cleaned_batch", "difficulty_scores"):
        assert instance.get_materialized_partitions(dg.AssetKey(partitioned)) == {"batch-0001", "batch-0002"}, partitioned
    keys = ["clip_model", "cleaned_corpus", "difficulty_scores", "tokenizer", "tokenized_corpus", "curriculum", "pretrain_stage_1",
            "pretrain_stage_2", "base_model", "evaluation", "quantized_model", "gguf_model", "release"]
    for key in keys:
        assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key


def test_the_releases_lineage_is_what_cleaning_and_the_curriculum_wrote(release):
    layout, path, _ = release
    assert verify(path) == []
    lineage = json.loads((path / "lineage.json").read_text())
    # Per batch and modality: the kept records are the corpus's rows, the rejected ones rejected/'s
    # (those cleaning rejected, and the cross-batch duplicates the corpus rejected).
    assert {(b["batch"], b["modality"]) for b in lineage["batches"]} == {
        (p.parent.name, p.stem) for p in layout.cleaned_corpus.glob("*/*.parquet")
    }
    rows = lambda path: pq.read_metadata(path).num_rows if path.is_file() else 0  # noqa: E731
    for b in lineage["batches"]:
        batch, modality = b["batch"], b["modality"]
        kept = rows(layout.cleaned_corpus / batch / records_file(modality))
        rejected = rows(layout.rejected / batch / records_file(modality)) + rows(layout.rejected / batch / duplicates_file(modality))
        assert (b["kept"], b["rejected"], sum(b["reasons"].values())) == (kept, rejected, rejected), b
    # The curriculum it trained on, stage by stage, and the stages' own records of that training.
    plan = json.loads((layout.curriculum / "curriculum.json").read_text())
    assert lineage["curriculum"] == plan
    for stage, summary in zip(plan["stages"], lineage["stages"], strict=True):
        assert summary == json.loads((layout.pretrain_stage(stage["stage"]) / "stage.json").read_text())
        assert pq.read_metadata(layout.curriculum / f"stage_{stage['stage']:02d}.parquet").num_rows == stage["records"]
    first, second = lineage["stages"]
    assert first["resumed_from_step"] == 0 and second["initialised_from"].endswith(f"step_{first['steps']:06d}")
    assert second["final_loss"] < first["final_loss"]
    # Which predictor scored each batch's difficulty (one for all: the curriculum never mixes two).
    difficulty = lineage["curriculum"]["difficulty"]
    assert difficulty["predictor"] == "persistence" and set(difficulty["batches"]) == {b["batch"] for b in lineage["batches"]}
    card = (path / "README.md").read_text()
    assert "against the prediction of `persistence`, in 2 batch(es)" in card
    for b in lineage["batches"]:
        assert f"| {b['batch']} | {b['modality']} | `{b['content_sha256']}` | {b['kept']} | {b['rejected']} |" in card, b


def test_the_release_holds_the_weights_and_tokenizer_the_gate_judged_and_generates(release):
    layout, path, _ = release
    evaluation = json.loads((path / "evaluation.json").read_text())
    assert sha256_file(path / "model.safetensors") == evaluation["weights_sha256"] == sha256_file(layout.base_model / "model.safetensors")
    assert (path / "tokenizer.json").read_bytes() == (layout.tokenizer / "tokenizer.json").read_bytes()
    gguf = json.loads((path / "gguf" / "gguf.json").read_text())
    assert gguf["weights_sha256"] == evaluation["weights_sha256"]
    assert all(f["comparison"]["passed"] and sha256_file(path / "gguf" / n) == f["sha256"] for n, f in gguf["files"].items())
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok("<|begin_of_text|>def main():", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]

"""The cleaning assets on the embedded default landing zone, with the real (kiln-trained) CLIP."""

import json

import dagster as dg
import pyarrow.dataset as ds
import pytest

from tests.helpers import meta as _metadata

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run(cleaned):
    return cleaned


def test_every_batch_and_the_corpus_materialize_with_accounting_checks_passing(run):
    _, _, results, pipeline = run
    assert set(results["batches"]) == {"batch-0001", "batch-0002"}  # batch-0003 has no _SUCCESS
    for result in [*results["batches"].values(), results["cleaned_corpus"]]:
        assert result.success
        [check] = result.get_asset_check_evaluations()
        assert check.passed and check.metadata["unaccounted"].value == 0
    partitions = pipeline.instance.get_materialized_partitions(dg.AssetKey("cleaned_batch"))
    assert partitions == {"batch-0001", "batch-0002"}


def test_every_deliberate_defect_gets_its_reason(run):  # duplicates included: all lie under rejected/
    data, expected, _, _ = run
    rejected = ds.dataset(data / "rejected", format="parquet").to_table(columns=["source", "reason"]).to_pylist()
    got = {r["source"]: r["reason"] for r in rejected}
    assert {s: got.get(s) for s in expected} == expected


def test_real_records_are_kept_across_modalities(run):
    data, _, _, _ = run
    kept = ds.dataset(data / "cleaned_corpus", format="parquet").to_table().to_pylist()
    by_id = {r["id"]: r for r in kept}
    assert "python-license" in by_id and "zen-of-python" in by_id and "zh/0" in by_id
    assert all(by_id[f"zh/{i}"]["entropy"] > 0.8 for i in range(6))
    languages = {r["language"] for r in kept if r["modality"] == "code"}
    assert languages == {"python", "javascript", "typescript", "tsx", "java", "c", "cpp", "go", "rust"}
    pairs = [r for r in kept if r["modality"] == "image_text"]
    assert len(pairs) > 1000 and all(r["clip_score"] >= 0.75 for r in pairs)
    assert len({(r["modality"], r["id"]) for r in kept}) == len(kept)


def test_clip_model_is_labelled_and_measured(run):
    data, _, results, _ = run
    meta = _metadata(results["clip_model"], "clip_model")
    assert "not a pretrained CLIP" in meta["provenance"]
    assert meta["filter/known_mismatches"] > 100
    # The filter must find mismatches far better than chance (10% of pairs are mismatched).
    assert meta["filter/precision"] >= 0.8
    assert meta["filter/recall"] >= 0.4
    card = json.loads((data / "clip_model" / "kiln_clip.json").read_text())
    assert card["provenance"] == meta["provenance"] and card["version"] == meta["version"]
    assert (data / "clip_model" / "model.safetensors").is_file()
    # Lineage: every batch records the CLIP that scored its pairs.
    for batch, result in results["batches"].items():
        assert _metadata(result, "cleaned_batch")["clip"] == card["version"]
        assert json.loads((data / "cleaned_corpus" / batch / "_manifest.json").read_text())["clip"]["version"] == card["version"]


def test_cleaning_metadata_counts_by_reason(run):
    data, expected, results, _ = run
    reasons = {}
    for batch, result in results["batches"].items():
        meta = _metadata(result, "cleaned_batch")
        assert f"| {batch} | text |" in meta["counts"] and sorted(meta["cleaned"]) == ["code", "image_text", "text"]
    for manifest in (data / "cleaned_corpus").glob("*/_manifest.json"):
        m = json.loads(manifest.read_text())
        assert m["unrecognized_files"] == []
        for modality, entry in m["modalities"].items():
            for reason in entry["reasons"]:
                reasons.setdefault(modality, set()).add(reason)
    for source, reason in expected.items():
        modality = {"text": "text", "code": "code", "images": "image_text"}[source.split("/")[1]]
        assert reason in reasons[modality], (source, reason)
    corpus = _metadata(results["cleaned_corpus"], "cleaned_corpus")
    assert corpus["batches"] == ["batch-0001", "batch-0002"] and corpus["cached"] == 0 and corpus["duplicates"] > 0
    # batch-0002 was checked against batch-0001's key files (exact keys; band keys for text and code), not its text.
    assert {m: r["key_files"] for m, r in corpus["earlier_batches_read"].items()} == {"text": 2, "code": 2, "image_text": 1}
    assert corpus["earlier_text_records_read"] == 0


def test_rematerializing_an_unchanged_landing_zone_is_a_no_op(run):
    data, _, _, pipeline = run
    stamp = (data / "cleaned_corpus" / "batch-0001" / "text.parquet").stat().st_mtime_ns
    again = pipeline.clean()
    assert _metadata(again["clip_model"], "clip_model")["cached"] is True
    for result in again["batches"].values():
        assert _metadata(result, "cleaned_batch")["cleaned"] == []
    meta = _metadata(again["cleaned_corpus"], "cleaned_corpus")
    assert meta["deduplicated"] == [] and meta["cached"] == 6
    assert (data / "cleaned_corpus" / "batch-0001" / "text.parquet").stat().st_mtime_ns == stamp

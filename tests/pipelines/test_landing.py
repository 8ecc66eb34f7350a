"""Landing batches as partitions: landing zones kiln was not built around, the landing sensor, the
corpus following the batches, and retraining on a policy rather than per batch."""

import json
from dataclasses import replace
from pathlib import Path

import dagster as dg
import pyarrow.dataset as ds
import pytest

from training import presets
from pipelines.automation import RETRAIN_TAG
from tests.conftest import Pipeline
from training.config import OperationConfig, RetrainingPolicy

from tests.helpers import PROSE as _PROSE, _png, meta

PROSE = _PROSE[:3]


def land(landing: Path, name: str, texts=(), code=None, pairs: int = 0, ready: bool = True) -> Path:
    b = landing / name
    b.mkdir(parents=True, exist_ok=True)
    if texts:
        (b / "text").mkdir(exist_ok=True)
        (b / "text" / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for rel, src in (code or {}).items():
        (b / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / "code" / rel).write_text(src)
    if pairs:
        (b / "images").mkdir(exist_ok=True)
        lines = []
        for i in range(pairs):
            (b / "images" / f"{i}.png").write_bytes(_png((i * 7 % 256, 40, 200)))
            lines.append(json.dumps({"image": f"{i}.png", "caption": f"a blue square number {i}"}))
        (b / "images" / "captions.jsonl").write_text("\n".join(lines) + "\n")
    if ready:
        (b / "_SUCCESS").touch()
    return b


@pytest.mark.slow
@pytest.mark.parametrize(
    "kind, content, kept, reasons",
    [
        ("text only", {"texts": PROSE + ["buy now " * 40]}, 3, {"entropy_low": 1}),
        ("code only", {"code": {"ok.py": "x = 1\n", "bad.go": "func (\n"}}, 1, {"tree_sitter_error": 1}),
        ("three pairs", {"texts": PROSE[:1], "pairs": 3}, 1, {"clip_unavailable": 3}),
    ],
)
def test_landing_zones_kiln_was_not_built_around_are_cleaned(tmp_path, kind, content, kept, reasons):
    land(tmp_path / "landing", "batch-0001", **content)
    pipeline = Pipeline(tmp_path / "data", tmp_path / "landing")
    results = pipeline.clean()
    clip = meta(results["clip_model"], "clip_model")
    assert clip["version"] == "none" and "none" in clip["provenance"]  # too few pairs: no CLIP, no error
    [batch] = results["batches"].values()
    assert batch.success and all(c.passed for c in batch.get_asset_check_evaluations())
    rejected = ds.dataset(tmp_path / "data" / "rejected", format="parquet").to_table().to_pylist()
    assert {r["reason"]: sum(1 for x in rejected if x["reason"] == r["reason"]) for r in rejected} == reasons
    assert meta(results["cleaned_corpus"], "cleaned_corpus")["kept"] == kept
    assert all(c.passed for c in results["cleaned_corpus"].get_asset_check_evaluations())


@pytest.fixture
def sensors(tmp_path):
    pipeline = Pipeline(tmp_path / "data", tmp_path / "landing")
    (tmp_path / "landing").mkdir()
    return pipeline, pipeline.defs.resolve_sensor_def("landing_sensor")


def tick(pipeline: Pipeline, sensor_def, cursor):
    """One evaluation, with its partition requests applied as the daemon would."""
    result = sensor_def(dg.build_sensor_context(instance=pipeline.instance, cursor=cursor))
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            pipeline.instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                pipeline.instance.delete_dynamic_partition(request.partitions_def_name, key)
    runs = [(r.partition_key, [k.to_user_string() for k in r.asset_selection], r.tags.get("kiln/reason")) for r in result.run_requests]
    return runs, result.cursor


@pytest.mark.slow
def test_the_landing_sensor_adds_cleans_recleans_and_removes_batches(sensors):
    pipeline, sensor_def = sensors
    assert sensor_def.default_status == dg.DefaultSensorStatus.RUNNING
    landing = pipeline.landing
    runs, cursor = tick(pipeline, sensor_def, None)
    assert runs == []

    land(landing, "batch-0001", texts=PROSE)
    land(landing, "batch-0002", texts=PROSE[:1], ready=False)
    land(landing, "batch...0009", texts=PROSE[:1])  # cannot name a partition: logged, never read, no crash
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [("batch-0001", ["cleaned_batch"], "landed")]
    assert pipeline.instance.get_dynamic_partitions("landing_batches") == ["batch-0001"]
    assert tick(pipeline, sensor_def, cursor)[0] == []  # nothing new: nothing requested

    pipeline.materialize("cleaned_batch", "batch-0001")
    pipeline.materialize("cleaned_corpus")
    pipeline.materialize("difficulty_scores", "batch-0001")
    (landing / "batch-0001" / "text" / "docs.jsonl").write_text(json.dumps({"text": PROSE[2]}) + "\n")
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [("batch-0001", ["cleaned_batch"], "changed")]

    (landing / "batch-0002" / "_SUCCESS").touch()
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [("batch-0002", ["cleaned_batch"], "landed")]

    # A batch that leaves the landing zone loses its partition and outputs; the corpus follows.
    (landing / "batch-0001" / "_SUCCESS").unlink()
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [(None, ["cleaned_corpus"], "removed: batch-0001")]
    assert pipeline.instance.get_dynamic_partitions("landing_batches") == ["batch-0002"]
    assert not any((pipeline.data / step / "batch-0001").exists() for step in ("cleaned_batch", "rejected", "difficulty_scores"))
    assert meta(pipeline.materialize("cleaned_corpus"), "cleaned_corpus")["removed_batches"] == ["batch-0001"]
    assert not (pipeline.data / "cleaned_corpus" / "batch-0001").exists()

    # A restarted daemon (same cursor, new definitions) repeats nothing.
    restarted = Pipeline(pipeline.data, landing, instance=pipeline.instance)
    assert tick(restarted, restarted.defs.resolve_sensor_def("landing_sensor"), cursor)[0] == []


@pytest.mark.slow
def test_kiln_trains_its_clip_once_enough_pairs_land_and_rescores_batches_with_pairs(sensors):
    pipeline, sensor_def = sensors
    land(pipeline.landing, "batch-0001", texts=PROSE, pairs=40)
    land(pipeline.landing, "batch-0002", texts=PROSE[:2])
    runs, cursor = tick(pipeline, sensor_def, None)
    assert [r[0] for r in runs] == ["batch-0001", "batch-0002"]  # 40 pairs < 64: no CLIP yet
    land(pipeline.landing, "batch-0003", pairs=30)
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs[0] == ("batch-0003", ["cleaned_batch"], "landed")
    assert runs[1][:2] == (None, ["clip_model"]) and "first CLIP: 70 pairs" in runs[1][2]

    clip = pipeline.materialize("clip_model")
    version = meta(clip, "clip_model")["version"]
    assert version.startswith("kiln-")
    runs, cursor = tick(pipeline, sensor_def, cursor)
    # The new CLIP re-scores the batches with pairs (text and code stay cached), and no other.
    assert runs == [(b, ["cleaned_batch"], f"new CLIP {version}") for b in ("batch-0001", "batch-0003")]
    assert tick(pipeline, sensor_def, cursor)[0] == []  # 70 pairs have not doubled: no retraining of the CLIP


def _policy():
    return replace(presets.tiny(), name="policy", operation=OperationConfig(retraining=RetrainingPolicy(min_new_kept_bytes=100)))


@pytest.mark.slow
def test_ten_batches_landing_one_after_another_bring_ten_cleanings_ten_scorings_and_one_retraining(tmp_path, monkeypatch):
    """Each landing is cleaned, joins the corpus and has its records scored for difficulty, in runs of
    its own: the scores of every earlier batch stay byte for byte as they were, and the retraining
    waits for the difficulty of every batch."""
    monkeypatch.setitem(presets.PRESETS, "policy", _policy)
    pipeline = Pipeline(tmp_path / "data", tmp_path / "landing", preset="policy")
    (tmp_path / "landing").mkdir()
    landing_def = pipeline.defs.resolve_sensor_def("landing_sensor")
    policy_def = pipeline.defs.resolve_sensor_def("retraining_policy")
    difficulty_def = pipeline.defs.resolve_sensor_def("difficulty_sensor")
    scores = pipeline.data / "difficulty_scores"
    cursor = None
    # The daemon's first evaluation of the conditions, before anything landed.
    automation_cursor = dg.evaluate_automation_conditions(defs=pipeline.defs, instance=pipeline.instance).cursor
    cleanings, corpus_runs, retrainings = 0, 0, []
    for i in range(10):
        land(pipeline.landing, f"batch-{i:04d}", texts=[f"{t} Batch {i} adds its own words." for t in PROSE])
        runs, cursor = tick(pipeline, landing_def, cursor)
        for partition, _, _ in runs:
            assert pipeline.materialize("cleaned_batch", partition).success
            cleanings += 1
        # The automation, as the daemon evaluates it: the corpus follows the cleaned batches, training does not.
        evaluated = dg.evaluate_automation_conditions(defs=pipeline.defs, instance=pipeline.instance, cursor=automation_cursor)
        automation_cursor = evaluated.cursor
        requested = {k.to_user_string() for k in pipeline.defs.resolve_asset_graph().get_all_asset_keys() if evaluated.get_num_requested(k)}
        assert requested == {"cleaned_corpus"}, i
        pipeline.materialize("cleaned_corpus")
        corpus_runs += 1
        # The next tick sees the corpus run done: nothing more to request.
        evaluated = dg.evaluate_automation_conditions(defs=pipeline.defs, instance=pipeline.instance, cursor=automation_cursor)
        automation_cursor = evaluated.cursor
        assert evaluated.total_requested == 0, i
        if i == 0:  # the corpus is ahead of its difficulty: no retraining yet
            assert "waiting for the difficulty of 1 batch(es) (batch-0000" in policy_def(dg.build_sensor_context(instance=pipeline.instance)).skip_message
        # The difficulty sensor requests the new batch and no other; scoring it scores its records only.
        before = {p: p.read_bytes() for p in scores.glob("*/scores.parquet")}
        [request] = difficulty_def(dg.build_sensor_context(instance=pipeline.instance)).run_requests
        assert request.partition_key == f"batch-{i:04d}" and request.tags["kiln/reason"] == "difficulty: not scored yet"
        scored = meta(pipeline.materialize("difficulty_scores", request.partition_key), "difficulty_scores")
        kept = ds.dataset(pipeline.data / "cleaned_corpus" / request.partition_key, format="parquet").count_rows()
        assert (scored["records"], scored["records_scored"], scored["records_reused"]) == (kept, kept, 0)
        assert {p: p.read_bytes() for p in before} == before
        assert "up to date" in difficulty_def(dg.build_sensor_context(instance=pipeline.instance)).skip_message
        result = policy_def(dg.build_sensor_context(instance=pipeline.instance))
        if isinstance(result, dg.RunRequest):
            retrainings.append(result)
            # A long GPU job, still running while the next batches land: they must not queue another.
            pipeline.instance.add_run(
                dg.DagsterRun(job_name="retraining", run_id=f"retrain-{i}", tags={RETRAIN_TAG: "true", **result.tags}, status=dg.DagsterRunStatus.STARTED)
            )
    assert cleanings == 10 and corpus_runs == 10
    [retraining] = retrainings
    assert retraining.tags["kiln/trigger"] == "policy" and "new kept bytes since the start" in retraining.tags["kiln/reason"]
    skipped = policy_def(dg.build_sensor_context(instance=pipeline.instance))
    assert "queued or running" in skipped.skip_message


def test_automation_is_on_by_default_and_one_setting_turns_it_off(tmp_path):
    from pipelines.definitions import build_definitions
    from assets.resources import Kiln

    kiln = Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path))
    for setting, status in (("on", "RUNNING"), ("off", "STOPPED")):
        defs = build_definitions(kiln, automation=setting)
        for name in ("landing_sensor", "retraining_policy", "kiln_automation"):
            assert defs.resolve_sensor_def(name).default_status.name == status, (setting, name)
        assert defs.resolve_schedule_def("weekly_retraining").default_status.name == status
    with pytest.raises(ValueError, match="KILN_AUTOMATION"):
        build_definitions(kiln, automation="sometimes")


@pytest.fixture
def bucket_sensor(tmp_path):
    """The landing sensor over a zone in a bucket of moto's S3 server on 127.0.0.1."""
    import uuid

    from tests.object_store import moto_s3

    with moto_s3() as (fs, _):
        name = f"kiln-{uuid.uuid4().hex[:8]}"
        fs.mkdir(name)
        fs.pipe_file(f"{name}/zone/", b"")  # an empty zone
        pipeline = Pipeline(tmp_path / "data", f"s3://{name}/zone")
        yield pipeline, pipeline.defs.resolve_sensor_def("landing_sensor"), fs, f"{name}/zone"


@pytest.mark.slow
def test_the_landing_sensor_follows_a_bucket_by_its_listing(bucket_sensor, tmp_path):
    """A batch that lands in the bucket (`_SUCCESS` written last) is cleaned once; a replaced object
    brings one more cleaning; a zone that cannot be listed is an error, never a reason to drop every
    batch's outputs; a batch whose `_SUCCESS` is gone loses its partition."""
    from tests.object_store import upload
    from training.data.zone import LandingZoneNotFound

    pipeline, sensor_def, fs, root = bucket_sensor
    land(tmp_path / "local", "batch-0001", texts=PROSE, code={"ok.py": "x = 1\n"})
    (tmp_path / "local" / "batch-0001" / "_SUCCESS").unlink()
    upload(tmp_path / "local", fs, root)  # every object but _SUCCESS: still landing
    runs, cursor = tick(pipeline, sensor_def, None)
    assert runs == []

    fs.pipe_file(f"{root}/batch-0001/_SUCCESS", b"")
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [("batch-0001", ["cleaned_batch"], "landed")]
    result = pipeline.materialize("cleaned_batch", "batch-0001")
    assert result.success and all(c.passed for c in result.get_asset_check_evaluations())
    assert meta(result, "cleaned_batch")["kept"] == len(PROSE) + 1
    assert tick(pipeline, sensor_def, cursor)[0] == []

    fs.pipe_file(f"{root}/batch-0001/text/docs.jsonl", (json.dumps({"text": PROSE[2]}) + "\n").encode())
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [("batch-0001", ["cleaned_batch"], "changed")]

    fs.rm(root.split("/")[0], recursive=True)  # the bucket is gone (or unreachable)
    with pytest.raises(LandingZoneNotFound):
        tick(pipeline, sensor_def, cursor)
    assert pipeline.instance.get_dynamic_partitions("landing_batches") == ["batch-0001"]
    assert (pipeline.data / "cleaned_batch" / "batch-0001").exists()

    fs.mkdir(root.split("/")[0])
    fs.pipe_file(f"{root}/batch-0001/text/docs.jsonl", b"")  # back, without its _SUCCESS
    runs, cursor = tick(pipeline, sensor_def, cursor)
    assert runs == [(None, ["cleaned_corpus"], "removed: batch-0001")]
    assert pipeline.instance.get_dynamic_partitions("landing_batches") == []

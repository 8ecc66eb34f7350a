"""The retraining sensor, the weekly schedule, the GPU pool and the instance settings."""

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from pipelines.resources import Kiln

ROOT = Path(__file__).resolve().parents[2]


def _land(landing: Path, name: str, text: str, ready: bool = True) -> None:
    batch = landing / name / "text"
    batch.mkdir(parents=True, exist_ok=True)
    (batch / "docs.jsonl").write_text(json.dumps({"text": text}) + "\n")
    if ready:
        (landing / name / "_SUCCESS").touch()


@pytest.fixture
def sensor(tmp_path):
    kiln = Kiln(data_dir=str(tmp_path / "data"), landing_dir=str(tmp_path / "landing"))
    defs = build_definitions(kiln)
    return tmp_path / "landing", defs.resolve_sensor_def("landing_sensor"), dg.DagsterInstance.ephemeral()


def _tick(sensor_def, instance, cursor):
    result = sensor_def(dg.build_sensor_context(instance=instance, cursor=cursor))
    return [r.run_key for r in result.run_requests or []], result.cursor


def test_each_ready_batch_triggers_once_and_a_changed_one_again(sensor):
    landing, sensor_def, instance = sensor
    assert sensor_def.job_name == "lifecycle" and sensor_def.minimum_interval_seconds == 60

    keys, cursor = _tick(sensor_def, instance, None)
    assert keys == []  # no landing zone yet

    _land(landing, "batch-0001", "the first batch of documents")
    keys, cursor = _tick(sensor_def, instance, cursor)
    assert len(keys) == 1 and keys[0].startswith("batch-0001:")

    keys2, cursor = _tick(sensor_def, instance, cursor)
    assert keys2 == []  # the same batch again: nothing

    _land(landing, "batch-0002", "still arriving", ready=False)
    assert _tick(sensor_def, instance, cursor)[0] == []  # no _SUCCESS: ignored

    _land(landing, "batch-0001", "the first batch, corrected")
    keys3, cursor = _tick(sensor_def, instance, cursor)
    assert len(keys3) == 1 and keys3[0].startswith("batch-0001:") and keys3[0] != keys[0]

    (landing / "batch-0002" / "_SUCCESS").touch()
    keys4, cursor = _tick(sensor_def, instance, cursor)
    assert len(keys4) == 1 and keys4[0].startswith("batch-0002:")
    assert set(json.loads(cursor)) == {"batch-0001", "batch-0002"}


def test_the_cursor_survives_a_restart(sensor):
    landing, sensor_def, instance = sensor
    _land(landing, "batch-0001", "documents")
    _, cursor = _tick(sensor_def, instance, None)
    restarted = build_definitions(Kiln(data_dir="/unused", landing_dir=str(landing))).resolve_sensor_def("landing_sensor")
    assert _tick(restarted, dg.DagsterInstance.ephemeral(), cursor)[0] == []


def test_the_schedule_retrains_weekly_on_the_lifecycle_job(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))
    schedule = defs.resolve_schedule_def("weekly_retraining")
    assert schedule.cron_schedule == "0 3 * * 1" and schedule.job_name == "lifecycle"
    assert schedule.execution_timezone == "UTC"
    job = defs.resolve_job_def("lifecycle")
    assert {"release", "cleaned_corpus", "pretrain_stage_9"} <= {n.name for n in job.nodes}
    assert job.tags["kiln/lifecycle"] == "true"


def test_gpu_steps_are_in_the_gpu_pool_with_a_gpu_request(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))
    graph = defs.resolve_asset_graph()
    gpu = {"clip_model", "cleaned_corpus", "difficulty_scores", "evaluation", "quantized_model"} | {
        f"pretrain_stage_{i}" for i in range(1, 10)
    }
    for key in graph.get_all_asset_keys():
        node = defs.resolve_assets_def(key).op
        name = key.to_user_string()
        assert (node.pool == "gpu") == (name in gpu), name
        if name in gpu:
            k8s = json.loads(node.tags["dagster-k8s/config"])
            assert k8s["container_config"]["resources"]["limits"]["nvidia.com/gpu"] == "1"


@pytest.fixture
def pool_instance(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    shutil.copy(ROOT / "dagster.yaml", home / "dagster.yaml")
    instance = dg.DagsterInstance.from_config(str(home))
    yield instance
    instance.dispose()


def test_the_gpu_pool_never_runs_two_gpu_steps_at_once(pool_instance, tmp_path, monkeypatch):
    from tests.pipelines import gpu_pool_job

    monkeypatch.setenv("KILN_POOL_LOG", str(tmp_path))
    result = dg.execute_job(dg.reconstructable(gpu_pool_job.job), instance=pool_instance)
    assert result.success
    spans = {n: json.loads((tmp_path / f"{n}.json").read_text()) for n in ("gpu_a", "gpu_b", "cpu_a", "cpu_b")}

    def overlap(a, b):
        return spans[a]["start"] < spans[b]["end"] and spans[b]["start"] < spans[a]["end"]

    assert not overlap("gpu_a", "gpu_b")
    assert overlap("cpu_a", "cpu_b")  # steps outside the pool run side by side (and the test can tell)


def test_the_instance_retries_and_monitors_runs(pool_instance):
    assert pool_instance.run_retries_enabled and pool_instance.run_retries_max_retries == 2
    assert pool_instance.run_monitoring_enabled
    config = pool_instance.get_concurrency_config()
    assert config.pool_config.default_pool_limit == 1
    assert {"key": "kiln/lifecycle", "limit": 1} in config.run_queue_config.tag_concurrency_limits


def test_a_new_base_model_brings_evaluation_quantization_and_then_the_release(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))
    assert defs.resolve_sensor_def("kiln_automation").default_status == dg.DefaultSensorStatus.RUNNING
    instance = dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("curriculum"))  # data ready, no model yet
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0
    # A run of base_model: the model and its blocking check, which the release waits for.
    instance.report_runless_asset_event(dg.AssetMaterialization("base_model"))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(asset_key=dg.AssetKey("base_model"), check_name="base_model_generates", passed=True)
    )
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    requested = {k for k in ("evaluation", "quantized_model", "release") if result.get_num_requested(dg.AssetKey(k))}
    # One run, in dependency order: the blocking checks on evaluation and quantized_model run in it and
    # still guard the release step (tests/pipelines/test_gates.py covers a failed one).
    assert requested == {"evaluation", "quantized_model", "release"}

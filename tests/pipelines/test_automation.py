"""The weekly schedule, the GPU pool, the instance settings and the release automation (the landing
sensor and the retraining policy: test_landing.py)."""

import json
import shutil
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from assets.resources import Kiln

ROOT = Path(__file__).resolve().parents[2]


def test_the_schedule_retrains_weekly_unless_a_retraining_is_queued_or_running(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))
    schedule = defs.resolve_schedule_def("weekly_retraining")
    assert schedule.job_name == "retraining" and schedule.execution_timezone == "UTC"
    # As RetrainingPolicy.cron documents it: Mondays at 03:00 UTC, one tick a week (the daemon's tick times).
    from dagster._utils.schedules import cron_string_iterator

    wednesday = datetime(2026, 11, 18, 12, 30, tzinfo=timezone.utc)
    ticks = cron_string_iterator(wednesday.timestamp(), schedule.cron_schedule, schedule.execution_timezone)
    first, *later = [next(ticks) for _ in range(4)]
    assert (first.weekday(), first.hour, first.minute, first.utcoffset()) == (0, 3, 0, timedelta(0))
    assert timedelta(0) < first - wednesday < timedelta(days=7)
    assert [b - a for a, b in zip([first, *later], later)] == [timedelta(days=7)] * 3
    job = defs.resolve_job_def("retraining")
    assert {"release", "cleaned_corpus", "pretrain_stage_9"} <= {n.name for n in job.nodes}
    assert job.tags["kiln/lifecycle"] == "true" and job.tags["kiln/retraining"] == "true"
    with dg.instance_for_test() as instance:
        [request] = schedule.evaluate_tick(dg.build_schedule_context(instance=instance)).run_requests
        assert request.tags["kiln/trigger"] == "schedule"
        instance.add_run(dg.DagsterRun(job_name="retraining", run_id="running", tags={"kiln/retraining": "true"}, status=dg.DagsterRunStatus.STARTED))
        tick = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
        assert not tick.run_requests and "queued or running" in tick.skip_message


def test_gpu_steps_are_in_the_gpu_pool_with_a_gpu_request(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))
    graph = defs.resolve_asset_graph()
    gpu = {"clip_model", "cleaned_batch", "difficulty_scores", "evaluation", "quantized_model"} | {
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


@pytest.mark.slow
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

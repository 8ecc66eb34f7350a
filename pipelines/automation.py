"""Retraining automation: the lifecycle job, the sensor that starts it when a batch lands, and the
weekly schedule."""

from __future__ import annotations

import json

import dagster as dg

from pipelines.resources import Kiln
from training.data.landing import ready_batches

LIFECYCLE = "lifecycle"
"""The job that materializes every asset, from the landing zone to a release."""


def lifecycle_job() -> dg.UnresolvedAssetJobDefinition:
    # One lifecycle at a time per deployment: runs share KILN_DATA_DIR (see the run queue's tag limit in dagster.yaml).
    return dg.define_asset_job(
        LIFECYCLE,
        selection=dg.AssetSelection.all(),
        tags={"kiln/lifecycle": "true"},
        description="The whole lifecycle: landing zone to cleaned corpus, curriculum, pretraining stages, release.",
    )


def cleaning_job() -> dg.UnresolvedAssetJobDefinition:
    """Clean what has landed without retraining: the CLIP and the cleaned corpus, with its check."""
    return dg.define_asset_job(
        "cleaning",
        selection=dg.AssetSelection.assets("clip_model", "cleaned_corpus"),
        tags={"kiln/lifecycle": "true"},
        description="Clean what has landed (CLIP and cleaned corpus) without retraining.",
    )


def landing_sensor(kiln: Kiln) -> dg.SensorDefinition:
    cfg = kiln.config.operation

    @dg.sensor(
        name="landing_sensor",
        job_name=LIFECYCLE,
        minimum_interval_seconds=cfg.sensor_interval_seconds,
        description="Starts the lifecycle when a batch with _SUCCESS appears in the landing zone or its "
        "content changes; batches without _SUCCESS are ignored.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # The cursor maps batch name -> content hash of what was last requested, so a restarted
        # daemon neither repeats a batch nor misses one; run keys make each (batch, content) run once.
        seen: dict[str, str] = json.loads(context.cursor) if context.cursor else {}
        requests = []
        for batch in ready_batches(kiln.landing):
            digest = batch.batch_fingerprint()
            if seen.get(batch.name) == digest:
                continue
            seen[batch.name] = digest
            requests.append(
                dg.RunRequest(
                    run_key=f"{batch.name}:{digest[:16]}",
                    tags={"kiln/batch": batch.name, "kiln/batch_sha256": digest},
                )
            )
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(seen, sort_keys=True))

    return _sensor


def weekly_retraining(kiln: Kiln) -> dg.ScheduleDefinition:
    cfg = kiln.config.operation
    return dg.ScheduleDefinition(
        name="weekly_retraining",
        job_name=LIFECYCLE,
        cron_schedule=cfg.retraining_cron,
        execution_timezone=cfg.timezone,
        description="Retrains on everything landed so far, whether or not a batch arrived.",
    )


def release_automation() -> dg.AutomationConditionSensorDefinition:
    """Evaluates the `release` group's automation conditions (AutomationCondition.eager() on evaluation,
    quantized_model and release): whenever base_model changes outside a lifecycle run (a stage
    retrained by hand, say), evaluation and quantization follow, then the release, which the
    regression gate still guards."""
    return dg.AutomationConditionSensorDefinition(
        "release_automation",
        target=dg.AssetSelection.groups("release"),
        default_status=dg.DefaultSensorStatus.RUNNING,
        run_tags={"kiln/lifecycle": "true"},
    )

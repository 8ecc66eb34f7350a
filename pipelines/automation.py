"""How kiln runs unattended: arrivals are cleaned at once, training follows a policy.

- `landing_sensor`: each ready batch is a partition of `cleaned_batch`; a new or changed batch is
  cleaned (one run per batch), a batch that left the landing zone loses its partition and outputs,
  and kiln's own CLIP is (re)trained when enough pairs have landed (then batches with pairs are
  re-scored by it).
- `kiln_automation`: declarative automation; `cleaned_corpus` follows the cleaned batches, and a
  new base model is evaluated, quantized and released when its gates pass.
- `difficulty_sensor`: each batch of the corpus whose difficulty is not up to date (new, its corpus
  part changed, or another predictor: DifficultyConfig.predictor) is scored, one run per batch.
- `retraining_policy` (sensor) and `weekly_retraining` (schedule): the `retraining` job, when enough
  new kept data has landed (RetrainingPolicy) or on the cron, once every batch's difficulty is up
  to date; never more than one queued or running.

All of them run as soon as the daemon does (`make ui`); KILN_AUTOMATION=off starts them stopped.
"""

from __future__ import annotations

import json

import dagster as dg

from assets.cleaning import LANDING_BATCHES, clip_model, cleaned_batch, cleaned_corpus
from assets.difficulty import difficulty_scores
from assets.resources import Kiln
from training.clip.build import clip_due, read_card
from training.curriculum.batches import due_batches
from training.data.clean import remove_batch
from training.data.landing import count_records, ready_batches, unusable_batches
from training.fsutil import fingerprint
from training.retraining import new_since_release, retrain_reason, start_tag

RETRAINING = "retraining"
"""The job that trains from the cleaned corpus to a release."""
RETRAIN_TAG = "kiln/retraining"
ACTIVE = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def automation_status(setting: str) -> dg.DefaultSensorStatus:
    """KILN_AUTOMATION: `on` (default) or `off`; sensors and schedules start in that state."""
    if setting not in ("on", "off"):
        raise ValueError(f"KILN_AUTOMATION must be on or off, not {setting!r}")
    return dg.DefaultSensorStatus.RUNNING if setting == "on" else dg.DefaultSensorStatus.STOPPED


def retraining_job() -> dg.UnresolvedAssetJobDefinition:
    # One at a time per deployment (the run queue's kiln/lifecycle limit in dagster.yaml): runs share KILN_DATA_DIR.
    return dg.define_asset_job(
        RETRAINING,
        # The corpus and each batch's difficulty are kept up to date as batches land (one run per batch);
        # a retraining starts from them.
        selection=dg.AssetSelection.assets(cleaned_corpus).downstream(include_self=False) - dg.AssetSelection.assets(difficulty_scores),
        tags={"kiln/lifecycle": "true", RETRAIN_TAG: "true"},
        description="From the cleaned corpus and its difficulty to a release: tokenizer, curriculum, pretraining "
        "stages, evaluation, quantization, release.",
    )


def cleaning_job() -> dg.UnresolvedAssetJobDefinition:
    """Clean one landing batch (pick the partition, or backfill many: one run per batch)."""
    return dg.define_asset_job(
        "cleaning", selection=dg.AssetSelection.assets(cleaned_batch),
        description="Clean landing batches, one run per batch (pick partitions, or backfill).",
    )


def difficulty_job() -> dg.UnresolvedAssetJobDefinition:
    """Score landing batches for difficulty (pick partitions, or backfill many: one run per batch)."""
    return dg.define_asset_job(
        "difficulty", selection=dg.AssetSelection.assets(difficulty_scores),
        description="Score batches for difficulty, one run per batch (pick partitions, or backfill: a rescore).",
    )


def landing_sensor(kiln: Kiln, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    cfg = kiln.config

    @dg.sensor(
        name="landing_sensor",
        minimum_interval_seconds=cfg.operation.sensor_interval_seconds,
        default_status=status,
        target=dg.AssetSelection.assets(clip_model, cleaned_batch, cleaned_corpus),
        description="Each ready batch (with _SUCCESS) becomes a partition of cleaned_batch and is cleaned; a changed "
        "batch is cleaned again; a batch that left the landing zone loses its partition and outputs. Trains "
        "kiln's CLIP once enough pairs have landed, then re-scores the batches with pairs.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        # The cursor maps each batch to what was last requested for it (its files' stat hash and the CLIP
        # for its pairs), so a restarted daemon neither repeats a batch nor misses one.
        state: dict = json.loads(context.cursor) if context.cursor else {}
        batches: dict = state.setdefault("batches", {})
        ready = {b.name: b for b in ready_batches(kiln.landing)}
        for name, problem in unusable_batches(kiln.landing).items():
            context.log.warning(f"landing batch {name!r} is not read: {problem}; rename the folder")
        known = set(context.instance.get_dynamic_partitions(LANDING_BATCHES.name))
        clip_version = _clip_version(kiln)
        requests = []
        for name, batch in ready.items():
            seen = batches.get(name, {})
            files = batch.stat_fingerprint()
            pairs = seen["pairs"] if seen.get("files") == files else count_records(batch, "image_text", cfg.cleaning)
            clip = clip_version if pairs else ""
            if name in known and seen.get("files") == files and seen.get("clip") == clip:
                continue
            why = "landed" if name not in known or not seen else "changed" if seen.get("files") != files else f"new CLIP {clip}"
            n = seen.get("requests", 0) + 1
            batches[name] = {"files": files, "pairs": pairs, "clip": clip, "requests": n}
            requests.append(
                dg.RunRequest(
                    run_key=f"{name}:{n}:{fingerprint(files, clip)[:12]}",
                    partition_key=name,
                    asset_selection=[cleaned_batch.key],
                    tags={"kiln/batch": name, "kiln/reason": why},
                )
            )
        gone = sorted((known | set(batches)) - set(ready))
        for name in gone:  # left the landing zone (or lost _SUCCESS): its outputs go with its partition
            remove_batch(name, kiln.layout.cleaned_batch, kiln.layout.rejected, kiln.layout.difficulty_scores)
            batches.pop(name, None)
        if gone:
            requests.append(
                dg.RunRequest(
                    run_key=f"removed:{fingerprint(gone, context.cursor)[:12]}",
                    asset_selection=[cleaned_corpus.key],
                    tags={"kiln/lifecycle": "true", "kiln/reason": f"removed: {', '.join(gone)}"},
                )
            )
        if not cfg.cleaning.image.clip_model:
            pairs = sum(b["pairs"] for b in batches.values())
            if reason := clip_due(pairs, read_card(kiln.layout.clip_model), cfg.clip):
                requests.append(
                    dg.RunRequest(run_key=f"clip:{pairs}:{clip_version}", asset_selection=[clip_model.key], tags={"kiln/reason": reason})
                )
        added = sorted(set(ready) - known)
        partition_requests = [LANDING_BATCHES.build_add_request(added)] if added else []
        deleted = sorted(known - set(ready))
        if deleted:
            partition_requests.append(LANDING_BATCHES.build_delete_request(deleted))
        return dg.SensorResult(run_requests=requests, cursor=json.dumps(state, sort_keys=True), dynamic_partitions_requests=partition_requests)

    return _sensor


def _clip_version(kiln: Kiln) -> str:
    configured = kiln.config.cleaning.image.clip_model
    return f"configured:{configured}" if configured else read_card(kiln.layout.clip_model).get("version", "none")


def _retraining_active(instance: dg.DagsterInstance) -> bool:
    return bool(instance.get_run_ids(dg.RunsFilter(tags={RETRAIN_TAG: "true"}, statuses=ACTIVE), limit=1))


def _waiting_for_difficulty(kiln: Kiln) -> str | None:
    """Why a retraining must wait: batches whose difficulty is not up to date (the curriculum would refuse them)."""
    choice, due = due_batches(kiln.layout, kiln.config.difficulty)
    if not due:
        return None
    late = [s.batch for s in due]
    return f"waiting for the difficulty of {len(late)} batch(es) ({', '.join(late[:5])}{' ...' if len(late) > 5 else ''}; predictor {choice.id})"


def difficulty_sensor(kiln: Kiln, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    @dg.sensor(
        name="difficulty_sensor",
        minimum_interval_seconds=kiln.config.operation.sensor_interval_seconds,
        default_status=status,
        target=dg.AssetSelection.assets(difficulty_scores),
        description="Scores each batch of the cleaned corpus whose difficulty is not up to date, one run per batch: "
        "a new batch, a batch whose corpus part changed, or every batch when the predictor changes (with "
        "DifficultyConfig.predictor \"release\": a newer release, at most every rescore_every_days). A failed run "
        "is not retried until its batch or the predictor changes again.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        choice, due = due_batches(kiln.layout, kiln.config.difficulty, advance=True)
        partitions = set(context.instance.get_dynamic_partitions(LANDING_BATCHES.name))
        requests = [
            dg.RunRequest(
                run_key=f"{s.batch}:{s.key[:16]}",
                partition_key=s.batch,
                tags={"kiln/batch": s.batch, "kiln/reason": f"difficulty: {s.due}", "kiln/predictor": choice.id},
            )
            for s in due
            if s.batch in partitions
        ]
        if not requests:
            return dg.SkipReason(f"every batch's difficulty is up to date (predictor {choice.id})")
        return dg.SensorResult(run_requests=requests)

    return _sensor


def retraining_sensor(kiln: Kiln, status: dg.DefaultSensorStatus) -> dg.SensorDefinition:
    policy = kiln.config.operation.retraining

    @dg.sensor(
        name="retraining_policy",
        job_name=RETRAINING,
        minimum_interval_seconds=kiln.config.operation.sensor_interval_seconds,
        default_status=status,
        description="Starts the retraining job when enough new kept data has landed since the latest release "
        "(RetrainingPolicy.min_new_kept_bytes), once every batch's difficulty is up to date; never while one is "
        "queued or running. The run's tags say why.",
    )
    def _sensor(context: dg.SensorEvaluationContext):
        if _retraining_active(context.instance):
            return dg.SkipReason("a retraining is queued or running; never more than one")
        if waiting := _waiting_for_difficulty(kiln):
            return dg.SkipReason(waiting)
        new = new_since_release(kiln.layout.cleaned_corpus, kiln.layout.releases)
        reason = retrain_reason(policy, new)
        if reason is None:
            return dg.SkipReason(f"{new['bytes']:,} new kept bytes since {new['release'] or 'the start'}; policy: {policy.min_new_kept_bytes}")
        # One retraining per corpus state: a failed one (a gate, say) is not retried until new data lands.
        tags = {"kiln/reason": reason, "kiln/trigger": "policy", "kiln/start": start_tag(policy, new["release"])}
        return dg.RunRequest(run_key=f"corpus:{new['state']}", tags=tags)

    return _sensor


def weekly_retraining(kiln: Kiln, status: dg.DefaultSensorStatus) -> dg.ScheduleDefinition:
    policy = kiln.config.operation.retraining

    @dg.schedule(
        name="weekly_retraining",
        job_name=RETRAINING,
        cron_schedule=policy.cron or "0 3 * * 1",
        execution_timezone=policy.timezone,
        default_status=dg.DefaultScheduleStatus[status.name] if policy.cron else dg.DefaultScheduleStatus.STOPPED,
        description="Retrains on everything landed so far, whether or not new data arrived; skipped while a "
        "retraining is queued or running or a batch's difficulty is not up to date.",
    )
    def _schedule(context: dg.ScheduleEvaluationContext):
        if _retraining_active(context.instance):
            return dg.SkipReason("a retraining is queued or running; never more than one")
        if waiting := _waiting_for_difficulty(kiln):
            return dg.SkipReason(waiting)
        start = start_tag(policy, new_since_release(kiln.layout.cleaned_corpus, kiln.layout.releases)["release"])
        return dg.RunRequest(tags={"kiln/reason": f"schedule {policy.cron} ({policy.timezone})", "kiln/trigger": "schedule", "kiln/start": start})

    return _schedule


def kiln_automation(status: dg.DefaultSensorStatus) -> dg.AutomationConditionSensorDefinition:
    """Evaluates the automation conditions: `cleaned_corpus` follows the cleaned batches; evaluation,
    quantized_model and release follow a new base model, and the release only when its gates passed."""
    return dg.AutomationConditionSensorDefinition(
        "kiln_automation",
        target=dg.AssetSelection.assets(cleaned_corpus) | dg.AssetSelection.groups("release"),
        default_status=status,
        run_tags={"kiln/lifecycle": "true"},
    )

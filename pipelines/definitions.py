"""The one Definitions object of kiln: assets, checks, resources, the lifecycle job, its sensor and
schedule (`dagster dev` / `dagster asset materialize -m pipelines.definitions`). The pretraining
stages follow the preset's curriculum schedule (KILN_PRESET), one asset per stage.

KILN_AUTOMATION (`on` by default) starts the sensors and the schedule running with the daemon; `off`
starts them stopped (turn them on in the UI). KILN_EXECUTOR picks how steps run: `multiprocess` (default; one process per step on this machine) or
`k8s` (one Kubernetes pod per step with dagster-k8s' k8s_job_executor; see deploy/)."""

from __future__ import annotations

import os

import dagster as dg
import torch

from assets import cleaning, curriculum, difficulty, evaluation, gguf, pretraining, release, tokenizer, tokens
from pipelines.automation import (
    automation_status,
    cleaning_job,
    difficulty_job,
    difficulty_sensor,
    kiln_automation,
    landing_sensor,
    retraining_job,
    retraining_sensor,
    weekly_retraining,
)
from pipelines.recovery import dead_run_sensor, kiln_executor
from assets.resources import Kiln
from assets.steps import exclusive_outputs
from training.pretrain.launch import check_launch, planned_gpus

# Modules whose assets do not depend on the preset; the pretraining stages are built per schedule.
MODULES = [cleaning, difficulty, tokenizer, tokens, curriculum, evaluation, gguf, release]


def executor(name: str) -> dg.ExecutorDefinition:
    if name == "multiprocess":
        # Each step is forked from a server that imported kiln once, instead of a fresh interpreter
        # importing dagster, torch and transformers again: a step starts in about a second, not six.
        # When a run starts, before any step claims a slot, its worker is recorded and dead runs of
        # this machine are reaped (pipelines/recovery.py).
        return kiln_executor(
            dg.multiprocess_executor.configured({"start_method": {"forkserver": {"preload_modules": ["pipelines.definitions"]}}})
        )
    if name == "k8s":
        from dagster_k8s import k8s_job_executor

        return k8s_job_executor
    raise ValueError(f"KILN_EXECUTOR must be multiprocess or k8s, not {name!r}")


OWNERS = {"data": ["team:data-platform"], "model": ["team:ml-training"], "release": ["team:ml-training"]}
"""Who answers for each group of assets (shown in the UI); the users named in kiln's design."""


def build_definitions(kiln: Kiln, executor_name: str = "multiprocess", automation: str = "on") -> dg.Definitions:
    config, kubernetes = kiln.config, executor_name == "k8s"
    stages = len(config.curriculum.schedule)
    # A stage nothing could start (several nodes and no launcher, compression without GPUs) is an
    # error now, with what to change, not when the retraining reaches it.
    check_launch(config.training, planned_gpus(config.training, kubernetes, torch.cuda.device_count()), kubernetes)
    status = automation_status(automation)
    assets = [*dg.load_assets_from_modules(MODULES), *pretraining.pretraining_assets(stages, config.training, kubernetes)]
    # Each step holds a lock on its output while it writes it, whoever started the run (assets/steps.py).
    assets = [exclusive_outputs(asset) for asset in assets]
    return dg.Definitions(
        assets=dg.map_asset_specs(lambda spec: spec.replace_attributes(owners=OWNERS[spec.group_name]), assets),
        asset_checks=[*dg.load_asset_checks_from_modules(MODULES), pretraining.base_model_generates],
        jobs=[retraining_job(), cleaning_job(), difficulty_job()],
        # The dead-run reaper is not automation but housekeeping: it runs whatever KILN_AUTOMATION says.
        sensors=[
            landing_sensor(kiln, status), difficulty_sensor(kiln, status), retraining_sensor(kiln, status),
            kiln_automation(status), dead_run_sensor(),
        ],
        schedules=[weekly_retraining(kiln, status)],
        resources={"kiln": kiln, "pipes": dg.PipesSubprocessClient()},
        executor=executor(executor_name),
    )


defs = build_definitions(
    Kiln.from_env(), os.environ.get("KILN_EXECUTOR", "multiprocess"), os.environ.get("KILN_AUTOMATION", "on").lower()
)

"""The `gpu` concurrency pool, counted in GPUs: every step with GPU work is in it and holds one slot
per GPU it uses."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg

from training.pretrain.cluster import GPU_RESOURCE

GPU_POOL = "gpu"
"""Concurrency pool of every step with GPU work, one slot per GPU. dagster.yaml's default pool limit
(1) fits one GPU; on a machine with N GPUs: `dagster instance concurrency set gpu N`."""

EXTRA_SLOT = "#gpu"
"""The step keys of the slots a step holds beyond the one Dagster claims for it: `<step>#gpu2`, ...
(pipelines/recovery.py frees them with their step)."""


def gpu_step(gpus: int = 1) -> dict:
    """Keyword arguments of `@dg.asset` for a step that uses `gpus` GPUs when there are any (0: a step
    that starts GPU work elsewhere, such as the pods of a multi-node stage): in the `gpu` pool, and
    under the k8s_job_executor a pod that requests that many GPUs."""
    resources = {"requests": {GPU_RESOURCE: str(gpus)}, "limits": {GPU_RESOURCE: str(gpus)}} if gpus else {}
    return {
        "pool": GPU_POOL,
        "op_tags": {"dagster-k8s/config": {"container_config": {"resources": resources}}},
    }


GPU_STEP = gpu_step(1)


@contextmanager
def gpu_slots(context: dg.AssetExecutionContext, gpus: int, poll_seconds: float = 1.0) -> Iterator[None]:
    """Holds `gpus` slots of the `gpu` pool while the block runs: the one Dagster claimed for the step,
    and `gpus - 1` more claimed here, waiting in the pool's queue as any step does. A pool smaller
    than `gpus` could never grant them: that is an error that says what to change. Nothing to hold on
    an instance without pools (an in-process test run)."""
    storage = context.instance.event_log_storage
    if gpus <= 1 or not storage.supports_global_concurrency_limits:
        yield
        return
    limit = storage.get_concurrency_info(GPU_POOL).slot_count
    if limit < gpus:
        raise dg.Failure(
            f"this step uses {gpus} GPUs but the `{GPU_POOL}` pool has {limit} slot(s), so it could never start: "
            f"`dagster instance concurrency set {GPU_POOL} <the machine's GPU count>`, or lower gpus_per_node"
        )
    run_id, step = context.run.run_id, context.op_execution_context.get_step_execution_context().step.key
    keys = [f"{step}{EXTRA_SLOT}{i}" for i in range(2, gpus + 1)]
    try:
        waiting = [k for k in keys if not storage.claim_concurrency_slot(GPU_POOL, run_id, k).is_claimed]
        if waiting:
            context.log.info(f"waiting for {len(waiting)} more GPU slot(s) of the `{GPU_POOL}` pool")
        while waiting:
            time.sleep(poll_seconds)
            waiting = [k for k in waiting if not storage.check_concurrency_claim(GPU_POOL, run_id, k).is_claimed]
        yield
    finally:
        for key in keys:
            storage.free_concurrency_slot_for_step(run_id, key)

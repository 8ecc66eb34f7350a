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


def _holders(storage, run_id: str, step: str) -> str:
    """Who holds the pool's slots, for the message of a step that gave up waiting: each other step's
    run, key and slot count, and how many more it waits for itself."""
    info = storage.get_concurrency_info(GPU_POOL)
    held: dict[tuple[str, str], int] = {}
    waiting: dict[tuple[str, str], int] = {}
    for claim in info.claimed_slots:
        key = (claim.run_id, claim.step_key.split(EXTRA_SLOT)[0])
        held[key] = held.get(key, 0) + 1
    for claim in info.pending_steps:
        if claim.assigned_timestamp is not None:  # granted: among the claimed slots
            continue
        key = (claim.run_id, claim.step_key.split(EXTRA_SLOT)[0])
        waiting[key] = waiting.get(key, 0) + 1
    parts = []
    for (run, key), count in sorted(held.items()):
        who = "this step" if (run, key) == (run_id, step) else f"run {run} step {key}"
        more = f", waiting for {waiting[(run, key)]} more" if waiting.get((run, key)) else ""
        parts.append(f"{who} ({count} slot(s){more})")
    return f"the pool's {info.slot_count} slot(s) are held by " + ("; ".join(parts) or "no step")


@contextmanager
def gpu_slots(
    context: dg.AssetExecutionContext, gpus: int, wait_seconds: float, poll_seconds: float = 1.0
) -> Iterator[None]:
    """Holds `gpus` slots of the `gpu` pool while the block runs: the one Dagster claimed for the step,
    and `gpus - 1` more claimed here, waiting in the pool's queue as any step does, for at most
    `wait_seconds`. Two steps that each hold part of the pool would wait for each other forever: past
    the wait, the step gives its slots back and fails, naming who holds the pool. A pool smaller than
    `gpus` could never grant them: that is an error that says what to change. Nothing to hold on an
    instance without pools (an in-process test run)."""
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
        deadline = time.monotonic() + wait_seconds
        if waiting:
            context.log.info(
                f"waiting up to {wait_seconds:g} s for {len(waiting)} more GPU slot(s) of the `{GPU_POOL}` pool: "
                + _holders(storage, run_id, step)
            )
        while waiting:
            if time.monotonic() >= deadline:
                raise dg.Failure(
                    f"gave up after {wait_seconds:g} s waiting for {len(waiting)} more of the {gpus} GPU slots this step "
                    f"needs: {_holders(storage, run_id, step)}. Its slots are given back, so a step waiting for them "
                    "goes on; materialize this one again once the pool is free (the resource kiln's "
                    "gpu_slots_wait_seconds says how long a step waits)."
                )
            time.sleep(min(poll_seconds, max(deadline - time.monotonic(), 0.0)))
            # Claiming again takes a slot the queue has assigned (checking a claim never takes it).
            waiting = [k for k in waiting if not storage.claim_concurrency_slot(GPU_POOL, run_id, k).is_claimed]
        yield
    finally:
        for key in keys:
            storage.free_concurrency_slot_for_step(run_id, key)

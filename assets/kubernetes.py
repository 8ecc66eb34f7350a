"""A multi-node pretraining stage on Kubernetes, through Dagster Pipes: the stage's step creates the
headless Service and indexed Job of `training.pretrain.cluster`, follows every pod's log (rank 0's
carries the Pipes messages: its log lines reach the run, the others' go to the step's output), and
waits for the Job. A failed pod fails the stage with its exit reason and the end of its log; the Job
and Service are deleted however the step ends."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import dagster as dg

from assets.resources import Kiln
from training.pretrain.cluster import CONTAINER, JOB_LABEL, STATE_LABEL, job_name, rendezvous_host, stage_objects
from training.pretrain.launch import launch_command

INDEX = "batch.kubernetes.io/job-completion-index"
LOG_TAIL_LINES = 40
STALE_WAIT_SECONDS = 600
"""How long a new Job waits for the pods of a stale one (left by a run whose step died) to go."""


def apis() -> tuple[Any, Any]:
    """(CoreV1Api, BatchV1Api) from the cluster the step runs in, or the local kubeconfig."""
    import kubernetes

    try:
        kubernetes.config.load_incluster_config()
    except kubernetes.config.ConfigException:
        kubernetes.config.load_kube_config()
    return kubernetes.client.CoreV1Api(), kubernetes.client.BatchV1Api()


def run_stage_job(
    context: dg.AssetExecutionContext,
    build: Callable[[dict[str, str]], list[dict]],
    namespace: str,
    core: Any = None,
    batch: Any = None,
    follow: Callable[[str], contextlib.AbstractContextManager] | None = None,
    poll_seconds: float = 10.0,
) -> None:
    """Runs the [Service, Job] that `build` makes from the Pipes bootstrap environment, until the Job
    completes; raises dg.Failure with the failed pods' reasons. `follow(pod)` streams a pod's log
    (default: Dagster's pod-log message reader)."""
    from dagster_k8s.pipes import PipesK8sPodLogsMessageReader

    if core is None or batch is None:
        core, batch = apis()
    reader = PipesK8sPodLogsMessageReader()
    with dg.open_pipes_session(
        context=context, context_injector=dg.PipesEnvContextInjector(), message_reader=reader
    ) as session:
        service, job = build(session.get_bootstrap_env_vars())
        name = job["metadata"]["name"]
        follow = follow or (
            lambda pod: reader.async_consume_pod_logs(context=context, core_api=core, pod_name=pod, namespace=namespace)
        )
        try:
            _clear_stale(context, core, batch, namespace, job["metadata"]["labels"][STATE_LABEL], name, poll_seconds)
            core.create_namespaced_service(namespace, service)
            batch.create_namespaced_job(namespace, job)
            context.log.info(f"started Job {namespace}/{name}: {job['spec']['completions']} node(s); "
                             f"every pod's log: kubectl logs -n {namespace} -l {JOB_LABEL}={name} --prefix")
            _wait(context, core, batch, follow, name, namespace, job["spec"]["completions"], poll_seconds)
        finally:
            _delete(context, lambda: batch.delete_namespaced_job(name, namespace, propagation_policy="Background"))
            _delete(context, lambda: core.delete_namespaced_service(name, namespace))


def _clear_stale(context, core, batch, namespace: str, state: str, name: str, poll_seconds: float) -> None:
    """Deletes the Jobs (and Services) of an earlier run on the same checkpoints, and waits for their
    pods to go: a run whose step pod died leaves its Job training, and two Jobs writing one checkpoint
    folder would corrupt it. A stage runs once at a time, so such a Job has no live step."""
    selector = f"{STATE_LABEL}={state}"
    for old in batch.list_namespaced_job(namespace, label_selector=selector).items:
        if old.metadata.name != name:
            context.log.warning(f"deleting Job {namespace}/{old.metadata.name}, left on these checkpoints by an earlier run")
            _delete(context, lambda n=old.metadata.name: batch.delete_namespaced_job(n, namespace, propagation_policy="Foreground"))
            _delete(context, lambda n=old.metadata.name: core.delete_namespaced_service(n, namespace))
    deadline = time.monotonic() + STALE_WAIT_SECONDS
    while pods := core.list_namespaced_pod(namespace, label_selector=selector).items:
        if time.monotonic() > deadline:
            raise dg.Failure(f"the pods of an earlier Job on these checkpoints are still there after {STALE_WAIT_SECONDS} s: "
                             + ", ".join(p.metadata.name for p in pods))
        time.sleep(poll_seconds)


def _wait(context, core, batch, follow, name: str, namespace: str, nodes: int, poll_seconds: float) -> None:
    followed: set[str] = set()
    unschedulable: set[str] = set()
    with contextlib.ExitStack() as streams:
        while True:
            pods = core.list_namespaced_pod(namespace, label_selector=f"{JOB_LABEL}={name}").items
            for pod in pods:
                pod_name, phase = pod.metadata.name, pod.status.phase
                if phase in ("Running", "Succeeded", "Failed") and pod_name not in followed:
                    streams.enter_context(follow(pod_name))
                    followed.add(pod_name)
                reason = _unschedulable(pod)
                if reason and pod_name not in unschedulable:
                    context.log.warning(f"pod {pod_name} cannot be scheduled yet: {reason}")
                    unschedulable.add(pod_name)
            status = batch.read_namespaced_job_status(name, namespace).status
            if status.failed:
                failed = [p for p in pods if p.status.phase == "Failed"]
                raise dg.Failure(
                    description=f"Job {namespace}/{name} failed: "
                    + ("\n\n".join(_why(core, namespace, p) for p in failed) or "no failed pod left to read"),
                    metadata={"job": f"{namespace}/{name}", "failed_pods": [p.metadata.name for p in failed]},
                )
            if (status.succeeded or 0) >= nodes:
                return
            time.sleep(poll_seconds)


def _unschedulable(pod) -> str | None:
    for condition in pod.status.conditions or ():
        if condition.type == "PodScheduled" and condition.status == "False" and condition.reason == "Unschedulable":
            return condition.message or condition.reason
    return None


def _why(core, namespace: str, pod) -> str:
    """`node <index> (pod <name>): <reason>, exit code <n>`, then the end of its log."""
    index = (pod.metadata.annotations or {}).get(INDEX, "?")
    states = [s.state.terminated for s in pod.status.container_statuses or () if s.name == CONTAINER and s.state.terminated]
    exit_text = f"{states[0].reason or 'terminated'}, exit code {states[0].exit_code}" if states else (pod.status.reason or "failed")
    try:
        tail = core.read_namespaced_pod_log(pod.metadata.name, namespace, container=CONTAINER, tail_lines=LOG_TAIL_LINES)
    except Exception as exc:  # the log is gone with its node: say so rather than hide the failure
        tail = f"(log unavailable: {exc})"
    return f"node {index} (pod {pod.metadata.name}): {exit_text}\n{tail}".rstrip()


def _delete(context, delete: Callable[[], object]) -> None:
    try:
        delete()
    except Exception as exc:
        if getattr(exc, "status", None) != 404:  # never created, or already gone: nothing to clean up
            context.log.warning(f"could not delete a stage object: {exc}")


def run_stage_on_pods(context: dg.AssetExecutionContext, kiln: Kiln, stage: int, spec_path: Path, gpus: int, env: dict) -> None:
    """The stage as an indexed Job of `nodes` pods (training/pretrain/cluster.py), followed to its end."""
    from dagster_k8s.utils import detect_current_namespace

    cfg, k8s = kiln.config.training, kiln.config.kubernetes
    if not spec_path.resolve().is_relative_to(k8s.data_mount):
        raise dg.Failure(f"KILN_DATA_DIR ({kiln.layout.root}) is not under kubernetes.data_mount ({k8s.data_mount}), "
                         "where the nodes' pods mount the data volume: mount it there, or set data_mount")
    image = k8s.image or os.environ.get("DAGSTER_CURRENT_IMAGE")
    if not image:
        raise dg.Failure("no image for the nodes' pods: set kubernetes.image, or DAGSTER_CURRENT_IMAGE in the step's pod")
    namespace = k8s.namespace or detect_current_namespace(None) or "default"
    name = job_name(stage, context.run.run_id)
    command = launch_command(spec_path, cfg, gpus, run_id=name, master_addr=rendezvous_host(name))
    labels = {"dagster/run-id": context.run.run_id}
    run_stage_job(
        context,
        lambda pipes_env: stage_objects(name, command, env | pipes_env, cfg, k8s, image, namespace, str(spec_path.parent), labels),
        namespace,
    )

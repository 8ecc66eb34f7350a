"""A multi-node stage's Job on Kubernetes (assets/kubernetes.py), against a fake API server that
plays the pods: every pod's log followed, success when every node completes, a failed node failing
the stage with its reason and log, and the Job and Service deleted however it ends."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace as NS

import dagster as dg

from assets.kubernetes import INDEX, run_stage_job
from training.config import KubernetesConfig, TrainingConfig
from training.pretrain.cluster import JOB_LABEL, STATE_LABEL, stage_objects, state_label

STATE = state_label("/data/checkpoints/stage_02")


def _pod(name: str, index: int, phase: str, exit_code: int | None = None, unschedulable: str | None = None,
         job: str = "kiln-stage-2-ab"):
    terminated = NS(reason="Error" if exit_code else "Completed", exit_code=exit_code) if exit_code is not None else None
    conditions = [NS(type="PodScheduled", status="False", reason="Unschedulable", message=unschedulable)] if unschedulable else []
    return NS(
        metadata=NS(name=name, annotations={INDEX: str(index)}, labels={JOB_LABEL: job, STATE_LABEL: STATE}),
        status=NS(phase=phase, reason=None, conditions=conditions,
                  container_statuses=[NS(name="trainer", state=NS(terminated=terminated))]),
    )


class FakeCluster:
    """Each poll moves to the next scripted moment: (pods, job status)."""

    def __init__(self, moments, logs=None, stale=()):
        self.moments, self.logs, self.calls, self.created = list(moments), logs or {}, 0, []
        self.deleted: list[str] = []
        self.stale = list(stale)  # pods of a Job an earlier run left behind, gone once it is deleted

    def _now(self):
        return self.moments[min(self.calls, len(self.moments) - 1)]

    def create_namespaced_service(self, namespace, body):
        self.created.append(("Service", namespace, body["metadata"]["name"]))

    def create_namespaced_job(self, namespace, body):
        self.created.append(("Job", namespace, body["metadata"]["name"]))

    def list_namespaced_pod(self, namespace, label_selector):
        key, value = label_selector.split("=")
        created = any(kind == "Job" for kind, _, _ in self.created)
        pods = self.stale + (self._now()[0] if created else [])
        return NS(items=[p for p in pods if p.metadata.labels[key] == value])

    def list_namespaced_job(self, namespace, label_selector):
        jobs = {p.metadata.labels[JOB_LABEL] for p in self.stale} | {n for kind, _, n in self.created if kind == "Job"}
        return NS(items=[NS(metadata=NS(name=n)) for n in sorted(jobs)])

    def read_namespaced_job_status(self, name, namespace):
        status = self._now()[1]
        self.calls += 1
        return NS(status=NS(failed=status.get("failed"), succeeded=status.get("succeeded")))

    def read_namespaced_pod_log(self, name, namespace, container, tail_lines):
        return self.logs[name]

    def delete_namespaced_job(self, name, namespace, propagation_policy):
        self.deleted.append(f"Job/{name}")
        self.stale = [p for p in self.stale if p.metadata.labels[JOB_LABEL] != name]

    def delete_namespaced_service(self, name, namespace):
        self.deleted.append(f"Service/{name}")


def _run(cluster: FakeCluster):
    followed: list[str] = []

    @contextlib.contextmanager
    def follow(pod):
        followed.append(pod)
        yield

    cfg = TrainingConfig(nodes=2, gpus_per_node=4)

    @dg.asset
    def pretrain_stage_2(context) -> dg.MaterializeResult:
        build = lambda env: stage_objects("kiln-stage-2-ab", ["torchrun"], env, cfg, KubernetesConfig(), "kiln:1", "ml",  # noqa: E731
                                          "/data/checkpoints/stage_02")
        run_stage_job(context, build, "ml", core=cluster, batch=cluster, follow=follow, poll_seconds=0)
        return dg.MaterializeResult()

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([pretrain_stage_2], instance=instance, raise_on_error=False)
    return result, followed, [entry.user_message for entry in instance.all_logs(result.run_id)]


def test_every_node_completing_completes_the_stage_and_every_pods_log_is_followed():
    running = [_pod("kiln-stage-2-ab-0-x", 0, "Running"), _pod("kiln-stage-2-ab-1-y", 1, "Pending", unschedulable="0/3 nodes have 4 GPUs")]
    moments = [(running, {}), ([_pod("kiln-stage-2-ab-0-x", 0, "Running"), _pod("kiln-stage-2-ab-1-y", 1, "Running")], {}),
               ([_pod("kiln-stage-2-ab-0-x", 0, "Succeeded", 0), _pod("kiln-stage-2-ab-1-y", 1, "Succeeded", 0)], {"succeeded": 2})]
    cluster = FakeCluster(moments)
    result, followed, logs = _run(cluster)
    assert result.success
    assert cluster.created == [("Service", "ml", "kiln-stage-2-ab"), ("Job", "ml", "kiln-stage-2-ab")]
    assert followed == ["kiln-stage-2-ab-0-x", "kiln-stage-2-ab-1-y"]  # each once, when it started
    assert cluster.deleted == ["Job/kiln-stage-2-ab", "Service/kiln-stage-2-ab"]
    assert sum("cannot be scheduled" in m for m in logs) == 1  # said once, while it waited
    assert "pod kiln-stage-2-ab-1-y cannot be scheduled yet: 0/3 nodes have 4 GPUs" in logs
    assert any("kubectl logs -n ml -l kiln.dev/stage-job=kiln-stage-2-ab --prefix" in m for m in logs)


def test_a_failed_node_fails_the_stage_with_its_reason_and_log():
    pods = [_pod("kiln-stage-2-ab-0-x", 0, "Running"), _pod("kiln-stage-2-ab-1-y", 1, "Failed", exit_code=1)]
    cluster = FakeCluster([(pods, {"failed": 1})], logs={"kiln-stage-2-ab-1-y": "step 3\nRuntimeError: NCCL error: unhandled system error"})
    result, _, _ = _run(cluster)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    message = failure.step_failure_data.user_failure_data.description
    assert message.startswith("Job ml/kiln-stage-2-ab failed: node 1 (pod kiln-stage-2-ab-1-y): Error, exit code 1")
    assert message.endswith("RuntimeError: NCCL error: unhandled system error")
    assert cluster.deleted == ["Job/kiln-stage-2-ab", "Service/kiln-stage-2-ab"]


def test_a_job_the_api_refuses_leaves_nothing_behind():
    class Refusing(FakeCluster):
        def create_namespaced_job(self, namespace, body):
            raise RuntimeError("jobs.batch is forbidden: User cannot create resource")

    cluster = Refusing([([], {})])
    result, _, _ = _run(cluster)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    assert "jobs.batch is forbidden" in failure.step_failure_data.error.cause.message
    assert cluster.deleted == ["Job/kiln-stage-2-ab", "Service/kiln-stage-2-ab"]


def test_a_job_left_by_a_run_whose_step_died_is_deleted_before_the_new_one_starts():
    """Two Jobs writing one checkpoint folder would corrupt it: the new run deletes the old Job (found
    by the checkpoints' label) and waits for its pods to go before it creates its own."""
    left = _pod("kiln-stage-2-dead-0-z", 0, "Running", job="kiln-stage-2-dead")
    done = [_pod("kiln-stage-2-ab-0-x", 0, "Succeeded", 0), _pod("kiln-stage-2-ab-1-y", 1, "Succeeded", 0)]
    cluster = FakeCluster([(done, {"succeeded": 2})], stale=[left])
    result, followed, logs = _run(cluster)
    assert result.success
    assert cluster.deleted[:2] == ["Job/kiln-stage-2-dead", "Service/kiln-stage-2-dead"]
    assert cluster.created == [("Service", "ml", "kiln-stage-2-ab"), ("Job", "ml", "kiln-stage-2-ab")]
    assert "kiln-stage-2-dead-0-z" not in followed
    assert any("deleting Job ml/kiln-stage-2-dead, left on these checkpoints by an earlier run" in m for m in logs)

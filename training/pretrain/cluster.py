"""A multi-node stage on Kubernetes: an indexed Job of `nodes` pods and the headless Service that
names them, for the c10d rendezvous (the pattern of Kubernetes' own indexed-Job documentation).

Every pod runs the same torchrun command (`training.pretrain.launch.launch_command`) with the first
pod, `<name>-0.<name>`, as the rendezvous endpoint: the Service gives each pod of the Job a DNS name
from its hostname and the Job's subdomain, also before the pod is ready, so the agents can meet while
they start. Each pod requests `gpus_per_node` GPUs, mounts the data volume where the step pod has it,
and gets a memory-backed /dev/shm. Plain dicts, validated against the Kubernetes schema by the tests;
`assets/kubernetes.py` creates them and follows the pods."""

from __future__ import annotations

import hashlib
import re

from training.config import KubernetesConfig, TrainingConfig

JOB_LABEL = "kiln.dev/stage-job"
"""The label every pod of a stage's Job carries (the Service selects them by it)."""
STATE_LABEL = "kiln.dev/stage-state"
"""The label of every object of a stage's Job naming the checkpoint folder its pods write (a hash of its
path): a Job left by an earlier run whose step died is found by it and deleted before a new one starts."""
CONTAINER = "trainer"
GPU_RESOURCE = "nvidia.com/gpu"
"""The extended resource GPU pods request (the NVIDIA device plugin's): the nodes' pods here, every GPU
step's pod through its `dagster-k8s/config` tag (assets/gpus.py)."""
POD_SECURITY = {
    "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001,
    "seccompProfile": {"type": "RuntimeDefault"},
}
"""The nodes' pods run as every kiln pod does (deploy/kubernetes/kiln.yaml): as the image's user kiln
(deploy/Dockerfile), never root, under the runtime's default seccomp profile."""
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
}
"""No capabilities (NCCL over TCP sockets needs none; nodes that train over InfiniBand may need IPC_LOCK
added for RDMA memory registration) and a read-only root filesystem: the trainer writes to the data
volume, /tmp, /dev/shm and its home (kernel caches)."""


def state_label(checkpoints: str) -> str:
    return hashlib.sha256(checkpoints.encode()).hexdigest()[:16]


def job_name(stage: int, run_id: str) -> str:
    """A DNS-1035 label, unique per run and stage, short enough (at most 63 characters) for the pods'
    hostnames `<name>-<index>`."""
    return f"kiln-stage-{stage}-{re.sub(r'[^a-z0-9]', '', run_id.lower())[:12]}"


def rendezvous_host(name: str) -> str:
    """The first pod's DNS name inside the namespace: the c10d rendezvous endpoint's host."""
    return f"{name}-0.{name}"


def stage_objects(
    name: str, command: list[str], env: dict[str, str], training: TrainingConfig, k8s: KubernetesConfig,
    image: str, namespace: str, checkpoints: str, labels: dict[str, str] | None = None,
) -> list[dict]:
    """[headless Service, indexed Job] of a stage of `training.nodes` nodes with `training.gpus_per_node`
    GPUs each (1 when unset: a pod must ask for a number), writing the checkpoint folder `checkpoints`."""
    gpus = str(training.gpus_per_node or 1)
    own = {JOB_LABEL: name, STATE_LABEL: state_label(checkpoints)}
    meta = {"name": name, "namespace": namespace, "labels": {**(labels or {}), **own}}
    port = {"name": "rendezvous", "port": training.master_port, "targetPort": training.master_port}
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": meta,
        "spec": {"clusterIP": "None", "selector": {JOB_LABEL: name}, "publishNotReadyAddresses": True, "ports": [port]},
    }
    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "Always",  # as every kiln pod: a moved tag is pulled again (same digest: nothing to pull)
        "command": command,
        "env": [{"name": k, "value": v} for k, v in sorted(env.items())],
        "envFrom": [{"configMapRef": {"name": k8s.env_config_map}}] if k8s.env_config_map else [],
        "ports": [{"name": "rendezvous", "containerPort": training.master_port}],
        "resources": {"requests": {GPU_RESOURCE: gpus}, "limits": {GPU_RESOURCE: gpus}},
        "securityContext": CONTAINER_SECURITY,
        "volumeMounts": [
            {"name": "data", "mountPath": k8s.data_mount}, {"name": "shm", "mountPath": "/dev/shm"},
            {"name": "tmp", "mountPath": "/tmp"}, {"name": "home", "mountPath": "/home/kiln"},
        ],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": meta,
        "spec": {
            "completionMode": "Indexed",
            "completions": training.nodes,
            "parallelism": training.nodes,
            # One failed node fails the stage: the others cannot go on without it, and the retried
            # run resumes every node from the last checkpoint.
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 24 * 3600,  # left behind only if the step pod itself died
            "template": {
                "metadata": {"labels": own},
                "spec": {
                    "subdomain": name,
                    "restartPolicy": "Never",
                    "serviceAccountName": k8s.service_account,
                    "automountServiceAccountToken": False,  # the trainers never call the API
                    "securityContext": POD_SECURITY,
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": k8s.data_claim}},
                        {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": k8s.shared_memory}},
                        {"name": "tmp", "emptyDir": {}},
                        {"name": "home", "emptyDir": {}},
                    ],
                },
            },
        },
    }
    return [service, job]

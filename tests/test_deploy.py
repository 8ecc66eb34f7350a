"""The Kubernetes deployment under deploy/: schema-valid manifests, a loadable instance config with
Postgres storage and the Kubernetes run launcher, and the k8s executor with GPU requests."""

import json
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes" / "kiln.yaml"
K8S_VERSION = "1.30.0"


@pytest.fixture(scope="module")
def docs() -> list[dict]:
    return [d for d in yaml.safe_load_all(MANIFESTS.read_text()) if d]


def test_every_manifest_is_valid_for_kubernetes(docs):
    kinds = [d["kind"] for d in docs]
    assert {"Deployment", "Service", "ConfigMap", "PersistentVolumeClaim", "Role", "RoleBinding", "ServiceAccount"} <= set(kinds)
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)  # raises on any schema error


def test_the_instance_uses_postgres_from_env_and_launches_kubernetes_jobs(docs, tmp_path, monkeypatch):
    from dagster._core.instance.config import dagster_instance_config
    from dagster_k8s import K8sRunLauncher
    from dagster_postgres import DagsterPostgresStorage

    config_map = next(d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "kiln-instance")
    (tmp_path / "dagster.yaml").write_text(config_map["data"]["dagster.yaml"])
    for var in ("DAGSTER_PG_HOST", "DAGSTER_PG_DB", "DAGSTER_PG_USERNAME", "DAGSTER_PG_PASSWORD"):
        monkeypatch.setenv(var, "x")
    config, _ = dagster_instance_config(str(tmp_path))  # validates against Dagster's instance schema
    assert config["storage"]["postgres"]["postgres_db"]["password"] == {"env": "DAGSTER_PG_PASSWORD"}
    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    from dagster._config import process_config

    assert process_config(K8sRunLauncher.config_type(), launcher["config"]).success
    assert process_config(DagsterPostgresStorage.config_type(), config["storage"]["postgres"]).success
    assert config["concurrency"]["pools"]["default_limit"] >= 1  # 0 would hold every GPU step forever
    # The cluster queues and retries runs as a machine does: one lifecycle run and one run per batch
    # at a time, a run that died retried and a failed step not (its pool and monitoring differ).
    local, _ = dagster_instance_config(str(ROOT))
    assert config["concurrency"]["runs"] == local["concurrency"]["runs"] and config["run_retries"] == local["run_retries"]


def test_every_pod_mounts_what_it_uses(docs):
    claims = {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}
    maps = {d["metadata"]["name"] for d in docs if d["kind"] == "ConfigMap"}
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in pod["volumes"]}
        for container in pod["containers"]:
            assert {m["name"] for m in container["volumeMounts"]} <= set(volumes)
            assert all(e["configMapRef"]["name"] in maps for e in container["envFrom"] if "configMapRef" in e)
        for v in volumes.values():
            assert v.get("persistentVolumeClaim", {}).get("claimName", next(iter(claims))) in claims
            assert v.get("configMap", {}).get("name", next(iter(maps))) in maps


def test_the_k8s_executor_runs_gpu_steps_with_a_gpu(tmp_path):
    from dagster_k8s import k8s_job_executor

    from pipelines.definitions import build_definitions
    from assets.resources import Kiln

    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)), executor_name="k8s")
    for name in ("retraining", "cleaning"):  # a batch's cleaning is a run of its own, its steps pods
        assert defs.resolve_job_def(name).executor_def is k8s_job_executor
    for key in ("pretrain_stage_1", "cleaned_batch"):
        op = defs.resolve_assets_def(key).op
        assert json.loads(op.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"] == {"nvidia.com/gpu": "1"}
    with pytest.raises(ValueError, match="KILN_EXECUTOR"):
        build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)), executor_name="ray")


def test_a_stage_of_2_nodes_x_4_gpus_is_a_valid_indexed_job_meeting_at_one_rendezvous():
    from training.config import KubernetesConfig, TrainingConfig
    from training.pretrain.cluster import JOB_LABEL, job_name, rendezvous_host, stage_objects
    from training.pretrain.launch import check_launch, launch_command

    cfg = TrainingConfig(nodes=2, gpus_per_node=4, master_port=29400)
    check_launch(cfg, gpus=4, kubernetes=True)
    name = job_name(3, "0b5e9c1a-77f2-4d0e-9a51-3f1d2c4b5a69")
    spec = Path("/data/pretrain_stage_3/checkpoints/spec.json")
    command = launch_command(spec, cfg, gpus=4, run_id=name, master_addr=rendezvous_host(name))
    service, job = stage_objects(name, command, {"DAGSTER_PIPES_CONTEXT": "x"}, cfg, KubernetesConfig(), "kiln:1", "ml", str(spec.parent))
    for obj in (service, job):
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
    pod = job["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert job["spec"]["completionMode"] == "Indexed" and job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    assert container["resources"]["limits"] == container["resources"]["requests"] == {"nvidia.com/gpu": "4"}
    assert "--nproc_per_node=4" in command and "--nnodes=2" in command
    # One rendezvous: every pod runs the same command, naming the first pod through the headless Service.
    assert f"--rdzv_endpoint={name}-0.{name}:29400" in container["command"] and f"--rdzv_id={name}" in command
    assert pod["subdomain"] == service["metadata"]["name"] == name and service["spec"]["clusterIP"] == "None"
    assert service["spec"]["selector"] == {JOB_LABEL: name} and job["spec"]["template"]["metadata"]["labels"][JOB_LABEL] == name
    assert service["spec"]["publishNotReadyAddresses"] and service["spec"]["ports"][0]["port"] == 29400
    assert len(f"{name}-10") <= 63  # a pod's hostname is a DNS label
    # Every node sees the data where the step does, and shares memory for NCCL.
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(spec).startswith(mounts["data"]) and mounts["shm"] == "/dev/shm"
    assert {"name": "DAGSTER_PIPES_CONTEXT", "value": "x"} in container["env"]


@pytest.mark.parametrize(("gpus_per_node", "requested"), [(None, "1"), (4, "4")])
def test_a_one_node_stage_requests_its_gpus_and_holds_that_many_pool_slots(tmp_path, monkeypatch, gpus_per_node, requested):
    from dataclasses import replace

    from assets.resources import Kiln
    from pipelines.definitions import build_definitions
    from training import presets

    config = replace(presets.tiny(), training=replace(presets.tiny().training, gpus_per_node=gpus_per_node))
    monkeypatch.setattr(Kiln, "config", property(lambda self: config))
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)), executor_name="k8s")
    limits = lambda key: json.loads(defs.resolve_assets_def(key).op.tags["dagster-k8s/config"])["container_config"]["resources"]["limits"]  # noqa: E731
    assert limits("pretrain_stage_1") == {"nvidia.com/gpu": requested}
    assert limits("cleaned_batch") == {"nvidia.com/gpu": "1"}


def test_the_step_pods_account_may_create_and_delete_what_a_multi_node_stage_needs(docs):
    """The calls assets/kubernetes.py makes, against the Role bound to the pods' service account."""
    [role] = [d for d in docs if d["kind"] == "Role"]
    [binding] = [d for d in docs if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    allowed = {(group, resource, verb) for rule in role["rules"] for group in rule["apiGroups"]
               for resource in rule["resources"] for verb in rule["verbs"]}
    needed = {("batch", "jobs", "create"), ("batch", "jobs", "delete"), ("batch", "jobs/status", "get"),
              ("", "services", "create"), ("", "services", "delete"), ("", "pods", "list"), ("", "pods/log", "get")}
    assert needed <= allowed, needed - allowed
    from training.config import KubernetesConfig

    assert KubernetesConfig().service_account in {s["name"] for s in binding["subjects"]}
    assert KubernetesConfig().data_claim in {d["metadata"]["name"] for d in docs if d["kind"] == "PersistentVolumeClaim"}

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
    assert config["concurrency"]["pools"]["default_limit"] >= 1 and config["run_retries"]["enabled"]


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

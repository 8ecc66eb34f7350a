"""The Kubernetes deployment under deploy/: schema-valid manifests, a loadable instance config with
Postgres storage and the Kubernetes run launcher, the k8s executor with GPU requests; every pod, those
Dagster and kiln create at run time included, locked down and passed by checkov's policies; the image
built from the Makefile's lock and llama.cpp flags."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
MANIFESTS = ROOT / "deploy" / "kubernetes" / "kiln.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
CHECKOV = ROOT / ".venv-tools" / "bin" / "checkov"
"""checkov from its own venv (`make .venv-tools/bin/.installed`, which `make test` runs first): its pins
conflict with the project's."""
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


# --- Who runs what: the pods' security settings and the Role ------------------------------------------

SECURITY_CHECKS = {
    "CKV_K8S_20": "no privilege escalation",
    "CKV_K8S_22": "read-only root filesystem",
    "CKV_K8S_23": "not root",
    "CKV_K8S_28": "no NET_RAW",
    "CKV_K8S_31": "seccomp RuntimeDefault",
    "CKV_K8S_37": "capabilities dropped",
    "CKV_K8S_40": "a high uid",
}
"""The checks every workload (the Deployments, and the Jobs of runs, steps and a stage's nodes) must pass."""
RUN_TIME_EXCEPTIONS = {
    "CKV_K8S_10": "a step's CPU depends on the preset and the batch; GPU steps request their GPUs",
    "CKV_K8S_11": "as CKV_K8S_10",
    "CKV_K8S_12": "a step's memory depends on the preset and the batch",
    "CKV_K8S_13": "as CKV_K8S_12",
    "CKV_K8S_38": "a run pod launches its steps' Jobs, a stage's step pod its nodes' Job, through the API",
    "CKV_K8S_21": "Dagster and kiln set the namespace when they create the Job",
}
"""What the Jobs made at run time may fail, and why: they are not written by hand in deploy/."""


def _pods(docs):
    for deployment in (d for d in docs if d["kind"] == "Deployment"):
        yield deployment["metadata"]["name"], deployment["spec"]["template"]["spec"]


def test_every_pod_runs_unprivileged_on_a_read_only_root_with_somewhere_to_write(docs):
    from training.pretrain.cluster import CONTAINER_SECURITY, POD_SECURITY

    launcher = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "kiln-instance")["data"]["dagster.yaml"])["run_launcher"]["config"]
    for name, pod in _pods(docs):
        assert pod["securityContext"] == POD_SECURITY, name  # the nodes' pods run as these do
        for container in pod["containers"]:
            assert container["securityContext"] == CONTAINER_SECURITY, name
            mounts = {m["mountPath"] for m in container["volumeMounts"]}
            assert {"/tmp", "/home/kiln"} <= mounts, name
    # Run and step pods: the run launcher's settings, the same ones.
    assert launcher["security_context"] == CONTAINER_SECURITY
    assert launcher["run_k8s_config"]["pod_spec_config"]["security_context"] == POD_SECURITY
    assert {"/tmp", "/home/kiln", "/data"} <= {m["mountPath"] for m in launcher["volume_mounts"]}
    dockerfile = DOCKERFILE.read_text()
    assert f"USER {POD_SECURITY['runAsUser']}:{POD_SECURITY['runAsGroup']}" in dockerfile
    assert f"--uid {POD_SECURITY['runAsUser']} " in dockerfile and "HOME=/home/kiln" in dockerfile


def test_the_pods_read_only_kilns_own_secret(docs):
    [role] = [d for d in docs if d["kind"] == "Role"]
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"] or "*" in r["resources"]]
    used = {e["secretRef"]["name"] for _, pod in _pods(docs) for c in pod["containers"] for e in c.get("envFrom", ()) if "secretRef" in e}
    assert used == {"kiln-postgres"}
    for rule in secret_rules:
        assert rule["resources"] == ["secrets"] and rule["verbs"] == ["get"], rule
        assert set(rule.get("resourceNames", ())) == used, "every Secret of the namespace is readable"
    for rule in role["rules"]:  # no other rule reaches ConfigMaps or Secrets by kind
        if "configmaps" in rule["resources"]:
            assert rule.get("resourceNames"), rule


def _run_time_jobs(docs, out: Path) -> list[Path]:
    """The Jobs created at run time, as the API receives them: a run's pod and a GPU step's pod (dagster-k8s,
    from the instance's run launcher settings and the step's own tags), a 2-node stage's Job and Service
    (kiln)."""
    import kubernetes

    from dagster import DagsterRun
    from dagster._config import process_config
    from dagster_k8s import K8sRunLauncher
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import construct_dagster_k8s_job, get_user_defined_k8s_config

    from assets.gpus import gpu_step
    from training.config import KubernetesConfig, TrainingConfig
    from training.pretrain.cluster import stage_objects

    instance = yaml.safe_load(next(d for d in docs if d["metadata"]["name"] == "kiln-instance")["data"]["dagster.yaml"])
    kubeconfig = out / "kubeconfig"  # the launcher loads one; nothing is sent anywhere
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "c", "users": [{"name": "u", "user": {}}],
        "clusters": [{"name": "c", "cluster": {"server": "https://127.0.0.1:1"}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "u"}}],
    }))
    config = process_config(K8sRunLauncher.config_type(), instance["run_launcher"]["config"] | {"load_incluster_config": False, "kubeconfig_file": str(kubeconfig)})
    assert config.success, config.errors
    launcher = K8sRunLauncher.from_config_value(None, config.value)
    run = DagsterRun(job_name="retraining", run_id="0b5e9c1a-77f2-4d0e-9a51-3f1d2c4b5a69")
    # As K8sRunLauncher.launch_run and the k8s_job_executor's step handler build them.
    run_context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    step_tags = {k: v if isinstance(v, str) else json.dumps(v) for k, v in gpu_step(1)["op_tags"].items()}  # as Dagster stores them
    step_context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=False).merge(
        K8sContainerContext(run_k8s_config=get_user_defined_k8s_config(step_tags)))
    objects = []
    for name, context, component in (("dagster-run-x", run_context, "run_worker"), ("dagster-step-x", step_context, "step_worker")):
        job = construct_dagster_k8s_job(context.get_k8s_job_config(None, launcher), ["dagster", "api", "execute_run"], name,
                                        user_defined_k8s_config=context.run_k8s_config, pod_name=name, component=component)
        objects.append(kubernetes.client.ApiClient().sanitize_for_serialization(job))
    image = instance["run_launcher"]["config"].get("job_image", "ghcr.io/example/kiln:0.1.0")
    objects += stage_objects("kiln-stage-3-0b5e9c1a77f2", ["torchrun"], {}, TrainingConfig(nodes=2, gpus_per_node=4), KubernetesConfig(), image, "kiln", "/data/x")
    paths = []
    for i, obj in enumerate(objects):
        obj["metadata"]["name"] += f"-{i}"
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        paths.append(out / f"run-time-{i}.yaml")
        paths[-1].write_text(yaml.safe_dump(obj))
    return paths


def _checkov() -> Path:
    if not os.access(CHECKOV, os.X_OK):
        if os.environ.get("CI") == "true":
            pytest.fail(f"{CHECKOV} is missing: `make .venv-tools/bin/.installed` installs it (`make test` does)")
        pytest.skip("checkov is not installed here: make .venv-tools/bin/.installed")
    return CHECKOV


@pytest.mark.slow  # checkov's start-up and pip's: several seconds
def test_checkov_passes_the_manifests_the_image_and_every_pod_made_at_run_time(docs, tmp_path):
    """checkov's Kubernetes and Dockerfile policies, offline (--skip-download), with deploy/checkov.yaml's
    documented skips; the resources' own `checkov.io/skip` annotations say why where one is skipped."""
    checkov = _checkov()
    generated = _run_time_jobs(docs, tmp_path)
    files = [MANIFESTS, DOCKERFILE, *generated]
    result = subprocess.run(
        [str(checkov), "--framework", "kubernetes", "dockerfile", "--skip-download", "--config-file", str(ROOT / "deploy" / "checkov.yaml"),
         "--output", "json", *(arg for f in files for arg in ("--file", str(f)))],
        capture_output=True, text=True, timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)},
    )
    assert result.returncode in (0, 1), result.stderr[-2000:]
    reports = {r["check_type"]: r for r in json.loads(result.stdout)}
    assert set(reports) == {"kubernetes", "dockerfile"}
    failed = [c for r in reports.values() for c in r["results"]["failed_checks"]]
    by_hand = [f"{c['check_id']} {c['resource']}: {c['check_name']}" for c in failed if not c["file_path"].startswith(str(tmp_path))
               and "/run-time-" not in c["file_path"]]
    assert not by_hand, "\n".join(by_hand)
    at_run_time = {c["check_id"] for c in failed} - set(RUN_TIME_EXCEPTIONS)
    assert not at_run_time, [f"{c['check_id']} {c['resource']}" for c in failed if c["check_id"] in at_run_time]
    assert all(r["summary"]["parsing_errors"] == 0 for r in reports.values())
    passed = {(c["resource"], c["check_id"]) for c in reports["kubernetes"]["results"]["passed_checks"]}
    workloads = {c["resource"] for c in reports["kubernetes"]["results"]["passed_checks"] if c["resource"].split(".")[0] in ("Deployment", "Job")}
    assert len(workloads) == 3 + 3  # the three Deployments; a run's, a step's and a stage's Jobs
    missing = [(w, check) for w in sorted(workloads) for check in SECURITY_CHECKS if (w, check) not in passed]
    assert not missing, missing
    assert any(c["check_id"] == "CKV_DOCKER_3" for c in reports["dockerfile"]["results"]["passed_checks"])  # a user of its own


# --- The image ----------------------------------------------------------------------------------------

def _run_steps() -> list[str]:
    """The shell of every RUN of deploy/Dockerfile, continuation lines joined."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    return [m.group(1) for m in re.finditer(r"(?m)^RUN\s+(.*)$", text)]


def _pip_installs() -> list[list[str]]:
    """The arguments of every `pip install` in the RUN steps."""
    return [shlex.split(part)[2:] if shlex.split(part)[0] == "pip" else shlex.split(part)[shlex.split(part).index("pip") + 2:]
            for run in _run_steps() for part in run.split("&&") if re.search(r"\bpip install\b", part)]


def test_the_image_starts_from_cuda_devel_with_the_locked_python_and_torch():
    base = re.search(r"(?m)^FROM\s+(\S+)", DOCKERFILE.read_text()).group(1)
    assert re.fullmatch(r"nvidia/cuda:13\.0\.\d+-devel-ubuntu22\.04", base), base  # nvcc for DeepSpeed's JIT ops
    lock = (ROOT / "requirements.lock").read_text()
    assert re.search(r"(?m)^torch==2\.13\.0$", lock)
    assert any(run.startswith("python3.11 -m venv") for run in _run_steps())  # the lock is resolved for 3.11
    assert "--python-version 3.11" in (ROOT / "Makefile").read_text()


def test_the_build_context_holds_what_the_image_copies_and_nothing_else():
    """.dockerignore lets in exactly the COPY sources (not the venvs, data or .git: gigabytes)."""
    copied = {src.rstrip("/") for line in re.findall(r"(?m)^COPY\s+(.+)$", DOCKERFILE.read_text()) for src in line.split()[:-1]}
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "*" in ignore and {line[1:].rstrip("/") for line in ignore if line.startswith("!")} == copied


def test_the_image_compiles_llama_cpp_with_the_makefiles_flags():
    """The Dockerfile reads LLAMA_CMAKE_ARGS from the Makefile: run that command here and compare it with
    what make itself holds."""
    [command] = [m.group(1) for run in _run_steps() for m in [re.search(r'CMAKE_ARGS="\$\((.*?)\)"\s', run)] if m]
    flags = subprocess.run(["bash", "-c", command], cwd=ROOT, capture_output=True, text=True, check=True, timeout=30).stdout.split()
    database = subprocess.run(["make", "-pnq"], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout
    [makefile] = re.findall(r"(?m)^LLAMA_CMAKE_ARGS :?= (.*)$", database)
    assert flags == makefile.split() and "-DGGML_NATIVE=OFF" in flags


@pytest.mark.slow  # four pip resolutions: several seconds
def test_every_pip_step_of_the_image_installs_what_requirements_lock_pins(tmp_path):
    """Each `pip install` of the Dockerfile, run here as a dry run without an index in the venv that
    `make` built from the same lock, in a folder holding what the image's first COPY holds: every one is
    constrained by the lock, and none would install anything but kiln itself (a pin or an extra the lock
    does not have fails the resolution)."""
    steps = _pip_installs()
    assert len(steps) >= 3
    lock = {line.split("==")[0].lower(): line for line in (ROOT / "requirements.lock").read_text().splitlines() if "==" in line and not line.startswith(" ")}
    runs = []
    for i, args in enumerate(steps):
        assert any(args[j:j + 2] == ["-c", "requirements.lock"] for j in range(len(args))), args
        for pin in (a for a in args if "==" in a):
            assert lock.get(pin.split("==")[0].lower()) == pin, f"{pin} is not the lock's"
        folder = tmp_path / str(i)
        folder.mkdir()
        for name in ("Makefile", "pyproject.toml", "requirements.lock", "README.md"):
            shutil.copy(ROOT / name, folder / name)
        runs.append((args, folder, subprocess.Popen(  # side by side: each is mostly pip starting up
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index", "--no-build-isolation", "--quiet",
             "--report", str(folder / "report.json"), *args],
            cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            env={**os.environ, "PIP_CONFIG_FILE": os.devnull},
        )))
    for args, folder, process in runs:
        output, _ = process.communicate(timeout=120)
        assert process.returncode == 0, (args, output[-2000:])
        installs = {item["metadata"]["name"] for item in json.loads((folder / "report.json").read_text())["install"]}
        assert installs <= {"kiln"}, (args, installs)

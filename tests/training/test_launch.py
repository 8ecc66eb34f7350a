"""The launch commands of one node, several nodes by rendezvous, and a DeepSpeed hostfile."""

import json
import sys
from pathlib import Path

import pytest

from training.config import TrainingConfig
from training.pretrain.launch import check_launch, launch_command, launch_env, planned_gpus, ranks_per_node, world_size

SPEC = Path("/data/checkpoints/stage_03/spec.json")


@pytest.mark.parametrize(
    ("cfg", "gpus", "per_node", "world"),
    [
        (TrainingConfig(), 0, 2, 2),  # CPU: cpu_ranks
        (TrainingConfig(gpus_per_node=4), 0, 2, 2),  # a GPU preset on a machine without one still runs, on the CPU
        (TrainingConfig(), 8, 8, 8),  # one rank per GPU the node shows
        (TrainingConfig(gpus_per_node=4), 8, 4, 4),  # four of the eight
        (TrainingConfig(nodes=4, hostfile="h"), 8, 8, 32),
        (TrainingConfig(nodes=2, gpus_per_node=4), 4, 4, 8),
    ],
)
def test_world_size(cfg, gpus, per_node, world):
    assert ranks_per_node(cfg, gpus) == per_node and world_size(cfg, gpus) == world


@pytest.mark.parametrize(
    ("kubernetes", "visible", "gpus_per_node", "planned"),
    [(False, 0, None, 0), (False, 8, 4, 8), (True, 0, 4, 4), (True, 0, None, 1)],
)
def test_planned_gpus_are_the_pods_request_on_kubernetes_and_the_machines_elsewhere(kubernetes, visible, gpus_per_node, planned):
    assert planned_gpus(TrainingConfig(gpus_per_node=gpus_per_node), kubernetes, visible) == planned


@pytest.fixture
def hostfile(tmp_path):
    path = tmp_path / "hostfile"
    path.write_text("node-0 slots=8\nnode-1 slots=8\n")
    return str(path)


@pytest.mark.parametrize(
    ("settings", "gpus", "kubernetes", "message"),
    [
        ({"nodes": 2}, 8, False, r"nodes=2, but nothing would start the other 1 node\(s\): run kiln on Kubernetes"),
        ({"nodes": 2, "hostfile": "HOSTFILE"}, 8, True, "remove training.hostfile"),
        ({"nodes": 2, "hostfile": "/nonexistent/hostfile"}, 8, False, "hostfile /nonexistent/hostfile does not exist"),
        ({"zero_stage": 3, "gradient_compression": True}, 0, False, "turn gradient_compression off, or train on GPUs"),
        ({"gpus_per_node": 8}, 4, False, "gpus_per_node=8, but this node shows 4 GPU"),
    ],
)
def test_a_stage_nothing_could_start_is_refused_with_what_to_change(settings, gpus, kubernetes, message, hostfile):
    cfg = TrainingConfig(**{k: hostfile if v == "HOSTFILE" else v for k, v in settings.items()})
    with pytest.raises(ValueError, match=message):
        check_launch(cfg, gpus, kubernetes)


@pytest.mark.parametrize(
    ("settings", "gpus", "kubernetes"),
    [
        ({}, 0, False),
        ({"nodes": 2, "gpus_per_node": 4}, 4, True),
        ({"nodes": 2, "hostfile": "HOSTFILE"}, 8, False),
        ({"nodes": 2, "gpus_per_node": 4, "zero_stage": 3, "gradient_compression": True}, 4, True),
    ],
)
def test_stages_something_starts_pass(settings, gpus, kubernetes, hostfile):
    check_launch(TrainingConfig(**{k: hostfile if v == "HOSTFILE" else v for k, v in settings.items()}), gpus, kubernetes)


def test_the_definitions_refuse_to_load_a_stage_nothing_could_start(tmp_path, monkeypatch):
    """Configuration time is when the code location loads: `dagster dev` and `dagster asset
    materialize` say what to change before any run starts."""
    from dataclasses import replace

    from assets.resources import Kiln
    from pipelines.definitions import build_definitions
    from training import presets

    two_nodes = replace(presets.tiny(), training=replace(presets.tiny().training, nodes=2))
    monkeypatch.setattr(Kiln, "config", property(lambda self: two_nodes))
    kiln = Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path))
    with pytest.raises(ValueError, match="nothing would start the other 1 node"):
        build_definitions(kiln)
    defs = build_definitions(kiln, executor_name="k8s")  # on Kubernetes kiln starts the nodes itself
    tags = defs.resolve_assets_def("pretrain_stage_1").op.tags["dagster-k8s/config"]
    assert json.loads(tags)["container_config"]["resources"] == {}  # the step follows; its Job's pods hold the GPUs


def test_one_node_uses_torchrun_standalone():
    assert launch_command(SPEC, TrainingConfig(), gpus=0) == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
        "-m", "training.pretrain.train", "--spec", str(SPEC),
    ]


def test_several_nodes_meet_at_a_c10d_rendezvous():
    cfg = TrainingConfig(nodes=4, master_addr="node-0.kiln", master_port=29400)
    assert launch_command(SPEC, cfg, gpus=8, run_id="ab12") == [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=8", "--nnodes=4", "--rdzv_backend=c10d",
        "--rdzv_endpoint=node-0.kiln:29400", "--rdzv_id=ab12", "-m", "training.pretrain.train", "--spec", str(SPEC),
    ]


def test_a_hostfile_uses_the_deepspeed_launcher(tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("node-0 slots=8\nnode-1 slots=8\n")
    cfg = TrainingConfig(nodes=2, hostfile=str(hostfile), master_addr="node-0")
    command = launch_command(SPEC, cfg, gpus=8)
    assert command[:3] == [sys.executable, "-m", "deepspeed.launcher.runner"]
    assert command[3:] == [
        f"--hostfile={hostfile}", "--num_nodes=2", "--num_gpus=8", "--master_addr=node-0", "--master_port=29500",
        "--module", "training.pretrain.train", "--spec", str(SPEC),
    ]
    # The runner accepts these arguments (parsed by DeepSpeed itself, nothing launched).
    from deepspeed.launcher.runner import parse_args

    args = parse_args(command[3:])
    assert args.num_nodes == 2 and args.num_gpus == 8 and args.module and args.user_script == "training.pretrain.train"


def test_cpu_ranks_use_deepspeeds_cpu_accelerator_and_share_the_cores():
    env = launch_env(ranks=2, gpus=0)
    assert env["DS_ACCELERATOR"] == "cpu" and int(env["OMP_NUM_THREADS"]) >= 1
    assert "DS_ACCELERATOR" not in launch_env(ranks=8, gpus=8)

"""The launch commands of one node, several nodes by rendezvous, and a DeepSpeed hostfile."""

import sys
from pathlib import Path

import pytest

from training.config import TrainingConfig
from training.pretrain.launch import launch_command, launch_env, ranks_per_node, world_size

SPEC = Path("/data/checkpoints/stage_03/spec.json")


@pytest.mark.parametrize(
    ("cfg", "gpus", "per_node", "world"),
    [
        (TrainingConfig(), 0, 2, 2),  # CPU: cpu_ranks
        (TrainingConfig(), 8, 8, 8),  # one rank per GPU
        (TrainingConfig(ranks=4), 8, 4, 4),
        (TrainingConfig(nodes=4), 8, 8, 32),
    ],
)
def test_world_size(cfg, gpus, per_node, world):
    assert ranks_per_node(cfg, gpus) == per_node and world_size(cfg, gpus) == world


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

"""The command line and environment that launch one stage's ranks, and the checks of a stage's
configuration against where it will run.

- One node: `torchrun --standalone`, one rank per GPU over NCCL (`gpus_per_node`), or `cpu_ranks`
  ranks over gloo with DeepSpeed's CPU accelerator.
- Several nodes, no hostfile: torchrun with a c10d rendezvous; the same command runs on every node
  (on Kubernetes, the pods of the indexed Job `training.pretrain.cluster` describes).
- A hostfile: DeepSpeed's launcher, run once, starts the ranks on every host over ssh/pdsh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from training.config import TrainingConfig


def ranks_per_node(cfg: TrainingConfig, gpus: int) -> int:
    """Ranks one node starts: `gpus_per_node` (None: every one of the node's `gpus`), one per GPU, or
    `cpu_ranks` on a node without a GPU."""
    if gpus == 0:
        return cfg.cpu_ranks
    if cfg.gpus_per_node is None:
        return gpus
    if cfg.gpus_per_node > gpus:
        raise ValueError(
            f"gpus_per_node={cfg.gpus_per_node}, but this node shows {gpus} GPU(s): lower gpus_per_node, or run "
            f"the stage where {cfg.gpus_per_node} GPUs are (on Kubernetes its pod requests them)"
        )
    return cfg.gpus_per_node


def world_size(cfg: TrainingConfig, gpus: int) -> int:
    return cfg.nodes * ranks_per_node(cfg, gpus)


def planned_gpus(cfg: TrainingConfig, kubernetes: bool, visible: int) -> int:
    """GPUs each node of a stage will have: on Kubernetes the ones its pod requests (`gpus_per_node`,
    else 1), elsewhere the `visible` ones of this machine."""
    return (cfg.gpus_per_node or 1) if kubernetes else visible


def check_launch(cfg: TrainingConfig, gpus: int, kubernetes: bool) -> None:
    """Raises ValueError, saying what to change, when nothing could start the stage as configured on
    nodes of `gpus` GPUs each (`planned_gpus`), under the Kubernetes executor or not. Called when the
    definitions load and again by the stage before it launches anything."""
    if cfg.nodes > 1 and kubernetes and cfg.hostfile:
        raise ValueError(
            f"nodes={cfg.nodes} with a hostfile under KILN_EXECUTOR=k8s: kiln starts the nodes itself there "
            "(an indexed Job), not DeepSpeed's ssh launcher; remove training.hostfile"
        )
    if cfg.nodes > 1 and not kubernetes and not cfg.hostfile:
        raise ValueError(
            f"nodes={cfg.nodes}, but nothing would start the other {cfg.nodes - 1} node(s): run kiln on Kubernetes "
            "(KILN_EXECUTOR=k8s starts each stage as an indexed Job of `nodes` pods), give DeepSpeed's launcher "
            "a hostfile (training.hostfile, one 'host slots=N' line per node, reachable over ssh), or set nodes=1"
        )
    if cfg.hostfile and not Path(cfg.hostfile).is_file():
        raise ValueError(f"training.hostfile {cfg.hostfile} does not exist")
    if cfg.gradient_compression and gpus == 0:
        raise ValueError(
            "gradient_compression (ZeRO++) quantizes with CUDA kernels and communicates over NCCL, but the stage "
            "would run on CPU ranks over gloo: turn gradient_compression off, or train on GPUs"
        )
    ranks_per_node(cfg, gpus)


def launch_command(
    spec_path: Path, cfg: TrainingConfig, gpus: int, run_id: str = "kiln", master_addr: str | None = None
) -> list[str]:
    """`master_addr` overrides the config's rendezvous host (the first pod of a Kubernetes Job)."""
    per_node = ranks_per_node(cfg, gpus)
    master = master_addr or cfg.master_addr
    trainer = ["training.pretrain.train", "--spec", str(spec_path)]
    if cfg.hostfile:
        return [
            sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={cfg.hostfile}",
            f"--num_nodes={cfg.nodes}", f"--num_gpus={per_node}", f"--master_addr={master}",
            f"--master_port={cfg.master_port}", "--module", *trainer,
        ]
    # `python -m torch.distributed.run` is torchrun from this interpreter's environment.
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}"]
    if cfg.nodes == 1:
        # --standalone picks a free rendezvous port: concurrent stages or test runs never collide.
        return [*torchrun, "--standalone", "-m", *trainer]
    return [
        *torchrun, f"--nnodes={cfg.nodes}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint={master}:{cfg.master_port}", f"--rdzv_id={run_id}", "-m", *trainer,
    ]


def launch_env(ranks: int, gpus: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    if gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env

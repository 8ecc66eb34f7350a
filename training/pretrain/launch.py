"""The command line and environment that launch one stage's ranks.

- One node: `torchrun --standalone`, one rank per GPU over NCCL, or `cpu_ranks` ranks over gloo with
  DeepSpeed's CPU accelerator.
- Several nodes, no hostfile: torchrun with a c10d rendezvous; the same command runs on every node
  (a Kubernetes indexed Job or PyTorchJob, a Slurm step).
- A hostfile: DeepSpeed's launcher, run once, starts the ranks on every host over ssh/pdsh.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from training.config import TrainingConfig


def ranks_per_node(cfg: TrainingConfig, gpus: int) -> int:
    return cfg.ranks or (gpus if gpus > 0 else cfg.cpu_ranks)


def world_size(cfg: TrainingConfig, gpus: int) -> int:
    return cfg.nodes * ranks_per_node(cfg, gpus)


def launch_command(spec_path: Path, cfg: TrainingConfig, gpus: int, run_id: str = "kiln") -> list[str]:
    per_node = ranks_per_node(cfg, gpus)
    trainer = ["training.pretrain.train", "--spec", str(spec_path)]
    if cfg.hostfile:
        return [
            sys.executable, "-m", "deepspeed.launcher.runner", f"--hostfile={cfg.hostfile}",
            f"--num_nodes={cfg.nodes}", f"--num_gpus={per_node}", f"--master_addr={cfg.master_addr}",
            f"--master_port={cfg.master_port}", "--module", *trainer,
        ]
    # `python -m torch.distributed.run` is torchrun from this interpreter's environment.
    torchrun = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={per_node}"]
    if cfg.nodes == 1:
        # --standalone picks a free rendezvous port: concurrent stages or test runs never collide.
        return [*torchrun, "--standalone", "-m", *trainer]
    return [
        *torchrun, f"--nnodes={cfg.nodes}", "--rdzv_backend=c10d",
        f"--rdzv_endpoint={cfg.master_addr}:{cfg.master_port}", f"--rdzv_id={run_id}", "-m", *trainer,
    ]


def launch_env(ranks: int, gpus: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    if gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env

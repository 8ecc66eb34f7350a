"""The command line and environment that launch one stage's ranks: torchrun on one node, one rank per
GPU over NCCL, or `cpu_ranks` ranks over gloo with DeepSpeed's CPU accelerator."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from training.config import TrainingConfig


def world_size(cfg: TrainingConfig, gpus: int) -> int:
    return cfg.ranks or (gpus if gpus > 0 else cfg.cpu_ranks)


def launch_command(spec_path: Path, ranks: int) -> list[str]:
    # `python -m torch.distributed.run` is torchrun from this interpreter's environment; --standalone
    # picks a free rendezvous port, so concurrent stages (or test runs) never collide.
    return [
        sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={ranks}",
        "-m", "training.train", "--spec", str(spec_path),
    ]


def launch_env(ranks: int, gpus: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // ranks))}
    if gpus == 0:
        env["DS_ACCELERATOR"] = "cpu"
    return env

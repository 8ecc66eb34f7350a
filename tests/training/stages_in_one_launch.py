"""Several stage specs trained one after another by the same ranks (one torchrun launch, one process
group), for tests that compare training options: `torchrun ... stages_in_one_launch.py SPEC...`. Each
stage runs as the trainer runs it (`train_stage`); only the process start-up and rendezvous are shared."""

import sys
from pathlib import Path

import torch

from training.pretrain.plan import StageSpec
from training.pretrain.train import train_stage

if __name__ == "__main__":
    for path in sys.argv[1:]:
        train_stage(StageSpec.from_json(Path(path).read_text()))
    torch.distributed.destroy_process_group()

"""The stage plan and the DeepSpeed JSON, both pure functions of the typed `TrainingConfig`.

The plan fixes, before any stage runs, how many optimizer steps every stage takes, so that one
learning-rate schedule spans the whole curriculum: linear warmup over the first 5% of all steps,
then cosine decay to `min_lr_ratio` of the peak at the last step of the last stage. Each stage's
DeepSpeed engine resumes the scheduler's step count from the previous stage's checkpoint, and its
peak is scaled by sqrt(global batch / 256) for the stage's own batch size.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TypeVar

from training.config import TrainingConfig

T = TypeVar("T")

REFERENCE_BATCH = 256
"""Global batch (sequences) at which `TrainingConfig.learning_rate` applies unscaled."""


def per_stage(values: tuple[T, ...], stage: int) -> T:
    """The value of a per-stage tuple for a 1-based stage; the last value repeats."""
    if not values:
        raise ValueError("a per-stage setting needs at least one value")
    return values[min(stage, len(values)) - 1]


@dataclass(frozen=True)
class StagePlan:
    stage: int
    level: int
    sequences: int
    """Packed sequences of `seq_len` tokens in the stage's records."""
    global_batch: int
    micro_batch: int
    grad_accum: int
    steps: int
    first_step: int
    """Optimizer steps taken by all earlier stages: this stage's steps are first_step+1 ... first_step+steps."""
    learning_rate: float
    frozen_layers: tuple[int, ...]


def plan_stages(
    stages: list[tuple[int, int]], seq_len: int, cfg: TrainingConfig, world_size: int
) -> list[StagePlan]:
    """`stages`: (level, tokens) per stage, tokens counted as the packer counts them (every record
    with its begin and end tokens). A stage takes epochs x sequences / global batch steps, at least one,
    at most `max_steps_per_stage`."""
    plans, first = [], 0
    for i, (level, tokens) in enumerate(stages, start=1):
        batch = per_stage(cfg.global_batch, i)
        if batch % (cfg.micro_batch * world_size):
            raise ValueError(
                f"stage {i}: global batch {batch} is not a multiple of micro batch {cfg.micro_batch} x {world_size} ranks"
            )
        sequences = tokens // seq_len
        if sequences == 0:
            raise ValueError(f"stage {i}: {tokens} tokens do not fill one sequence of {seq_len}")
        steps = max(1, int(cfg.epochs_per_stage * sequences) // batch)
        if cfg.max_steps_per_stage is not None:
            steps = min(steps, cfg.max_steps_per_stage)
        plans.append(
            StagePlan(
                stage=i, level=level, sequences=sequences, global_batch=batch, micro_batch=cfg.micro_batch,
                grad_accum=batch // (cfg.micro_batch * world_size), steps=steps, first_step=first,
                learning_rate=cfg.learning_rate * math.sqrt(batch / REFERENCE_BATCH),
                frozen_layers=tuple(per_stage(cfg.frozen_layers, i)),
            )
        )
        first += steps
    return plans


def resolve_precision(cfg: TrainingConfig, cuda: bool) -> str:
    precision = cfg.precision if cfg.precision != "auto" else ("bf16" if cuda else "fp32")
    if precision != "fp32" and not cuda:
        raise ValueError(f"{precision} training needs a GPU; the CPU trains in fp32")
    return precision


def trainer_clips(cfg: TrainingConfig, precision: str) -> bool:
    """Whether the trainer, not DeepSpeed, clips the gradients: under ZeRO-0 without DeepSpeed's
    fp16/bf16 optimizer, where the engine would clip with a Python loop over the parameters and
    discard the norm, which kiln logs; torch's foreach `clip_grad_norm_` does both in a few kernels
    (`training.pretrain.step.forward_backward`). Under ZeRO the gradients are partitioned, and DeepSpeed's
    fp16/bf16 optimizers keep gradients of their own: those clip and report the norm themselves."""
    return cfg.zero_stage == 0 and (precision == "fp32" or (precision == "bf16" and cfg.autocast))


def deepspeed_config(
    cfg: TrainingConfig, plan: StagePlan, total_steps: int, precision: str, cuda: bool, node_ranks: int = 1
) -> dict:
    """The DeepSpeed JSON of one stage; `node_ranks`: the ranks on this node (torchrun's LOCAL_WORLD_SIZE),
    the group ZeRO++ keeps a secondary copy of the weights in."""
    optimizer = {"lr": plan.learning_rate, "betas": list(cfg.betas), "eps": 1e-8, "weight_decay": cfg.weight_decay}
    if not cfg.offload_optimizer:
        # torch's AdamW (fused on a GPU) instead of DeepSpeed's JIT-built FusedAdam, which fails to
        # build for some CUDA arch lists; with offload DeepSpeed's CPU Adam does the step.
        optimizer |= {"torch_adam": True} | ({"fused": True} if cuda else {})
    autocast = precision == "bf16" and cfg.autocast
    zero: dict = {"stage": cfg.zero_stage}
    if cfg.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": cuda}
    if cfg.offload_params:
        zero["offload_param"] = {"device": "cpu", "pin_memory": cuda}
    if cfg.gradient_compression:
        zero |= {"zero_quantized_gradients": True, "zero_quantized_weights": True, "zero_hpz_partition_size": node_ranks}
    return {
        "train_batch_size": plan.global_batch,
        "train_micro_batch_size_per_gpu": plan.micro_batch,
        "gradient_accumulation_steps": plan.grad_accum,
        "gradient_clipping": 0.0 if trainer_clips(cfg, precision) else cfg.grad_clip,
        "optimizer": {"type": "AdamW", "params": optimizer},
        "scheduler": {
            "type": "WarmupCosineLR",
            "params": {
                "total_num_steps": total_steps,
                "warmup_num_steps": max(1, round(cfg.warmup_fraction * total_steps)),
                "warmup_type": "linear",
                "warmup_min_ratio": 0.0,
                "cos_min_ratio": cfg.min_lr_ratio,
            },
        },
        "zero_optimization": zero,
        "torch_autocast": {"enabled": autocast, "dtype": "bfloat16"},
        "bf16": {"enabled": precision == "bf16" and not autocast},
        "fp16": {
            "enabled": precision == "fp16",
            "loss_scale": 0,  # 0: dynamic loss scaling
            "initial_scale_power": 16,
            "loss_scale_window": 1000,
            "hysteresis": 2,
            "min_loss_scale": 1,
        },
        "steps_per_print": 2**31 - 1,  # kiln logs its own metrics
        "wall_clock_breakdown": False,
    }

"""The training step: the DeepSpeed engine around the model and its loss, the micro-batch loader,
and one optimizer step's forward and backward passes. `training/pretrain/train.py` runs stages with these;
`bench/training.py` times the same functions against a plain PyTorch loop.

What makes the step fast on one GPU, each measured as an ablation by `bench/training.py`:
- the model and its chunked cross-entropy (`training/pretrain/loss.py`) compiled as one graph;
- ZeRO stage 0 with bf16 through torch.autocast: torch's fused AdamW updates the fp32 parameters
  in place, with no flat copies to keep (`TrainingConfig.zero_stage`, `.autocast`);
- one rank skips DeepSpeed's gradient all-reduce, which would copy every gradient into a flat
  buffer and back to average it with itself;
- gradients clipped with torch's foreach kernels, and one host sync per step (the loss and the norm
  together), which the NaN guard needs anyway;
- micro-batches read on a background thread into pinned memory and copied asynchronously.
"""

from __future__ import annotations

import logging
import os
import socket
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from training.config import TrainingConfig
from training.pretrain.deepspeed_config import StagePlan, deepspeed_config, trainer_clips
from training.pretrain.loss import CausalLMLoss

PREFETCH = 2
"""Micro-batches read ahead: one being copied while the next is read covers any jitter in reading."""


def micro_batches(data: np.ndarray, plan: StagePlan, rank: int, world: int, start_step: int) -> Iterator[np.ndarray]:
    """The rows of every micro-batch this rank trains on from `start_step` to the stage's end, in
    order. Step s always sees the same rows, so a resumed stage ends where an uninterrupted one does."""
    for step in range(start_step, plan.steps):
        for micro in range(plan.grad_accum):
            first = step * plan.global_batch + (micro * world + rank) * plan.micro_batch
            yield data[np.arange(first, first + plan.micro_batch) % plan.sequences].astype(np.int64)


def prefetch(arrays: Iterator[np.ndarray], device: torch.device) -> Iterator[torch.Tensor]:
    """`arrays` as tensors on `device`, read `PREFETCH` ahead on a background thread. On a GPU they
    are pinned there, so the copy is asynchronous and the GPU never waits on the host; the pinned
    allocator keeps a buffer until the copy from it has finished. Close the iterator (or exhaust it)
    to stop the thread."""
    pin = device.type == "cuda"

    def load() -> torch.Tensor | None:
        rows = next(arrays, None)  # only this one thread advances `arrays`
        if rows is None:
            return None
        host = torch.from_numpy(rows)
        return host.pin_memory() if pin else host

    # Pinning on a thread uses that thread's current GPU: make it this rank's, not GPU 0 (as
    # torch's DataLoader does for its pinning thread).
    setup = {"initializer": torch.cuda.set_device, "initargs": (device,)} if pin else {}
    with ThreadPoolExecutor(1, thread_name_prefix="kiln-prefetch", **setup) as pool:
        pending = deque(pool.submit(load) for _ in range(PREFETCH))
        while (host := pending.popleft().result()) is not None:
            pending.append(pool.submit(load))
            yield host.to(device, non_blocking=True)


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on matrices only: norms (1-D) are not decayed, as in GPT-3 and Llama."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return [
        {"params": [p for p in trainable if p.ndim >= 2], "weight_decay": weight_decay},
        {"params": [p for p in trainable if p.ndim < 2], "weight_decay": 0.0},
    ]


def load_deepspeed_ops(names: Sequence[str]) -> None:
    """Builds (the first time) and loads DeepSpeed's just-in-time C++ ops in this process, before
    DeepSpeed asks for them (it then finds them loaded).

    torch builds such an op under a "baton", an empty `lock` file in its build folder that every
    later process waits on until it is gone. A process killed while it holds one (kill -9 of a stage,
    an OOM, a lost pod) leaves it there, and every later stage on that machine waits forever before its
    first step. Here the ops load under an flock of the extensions folder, which the kernel releases
    when its holder dies: whoever holds it knows that no other kiln process is inside a baton, so a
    baton found then was left by a killed process and is removed."""
    import fcntl

    import deepspeed
    from deepspeed.accelerator import get_accelerator
    from torch.utils.cpp_extension import get_default_build_root

    builders = [b for b in map(get_accelerator().create_op_builder, names)
                if b is not None and deepspeed.ops.__compatible_ops__.get(b.NAME, False)]
    if not builders:
        return
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    root.mkdir(parents=True, exist_ok=True)
    with open(root / "kiln.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for baton in [*root.glob("*/lock"), *root.glob("*/*/lock")]:  # <root>[/pyXY_cpu]/<op>/lock
            logging.getLogger(__name__).warning("removing %s, left by a process killed while it built an op", baton)
            baton.unlink(missing_ok=True)
        for builder in builders:
            builder.load()


def deepspeed_ops(cfg: TrainingConfig, cuda: bool) -> list[str]:
    """The just-in-time ops DeepSpeed will load for a stage: shared-memory collectives on CPU ranks,
    the CPU Adam under optimizer offload, the quantizer of ZeRO++."""
    return (
        ([] if cuda else ["ShareMemCommBuilder"])
        + (["CPUAdamBuilder"] if cfg.offload_optimizer else [])
        + (["QuantizerBuilder"] if cfg.gradient_compression and cuda else [])
    )


def init_one_rank(cuda: bool) -> None:
    """torch.distributed for one rank in this process, as torchrun would describe it to DeepSpeed
    (benchmarks and tests; stages run under torchrun)."""
    if not cuda:
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1"}.items():
        os.environ.setdefault(key, value)  # DeepSpeed's engine reads LOCAL_RANK, also on a group already started
    if torch.distributed.is_initialized():
        return
    if "MASTER_PORT" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            os.environ["MASTER_PORT"] = str(s.getsockname()[1])
    load_deepspeed_ops(deepspeed_ops(TrainingConfig(), cuda))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")


def build_engine(model: torch.nn.Module, cfg: TrainingConfig, plan: StagePlan, total_steps: int, precision: str, cuda: bool):
    """The DeepSpeed engine around `model` (a LlamaForCausalLM) and its loss (`CausalLMLoss`),
    compiled when `cfg.compile` says so. Call after `deepspeed.init_distributed`."""
    import deepspeed

    module = CausalLMLoss(model, cfg.label_smoothing, cfg.loss_chunk_tokens)
    engine, *_ = deepspeed.initialize(
        model=module, model_parameters=param_groups(module, cfg.weight_decay),
        config=deepspeed_config(cfg, plan, total_steps, precision, cuda, int(os.environ.get("LOCAL_WORLD_SIZE", 1))),
    )
    if torch.distributed.get_world_size() == 1 and trainer_clips(cfg, precision):
        # ZeRO-0 on one rank: the all-reduce would copy every gradient into a flat buffer, divide it
        # by one and copy it back. (Only with torch's optimizer on the parameters' own gradients;
        # DeepSpeed's bf16/fp16 optimizers keep theirs elsewhere.)
        engine.enable_backward_allreduce = False
    if cfg.compile if cfg.compile is not None else cuda:
        engine.compile()
    return engine


def forward_backward(engine, batches: Iterator[torch.Tensor], grad_accum: int, clip: float | None) -> tuple[float, float | None]:
    """One optimizer step's forward and backward passes, stopping before the update so that the
    caller can refuse a non-finite loss: the mean loss over its micro-batches and all ranks, and,
    when the trainer clips (`clip`, see `trainer_clips`), the gradient norm before clipping. Both
    are read in one host sync; the caller then calls `engine.step()`."""
    losses = []
    for micro in range(grad_accum):
        loss = engine(next(batches))
        engine.backward(loss)
        losses.append(loss.detach())
        if micro < grad_accum - 1:
            engine.step()  # accumulates; DeepSpeed steps the optimizer only at the boundary
    stats = torch.stack(losses).mean().float()[None]
    world = torch.distributed.get_world_size()
    if world > 1:
        torch.distributed.all_reduce(stats)
        stats /= world
    if clip is not None:
        grads = [p for p in engine.module.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(grads, clip, foreach=True)
        stats = torch.cat([stats, norm.float()[None].to(stats.device)])
    values = stats.tolist()
    return values[0], values[1] if clip is not None else None

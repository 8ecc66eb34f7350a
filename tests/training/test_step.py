"""The training step in this process on one CPU rank: the prefetching loader, the engine's
mixed precision, and who clips the gradients (the trainer under ZeRO-0, DeepSpeed under ZeRO)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from training.config import ModelConfig, TrainingConfig
from training.pretrain.deepspeed_config import StagePlan, trainer_clips
from training.pretrain.model import build_model, llama_config
from training.pretrain.step import build_engine, forward_backward, init_one_rank, micro_batches, prefetch

MODEL = ModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_seq_len=16)
VOCAB = 64
PLAN = StagePlan(
    stage=1, level=1, sequences=24, global_batch=4, micro_batch=2, grad_accum=2, steps=3, first_step=0,
    learning_rate=1e-2, frozen_layers=(),
)
DATA = np.random.default_rng(0).integers(0, VOCAB, (PLAN.sequences, MODEL.max_seq_len))


def test_micro_batches_follow_the_fixed_order_and_resume_mid_stage():
    rows = list(micro_batches(DATA, PLAN, rank=1, world=2, start_step=0))
    assert len(rows) == PLAN.steps * PLAN.grad_accum and rows[0].dtype == np.int64
    # rank 1 of 2, step 0, micro 0: the second micro-batch of the global batch
    np.testing.assert_array_equal(rows[0], DATA[2:4])
    np.testing.assert_array_equal(rows[1], DATA[6:8])  # micro 1: after both ranks' first micro-batches
    resumed = list(micro_batches(DATA, PLAN, rank=1, world=2, start_step=2))
    assert all(np.array_equal(a, b) for a, b in zip(resumed, rows[4:], strict=True))


def _prefetch_threads() -> int:
    return sum(t.name.startswith("kiln-prefetch") for t in threading.enumerate())


def test_prefetch_yields_every_batch_in_order_and_stops_its_thread():
    arrays = list(micro_batches(DATA, PLAN, 0, 1, 0))
    got = list(prefetch(iter(arrays), torch.device("cpu")))
    assert len(got) == len(arrays) and all(torch.equal(t, torch.from_numpy(a)) for t, a in zip(got, arrays, strict=True))
    early = prefetch(iter(arrays), torch.device("cpu"))
    next(early)
    assert _prefetch_threads() == 1
    early.close()  # a stage that stops early (a NaN loss) leaves no thread behind
    assert _prefetch_threads() == 0


@pytest.fixture(scope="module")
def one_rank():
    """One rank for this module's engines; torchrun's variables it sets leave with the module (conftest)."""
    init_one_rank(cuda=False)


def _engine(cfg: TrainingConfig, precision: str = "fp32"):
    torch.manual_seed(0)
    engine = build_engine(build_model(llama_config(MODEL, VOCAB)), cfg, PLAN, 10, precision, cuda=False)
    engine.lr_scheduler.step(1)  # as train.py starts a stage: past the warmup's zero
    return engine


def _train(engine, cfg: TrainingConfig, precision: str = "fp32", steps: int = 2) -> list[tuple[float, float | None]]:
    batches = prefetch(micro_batches(DATA, PLAN, 0, 1, 0), torch.device("cpu"))
    out = []
    for _ in range(steps):
        out.append(forward_backward(engine, batches, PLAN.grad_accum, cfg.grad_clip if trainer_clips(cfg, precision) else None))
        engine.step()
    batches.close()
    return out


@pytest.mark.slow
def test_the_trainer_clips_under_zero0_as_deepspeed_does_under_zero1(one_rank):
    """A clip far below the gradient norm: ZeRO-0 (one rank, no all-reduce, torch's foreach clip)
    reports DeepSpeed's norm and reaches ZeRO-1's weights (DeepSpeed's clip)."""
    cfg = TrainingConfig(grad_clip=1e-3, zero_stage=0, compile=False)
    zero0, zero1 = _engine(cfg), _engine(replace(cfg, zero_stage=1))
    assert not zero0.enable_backward_allreduce and zero1.enable_backward_allreduce
    ours, theirs = _train(zero0, cfg), _train(zero1, replace(cfg, zero_stage=1))
    assert [loss for loss, _ in ours] == pytest.approx([loss for loss, _ in theirs], rel=1e-6)
    assert ours[-1][1] > 100 * cfg.grad_clip  # the norm before clipping, as DeepSpeed reports it
    assert ours[-1][1] == pytest.approx(float(zero1.get_global_grad_norm()), rel=1e-4)
    a, b = zero0.module.state_dict(), zero1.module.state_dict()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    # Adam is nearly blind to a gradient's scale, so check the clip itself: the gradients the
    # optimizer is about to apply have the clip's norm.
    fresh = _engine(cfg)
    batches = prefetch(micro_batches(DATA, PLAN, 0, 1, 0), torch.device("cpu"))
    forward_backward(fresh, batches, PLAN.grad_accum, cfg.grad_clip)
    batches.close()
    grads = [p.grad for p in fresh.module.parameters() if p.grad is not None]
    assert torch.nn.utils.get_total_norm(grads).item() == pytest.approx(cfg.grad_clip, rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("zero_stage", [0, 1])
def test_bf16_runs_as_torch_autocast_over_fp32_weights(one_rank, zero_stage):
    """DeepSpeed's torch_autocast section on the CPU accelerator: bf16 matmuls, fp32 weights, under
    ZeRO-0 (the trainer clips) and ZeRO-1 (DeepSpeed's optimizer clips)."""
    cfg = TrainingConfig(zero_stage=zero_stage, compile=False, loss_chunk_tokens=8)
    bf16, fp32 = _engine(cfg, "bf16"), _engine(cfg)
    assert bf16.torch_autocast_enabled() and not bf16.bfloat16_enabled()
    before = bf16.module.lm.lm_head.weight.detach().clone()
    (low, norm), = _train(bf16, cfg, "bf16", steps=1)
    (full, _), = _train(fp32, cfg, steps=1)
    assert low != full and low == pytest.approx(full, rel=1e-2)  # rounded, not wrong
    norm = norm if zero_stage == 0 else float(bf16.get_global_grad_norm())
    assert np.isfinite(norm) and norm > 0
    assert all(p.dtype == torch.float32 for p in bf16.module.parameters())
    assert not torch.equal(before, bf16.module.lm.lm_head.weight)


LOAD_SHM_OP = ("from training.pretrain.step import load_deepspeed_ops\n"
               "load_deepspeed_ops(['ShareMemCommBuilder'])\n"
               "from deepspeed.ops.op_builder.builder import OpBuilder\n"
               "assert 'deepspeed_shm_comm' in OpBuilder._loaded_ops\n")


def _load_shm_op(extensions: Path | None, timeout: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "DS_ACCELERATOR": "cpu"} | ({"TORCH_EXTENSIONS_DIR": str(extensions)} if extensions else {})
    return subprocess.run([sys.executable, "-c", LOAD_SHM_OP], env=env, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.fixture(scope="session")
def built_shm_op() -> Path:
    """DeepSpeed's shared-memory op, built where every stage on this machine builds and finds it (torch's
    default extensions folder): built here only if no stage has run yet (about a minute on 2 cores)."""
    from torch.utils.cpp_extension import get_default_build_root

    run = _load_shm_op(None, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [folder] = Path(get_default_build_root()).glob("**/deepspeed_shm_comm/deepspeed_shm_comm.so")
    return folder.parent


@pytest.mark.slow
def test_a_baton_left_by_a_process_killed_while_it_built_an_op_does_not_hang_the_next_stage(built_shm_op, tmp_path):
    """torch builds DeepSpeed's shared-memory op under an empty `lock` file that every later process
    waits on; a rank killed there left one, and every later stage on the machine hung before its first
    step. A stage's ranks now load the op under a lock the kernel frees with its holder, and remove
    such a baton. (A copy of the built op's folder, with the baton a kill -9 inside torch's build leaves.)"""
    op = tmp_path / "deepspeed_shm_comm"
    shutil.copytree(built_shm_op, op, symlinks=True)
    (op / "lock").touch()
    run = _load_shm_op(tmp_path, timeout=120)  # a hang behind the baton ends here
    assert run.returncode == 0, run.stderr[-3000:]
    assert "removing" in run.stderr and not (op / "lock").exists()
    assert (op / "deepspeed_shm_comm.so").is_file()

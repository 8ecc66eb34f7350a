"""The trainer: one curriculum stage of DeepSpeed pretraining, one process per rank.

    torchrun --standalone --nproc_per_node=2 -m training.pretrain.train --spec data/checkpoints/stage_01/spec.json

(add DS_ACCELERATOR=cpu without a GPU). The pipeline launches exactly this through Dagster Pipes; by
hand, metrics print to stdout instead. A stage

- starts from its own latest checkpoint when an earlier attempt died (resume), else from the previous
  stage's final checkpoint (chaining), else from random weights or `init_from`;
- takes `plan.steps` optimizer steps over its packed records in a fixed order (step s always sees the
  same rows), so a resumed run ends where an uninterrupted one does;
- saves a DeepSpeed checkpoint every `checkpoint_every` steps and at its last step, keeping the last K,
  in its checkpoint folder (`training/pretrain/checkpoints.py`: the lock, the spec's fingerprint, the
  packed records, the tags and `latest`);
- steps as `training/pretrain/step.py` builds the step (on a GPU the model and its chunked loss compiled as
  one graph, micro-batches prefetched, one host sync per step);
- stops at a NaN or infinite loss before the optimizer applies it, keeping the last good checkpoint;
- writes its output folder atomically: the weights in Hugging Face format, stage.json, metrics.jsonl
  and loss.png.

`train_stage` reads as those steps: prepare the folder, build the engine (`_build`), restore
(`_restore`), loop (`_train_loop`), summarise (`_summary`) and export (`_export`).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import logging
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from training.cache import record
from training.fsutil import atomic_path
from training.layout import LOSS_PNG, METRICS_JSONL, STAGE_JSON, STAGE_MODEL
from training.pretrain.checkpoints import CheckpointDir, Log
from training.pretrain.deepspeed_config import resolve_precision, trainer_clips
from training.pretrain.model import build_model, count_parameters, flops_per_token, llama_config, peak_flops
from training.pretrain.plan import STEP, VERSION, StageSpec, read_summary
from training.pretrain.report import append_metrics, plot_loss, read_metrics, truncate_metrics
from training.pretrain.step import build_engine, deepspeed_ops, forward_backward, load_deepspeed_ops, micro_batches, prefetch


class NonFiniteLoss(RuntimeError):
    pass


def _die_with_parent() -> None:
    """torchrun starts each rank in its own session, so killing the launcher (kill -9 of a Dagster
    step included) would leave the ranks training on as orphans. Linux can kill a rank with its parent."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        if os.getppid() == 1:  # the parent died before prctl took effect
            os._exit(1)


def _chain(engine, spec: StageSpec, log: Log) -> str:
    """Load the previous stage's final checkpoint into `engine`, refusing one trained from other inputs."""
    prev = read_summary(spec.previous)
    if prev is None or prev.get("fingerprint") != spec.previous_fingerprint:
        raise RuntimeError(
            f"stage {spec.stage} starts from stage {spec.stage - 1}, whose output in {spec.previous} is missing "
            "or was trained from different inputs: materialize the previous stage first"
        )
    pdir, ptag = prev["checkpoint"]["dir"], prev["checkpoint"]["tag"]
    same = tuple(prev["frozen_layers"]) == spec.plan.frozen_layers
    # The optimizer state only fits when the same parameters train; otherwise the weights carry
    # over and the optimizer starts afresh (its moments for newly frozen layers are meaningless).
    _, client = engine.load_checkpoint(pdir, ptag, load_optimizer_states=same, load_module_only=not same)
    if not same:
        engine.global_steps = client["global_step"]
        log(f"stage {spec.stage}: frozen layers changed; optimizer state starts afresh")
    log(f"stage {spec.stage}: starting from stage {spec.stage - 1}'s checkpoint {ptag}")
    return f"{pdir}/{ptag}"


def _restore(engine, spec: StageSpec, ckpt: CheckpointDir, log: Log) -> tuple[int, int, str]:
    """(stage step to continue from, tokens already seen in this stage, where the weights came from):
    the stage's own latest checkpoint (resume), else the previous stage's (chain), else init."""
    if resumed := ckpt.resume(engine):
        tag, client = resumed
        log(f"stage {spec.stage}: resuming from its own checkpoint {tag} (stage step {client['stage_step']})")
        return client["stage_step"], client["tokens"], f"{ckpt.path}/{tag}"
    if spec.previous:
        return 0, 0, _chain(engine, spec, log)
    return 0, 0, spec.training.init_from or "random initialization"


def _build(spec: StageSpec, tokenizer, cuda: bool):
    """The seeded model (random, or `init_from` in stage 1) inside its DeepSpeed engine:
    (engine, its LlamaConfig, its precision)."""
    from transformers import LlamaForCausalLM

    tcfg = spec.training
    torch.manual_seed(tcfg.seed)
    config = llama_config(spec.model, tokenizer)
    if spec.stage == 1 and tcfg.init_from:
        model = LlamaForCausalLM.from_pretrained(tcfg.init_from)
        if model.config.vocab_size != config.vocab_size:
            raise ValueError(f"init_from has vocabulary {model.config.vocab_size}, the tokenizer {config.vocab_size}")
    else:
        model = build_model(config)
    if tcfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    for i in spec.plan.frozen_layers:
        model.model.layers[i].requires_grad_(False)
    precision = resolve_precision(tcfg, cuda)
    return build_engine(model, tcfg, spec.plan, spec.total_steps, precision, cuda), config, precision


def _train_loop(
    engine, spec: StageSpec, ckpt: CheckpointDir, batches, start_step: int, tokens: int, clip: float | None, log: Log
) -> tuple[int, list[float]]:
    """Stage steps start_step+1 ... plan.steps, each logged to metrics.jsonl, checkpointed every
    `checkpoint_every` steps and at the last: (tokens seen in the stage, seconds of each step)."""
    plan, tcfg = spec.plan, spec.training
    rank = torch.distributed.get_rank()
    tokens_per_step = plan.global_batch * spec.seq_len
    step_seconds: list[float] = []
    for step in range(start_step, plan.steps):
        # Timed from launching the step's work to handing the update to the GPU: forward_backward
        # waits for the GPU once per step, so in a steady state this is the step's GPU time.
        t0 = time.perf_counter()
        mean, own_norm = forward_backward(engine, batches, plan.grad_accum, clip)
        global_step = plan.first_step + step + 1
        if not math.isfinite(mean):
            good = ckpt.latest()
            raise NonFiniteLoss(
                f"stage {spec.stage}: the loss became {mean} at stage step {step + 1} (global step {global_step}); "
                f"the update was not applied. Last good checkpoint: {ckpt.path / good if good else 'none in this stage'}"
            )
        lr = engine.get_lr()[0]
        engine.step()
        dt = time.perf_counter() - t0
        step_seconds.append(dt)
        tokens += tokens_per_step
        grad_norm = engine.get_global_grad_norm() if own_norm is None else own_norm
        row = {
            "step": step + 1,
            "global_step": global_step,
            "loss": round(mean, 6),
            "lr": lr,
            "grad_norm": float(grad_norm) if grad_norm is not None else None,
            "tokens_per_s": round(tokens_per_step / dt, 1),
        }
        if rank == 0:
            append_metrics(ckpt.metrics, row)
            if (step + 1) % tcfg.log_every == 0 or step + 1 == plan.steps:
                log(" ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
        if (step + 1) % tcfg.checkpoint_every == 0 or step + 1 == plan.steps:
            client = {"stage": spec.stage, "stage_step": step + 1, "global_step": global_step, "tokens": tokens}
            last = step + 1 == plan.steps
            ckpt.save(engine, f"step_{step + 1:06d}", client, keep=1 if last else tcfg.keep_checkpoints)
    return tokens, step_seconds


def _summary(
    spec: StageSpec, config, device: torch.device, precision: str, start_step: int, initialised_from: str,
    tokens: int, step_seconds: list[float], metrics: list[dict], started: float,
) -> dict:
    """The stage's stage.json: its plan, where it started, what it reached, and its throughput."""
    plan, world = spec.plan, torch.distributed.get_world_size()
    fpt, peak = flops_per_token(config, spec.seq_len), peak_flops(device)
    # The first step of a process compiles the graph: throughput is that of the steps after it.
    steady = step_seconds[1:] or step_seconds
    tokens_per_s = plan.global_batch * spec.seq_len * len(steady) / sum(steady) if steady else None
    return {
        "stage": spec.stage,
        "level": plan.level,
        "fingerprint": spec.fingerprint,
        "steps": plan.steps,
        "global_steps": [plan.first_step + 1, plan.first_step + plan.steps],
        "total_steps": spec.total_steps,
        "resumed_from_step": start_step,
        "initialised_from": initialised_from,
        "tokens": tokens,
        "sequences": plan.sequences,
        "global_batch": plan.global_batch,
        "micro_batch": plan.micro_batch,
        "grad_accum": plan.grad_accum,
        "peak_learning_rate": plan.learning_rate,
        "frozen_layers": list(plan.frozen_layers),
        "final_loss": metrics[-1]["loss"] if metrics else None,
        "parameters": count_parameters(config),
        "flops_per_token": fpt,
        "tokens_per_s": round(tokens_per_s, 1) if tokens_per_s else None,
        "mfu": round(tokens_per_s * fpt / (world * peak), 4) if tokens_per_s and peak else None,
        "train_seconds": round(sum(step_seconds), 2),
        "wall_seconds": round(time.perf_counter() - started, 2),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "ranks": world,
        "precision": precision,
        "zero_stage": spec.training.zero_stage,
        "checkpoint": {"dir": str(Path(spec.checkpoints)), "tag": f"step_{plan.steps:06d}"},
    }


def _export(engine, spec: StageSpec, rank: int, summary: dict, metrics: list[dict], log: Log) -> None:
    """All ranks (ZeRO-3 gathers the partitioned weights); rank 0 writes the output folder atomically."""
    import deepspeed

    gather = (
        deepspeed.zero.GatheredParameters(list(engine.module.parameters()))
        if spec.training.zero_stage == 3
        else contextlib.nullcontext()
    )
    with gather:
        if rank != 0:
            return
        out = Path(spec.out)
        with atomic_path(out) as tmp:
            tmp.mkdir()
            lm = engine.module.lm  # the LlamaForCausalLM inside CausalLMLoss
            lm.save_pretrained(tmp / STAGE_MODEL, state_dict={k: v.detach().cpu() for k, v in lm.state_dict().items()})
            shutil.copy(Path(spec.checkpoints) / METRICS_JSONL, tmp / METRICS_JSONL)
            if metrics:
                plot_loss(metrics, tmp / LOSS_PNG, f"stage {spec.stage} (level {spec.plan.level}): loss by step")
            (tmp / STAGE_JSON).write_text(json.dumps(summary, indent=2) + "\n")
            record(tmp, STEP, VERSION, spec.fingerprint, summary)  # last: the stage is done
    log(f"stage {spec.stage}: wrote {spec.out}")


def _init_distributed(spec: StageSpec) -> tuple[int, int, torch.device]:
    """Join the process group of the spec's ranks: (rank, world size, this rank's device)."""
    import deepspeed

    cuda = torch.cuda.is_available()
    load_deepspeed_ops(deepspeed_ops(spec.training, cuda))
    deepspeed.init_distributed(dist_backend="nccl" if cuda else "gloo")
    rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if world != spec.ranks:
        raise RuntimeError(f"the spec was planned for {spec.ranks} ranks, but {world} were launched")
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    return rank, world, device


def train_stage(spec: StageSpec, log: Log = print) -> dict:
    """Train one stage on every rank: prepare its checkpoint folder, build the engine, restore, loop,
    export; its summary (stage.json)."""
    import deepspeed  # noqa: F401 (creates its logger, at INFO)

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    started = time.perf_counter()
    rank, world, device = _init_distributed(spec)
    log = log if rank == 0 else (lambda _msg: None)
    plan, tcfg, cuda = spec.plan, spec.training, device.type == "cuda"

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(spec.tokenizer)
    ckpt = CheckpointDir(spec.checkpoints)
    if rank == 0:
        ckpt.lock()  # released when `ckpt` goes, or the process exits
        ckpt.prepare(spec, log)
    torch.distributed.barrier()
    data = ckpt.packed(spec)

    engine, config, precision = _build(spec, tokenizer, cuda)
    clip = tcfg.grad_clip if trainer_clips(tcfg, precision) else None
    start_step, tokens, initialised_from = _restore(engine, spec, ckpt, log)
    # The schedule sits at iteration g before global step g (DeepSpeed advances it after each step),
    # so step 1 warms up from 1/warmup rather than zero, and this stage's peak applies (its batch may
    # differ from the checkpoint's).
    engine.lr_scheduler.step(plan.first_step + start_step + 1)
    if rank == 0:
        truncate_metrics(ckpt.metrics, start_step)

    log(
        f"stage {spec.stage} (level {plan.level}): steps {start_step + 1}-{plan.steps} of {plan.steps}, "
        f"global batch {plan.global_batch} x {spec.seq_len} tokens, {world} ranks on {device.type}, {precision}, "
        f"ZeRO {tcfg.zero_stage}, {count_parameters(config) / 1e6:.2f}M parameters"
        + (", compiled" if engine.is_compiled else "")
    )
    with contextlib.closing(prefetch(micro_batches(data, plan, rank, world, start_step), device)) as batches:
        tokens, step_seconds = _train_loop(engine, spec, ckpt, batches, start_step, tokens, clip, log)

    metrics = read_metrics(ckpt.metrics) if rank == 0 else []
    summary = _summary(spec, config, device, precision, start_step, initialised_from, tokens, step_seconds, metrics, started)
    _export(engine, spec, rank, summary, metrics, log)
    torch.distributed.barrier()
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--spec", required=True, type=Path, help="a stage spec (spec.json beside the stage's checkpoints)")
    parser.add_argument("--local_rank", "--local-rank", type=int, help="passed by DeepSpeed's launcher; LOCAL_RANK says the same")
    args = parser.parse_args(argv)
    _die_with_parent()
    spec = StageSpec.from_json(args.spec.read_text())
    if int(os.environ.get("RANK", 0)) == 0 and "DAGSTER_PIPES_CONTEXT" in os.environ:
        # Launched by the pipeline: rank 0 streams its log lines to the Dagster run, and an exception
        # reaches the run as the step's error. The numbers go to stage.json, which the asset reports.
        from dagster_pipes import open_dagster_pipes

        with open_dagster_pipes() as pipes:
            train_stage(spec, log=pipes.log.info)
    else:
        train_stage(spec)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()

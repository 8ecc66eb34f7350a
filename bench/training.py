"""Training throughput: kiln's DeepSpeed step against a plain PyTorch loop, in one process, on the
same model, the same random tokens and the same micro-batch.

    python -m bench.training --preset gpu-124m --steps 20 --warmup 5 --out results.json

Every variant builds the preset's model from the same seed and trains `warmup + steps` steps of one
micro-batch each (no accumulation), one host sync per step; tokens/s is the median over the steps
after the warmup, MFU that over the GPU's bf16 peak (`training.pretrain.model.PEAK_BF16_FLOPS`).

- `reference`: a plain PyTorch loop: `torch.compile(model)`, bf16 autocast on a GPU (fp32 on a
  CPU), `F.cross_entropy` on the full logits, torch's AdamW (fused on a GPU), gradients clipped
  with torch's foreach kernels, batches pinned and copied asynchronously.
- `kiln`: the DeepSpeed engine and step exactly as `training/pretrain/train.py` trains the preset
  (`training.pretrain.step`).
- `kiln-*`: kiln with one thing put back as it was, to show what each change bought, and
  `kiln-before`: every one of them as it was (ZeRO-1, DeepSpeed's bf16 optimizer, full logits,
  synchronous loads), eager and compiled.

Compiled variants run where `compile` is on (default: on a GPU); variants that cannot differ on this
device are skipped and listed. Every variant's first loss (the same weights, the same batch) must
agree with the reference's; the CLI exits 1 when one does not.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from training.presets import preset as load_preset
from training.config import TrainingConfig
from training.markdown import markdown_table
from training.pretrain.deepspeed_config import StagePlan, resolve_precision, trainer_clips
from training.pretrain.model import build_model, count_parameters, flops_per_token, llama_config, peak_flops
from training.pretrain.step import build_engine, forward_backward, init_one_rank, micro_batches, param_groups, prefetch


@dataclass(frozen=True)
class Variant:
    what: str
    """One line for the table."""
    kiln: bool = True
    """kiln's DeepSpeed step; False: the plain PyTorch loop."""
    overrides: dict = field(default_factory=dict)
    """TrainingConfig fields that differ from the preset's."""
    prefetch: bool = True
    compiled: bool = True
    """Whether the variant compiles (when compiling is on at all)."""
    twin: str | None = None
    """The variant this one equals when compiling is off (skipped then)."""
    needs_gpu: bool = False


BEFORE = {"zero_stage": 1, "autocast": False, "loss_chunk_tokens": None}
"""The trainer's settings before this fast path."""

VARIANTS = {
    "reference": Variant("plain PyTorch loop: torch.compile(model), full logits, torch AdamW", kiln=False),
    "reference-eager": Variant("the reference without torch.compile", kiln=False, compiled=False, twin="reference"),
    "kiln": Variant("DeepSpeed, as train.py trains the preset"),
    "kiln-eager": Variant("kiln without compiling", compiled=False, twin="kiln"),
    "kiln-full-logits": Variant("kiln with F.cross_entropy on full logits", overrides={"loss_chunk_tokens": None}),
    "kiln-no-prefetch": Variant("kiln with synchronous batch loads", prefetch=False),
    "kiln-zero1": Variant("kiln with ZeRO-1", overrides={"zero_stage": 1}),
    "kiln-ds-bf16": Variant(
        "kiln with DeepSpeed's bf16 optimizer instead of autocast", overrides={"autocast": False}, needs_gpu=True
    ),
    "kiln-before-compiled": Variant(
        "ZeRO-1, DeepSpeed bf16, full logits, sync loads; compiled", overrides=BEFORE, prefetch=False, twin="kiln-before"
    ),
    "kiln-before": Variant("ZeRO-1, DeepSpeed bf16, full logits, sync loads; eager", overrides=BEFORE, prefetch=False, compiled=False),
}


def _skip_reason(variant: Variant, compile_on: bool, cuda: bool) -> str | None:
    if not compile_on and variant.twin:
        return f"compiling is off: the same as {variant.twin}"
    if not cuda and variant.needs_gpu:
        return "bf16 needs a GPU; in fp32 the same as kiln"
    return None


def _reference(lm, cfg: TrainingConfig, plan: StagePlan, data: np.ndarray, device, compiled: bool) -> Iterator[float]:
    """The plain loop; yields each step's loss, read once per step (as kiln reads it)."""
    cuda = device.type == "cuda"
    model = torch.compile(lm) if compiled else lm
    opt = torch.optim.AdamW(
        param_groups(lm, cfg.weight_decay), lr=plan.learning_rate, betas=cfg.betas, eps=1e-8, fused=cuda
    )
    params = [p for p in lm.parameters() if p.requires_grad]
    for rows in micro_batches(data, plan, 0, 1, 0):
        ids = torch.from_numpy(rows)
        ids = ids.pin_memory().to(device, non_blocking=True) if cuda else ids
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
            logits = model(input_ids=ids, use_cache=False).logits
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), label_smoothing=cfg.label_smoothing
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip, foreach=True)
        value = loss.item()
        opt.step()
        opt.zero_grad(set_to_none=True)
        yield value


def _kiln(lm, cfg: TrainingConfig, plan: StagePlan, data: np.ndarray, device, variant: Variant) -> Iterator[float]:
    """train.py's step: its engine, loader and forward_backward; yields each step's loss."""
    cuda = device.type == "cuda"
    precision = resolve_precision(cfg, cuda)
    engine = build_engine(lm, cfg, plan, plan.steps, precision, cuda)
    engine.lr_scheduler.step(1)  # as train.py starts a stage: step 1 warms up from 1/warmup
    clip = cfg.grad_clip if trainer_clips(cfg, precision) else None
    arrays = micro_batches(data, plan, 0, 1, 0)
    # The synchronous load is what the trainer did before the prefetching loader.
    batches = prefetch(arrays, device) if variant.prefetch else (torch.from_numpy(a).to(device) for a in arrays)
    try:
        for _ in range(plan.steps):
            loss, _norm = forward_backward(engine, batches, 1, clip)
            engine.step()
            yield loss
    finally:
        batches.close()
        engine.destroy()


def _time(losses: Iterator[float], warmup: int) -> tuple[list[float], list[float]]:
    """(losses, seconds of each step after the warmup). Each step ends with a host sync, so the
    time between two steps' syncs is one step of GPU work (its update and the next forward-backward)."""
    values, stamps = [], []
    for loss in losses:
        values.append(loss)
        stamps.append(time.perf_counter())
    return values, [b - a for a, b in zip(stamps[warmup - 1 : -1], stamps[warmup:], strict=True)]


def run(
    preset: str, steps: int, warmup: int, variants: list[str] | None = None, compile: bool | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Times `variants` (default: all) of the preset; returns the results as a JSON-ready dict.
    `compile`: None compiles on a GPU only."""
    if warmup < 1 or steps < 1:
        raise ValueError("need at least one warmup step (the first timed step starts at its end) and one timed step")
    unknown = set(variants or ()) - VARIANTS.keys()
    if unknown:
        raise ValueError(f"unknown variants {sorted(unknown)}; choose from {list(VARIANTS)}")
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    compile_on = cuda if compile is None else compile
    init_one_rank(cuda)

    kcfg = load_preset(preset)
    base = replace(kcfg.training, compile=compile_on, max_steps_per_stage=None)
    config = llama_config(kcfg.model, kcfg.tokenizer.vocab_size)
    seq, micro = kcfg.model.max_seq_len, base.micro_batch
    total = warmup + steps
    data = np.random.default_rng(0).integers(0, config.vocab_size, (micro * total, seq), dtype=np.int64)
    plan = StagePlan(
        stage=1, level=1, sequences=len(data), global_batch=micro, micro_batch=micro, grad_accum=1, steps=total,
        first_step=0, learning_rate=base.learning_rate * math.sqrt(micro / 256), frozen_layers=(),
    )
    fpt, peak = flops_per_token(config, seq), peak_flops(device)
    tokens_per_step = micro * seq
    results: dict = {
        "preset": preset, "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": torch.__version__, "compile": compile_on, "steps": steps, "warmup": warmup,
        "seq_len": seq, "micro_batch": micro, "vocab_size": config.vocab_size, "tokens_per_step": tokens_per_step,
        "parameters": count_parameters(config), "flops_per_token": fpt, "peak_flops": peak,
        "variants": {}, "skipped": {},
    }
    for name in variants or list(VARIANTS):
        variant = VARIANTS[name]
        if reason := _skip_reason(variant, compile_on, cuda):
            results["skipped"][name] = reason
            continue
        cfg = replace(base, **variant.overrides, compile=compile_on and variant.compiled)
        torch.manual_seed(kcfg.training.seed)
        lm = build_model(config).to(device)
        if cuda:
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        steps_iter = _kiln(lm, cfg, plan, data, device, variant) if variant.kiln else _reference(
            lm, cfg, plan, data, device, cfg.compile
        )
        losses, seconds = _time(steps_iter, warmup)
        rate = statistics.median(tokens_per_step / s for s in seconds)
        results["variants"][name] = {
            "what": variant.what, "compiled": bool(cfg.compile), "tokens_per_s": round(rate, 1),
            "mfu": round(rate * fpt / peak, 4) if peak else None,
            "step_seconds": [round(s, 5) for s in seconds], "first_loss": losses[0], "last_loss": losses[-1],
            "peak_memory_gib": round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if cuda else None,
            "wall_seconds": round(time.perf_counter() - started, 1),
        }
        log(f"{name}: {rate:,.0f} tokens/s, first loss {losses[0]:.4f}, {results['variants'][name]['wall_seconds']} s")
        # Free this variant's model, optimizer and compiled graphs before the next one is built, and
        # let each variant compile afresh within dynamo's recompile limit.
        del lm, steps_iter
        torch._dynamo.reset()
        gc.collect()
        if cuda:
            torch.cuda.empty_cache()
    _compare(results, cuda)
    return results


def _compare(results: dict, cuda: bool) -> None:
    """Speed relative to the reference, and the check that every variant started from the same loss."""
    ran = results["variants"]
    ref = ran.get("reference") or ran.get("reference-eager")
    # bf16 rounds the weights (DeepSpeed's bf16 optimizer) or the matmuls: 1%; fp32 agrees closely.
    tolerance = 1e-2 if cuda else 1e-4
    failed = []
    for name, r in ran.items():
        r["vs_reference"] = round(r["tokens_per_s"] / ref["tokens_per_s"], 3) if ref else None
        finite = all(math.isfinite(x) for x in (r["first_loss"], r["last_loss"]))
        if not finite or (ref and abs(r["first_loss"] - ref["first_loss"]) > tolerance * abs(ref["first_loss"])):
            failed.append(name)
    results["check"] = {"first_loss_tolerance": tolerance, "failed": failed, "ok": not failed}


def markdown(results: dict) -> str:
    peak = results["peak_flops"]
    lines = [
        f"{results['preset']} on {results['device']}: {results['parameters'] / 1e6:.0f}M parameters, "
        f"micro-batch {results['micro_batch']} x {results['seq_len']} tokens, median of {results['steps']} steps "
        f"after {results['warmup']}" + (f", MFU of {peak / 1e12:.0f} TFLOP/s" if peak else ""),
        "",
        markdown_table(["variant", "tokens/s", "x reference", "MFU", "peak GiB", "compiled", "what"], [
            [name, f"{r['tokens_per_s']:,.0f}", r["vs_reference"] if r["vs_reference"] is not None else "-",
             r["mfu"] if r["mfu"] is not None else "-", r["peak_memory_gib"] if r["peak_memory_gib"] is not None else "-",
             "yes" if r["compiled"] else "no", r["what"]]
            for name, r in results["variants"].items()
        ]),
    ]
    lines += [f"- skipped {name}: {reason}" for name, reason in results["skipped"].items()]
    check = results["check"]
    lines.append("- check: " + ("every first loss agrees with the reference's" if check["ok"] else f"FAILED for {check['failed']}"))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny", help="tiny, gpu-124m or gpu-350m")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (compilation happens in the first)")
    parser.add_argument("--variants", help=f"comma-separated, default all: {','.join(VARIANTS)}")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None, help="default: on a GPU only")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    results = run(args.preset, args.steps, args.warmup, args.variants.split(",") if args.variants else None, args.compile)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(markdown(results))
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
    sys.exit(0 if results["check"]["ok"] else 1)


if __name__ == "__main__":
    main()

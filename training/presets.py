"""Presets: plain functions returning a `KilnConfig`, chosen with KILN_PRESET (default `tiny`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from training.config import (
    CleaningConfig,
    ClipTrainConfig,
    CurriculumConfig,
    DifficultyConfig,
    EvaluationConfig,
    ImageFilterConfig,
    KilnConfig,
    ModelConfig,
    TokenizerConfig,
    TrainingConfig,
)


def tiny() -> KilnConfig:
    """CPU, small: the whole lifecycle on 2 cores in minutes (the demo and the tests)."""
    return KilnConfig(
        name="tiny",
        # Short spans keep BERTScore on 2 cores to about a minute for the default corpus.
        difficulty=DifficultyConfig(span_words=24),
        # A 3 MB corpus supports a few thousand merges, not the documents' 65,536.
        tokenizer=TokenizerConfig(vocab_size=4096),
        # 1.8M parameters: 2 CPU ranks train at about 8K tokens/s, so nine stages take minutes.
        model=ModelConfig(hidden_size=128, layers=4, heads=4, kv_heads=2, intermediate_size=384, max_seq_len=256),
        training=TrainingConfig(
            learning_rate=4e-3,  # 1e-3 at the 16-sequence batch after sqrt scaling; small models take large rates
            global_batch=(8, 16, 32),
            micro_batch=4,
            max_steps_per_stage=20,
            checkpoint_every=10,
        ),
    )


def smoke() -> KilnConfig:
    """CPU, smallest: the whole lifecycle in a few minutes, to check an install or a change end to end
    (`KILN_PRESET=smoke make demo`; the test suite's shared run). Two curriculum stages and a 0.1M-parameter
    model: it proves every step runs and every gate holds, not that the model learns much."""
    base = tiny()
    return replace(
        base,
        name="smoke",
        curriculum=CurriculumConfig(schedule=(2, 4)),
        model=ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=128),
        # A few steps at a rate a 2-layer model takes: the loss still falls from stage 1 to stage 2.
        training=replace(base.training, max_steps_per_stage=12, learning_rate=1e-2),
        # 40 held-out records keep the evaluation (perplexity, generation, the harness) to seconds.
        evaluation=EvaluationConfig(max_records=40, max_new_tokens=16),
    )


def gpu_124m() -> KilnConfig:
    """One GPU: GPT-2 small's shape (12 layers, 768 hidden, 12 heads, 1024 tokens) as a Llama, bf16."""
    return KilnConfig(
        name="gpu-124m",
        cleaning=CleaningConfig(image=ImageFilterConfig(batch_size=1024)),
        clip=ClipTrainConfig(batch_size=256),
        model=ModelConfig(hidden_size=768, layers=12, heads=12, max_seq_len=1024),
        # Micro-batch 32 x 1024 tokens fits an 80 GB GPU with room for the logits; the documents'
        # progressive batch 128 -> 256 -> 512 sequences (128K-512K tokens per step).
        # ZeRO stage 0: one GPU has nothing to partition (see TrainingConfig.zero_stage).
        training=TrainingConfig(
            learning_rate=6e-4, global_batch=(128, 256, 512), micro_batch=32, zero_stage=0, checkpoint_every=200
        ),
    )


def gpu_350m() -> KilnConfig:
    """One GPU: 24 layers, 1024 hidden, 16 heads, 2048 tokens (GPT-2 medium's shape, a longer context)."""
    base = gpu_124m()
    return replace(
        base,
        name="gpu-350m",
        model=ModelConfig(hidden_size=1024, layers=24, heads=16, max_seq_len=2048),
        training=replace(base.training, learning_rate=3e-4, global_batch=(64, 128, 256), micro_batch=16),
    )


PRESETS: dict[str, Callable[[], KilnConfig]] = {"tiny": tiny, "smoke": smoke, "gpu-124m": gpu_124m, "gpu-350m": gpu_350m}


def preset(name: str) -> KilnConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()

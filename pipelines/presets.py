"""Presets: plain functions returning a `KilnConfig`, chosen with KILN_PRESET (default `tiny`)."""

from __future__ import annotations

from collections.abc import Callable

from training.config import CleaningConfig, ClipTrainConfig, DifficultyConfig, ImageFilterConfig, KilnConfig, TokenizerConfig


def tiny() -> KilnConfig:
    """CPU, small: the whole lifecycle on 2 cores in minutes (the demo and the tests)."""
    return KilnConfig(
        name="tiny",
        # Short spans keep BERTScore on 2 cores to about a minute for the default corpus.
        difficulty=DifficultyConfig(span_words=24),
        # A 3 MB corpus supports a few thousand merges, not the documents' 65,536.
        tokenizer=TokenizerConfig(vocab_size=4096),
    )


def gpu_124m() -> KilnConfig:
    """One GPU: larger CLIP batches for scoring; the 124M model arrives with the pretraining stages."""
    return KilnConfig(
        name="gpu-124m",
        cleaning=CleaningConfig(image=ImageFilterConfig(batch_size=1024)),
        clip=ClipTrainConfig(batch_size=256),
    )


PRESETS: dict[str, Callable[[], KilnConfig]] = {"tiny": tiny, "gpu-124m": gpu_124m}


def preset(name: str) -> KilnConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()

"""The model: `transformers`' Llama built from a `ModelConfig` and the trained tokenizer, and the
arithmetic about it (parameters, FLOPs per token, the GPUs' peak) that throughput and MFU are reported in."""

from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from training.config import ModelConfig

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "GH200": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12}
"""Dense bf16 peak per GPU (vendor datasheets), the denominator of MFU."""


def llama_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase | int) -> LlamaConfig:
    """`tokenizer`: the trained tokenizer, or only a vocabulary size (benchmarks on random tokens,
    which have no special tokens)."""
    vocab = tokenizer if isinstance(tokenizer, int) else len(tokenizer)
    special = {} if isinstance(tokenizer, int) else {
        "bos_token_id": tokenizer.bos_token_id, "eos_token_id": tokenizer.eos_token_id, "pad_token_id": tokenizer.pad_token_id,
    }
    intermediate = cfg.intermediate_size or -(-cfg.hidden_size * 8 // 3 // 64) * 64
    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=cfg.hidden_size,
        intermediate_size=intermediate,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
        num_key_value_heads=cfg.kv_heads or cfg.heads,
        max_position_embeddings=cfg.max_seq_len,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        tie_word_embeddings=cfg.tie_embeddings,
        initializer_range=cfg.initializer_range,
        attn_implementation=cfg.attention,
        **special,
    )


def build_model(config: LlamaConfig) -> LlamaForCausalLM:
    return LlamaForCausalLM(config)


def count_parameters(config: LlamaConfig) -> int:
    """Parameters of the model `config` describes, without building it."""
    h, v, layers, inter = config.hidden_size, config.vocab_size, config.num_hidden_layers, config.intermediate_size
    head = h // config.num_attention_heads
    attn = h * head * (2 * config.num_attention_heads + 2 * config.num_key_value_heads)
    per_layer = attn + 3 * h * inter + 2 * h
    embeddings = v * h * (1 if config.tie_word_embeddings else 2)
    return embeddings + layers * per_layer + h


def flops_per_token(config: LlamaConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6·N for the weights (forward + backward) plus 12·L·H·Q·T for attention
    scores and values (the PaLM paper's appendix B), with N excluding the input embedding lookup."""
    n = count_parameters(config) - config.vocab_size * config.hidden_size * (0 if config.tie_word_embeddings else 1)
    head = config.hidden_size // config.num_attention_heads
    return 6 * n + 12 * config.num_hidden_layers * config.num_attention_heads * head * seq_len


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in sorted(PEAK_BF16_FLOPS.items(), key=lambda kv: -len(kv[0])) if k in name), None)

"""Greedy generation from a causal LM, batched with left padding, prompts encoded as training saw them."""

from __future__ import annotations

import torch


def device_for(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def encode_prompt(tokenizer, text: str) -> list[int]:
    """<|begin_of_text|> text: a record's beginning, as training saw it."""
    return [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"]


def encode_records(tokenizer, texts: list[str]) -> list[list[int]]:
    """<|begin_of_text|> text <|end_of_text|> of each text: records as training sees them. The
    special tokens are written here, not by the tokenizer, which adds none of its own (see
    training.curriculum.tokenizer.fit_tokenizer); so any tokenizer of kiln's, older ones too, encodes alike."""
    return [[tokenizer.bos_token_id, *ids, tokenizer.eos_token_id] for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def greedy_continuations(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int) -> list[str]:
    device = device_for(model)
    limit = model.config.max_position_embeddings - max_new_tokens
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    out: list[str] = []
    for i in range(0, len(prompts), batch_size):
        encoded = [encode_prompt(tokenizer, p)[-limit:] for p in prompts[i : i + batch_size]]
        width = max(len(e) for e in encoded)
        ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)  # left padding
        mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
        with torch.inference_mode():
            gen = model.generate(
                input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=pad
            )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out

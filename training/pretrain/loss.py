"""The training loss: next-token cross-entropy from the last hidden states and the output embedding,
computed chunk by chunk of tokens so that the [tokens, vocabulary] logits never exist whole.

At gpu-124m's shape (32 x 1023 predicted tokens per micro-batch, vocabulary 65,536) full logits take
4.3 GB in bf16, 8.6 GB once upcast to fp32 for the softmax, and their gradient as much again; the
chunked loss holds one chunk's logits at a time (`chunk_tokens` x vocabulary, 2 GiB in fp32 at the
default 8,192 tokens) and needs no second pass over them in the backward.

`CausalLMLoss` is the module the DeepSpeed engine wraps, so that compiling the engine compiles the
model and its loss as one graph.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM


class _LinearCrossEntropy(torch.autograd.Function):
    """Liger-kernel's idea in plain torch: the forward computes, chunk by chunk, the logits, the loss
    with an fp32 log-softmax, and at once the gradients of the hidden states and the weight; the
    backward only scales them by the incoming gradient. liger-kernel itself fails under torch.compile
    on the H100 (triton 3.6, see shared/ENVIRONMENT.md) and ran slower with DeepSpeed; these few torch
    ops compile into the model's graph instead."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, label_smoothing: float, chunk_tokens: int, dtype: torch.dtype):
        n, vocab = targets.numel(), weight.shape[0]
        w = weight.to(dtype)
        # The softmax, the loss and the weight's gradient summed over chunks are fp32 (or wider)
        # whatever the compute dtype, as one big matmul would accumulate.
        wide = torch.promote_types(dtype, torch.float32)
        grad_hidden = torch.empty_like(hidden)
        grad_weight = torch.zeros_like(weight, dtype=wide)
        total = torch.zeros((), dtype=wide, device=hidden.device)
        for start in range(0, n, chunk_tokens):
            h = hidden[start : start + chunk_tokens].to(dtype)
            y = targets[start : start + chunk_tokens, None]
            logits = (h @ w.t()).to(wide)
            lse = torch.logsumexp(logits, dim=-1)
            # (1 - eps) * (lse - z_y) + eps * mean_c (lse - z_c): torch's label-smoothed cross-entropy.
            total += (lse - (1 - label_smoothing) * logits.gather(1, y).squeeze(1) - label_smoothing * logits.mean(-1)).sum()
            # d(mean loss)/d(logits) = (softmax - (1 - eps) * onehot - eps / vocab) / n
            grad = (logits - lse[:, None]).exp_()
            grad.scatter_add_(1, y, torch.full(y.shape, label_smoothing - 1, dtype=grad.dtype, device=grad.device))
            if label_smoothing:
                grad.sub_(label_smoothing / vocab)
            grad = grad.mul_(1 / n).to(dtype)
            grad_hidden[start : start + chunk_tokens] = grad @ w
            grad_weight += grad.t() @ h
        ctx.save_for_backward(grad_hidden, grad_weight.to(weight.dtype))
        return total / n

    @staticmethod
    def backward(ctx, grad_output):
        grad_hidden, grad_weight = ctx.saved_tensors
        return grad_hidden * grad_output, grad_weight * grad_output, None, None, None, None


def linear_cross_entropy(
    hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, label_smoothing: float = 0.0, chunk_tokens: int = 8192
) -> torch.Tensor:
    """Mean of `F.cross_entropy(hidden @ weight.T, targets, label_smoothing=...)` over all tokens
    (hidden [tokens, H], weight [vocab, H], targets [tokens]; every target counts, as in packed
    sequences). Under autocast the matmuls run in the autocast dtype, as `nn.Linear` would; the
    softmax is always fp32."""
    device = hidden.device.type
    dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    return _LinearCrossEntropy.apply(hidden, weight, targets, label_smoothing, chunk_tokens, dtype)


class CausalLMLoss(torch.nn.Module):
    """What the DeepSpeed engine wraps: the language model and its next-token loss in one forward,
    so that `engine.compile()` compiles both into one graph (and AOTAutograd both backwards).
    Checkpoints hold this module's state (the model under `lm.`); the model itself is `lm`."""

    def __init__(self, lm: LlamaForCausalLM, label_smoothing: float = 0.0, chunk_tokens: int | None = 8192):
        super().__init__()
        self.lm = lm
        self.label_smoothing = label_smoothing
        self.chunk_tokens = chunk_tokens

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.model(input_ids=input_ids, use_cache=False).last_hidden_state[:, :-1]
        targets = input_ids[:, 1:].flatten()
        if self.chunk_tokens is None:
            logits = self.lm.lm_head(hidden).flatten(0, 1).float()
            return F.cross_entropy(logits, targets, label_smoothing=self.label_smoothing)
        return linear_cross_entropy(
            hidden.flatten(0, 1), self.lm.lm_head.weight, targets, self.label_smoothing, self.chunk_tokens
        )

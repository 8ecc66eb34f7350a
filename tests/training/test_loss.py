"""The chunked cross-entropy against torch's on full logits: the loss and both gradients, chunk
sizes that do and do not divide the token count, label smoothing, tied embeddings, autocast and
torch.compile."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from training.config import ModelConfig
from training.pretrain.loss import CausalLMLoss, linear_cross_entropy
from training.pretrain.model import build_model, llama_config

MODEL = ModelConfig(hidden_size=32, layers=2, heads=4, kv_heads=2, intermediate_size=64, max_seq_len=32)


def _inputs(tokens: int, hidden: int = 16, vocab: int = 50, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    h = torch.randn(tokens, hidden, generator=g).requires_grad_()
    w = (torch.randn(vocab, hidden, generator=g) / hidden**0.5).requires_grad_()
    return h, w, torch.randint(0, vocab, (tokens,), generator=g)


def _grads(loss: torch.Tensor, *tensors: torch.Tensor, scale: float = 1.0) -> list[torch.Tensor]:
    return list(torch.autograd.grad(loss * scale, tensors))


@pytest.mark.parametrize(
    ("tokens", "chunk", "smoothing"),
    [
        (40, 8, 0.0),  # chunks divide the tokens
        (37, 8, 0.0),  # a short last chunk
        (37, 8, 0.1),
        (37, 37, 0.1),  # one chunk
        (37, 1000, 0.0),  # chunk larger than the tokens
        (5, 1, 0.2),  # one token per chunk
    ],
)
def test_loss_and_gradients_equal_cross_entropy_on_full_logits(tokens, chunk, smoothing):
    h, w, y = _inputs(tokens)
    chunked = linear_cross_entropy(h, w, y, smoothing, chunk)
    full = F.cross_entropy(h @ w.t(), y, label_smoothing=smoothing)
    assert chunked.item() == pytest.approx(full.item(), rel=1e-6)
    # A scale other than 1, as DeepSpeed's division by the accumulation steps gives the backward.
    for a, b in zip(_grads(chunked, h, w, scale=0.25), _grads(full, h, w, scale=0.25), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_label_smoothing_changes_the_loss_and_the_gradient():
    h, w, y = _inputs(37)
    plain, smoothed = linear_cross_entropy(h, w, y, 0.0, 8), linear_cross_entropy(h, w, y, 0.1, 8)
    assert smoothed.item() != pytest.approx(plain.item(), rel=1e-3)
    assert not torch.allclose(_grads(plain, w)[0], _grads(smoothed, w)[0])


def test_autocast_runs_the_matmuls_in_bf16_and_the_softmax_in_fp32():
    h, w, y = _inputs(64, hidden=32, vocab=100)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        chunked = linear_cross_entropy(h, w, y, 0.0, 16)
        full = F.cross_entropy(F.linear(h, w).float(), y)  # what autocast makes of nn.Linear + fp32 CE
    assert chunked.dtype == torch.float32
    assert chunked.item() == pytest.approx(full.item(), rel=1e-4)
    exact = F.cross_entropy(h @ w.t(), y)
    for a, b in zip(_grads(chunked, h, w), _grads(exact, h, w), strict=True):
        assert a.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.05, atol=2e-3)  # bf16 rounding of the matmuls


@pytest.mark.slow
def test_compiles_as_one_graph():
    """fullgraph: dynamo traces the autograd.Function and its chunk loop without a graph break.
    (aot_eager keeps this fast on a CPU; the GPU test below lowers it through inductor.)"""
    h, w, y = _inputs(24, hidden=8, vocab=30)
    compiled = torch.compile(linear_cross_entropy, backend="aot_eager", fullgraph=True)
    loss = compiled(h, w, y, 0.1, 10)
    full = F.cross_entropy(h @ w.t(), y, label_smoothing=0.1)
    assert loss.item() == pytest.approx(full.item(), rel=1e-6)
    for a, b in zip(_grads(loss, h, w), _grads(full, h, w), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


@pytest.mark.slow
def test_the_model_and_its_loss_compile_as_one_graph_under_autocast():
    """What `engine.compile()` compiles: the decoder and the chunked loss with no graph break, so
    AOTAutograd differentiates both as one graph."""
    torch.manual_seed(0)
    module = CausalLMLoss(build_model(llama_config(MODEL, 97)), 0.1, chunk_tokens=16)
    ids = torch.randint(0, 97, (2, 32))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        eager = module(ids)
        compiled = torch.compile(module, backend="aot_eager", fullgraph=True)(ids)
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-3)
    params = list(module.parameters())
    for a, b in zip(_grads(compiled, *params), _grads(eager, *params), strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=1e-3)


@pytest.mark.parametrize("tie", [False, True], ids=["separate-embeddings", "tied-embeddings"])
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_the_model_loss_matches_full_logits_for_every_parameter(tie, smoothing):
    torch.manual_seed(0)
    lm = build_model(llama_config(replace(MODEL, tie_embeddings=tie), 97))
    ids = torch.randint(0, 97, (3, 20))
    chunked, full = CausalLMLoss(lm, smoothing, chunk_tokens=16), CausalLMLoss(lm, smoothing, chunk_tokens=None)
    params = [p for p in lm.parameters()]
    a, b = chunked(ids), full(ids)
    assert a.item() == pytest.approx(b.item(), rel=1e-6)
    if smoothing == 0.0:  # transformers' own loss: the same shift, no smoothing
        assert a.item() == pytest.approx(lm(input_ids=ids, labels=ids).loss.item(), rel=1e-6)
    for ga, gb in zip(_grads(a, *params), _grads(b, *params), strict=True):
        torch.testing.assert_close(ga, gb, rtol=1e-4, atol=1e-6)
    if tie:
        assert lm.lm_head.weight is lm.model.embed_tokens.weight


@pytest.mark.gpu
def test_on_the_gpu_compiled_bf16_matches_full_logits():
    """Inductor's lowering on CUDA under bf16 autocast, at a vocabulary wider than a chunk is long."""
    g = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(3000, 256, device="cuda", generator=g).requires_grad_()
    w = (torch.randn(8192, 256, device="cuda", generator=g) / 16).requires_grad_()
    y = torch.randint(0, 8192, (3000,), device="cuda", generator=g)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        loss = torch.compile(linear_cross_entropy)(h, w, y, 0.1, 1024)
        full = F.cross_entropy(F.linear(h, w).float(), y, label_smoothing=0.1)
    assert loss.item() == pytest.approx(full.item(), rel=1e-3)
    for a, b in zip(_grads(loss, h, w), _grads(full, h, w), strict=True):
        torch.testing.assert_close(a, b, rtol=0.05, atol=1e-4)

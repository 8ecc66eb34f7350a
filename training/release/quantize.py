"""int8 weight-only quantization with torchao: `TorchAoConfig(Int8WeightOnlyConfig())` applies torchao's
`quantize_` to every linear layer as the model loads (the output head stays in full precision, as
transformers' torchao integration keeps it), and `save_pretrained` writes the int8 weights and their
scales as safetensors. Loading the folder needs torchao installed:

    AutoModelForCausalLM.from_pretrained("<release>/int8")
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from training.release.evaluate import record_nll
from training.fsutil import atomic_path, sha256_file
from training.layout import QUANTIZATION_JSON, WEIGHTS
from training.release.package import copy_tokenizer, folder_bytes
from training.release.publish import file_manifest

METHOD = "torchao Int8WeightOnlyConfig via transformers TorchAoConfig (quantize_ on every linear but the output head)"


def load_int8(model_dir: Path):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))


def save_model(model, model_dir: Path, out: Path, stats: dict | None = None) -> None:
    """The model and the tokenizer files of `model_dir` into `out` atomically, with `stats` (when
    given) as quantization.json, which also pins every other file of the folder by sha256 and size
    ("files"): what the release gate vouches for is packaged only while these hashes hold."""
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        copy_tokenizer(model_dir, tmp)
        if stats is not None:
            stats = stats | {"files": file_manifest(tmp)}
            (tmp / QUANTIZATION_JSON).write_text(json.dumps(stats, indent=2) + "\n")
        for f in tmp.iterdir():
            f.chmod(0o644)


def quantize_int8(model_dir: Path, out: Path, texts: list[str], batch_size: int, bound: float, device: torch.device) -> dict:
    """Quantize, measure against the full model on `texts` (perplexity, forward tokens/s on `device`),
    write the int8 folder with those numbers in quantization.json; returns them with the sizes."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Hashed before loading, so the record names the weights measured; the release gate compares it
    # with base_model's weights at release time.
    weights_sha256 = sha256_file(model_dir / WEIGHTS)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def measure(model) -> tuple[float, float]:
        nll, count, tokens_per_s = record_nll(model.to(device).eval(), tokenizer, texts, batch_size)
        return math.exp(sum(nll) / sum(count)), tokens_per_s

    full_ppl, full_tps = measure(AutoModelForCausalLM.from_pretrained(model_dir))
    int8 = load_int8(model_dir)
    int8_ppl, int8_tps = measure(int8)
    stats = {
        "full_perplexity": round(full_ppl, 4),
        "int8_perplexity": round(int8_ppl, 4),
        "perplexity_change": round(int8_ppl / full_ppl - 1, 6),
        "bound": bound,
        "full_bytes": folder_bytes(model_dir),
        "full_tokens_per_s": round(full_tps, 1),
        "int8_tokens_per_s": round(int8_tps, 1),
        "device": str(device),
        "method": METHOD,
        "weights_sha256": weights_sha256,
    }
    save_model(int8.to("cpu"), model_dir, out, stats)
    return stats | {"int8_bytes": folder_bytes(out)}

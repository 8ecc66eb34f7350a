"""int8 weight-only quantization with torchao: `TorchAoConfig(Int8WeightOnlyConfig())` applies torchao's
`quantize_` to every linear layer as the model loads (the output head stays in full precision, as
transformers' torchao integration keeps it), and `save_pretrained` writes the int8 weights and their
scales as safetensors. Loading the folder needs torchao installed:

    AutoModelForCausalLM.from_pretrained("<release>/int8")
"""

from __future__ import annotations

import shutil
from pathlib import Path

from training.fsutil import atomic_path

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def load_int8(model_dir: Path):
    from torchao.quantization import Int8WeightOnlyConfig
    from transformers import AutoModelForCausalLM, TorchAoConfig

    return AutoModelForCausalLM.from_pretrained(model_dir, quantization_config=TorchAoConfig(Int8WeightOnlyConfig()))


def save_model(model, model_dir: Path, out: Path, texts: dict[str, str] | None = None) -> None:
    """The model, the tokenizer files of `model_dir`, and `texts`, into `out` atomically."""
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        for name in TOKENIZER_FILES:
            if (model_dir / name).is_file():
                shutil.copy2(model_dir / name, tmp / name)
        for name, content in (texts or {}).items():
            (tmp / name).write_text(content)
        for f in tmp.iterdir():
            f.chmod(0o644)


def folder_bytes(path: Path, suffix: str = ".safetensors") -> int:
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file())

"""Model folders in Hugging Face format: weights (safetensors), config, generation config and tokenizer
side by side, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.fsutil import atomic_path
from training.layout import TOKENIZER_JSON

TOKENIZER_FILES = (TOKENIZER_JSON, "tokenizer_config.json", "special_tokens_map.json")


def copy_tokenizer(src: Path, dst: Path) -> None:
    for name in TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def folder_bytes(path: Path, suffix: str = ".safetensors") -> int:
    """Bytes of the weights in a model folder."""
    return sum(f.stat().st_size for f in path.rglob(f"*{suffix}") if f.is_file())


def assemble_model(model_dir: Path, tokenizer_dir: Path, out: Path) -> list[str]:
    """Copy a trained model and its tokenizer into `out` atomically; returns the file names."""
    with atomic_path(out) as tmp:
        shutil.copytree(model_dir, tmp)
        copy_tokenizer(tokenizer_dir, tmp)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes owner-only files; a model folder is for sharing
        return sorted(f.name for f in tmp.iterdir())

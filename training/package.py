"""Model folders in Hugging Face format: weights (safetensors), config, generation config and tokenizer
side by side, loadable with `AutoModelForCausalLM.from_pretrained` and `AutoTokenizer.from_pretrained`."""

from __future__ import annotations

import shutil
from pathlib import Path

from training.fsutil import atomic_path


def assemble_model(model_dir: Path, tokenizer_dir: Path, out: Path) -> list[str]:
    """Copy a trained model and its tokenizer into `out` atomically; returns the file names."""
    with atomic_path(out) as tmp:
        shutil.copytree(model_dir, tmp)
        for f in tokenizer_dir.iterdir():
            if f.is_file():
                shutil.copy2(f, tmp / f.name)
        for f in tmp.iterdir():
            f.chmod(0o644)  # safetensors writes owner-only files; a model folder is for sharing
        return sorted(f.name for f in tmp.iterdir())

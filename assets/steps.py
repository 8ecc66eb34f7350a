"""The cache rule (training/cache.py) as the assets apply it: the key, the recorded result when it is
reused (logged), and the metadata that says which."""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from training.cache import reused, step_key


def lookup(
    context: dg.AssetExecutionContext, out_dir: Path, step: str, version: int, config: object, inputs: Sequence[Path | str]
) -> tuple[str, dict | None]:
    """(the step's key, the result recorded under it in `out_dir` or None: do the work)."""
    key = step_key(step, version, config, inputs)
    result = reused(out_dir, key)
    if result is not None:
        context.log.info(f"reused {step} {key[:12]}")
    return key, result


def key_metadata(key: str, was_reused: bool) -> dict:
    """Every step's metadata says its key, and "reused" with the key when no work was done."""
    return {"key": key, **({"reused": key} if was_reused else {})}

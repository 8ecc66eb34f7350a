"""The one cache rule: a step's output is reused when the hash of its name, its logic version, its
config and the content of its inputs matches the key recorded beside that output (marin's rule). The
record is written last, inside the folder being written atomically, so it never outlives its output.

    key = step_key("curriculum", VERSION, cfg, [scores_path, corpus_dir, tokenizer_dir])
    if (result := reused(out_dir, key)) is None:
        ...  # the work; inside the temporary folder of out_dir, last: record(tmp, "curriculum", VERSION, key, result)

`version` is the step's logic version: bump it when the step's code changes what it writes. A step
that updates its folder in place instead calls `forget(out_dir)` before it changes anything and
`record(out_dir, ...)` after the last write. The record (`layout.STEP_JSON`) lists every output file
with its size; a file gone or resized since makes the record void.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from training.fsutil import atomic_path, fingerprint, sha256_file, tree_fingerprint
from training.layout import STEP_JSON

MISSING = "missing"


def _files(root: Path) -> Iterator[Path]:
    """The files of a folder that make its content: not the step record, not a temporary sibling
    left by `atomic_path` (dot names), not Python's bytecode caches."""
    for path in root.rglob("*"):
        parts = path.relative_to(root).parts
        if path.is_file() and path.name != STEP_JSON and not any(p[0] == "." or p == "__pycache__" for p in parts):
            yield path


def input_hash(path: Path | str) -> str:
    """The content of a file, or of a folder (every file below: relative path and content), or MISSING."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        return "tree:" + tree_fingerprint(path, list(_files(path)))
    return MISSING


def key_of(*parts: Any) -> str:
    """The key of plain values, dataclasses and input hashes. `step_key` is made of it; so are the cleaning
    manifests' keys and the CLIP card's, whose parts predate `step_key` and are kept so their keys stay."""
    return fingerprint(*parts)


def step_key(step: str, version: int, config: Any, inputs: Sequence[Path | str]) -> str:
    """The key of a step: its name, logic version, config and its inputs' content (`input_hash`)."""
    return key_of(step, version, config, [input_hash(p) for p in inputs])


def reused(out_dir: Path, key: str) -> dict | None:
    """The result recorded in `out_dir` under `key` if every output file it lists is still there, else None."""
    try:
        rec = json.loads((out_dir / STEP_JSON).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("key") != key or "result" not in rec:
        return None
    for name, size in rec.get("files", {}).items():
        path = out_dir / name
        if not path.is_file() or path.stat().st_size != size:
            return None
    return rec["result"]


def record(out_dir: Path, step: str, version: int, key: str, result: dict) -> None:
    """Write the record of `out_dir` (its files and sizes as they are now): call it after the last output."""
    files = {p.relative_to(out_dir).as_posix(): p.stat().st_size for p in sorted(_files(out_dir))}
    rec = {"step": step, "version": version, "key": key, "result": result, "files": files}
    with atomic_path(out_dir / STEP_JSON) as tmp:
        tmp.write_text(json.dumps(rec, indent=2) + "\n")


def forget(out_dir: Path) -> None:
    """Remove `out_dir`'s record: call it before a step changes its folder in place."""
    (out_dir / STEP_JSON).unlink(missing_ok=True)

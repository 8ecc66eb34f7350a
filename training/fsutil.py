"""Atomic writes and content hashes: every artifact kiln writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import hashlib
import json
import os
import shutil
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def fingerprint(*parts: Any) -> str:
    """A stable hash of plain values and dataclasses, used as a cache key."""

    def plain(x: Any) -> Any:
        if dataclasses.is_dataclass(x) and not isinstance(x, type):
            return {"__type__": type(x).__name__, **plain(dataclasses.asdict(x))}
        if isinstance(x, dict):
            return {str(k): plain(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, Path):
            return str(x)
        return x

    blob = json.dumps([plain(p) for p in parts], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def tree_fingerprint(root: Path, files: list[Path]) -> str:
    """Hash of the relative paths and contents of `files` (all under `root`), in sorted order."""
    h = hashlib.sha256()
    for path in sorted(files):
        h.update(path.relative_to(root).as_posix().encode() + b"\0")
        h.update(sha256_file(path).encode() + b"\n")
    return h.hexdigest()


_HOST = socket.gethostname()


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-{_HOST}-"


def _temp_sibling(path: Path) -> Path:
    """`.<name>.tmp-<host>-<pid>-<random>`: the writer is named, so what it leaves when it dies is found."""
    return path.with_name(f"{_temp_prefix(path)}{os.getpid()}-{uuid.uuid4().hex[:8]}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove_dead_temps(path: Path) -> None:
    """Temporary siblings of `path` left by writers on this machine that died (kill -9, OOM) before
    they could rename or remove them. A writer still running, or on another machine sharing the
    folder, keeps its own."""
    prefix = _temp_prefix(path)
    for old in path.parent.glob(glob.escape(prefix) + "*"):
        pid = old.name[len(prefix):].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            remove(old)


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to write a file or folder into; rename it over `path` on
    success, delete it on failure. Readers see the old version or the new one, never a mix. What a
    dead writer of `path` left is removed first."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_temps(path)
    tmp = _temp_sibling(path)
    try:
        yield tmp
        replace(tmp, path)
    finally:
        remove(tmp)


def replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst`; a folder at `dst` is moved aside first (rename cannot replace one)."""
    if dst.is_dir() and not dst.is_symlink():
        old = _temp_sibling(dst)
        os.replace(dst, old)
        os.replace(src, dst)
        shutil.rmtree(old)
    else:
        os.replace(src, dst)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

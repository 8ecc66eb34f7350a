"""Atomic writes and content hashes: every artifact kiln writes appears whole or not at all."""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
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
_TEMP = ".tmp-"
_ASIDE = ".aside"
"""Suffix of a folder's previous version moved aside by the two-rename swap (where the filesystem
cannot exchange two names atomically): `<temp>.aside` beside the complete `<temp>` that replaces it."""


def _temp_prefix(path: Path) -> str:
    return f".{path.name}{_TEMP}{_HOST}-"


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


def _dead_temps(folder: Path, name: str = "*") -> list[Path]:
    """Temporary siblings (`_temp_sibling`, and their `.aside` twins) in `folder` of `name` (a glob)
    whose writer ran on this machine and is no longer running: killed (kill -9, OOM) before it could
    rename or remove them. A writer still running, or on another machine sharing the folder, keeps its own."""
    dead = []
    for old in folder.glob(f".{name}{_TEMP}{glob.escape(_HOST)}-*"):
        pid = old.name.rsplit(f"{_TEMP}{_HOST}-", 1)[1].split("-")[0]
        if pid.isdigit() and not _alive(int(pid)):
            dead.append(old)
    return sorted(dead)


def _recover(path: Path, dead: list[Path]) -> None:
    """Finish a two-rename swap of `path` whose writer died between its renames: the previous version
    lies at `<temp>.aside` and the complete new one at `<temp>`, and nothing at `path`; the new one is
    renamed in (it was complete before the previous one was moved aside). `dead`: `_dead_temps` of `path`."""
    if os.path.lexists(path):
        return
    for aside in dead:
        new = aside.with_name(aside.name.removesuffix(_ASIDE))
        if aside.name.endswith(_ASIDE) and new.exists():
            os.rename(new, path)
            return


def _remove_dead_temps(path: Path) -> list[Path]:
    """What dead writers of `path` left, after finishing a swap one died in the middle of."""
    dead = _dead_temps(path.parent, glob.escape(path.name))
    _recover(path, dead)
    removed = [old for old in dead if os.path.lexists(old)]
    for old in removed:
        remove(old)
    return removed


def remove_dead_temps(folder: Path) -> list[Path]:
    """Remove what writers that died left in `folder` (every path's temporaries, `_dead_temps`), after
    finishing any swap they died in the middle of; returns the removed paths."""
    names = {old.name[1:].rsplit(f"{_TEMP}{_HOST}-", 1)[0] for old in _dead_temps(folder)}
    return sorted(old for name in names for old in _remove_dead_temps(folder / name))


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


_RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
_renameat2 = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names `a` and `b` in one step (Linux renameat2 with RENAME_EXCHANGE, through the C
    library); False where the kernel, C library or filesystem cannot (then nothing changed)."""
    global _renameat2
    if _renameat2 is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _renameat2 = libc.renameat2
            _renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        except (AttributeError, OSError):  # not Linux, or a C library before glibc 2.28
            _renameat2 = False
    if _renameat2 is False:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.EXDEV):  # this filesystem cannot exchange
        return False
    raise OSError(err, os.strerror(err), str(a), None, str(b))


def replace(src: Path, dst: Path) -> None:
    """Rename `src` over `dst`, atomically: `dst` is the previous version or the new one at every
    moment, also when the writer is killed midway. A folder at `dst` (which rename cannot replace) is
    exchanged with `src` in one step and the previous version, now at `src`'s name, deleted; a killed
    writer's leftover is that previous version under its temporary name, which the next writer removes.
    Where the filesystem cannot exchange (NFS, for one), the previous version is renamed aside to
    `<src>.aside` first: a writer killed between the two renames leaves nothing at `dst` until the next
    writer of `dst` (or `remove_dead_temps`) renames the complete `src` in."""
    if not (dst.is_dir() and not dst.is_symlink()):
        os.replace(src, dst)
    elif _exchange(src, dst):
        remove(src)
    else:
        aside = src.with_name(src.name + _ASIDE)
        os.rename(dst, aside)
        os.rename(src, dst)
        remove(aside)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def write_json(path: Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")

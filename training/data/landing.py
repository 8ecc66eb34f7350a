"""The landing zone: which batches are ready, which files belong to which modality, what changed.

    <landing>/<batch>/            read only once it holds a _SUCCESS file
      text/*.jsonl, *.parquet     one record per non-blank line / row, with "text" and optional "id"
      code/**/<file>              one source file each; language from the extension
      images/<file>               .png .jpg .jpeg .webp, described by images/captions.jsonl lines
                                  {"image": "<file>", "caption": "...", "id"?: ..., "match"?: bool}

Batches are processed in name order, so names that sort in landing order (timestamps, counters) make
"the first occurrence" of a duplicate the earliest landed one.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import pyarrow.parquet as pq

from training.fsutil import tree_fingerprint

READY_MARKER = "_SUCCESS"
MODALITY_DIRS = {"text": "text", "code": "code", "image_text": "images"}
CAPTIONS_FILE = "captions.jsonl"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TEXT_EXTENSIONS = frozenset({".jsonl", ".parquet"})
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark Windows tools put at the start of a file: not part of its first line."""


@dataclass(frozen=True)
class Batch:
    name: str
    path: Path

    def files(self, modality: str) -> list[Path]:
        """Every regular file of a modality's folder, sorted; each becomes at least one record."""
        return _walk(self.path / MODALITY_DIRS[modality])

    def unrecognized_files(self) -> list[Path]:
        """Files outside the three modality folders: reported, never read."""
        known = {self.path / d for d in MODALITY_DIRS.values()}
        return [
            p
            for p in _walk(self.path)
            if p.name != READY_MARKER and not any(k in p.parents for k in known)
        ]

    def fingerprint(self, modality: str) -> str:
        return tree_fingerprint(self.path, self.files(modality))

    def stat_fingerprint(self) -> str:
        """Hash of every file's path, size and modification time: what the landing sensor compares on
        each look, cheaply (contents are hashed by the cleaning, whose cache key decides)."""
        h = hashlib.sha256()
        for p in _walk(self.path):
            st = p.stat()
            h.update(f"{p.relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _walk(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath) / f for f in filenames)
    return sorted(p for p in found if p.is_file())


def name_problem(name: str) -> str | None:
    """Why a folder name cannot name a batch (it names a partition, a run tag and paths in every
    record's `source`), or None: undecodable bytes, control characters, or "..."."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "the name is not valid UTF-8"
    if not name.isprintable():
        return "the name holds control characters"
    if "..." in name:
        return 'the name holds "..." (reserved for partition ranges)'
    return None


def _ready_folders(landing: Path) -> list[Path]:
    if not landing.is_dir():
        return []
    return [p for p in sorted(landing.iterdir()) if p.is_dir() and p.name[0] not in "._" and (p / READY_MARKER).is_file()]


def ready_batches(landing: Path) -> list[Batch]:
    """Batches holding `_SUCCESS`, in name order. Folders starting with `.` or `_` are ignored, and so
    are folders whose name cannot name a batch (`unusable_batches` says which, and why)."""
    return [Batch(p.name, p) for p in _ready_folders(landing) if name_problem(p.name) is None]


def unusable_batches(landing: Path) -> dict[str, str]:
    """Ready folders that are not read because of their name: {name (escaped): why}."""
    return {
        p.name.encode("utf-8", "backslashreplace").decode(): problem
        for p in _ready_folders(landing)
        if (problem := name_problem(p.name))
    }


def ready_batch(landing: Path, name: str) -> Batch:
    """The ready batch `name`, or a clear error (it left the landing zone or lost its _SUCCESS)."""
    batch = Batch(name, landing / name)
    if not name or name[0] in "._" or "/" in name or name_problem(name) or not (batch.path / READY_MARKER).is_file():
        raise ValueError(f"{name!r} is not a ready batch of {landing} (no such folder, or no {READY_MARKER} in it)")
    return batch


def source_of(batch: Batch, path: Path, line: int | None = None) -> str:
    rel = f"{batch.name}/{path.relative_to(batch.path).as_posix()}"
    return rel if line is None else f"{rel}:{line}"


def count_records(batch: Batch, modality: str, max_caption_bytes: int) -> int:
    """How many records the cleaning must account for, counted independently of the readers: the
    accounting check compares this with kept + rejected. Caption lines over `max_caption_bytes` are
    rejected unparsed, so the images they name count as uncaptioned."""
    files = batch.files(modality)
    if modality == "code":
        return len(files)
    if modality == "text":  # a link out of the batch is one rejected record, never opened
        return sum(1 if leaves_batch(batch, p) else _count_text_records(p) for p in files)
    captions = batch.path / MODALITY_DIRS[modality] / CAPTIONS_FILE
    lines = _nonblank_lines(captions) if captions.is_file() else []
    captioned = set()
    for raw in lines:
        if len(raw) > max_caption_bytes:
            continue
        try:
            entry = json.loads(raw)
            if isinstance(entry, dict) and isinstance(entry.get("image"), str):
                captioned.add(entry["image"])
        except (ValueError, UnicodeDecodeError):
            pass
    images_dir = captions.parent
    others = [p for p in files if p != captions]
    uncaptioned = [
        p for p in others if not (p.suffix.lower() in IMAGE_EXTENSIONS and p.relative_to(images_dir).as_posix() in captioned)
    ]
    return len(lines) + len(uncaptioned)


def _nonblank_lines(path: Path) -> list[bytes]:
    with open(path, "rb") as f:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
        return [line for line in f if line.strip()]


def leaves_batch(batch: Batch, path: Path) -> bool:
    """Whether `path` (a link, or under a linked folder) resolves outside its batch: such a file is
    rejected as `outside_landing_zone`, never opened, so nothing from elsewhere on the machine is read."""
    return batch.path.resolve() not in path.resolve().parents


def _count_nonblank_lines(path: Path, chunk_bytes: int = 1 << 20) -> int:
    """Lines holding more than whitespace (after a leading byte-order mark), read in bounded chunks:
    a file, or one line of it, can be larger than memory."""
    count, content = 0, False
    with open(path, "rb") as f:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
        while chunk := f.read(chunk_bytes):
            *ended, rest = chunk.split(b"\n")
            for line in ended:
                count += content or bool(line.strip())
                content = False
            content = content or bool(rest.strip())
    return count + content


def _count_text_records(path: Path) -> int:
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return _count_nonblank_lines(path)
    if suffix == ".parquet":
        try:
            return pq.read_metadata(path).num_rows
        except Exception:  # an unreadable file is one rejected record
            return 1
    return 1

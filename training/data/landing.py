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

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from training.config import CleaningConfig
from training.data import shards
from training.data.zone import ObjectPath, arrow_source, batch_root, landing_root, require_zone
from training.fsutil import tree_fingerprint

READY_MARKER = "_SUCCESS"
MODALITY_DIRS = {"text": "text", "code": "code", "image_text": "images"}
CAPTIONS_FILE = "captions.jsonl"
IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".webp"})
COMPRESSIONS = {".gz": "gzip", ".zst": "zstd", ".bz2": "bz2"}
"""JSONL as data tools export it (`.jsonl.gz`, `.jsonl.zst`, `.jsonl.bz2`), decompressed as a stream."""
BOM = b"\xef\xbb\xbf"
"""The UTF-8 byte-order mark Windows tools put at the start of a file: not part of its first line."""
UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
"""A file starting with one of these is UTF-16 (what Windows PowerShell writes by default)."""


@dataclass(frozen=True)
class Batch:
    name: str
    path: Path | ObjectPath
    """A folder of a local landing zone, or a prefix of an object store's (`zone`): entries have the same type."""

    def files(self, modality: str) -> list[Path]:
        """Every entry of a modality's folder that is not a folder, sorted; each becomes at least one
        record. Links to folders are entries, not followed (see `entry_problem`)."""
        return _walk(self.path / MODALITY_DIRS[modality])

    def unrecognized_files(self) -> list[Path]:
        """Files outside the three modality folders: reported, never read."""
        known = {self.path / d for d in MODALITY_DIRS.values()}
        return [
            p
            for p in _walk(self.path)
            if p.name != READY_MARKER and p not in known and not any(k in p.parents for k in known)
        ]

    def fingerprint(self, modality: str) -> str:
        """Hash of a modality's paths and contents. An entry that is never read (`entry_problem`) is
        hashed by what it is (its link target), never opened."""
        files = self.files(modality)
        readable = [p for p in files if entry_problem(self, p) is None]
        if isinstance(self.path, ObjectPath):  # from the listing's ETags: nothing is downloaded
            h = hashlib.sha256("".join(f"{p.relative_to(self.path).as_posix()}\0{p.content_id()}\n" for p in readable).encode())
        else:
            h = hashlib.sha256(tree_fingerprint(self.path, readable).encode())
        for p in files:
            if p not in readable:
                h.update(f"{p.relative_to(self.path).as_posix()}\0{_describe(p)}\n".encode())
        return h.hexdigest()

    def stat_fingerprint(self) -> str:
        """Hash of every entry's path, size and modification time (of a link itself, not what it
        points at): what the landing sensor compares on each look, cheaply (contents are hashed by
        the cleaning, whose cache key decides)."""
        h = hashlib.sha256()
        if isinstance(self.path, ObjectPath):  # size, ETag and time of each object, from one listing
            for p in _walk(self.path):
                h.update(f"{p.relative_to(self.path).as_posix()}\0{p.change_id()}\n".encode())
            return h.hexdigest()
        for p in _walk(self.path):
            st = p.lstat()
            h.update(f"{p.relative_to(self.path).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()


def _walk(root: Path | ObjectPath) -> list:
    """Every entry under `root` that is not a real folder, sorted: files, links (to files, to folders,
    or dangling), pipes, sockets, devices. Links to folders are listed, never descended, and so is
    `root` itself when it is a link: nothing is listed from outside the landing zone. Under a prefix
    of an object store: its objects, from the batch's one listing."""
    if isinstance(root, ObjectPath):
        return root.entries()
    if root.is_symlink():
        return [root]
    if not root.is_dir():
        return []
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        found.extend(Path(dirpath) / d for d in dirnames if (Path(dirpath) / d).is_symlink())
        found.extend(Path(dirpath) / f for f in filenames)
    return sorted(found)


def _describe(path: Path | ObjectPath) -> str:
    if isinstance(path, ObjectPath):
        return f"object {path.as_posix()!r}"
    return f"link to {os.readlink(path)}" if path.is_symlink() else f"mode {path.lstat().st_mode:o}"


def entry_problem(batch: Batch, path: Path) -> tuple[str, str] | None:
    """Why an entry of a batch is not read, as (reason, detail), or None for a regular file inside the
    batch. It becomes one rejected record, never opened: a link (or a file under a linked folder) that
    resolves outside the batch, `outside_landing_zone`, so nothing from elsewhere on the machine is
    read; a link to a folder inside the batch, `linked_folder` (its files are read where they are, not
    twice); a named pipe, socket or device, or a dangling link, `not_a_regular_file` (opening a pipe
    would wait forever)."""
    if leaves_batch(batch, path):
        return "outside_landing_zone", f"{_describe(path)}: outside the batch; not read"
    if path.is_dir():
        return "linked_folder", f"{_describe(path)}: a link to a folder of the batch, not followed"
    if not path.is_file():
        return "not_a_regular_file", f"{_describe(path)}: not a regular file; not read"
    return None


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


def folder_problem(folder: Path | ObjectPath) -> str | None:
    """Why a ready folder of the landing zone cannot be a batch, or None: its name (`name_problem`),
    or it is a link: a linked batch folder would read a folder from elsewhere on the machine."""
    if folder.is_symlink():
        return "the folder is a link (a batch must be a real folder of the landing zone)"
    return name_problem(folder.name)


def _ready_folders(landing: Path | ObjectPath | str) -> list:
    """The landing zone's ready folders (prefixes holding `_SUCCESS`), sorted; a landing zone that does
    not exist, or cannot be listed, raises `zone.LandingZoneNotFound`, whatever its scheme."""
    landing = landing_root(landing)
    require_zone(landing)
    if isinstance(landing, ObjectPath):
        landing.fs.invalidate_cache()
        prefixes = sorted(i["name"].rstrip("/") for i in landing.fs.ls(landing.key, detail=True) if i.get("type") == "directory")
        folders = [batch_root(landing, key.rsplit("/", 1)[-1]) for key in prefixes]
        # _SUCCESS by one request each (HEAD), not by listing the whole batch: a batch is listed when read.
        return [p for p in folders if p.name and p.name[0] not in "._" and ObjectPath(p.fs, f"{p.key}/{READY_MARKER}").is_file()]
    return [p for p in sorted(landing.iterdir()) if p.is_dir() and p.name[0] not in "._" and (p / READY_MARKER).is_file()]


def ready_batches(landing: Path | ObjectPath | str) -> list[Batch]:
    """Batches holding `_SUCCESS`, in name order. Folders starting with `.` or `_` are ignored, and so
    are folders that cannot be a batch (`unusable_batches` says which, and why). `landing` is a folder
    or a URL (`zone.landing_root`)."""
    return [Batch(p.name, p) for p in _ready_folders(landing) if folder_problem(p) is None]


def unusable_batches(landing: Path | ObjectPath | str) -> dict[str, str]:
    """Ready folders that are not read: {name (escaped): why}."""
    return {
        p.name.encode("utf-8", "backslashreplace").decode(): problem
        for p in _ready_folders(landing)
        if (problem := folder_problem(p))
    }


def ready_batch(landing: Path | ObjectPath | str, name: str) -> Batch:
    """The ready batch `name`, or a clear error (it left the landing zone or lost its _SUCCESS; the
    zone itself cannot be found: `zone.LandingZoneNotFound`)."""
    landing = landing_root(landing)
    require_zone(landing)
    batch = Batch(name, batch_root(landing, name))
    if not name or name[0] in "._" or "/" in name or folder_problem(batch.path) or not (batch.path / READY_MARKER).is_file():
        raise ValueError(f"{name!r} is not a ready batch of {landing} (no such folder, a link, or no {READY_MARKER} in it)")
    return batch


def source_of(batch: Batch, path: Path, line: int | None = None) -> str:
    rel = f"{batch.name}/{path.relative_to(batch.path).as_posix()}"
    return rel if line is None else f"{rel}:{line}"


def count_records(batch: Batch, modality: str, cfg: CleaningConfig) -> int:
    """How many records the cleaning must account for, counted independently of the readers: the
    accounting check compares this with kept + rejected. Every line is read up to its bound (a
    longer one is one record, skipped over, never held: a decompression bomb included). Caption
    lines over `max_caption_bytes` are rejected unparsed, so the images they name count as
    uncaptioned. A Parquet file counts its rows (from its footer), a shard its samples (from its
    headers, `shards.count_samples`); an entry that is not read (a link out of the batch) is one."""
    files = batch.files(modality)
    if modality == "code":
        return sum(_parquet_row_count(p) if p.suffix.lower() == ".parquet" and not entry_problem(batch, p) else 1 for p in files)
    if modality == "text":
        return sum(1 if entry_problem(batch, p) else _count_text_records(p, cfg.text.max_record_bytes) for p in files)
    max_caption_bytes = cfg.image.max_caption_bytes
    captions = batch.path / MODALITY_DIRS[modality] / CAPTIONS_FILE
    readable = captions in files and entry_problem(batch, captions) is None
    lines: list[bytes | None] = []
    broken = False  # a captions file that breaks off part-way is one more record
    if readable:
        try:
            lines.extend(raw for _, raw in read_lines(captions, max_caption_bytes))
        except OSError:
            broken = True
    captioned = set()
    for raw in lines:
        if raw is None:  # over the limit: rejected unparsed
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
    names = {p.relative_to(images_dir).as_posix() for p in others}
    return len(lines) + broken + sum(_count_image_file(batch, p, images_dir, names) for p in uncaptioned) + (captions in files and not readable)


def _count_image_file(batch: Batch, path: Path, images_dir: Path, names: set[str]) -> int:
    """Records a file of images/ that no caption line names holds: a shard's samples, a Parquet
    file's rows; one for anything else (an uncaptioned image, a shard's img2dataset log beside it)."""
    if entry_problem(batch, path) or shards.companion_of(path.relative_to(images_dir).as_posix(), names):
        return 1
    if shards.is_shard(path.name):
        try:
            with path.open("rb") as f:
                return shards.count_samples(f)
        except OSError:
            return 1
    return _parquet_row_count(path) if path.suffix.lower() == ".parquet" else 1


def _parquet_row_count(path: Path) -> int:
    """Rows of a Parquet file, from its footer; one (a rejected record) when it cannot be read."""
    try:
        source = arrow_source(path)
        try:
            return pq.read_metadata(source).num_rows
        finally:
            if not isinstance(source, str):
                source.close()
    except Exception:  # pyarrow raises several types for a file that is not Parquet
        return 1


def is_jsonl(path: Path) -> bool:
    """JSON Lines: `.jsonl`, compressed or not, and compressed `.json` (Dolma's `documents/*.json.gz`
    hold one document per line). A plain `.json` is one JSON value, not records: not read."""
    name = path.name.lower()
    return name.endswith(".jsonl") or any(name.endswith(f".jsonl{ext}") or name.endswith(f".json{ext}") for ext in COMPRESSIONS)


class _Raw(io.RawIOBase):
    """A pyarrow decompressing stream as a raw file, so `io.BufferedReader` can read it by lines."""

    def __init__(self, stream):
        self.stream = stream

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.stream.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def close(self) -> None:
        self.stream.close()
        super().close()


@contextlib.contextmanager
def open_lines(path: Path) -> Iterator[tuple[BinaryIO, str]]:
    """A JSONL or captions file as a binary stream positioned after any byte-order mark, and its
    encoding ("utf-8" or "utf-16"), decompressed on the fly when its name ends in a compression
    extension. Raises OSError when it cannot be opened or decompressed."""
    codec = COMPRESSIONS.get(path.suffix.lower())
    try:
        raw = io.BufferedReader(_Raw(pa.input_stream(arrow_source(path), compression=codec)), 1 << 16) if codec else path.open("rb")
    except pa.ArrowException as e:
        raise OSError(f"cannot decompress: {e}") from e
    with raw:
        head = raw.peek(3)[:3] if codec else raw.read(3)
        encoding, skip = ("utf-8", 3) if head == BOM else ("utf-16", 0) if head[:2] in UTF16_BOMS else ("utf-8", 0)
        if codec:
            raw.read(skip)
        else:
            raw.seek(skip)
        yield raw, encoding


def read_lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """(1-based line number, raw UTF-8 line) for each non-blank line; None for a line longer than
    `limit` bytes (newline included), whose rest is skipped over while streaming, never held: a
    line that decompresses to many GB costs `limit` bytes of memory. UTF-16 is transcoded to UTF-8
    (its limit counts characters). A file that cannot be read, or whose compressed stream breaks,
    raises OSError."""
    with open_lines(path) as (f, encoding):
        if encoding == "utf-16":
            f = io.TextIOWrapper(f, encoding="utf-16", errors="surrogateescape", newline="\n")  # type: ignore[assignment]
        number = 0
        while True:
            try:
                line = f.readline(limit + 1)
                oversized = len(line) > limit
                if oversized and not line.endswith("\n" if isinstance(line, str) else b"\n"):
                    _skip_line(f)
            except (EOFError, ValueError, pa.ArrowException) as e:  # a truncated or corrupt stream
                raise OSError(f"{path.name}: {e}") from e
            if not line:
                return
            number += 1
            if oversized:
                yield number, None
            elif line.strip():
                yield number, line.encode("utf-8", "surrogateescape") if isinstance(line, str) else line


def _skip_line(f) -> None:  # noqa: ANN001 (a binary or text stream)
    """Read past the next newline, a buffer at a time, keeping nothing (a buffered binary stream is
    searched in its own buffer: several times faster than reading it by lines)."""
    if isinstance(f, io.BufferedReader):
        while chunk := f.peek(1):
            end = chunk.find(b"\n")
            f.read(len(chunk) if end < 0 else end + 1)
            if end >= 0:
                return
        return
    newline = "\n" if isinstance(f, io.TextIOBase) else b"\n"
    while (part := f.readline(1 << 20)) and not part.endswith(newline):
        pass


def leaves_batch(batch: Batch, path: Path | ObjectPath) -> bool:
    """Whether `path` (a link, or under a linked folder) resolves outside its batch: such a file is
    rejected as `outside_landing_zone`, never opened, so nothing from elsewhere on the machine is read."""
    return batch.path.resolve() not in path.resolve().parents


def _count_nonblank_lines(path: Path, chunk_bytes: int = 1 << 20) -> int:
    """Lines holding more than whitespace (after a leading byte-order mark), read in bounded chunks:
    a file, or one line of it, can be larger than memory."""
    count, content = 0, False
    with path.open("rb") as f:
        if f.read(len(BOM)) != BOM:
            f.seek(0)
        while chunk := f.read(chunk_bytes):
            *ended, rest = chunk.split(b"\n")
            for line in ended:
                count += content or bool(line.strip())
                content = False
            content = content or bool(rest.strip())
    return count + content


def _count_text_records(path: Path, max_record_bytes: int) -> int:
    """Records one text file holds. A file that cannot be read is one rejected record; one whose
    stream breaks part-way, the lines before the break and one record for the rest. Lines are read
    up to `max_record_bytes`, as the reader reads them."""
    if path.suffix.lower() == ".parquet":
        return _parquet_row_count(path)
    if not is_jsonl(path):
        return 1
    count = 0
    try:
        if path.suffix.lower() == ".jsonl":
            with open_lines(path) as (_, encoding):
                pass
            if encoding == "utf-8":
                return _count_nonblank_lines(path)
        for _ in read_lines(path, max_record_bytes):  # compressed or UTF-16: line by line, as the reader
            count += 1
    except OSError:
        return count + 1
    return count

"""Readers for the formats users' own tools write, each becoming kiln's usual records:

    images/<name>.tar, .tar.gz, .tgz   WebDataset shards (img2dataset, LAION, DataComp, COYO): one
                                       record per sample, source `batch/images/00000.tar:000000012`
    images/<name>.parquet              pairs with an image column (bytes or a `{bytes, path}` struct,
                                       Hugging Face's `Image` feature) and a caption column
    code/**/<name>.parquet             code as rows (The Stack, StarCoder data): content, path and
                                       language columns, source `batch/code/the-stack.parquet:77`
    text/*.parquet                     rows with a text column (FineWeb, Dolma exports)

Which field holds what is the column mapping of the modality's config (`TextFilterConfig.text_field`,
`CodeFilterConfig.content_field`, `ImageFilterConfig.caption_field`, ...). Every row and sample is
one record; what cannot be used is a record rejected with its reason, never an exception. Reads are
bounded: Parquet a row group at a time (never the file), a shard's members by their declared sizes
(an image above `max_image_bytes`, a caption or `.json` above `max_caption_bytes` is not read).
Images are decoded later, by `ImageDecode`, header first, from the bytes the record carries.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import pyarrow.parquet as pq

from training.config import CodeFilterConfig, ImageFilterConfig
from training.data import shards
from training.data.landing import Batch, source_of
from training.data.records import Record, Reject
from training.data.zone import arrow_source

IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")
"""A shard member with one of these extensions is its sample's image (the first, in shard order)."""

LANGUAGE_NAMES = {
    "python": "python",
    "javascript": "javascript",
    "js": "javascript",
    "typescript": "typescript",
    "ts": "typescript",
    "tsx": "tsx",
    "java": "java",
    "c": "c",
    "c++": "cpp",
    "cpp": "cpp",
    "go": "go",
    "golang": "go",
    "rust": "rust",
}
"""A language column's value (lower-cased: The Stack writes "Python", "C++") -> Tree-sitter grammar."""


def _rejected(source: str, modality: str, reason: str, detail: str) -> Record:
    return Record(source, modality, source, reject=Reject(reason, detail))


# --- Parquet, a row group at a time -----------------------------------------------------------------


def parquet_rows(
    batch: Batch, path: Path, columns: list[str], modality: str, batch_rows: int = 1024,
) -> Iterator[tuple[str, dict[str, Any] | Record]]:
    """(source, row) for each row of a Parquet file, with those of `columns` the file has (a row is
    `{}` when it has none), decoded `batch_rows` rows at a time within a row group (memory: the row
    group's compressed columns and one batch, never the file); a rejected `file_unreadable` Record in
    place of each row of a row group from where it cannot be read, and one for the whole file when it
    cannot be opened."""
    file_source = source_of(batch, path)
    with contextlib.ExitStack() as stack:
        try:
            src = arrow_source(path)
            if not isinstance(src, str):
                stack.callback(src.close)
            pf = pq.ParquetFile(src)
        except Exception as e:  # pyarrow raises several types for a file that is not Parquet
            yield file_source, _rejected(file_source, modality, "file_unreadable", str(e)[:500])
            return
        names = set(pf.schema_arrow.names)
        present = [c for c in dict.fromkeys(columns) if c in names]
        row = 0
        for group in range(pf.num_row_groups):
            end = row + pf.metadata.row_group(group).num_rows
            try:
                parts = pf.iter_batches(batch_size=batch_rows, row_groups=[group], columns=present) if present else [[{}] * (end - row)]
                for part in parts:
                    for obj in part if isinstance(part, list) else part.to_pylist():
                        row += 1
                        yield f"{file_source}:{row}", obj
            except Exception as e:
                while row < end:
                    row += 1
                    src_i = f"{file_source}:{row}"
                    yield src_i, _rejected(src_i, modality, "file_unreadable", f"row group {group}: {str(e)[:300]}")
            row = end


def record_id(obj: dict[str, Any], field: str, default: str) -> tuple[str, Reject | None]:
    """A record's id from `obj[field]`: a non-empty string or integer; absent, `default`."""
    raw = obj.get(field)
    if raw is None:
        return default, None
    if isinstance(raw, bool) or not isinstance(raw, (str, int)) or raw == "" or not encodable(str(raw)):
        return default, Reject("id_invalid", f"{field!r} must be a non-empty string or integer, got {type(raw).__name__}")
    return str(raw), None


def encodable(s: str) -> bool:
    """JSON escapes can smuggle lone surrogates into a str; they cannot be written as UTF-8."""
    try:
        s.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _caption(value: Any, field: str, max_bytes: int) -> tuple[str | None, Reject | None]:
    """A caption from a column or a `.json` field: (caption, None), or (what there is, why not)."""
    if isinstance(value, bytes):
        try:
            value = value.decode("utf-8")
        except UnicodeDecodeError as e:
            return None, Reject("utf8_invalid", f"{field!r}: byte {e.start}: {e.reason}")
    if value is None:
        return None, Reject("caption_missing", f"no {field!r}")
    if not isinstance(value, str):
        return None, Reject("caption_invalid", f"{field!r} is {type(value).__name__}")
    if not encodable(value):
        return None, Reject("utf8_invalid", f"lone surrogate in {field!r}")
    if len(value.encode()) > max_bytes:
        return None, Reject("record_too_large", f"{field!r}: {len(value.encode())} bytes > {max_bytes}")
    if not value.strip():
        return value, Reject("caption_empty", "empty or whitespace-only caption")
    return value, None


# --- Pairs: Parquet with an image column ---------------------------------------------------------


def read_image_parquet(batch: Batch, path: Path, cfg: ImageFilterConfig) -> Iterator[Record]:
    for source, row in parquet_rows(batch, path, [cfg.image_field, cfg.caption_field, cfg.id_field], "image_text", batch_rows=64):
        if isinstance(row, Record):
            yield row
            continue
        rec = Record(source, "image_text", source)
        rec.id, rec.reject = record_id(row, cfg.id_field, source)
        image = row.get(cfg.image_field)
        name = image.get("path") if isinstance(image, dict) else None
        data = image.get("bytes") if isinstance(image, dict) else image
        if isinstance(name, str) and encodable(name):
            rec.metadata = json.dumps({"path": name}, ensure_ascii=False)
        if rec.reject:
            pass
        elif data is None:
            detail = f"no {cfg.image_field!r} column" if cfg.image_field not in row else f"{cfg.image_field!r} holds no bytes"
            rec.reject = Reject("image_missing", detail + ("" if name is None else f" (its path {name!r} is a name, never opened)"))
        elif not isinstance(data, bytes):
            rec.reject = Reject("image_unreadable", f"{cfg.image_field!r} is {type(data).__name__}, not bytes or {{bytes, path}}")
        elif len(data) > cfg.max_image_bytes:
            rec.reject = Reject("file_too_large", f"{len(data)} bytes > {cfg.max_image_bytes}")
        else:
            rec.text, rec.reject = _caption(row.get(cfg.caption_field), cfg.caption_field, cfg.max_caption_bytes)
            if rec.reject is None:
                rec.image_bytes = data
        yield rec


# --- Pairs: WebDataset shards ----------------------------------------------------------------------


@dataclass
class _Member:
    name: str
    extension: str
    size: int
    regular: bool
    data: bytes | None = None


def _outside(name: str) -> bool:
    """A member name that would point outside the shard if extracted: absolute, or with a `..` part."""
    return name.startswith("/") or ".." in PurePosixPath(name).parts


def _wanted(member: _Member, cfg: ImageFilterConfig, read: set[str]) -> bool:
    """Whether a member's content is read: the sample's first image, caption and metadata, within bounds;
    `read`: the extensions of its members read so far (a second of one kind is never read: the sample is
    malformed whatever it holds)."""
    if not member.regular or _outside(member.name):
        return False
    if member.extension in IMAGE_MEMBERS:
        return read.isdisjoint(IMAGE_MEMBERS) and member.size <= cfg.max_image_bytes
    return member.extension in ("txt", "json") and member.extension not in read and member.size <= cfg.max_caption_bytes


def read_shard(batch: Batch, path: Path, cfg: ImageFilterConfig) -> Iterator[Record]:
    """One record per sample of a WebDataset shard (`shards.count_samples` counts them from the
    headers). A shard that breaks off ends with the sample it broke in, rejected, and one
    `file_unreadable` record for the rest."""
    file_source = source_of(batch, path)
    members: list[_Member] = []
    read: set[str] = set()
    key: str | None = None
    broken = None
    try:
        f = path.open("rb")
    except OSError as e:
        yield _rejected(file_source, "image_text", "file_unreadable", f"{type(e).__name__}: {e.strerror or e}"[:500])
        return
    with f:
        try:
            tar = shards.open_shard(f)
        except shards.ERRORS as e:
            yield _rejected(file_source, "image_text", "file_unreadable", f"cannot be read as a tar archive: {type(e).__name__}: {e}"[:500])
            return
        with tar:
            while broken is None:
                try:
                    info = tar.next()
                except shards.ERRORS as e:
                    broken = f"{type(e).__name__}: {e}"
                    break
                if info is None:
                    break
                tar.members = []  # tarfile keeps every header it read: nothing is kept per member
                if info.isdir():
                    continue
                k, extension = shards.member_key(info.name)
                if members and (k is None or k != key):
                    yield _sample(file_source, key, members, cfg)
                    members, read = [], set()
                key = k
                member = _Member(info.name, extension, info.size, info.isreg())
                if _wanted(member, cfg, read):
                    try:
                        member.data = tar.extractfile(info).read()  # type: ignore[union-attr]
                        read.add(extension)
                    except shards.ERRORS as e:
                        broken = f"{type(e).__name__} in {info.name!r}: {e}"
                members.append(member)
    if members:
        yield _sample(file_source, key, members, cfg, broken)
    if broken is not None:
        yield _rejected(file_source, "image_text", "file_unreadable", f"the shard cannot be read past this point: {broken}"[:500])


def _sample(file_source: str, key: str | None, members: list[_Member], cfg: ImageFilterConfig, broken: str | None = None) -> Record:
    """A sample's record, judged once all its members are seen."""
    source = f"{file_source}:{key if key is not None else members[0].name}"
    rec = Record(source, "image_text", source)
    by_extension: dict[str, _Member] = {}
    duplicate = next((m for m in members if by_extension.setdefault(m.extension, m) is not m), None)
    images = [m for m in members if m.extension in IMAGE_MEMBERS]
    meta = by_extension.get("json")
    caption_member = by_extension.get("txt")
    why: tuple[str, str] | None = None
    if not encodable(source):
        rec.id = rec.source = source.encode("utf-8", "replace").decode()
        why = ("utf8_invalid", "the member's name is not valid UTF-8")
    elif any(_outside(m.name) for m in members):
        why = ("outside_landing_zone", f"member {next(m.name for m in members if _outside(m.name))!r} points outside the shard; not read")
    elif key is None:
        why = ("unsupported_extension", f"member {members[0].name!r} has no extension: it belongs to no sample")
    elif broken is not None:
        why = ("file_unreadable", f"the shard breaks off in this sample: {broken}")
    elif bad := next((m for m in members if not m.regular), None):
        why = ("not_a_regular_file", f"member {bad.name!r} is a link or special file; not read")
    elif duplicate is not None:
        why = ("sample_malformed", f"two '.{duplicate.extension}' members for key {key!r}")
    elif not images:
        why = ("image_missing", f"no {', '.join('.' + e for e in IMAGE_MEMBERS)} member")
    elif images[0].size > cfg.max_image_bytes:
        why = ("file_too_large", f"{images[0].name}: {images[0].size} bytes > {cfg.max_image_bytes}")
    elif meta is not None and meta.data is None:
        why = ("record_too_large", f"{meta.name}: {meta.size} bytes > {cfg.max_caption_bytes}")
    if why:
        rec.reject = Reject(*why)
        return rec
    obj: dict[str, Any] = {}
    if meta is not None:
        try:
            obj = json.loads(meta.data)  # type: ignore[arg-type]
        except UnicodeDecodeError as e:
            rec.reject = Reject("utf8_invalid", f"{meta.name}: {e}")
            return rec
        except ValueError as e:
            rec.reject = Reject("json_malformed", f"{meta.name}: {e}")
            return rec
        if not isinstance(obj, dict):
            rec.reject = Reject("json_malformed", f"{meta.name}: expected an object, got {type(obj).__name__}")
            return rec
        rec.metadata = json.dumps(obj, ensure_ascii=False)
        rec.id, rec.reject = record_id(obj, cfg.id_field, source)
    if rec.reject:
        return rec
    if cfg.shard_caption == "json":
        rec.text, rec.reject = _caption(obj.get(cfg.caption_field), f"{key}.json's {cfg.caption_field}", cfg.max_caption_bytes)
    elif caption_member is None:
        rec.reject = Reject("caption_missing", f"no '{key}.txt' member")
    elif caption_member.data is None:
        rec.reject = Reject("record_too_large", f"{caption_member.name}: {caption_member.size} bytes > {cfg.max_caption_bytes}")
    else:
        rec.text, rec.reject = _caption(caption_member.data, caption_member.name, cfg.max_caption_bytes)
    if rec.reject is None:
        rec.image_bytes = images[0].data
    return rec


# --- Code as Parquet rows --------------------------------------------------------------------------


def read_code_parquet(batch: Batch, path: Path, cfg: CodeFilterConfig, languages: dict[str, str]) -> Iterator[Record]:
    """One record per row; the language from `cfg.language_field` (`LANGUAGE_NAMES`), or from the
    path's extension (`languages`, the code/ folder's extension map) when the column is absent or null."""
    columns = [cfg.content_field, *cfg.path_fields, cfg.language_field, cfg.id_field]
    for source, row in parquet_rows(batch, path, columns, "code", batch_rows=256):
        if isinstance(row, Record):
            yield row
            continue
        rec = Record(source, "code", source)
        rec.id, rec.reject = record_id(row, cfg.id_field, source)
        name = next((row[f] for f in cfg.path_fields if isinstance(row.get(f), str)), None)
        if name is not None and encodable(name):
            rec.metadata = json.dumps({"path": name}, ensure_ascii=False)
        named = row.get(cfg.language_field)
        if rec.reject:
            pass
        elif isinstance(named, str) and named.strip():
            rec.language = LANGUAGE_NAMES.get(named.strip().lower())
            by_path = languages.get(PurePosixPath(name).suffix.lower()) if name else None
            if rec.language is None:
                rec.reject = Reject("unsupported_language", f"{cfg.language_field!r} is {named[:50]!r}: no grammar")
            elif by_path and rec.language in by_path.split("_or_"):
                rec.language = by_path  # a `.h` labelled "C" may be C++ (The Stack files headers under C): the filter decides
        elif name is None:
            rec.reject = Reject("unsupported_language", f"no {cfg.language_field!r} and no path to tell the language by")
        else:
            suffix = PurePosixPath(name).suffix.lower()
            rec.language = languages.get(suffix)
            if rec.language is None:
                rec.reject = Reject("unsupported_extension", f"'{suffix or name[:100]}' has no grammar")
        if rec.reject is None:
            rec.text, rec.reject = _content(row.get(cfg.content_field), cfg)
        yield rec


def _content(value: Any, cfg: CodeFilterConfig) -> tuple[str | None, Reject | None]:
    """A row's source text, by the rules of a file in code/: size, NUL bytes, UTF-8, not blank."""
    if value is None:
        return None, Reject("content_missing", f"no {cfg.content_field!r}")
    if isinstance(value, str):
        if not encodable(value):
            return None, Reject("undecodable", f"lone surrogate in {cfg.content_field!r}")
        value = value.encode()
    if not isinstance(value, bytes):
        return None, Reject("content_missing", f"{cfg.content_field!r} is {type(value).__name__}, not text")
    if len(value) > cfg.max_file_bytes:
        return None, Reject("file_too_large", f"{len(value)} bytes > {cfg.max_file_bytes}")
    if not value:
        return None, Reject("file_empty", "0 bytes")
    if b"\0" in value[: cfg.binary_sniff_bytes]:
        return None, Reject("binary_file", f"NUL byte in the first {cfg.binary_sniff_bytes} bytes")
    try:
        text = value.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        return None, Reject("undecodable", f"not UTF-8 at byte {e.start}")
    if not text.strip():
        return None, Reject("file_empty", "whitespace only")
    return text, None

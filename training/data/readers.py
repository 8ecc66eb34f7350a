"""Readers turn a batch's files into records. Every line, row or file becomes exactly one record;
what cannot be decoded becomes a record that is already rejected, with its reason. Nothing raises
on bad input and nothing is skipped, except blank JSONL lines, which hold no record.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from training.config import CodeFilterConfig, ImageFilterConfig, TextFilterConfig
from training.data import shards
from training.data.formats import encodable as _encodable
from training.data.formats import parquet_rows, read_code_parquet, read_image_parquet, read_shard, record_id
from training.data.landing import CAPTIONS_FILE, IMAGE_EXTENSIONS, MODALITY_DIRS, Batch, entry_problem, is_jsonl, read_lines, source_of
from training.data.zone import ObjectPath, arrow_source, read_ahead
from training.data.records import Record, Reject

# Extension -> Tree-sitter grammar. `.h` holds C or C++: the code filter tries both and records which.
CODE_LANGUAGES = {
    ".py": "python",
    ".pyi": "python",
    ".js": "javascript",
    ".mjs": "javascript",
    ".cjs": "javascript",
    ".jsx": "javascript",
    ".ts": "typescript",
    ".mts": "typescript",
    ".cts": "typescript",
    ".tsx": "tsx",
    ".java": "java",
    ".c": "c",
    ".h": "c_or_cpp",
    ".cc": "cpp",
    ".cpp": "cpp",
    ".cxx": "cpp",
    ".hh": "cpp",
    ".hpp": "cpp",
    ".hxx": "cpp",
    ".go": "go",
    ".rs": "rust",
}


def _utf8(raw: bytes) -> tuple[str | None, Reject | None]:
    try:
        return raw.decode("utf-8"), None
    except UnicodeDecodeError as e:
        return None, Reject("utf8_invalid", f"byte {e.start}: {e.reason}")


def _record_id(obj: dict[str, Any], default: str) -> tuple[str, Reject | None]:
    return record_id(obj, "id", default)


def _text_record(obj: Any, source: str, cfg: TextFilterConfig) -> Record:
    """A record from a JSONL object or a Parquet row: the text in `cfg.text_field`, the id in `cfg.id_field`."""
    rec = Record(id=source, modality="text", source=source)
    if not isinstance(obj, dict):
        rec.reject = Reject("json_malformed", f"expected an object, got {type(obj).__name__}")
        return rec
    rec.id, rec.reject = record_id(obj, cfg.id_field, source)
    field = cfg.text_field
    text = obj.get(field)
    if rec.reject:
        pass
    elif text is None:
        rec.reject = Reject("text_missing", f"no {field!r} field" if field not in obj else f"{field!r} is null")
    elif isinstance(text, bytes):
        text, rec.reject = _utf8(text)
    elif not isinstance(text, str):
        rec.reject = Reject("text_not_string", f"{field!r} is {type(text).__name__}")
    if isinstance(text, str) and not rec.reject:
        if not _encodable(text):
            rec.reject = Reject("utf8_invalid", f"lone surrogate in {field!r}")
        elif len(text) > cfg.max_record_bytes:
            rec.reject = Reject("record_too_large", f"{len(text)} characters > {cfg.max_record_bytes}")
        else:
            rec.text = text
    return rec


def _read_jsonl(batch: Batch, path: Path, cfg: TextFilterConfig) -> Iterator[Record]:
    file_source = source_of(batch, path)  # once per file: a path computation per line costs more than the JSON
    for number, raw in read_lines(path, cfg.max_record_bytes):
        source = f"{file_source}:{number}"
        if raw is None:
            yield Record(source, "text", source, reject=Reject("record_too_large", f"line > {cfg.max_record_bytes} bytes"))
            continue
        line, bad = _utf8(raw)
        if bad:
            yield Record(source, "text", source, text=raw.decode("utf-8", "replace"), reject=bad)
            continue
        try:
            obj = json.loads(line)
        except ValueError as e:
            yield Record(source, "text", source, text=line.rstrip("\n"), reject=Reject("json_malformed", str(e)))
            continue
        yield _text_record(obj, source, cfg)


def _read_parquet(batch: Batch, path: Path, cfg: TextFilterConfig) -> Iterator[Record]:
    hint = None  # a file without the text column says which columns it has: most often the fix is text_field
    for source, row in parquet_rows(batch, path, [cfg.text_field, cfg.id_field], "text"):
        if isinstance(row, Record):
            yield row
            continue
        rec = _text_record(row, source, cfg)
        if rec.reject and rec.reject.reason == "text_missing" and cfg.text_field not in row:
            hint = hint or Reject("text_missing", f"no {cfg.text_field!r} column; the file has {_columns(path)}: "
                                  "TextFilterConfig.text_field names the one holding the text")
            rec.reject = hint
        yield rec


def _columns(path: Path, shown: int = 12) -> str:
    src = arrow_source(path)
    try:
        names = pq.read_schema(src).names
    finally:
        if not isinstance(src, str):
            src.close()
    return ", ".join(map(repr, names[:shown])) + (f" and {len(names) - shown} more" if len(names) > shown else "")


def _unread(batch: Batch, path: Path, modality: str) -> Record | None:
    """A rejected record for an entry that is not read (`entry_problem`: a link out of the batch, a
    linked folder, a pipe): it is never opened."""
    problem = entry_problem(batch, path)
    if problem is None:
        return None
    src = source_of(batch, path)
    return Record(src, modality, src, reject=Reject(*problem))


def _unreadable(batch: Batch, path: Path, modality: str, records: Iterator[Record]) -> Iterator[Record]:
    """A file's records; if reading it fails (permission denied, an I/O error, a corrupt compressed
    stream), one `file_unreadable` record in place of the rest."""
    try:
        yield from records
    except OSError as e:
        src = source_of(batch, path)
        yield Record(src, modality, src, reject=Reject("file_unreadable", f"{type(e).__name__}: {e.strerror or e}"[:500]))


def read_text(batch: Batch, cfg: TextFilterConfig) -> Iterator[Record]:
    for path in batch.files("text"):
        suffix = path.suffix.lower()
        if unread := _unread(batch, path, "text"):
            yield unread
        elif is_jsonl(path):
            yield from _unreadable(batch, path, "text", _read_jsonl(batch, path, cfg))
        elif suffix == ".parquet":
            yield from _read_parquet(batch, path, cfg)
        else:
            src = source_of(batch, path)
            yield Record(src, "text", src, reject=Reject("unsupported_extension", f"'{suffix}' in text/"))


def read_code(batch: Batch, cfg: CodeFilterConfig) -> Iterator[Record]:
    """One record per source file, one per row of a `.parquet` file (`formats.read_code_parquet`)."""
    files = batch.files("code")
    # From an object store, the files to read are fetched a window ahead; locally each is read when reached.
    ahead = read_ahead(files, lambda p: _read_bytes(p) if _read_whole(batch, p, cfg) else None) if isinstance(batch.path, ObjectPath) else None
    for path in files:
        fetched = next(ahead)[1] if ahead else None
        if unread := _unread(batch, path, "code"):
            yield unread
            continue
        if path.suffix.lower() == ".parquet":
            yield from read_code_parquet(batch, path, cfg, CODE_LANGUAGES)
            continue
        src = source_of(batch, path)
        rec = Record(src, "code", src, language=CODE_LANGUAGES.get(path.suffix.lower()))
        size = path.stat().st_size
        if rec.language is None:
            rec.reject = Reject("unsupported_extension", f"'{path.suffix or path.name}' has no grammar")
        elif size > cfg.max_file_bytes:
            rec.reject = Reject("file_too_large", f"{size} bytes > {cfg.max_file_bytes}")
        elif size == 0:
            rec.reject = Reject("file_empty", "0 bytes")
        elif (data := fetched if ahead else _read_bytes(path)) is None:
            rec.reject = Reject("file_unreadable", "the file cannot be read (permission, I/O error)")
        else:
            if b"\0" in data[: cfg.binary_sniff_bytes]:
                rec.reject = Reject("binary_file", f"NUL byte in the first {cfg.binary_sniff_bytes} bytes")
            else:
                try:
                    rec.text = data.decode("utf-8-sig")
                except UnicodeDecodeError as e:
                    rec.reject = Reject("undecodable", f"not UTF-8 at byte {e.start}")
                else:
                    if not rec.text.strip():
                        rec.reject = Reject("file_empty", "whitespace only")
        yield rec


def _read_whole(batch: Batch, path: Path | ObjectPath, cfg: CodeFilterConfig) -> bool:
    """Whether `read_code` reads the file whole (a source file of a known language within its bounds)."""
    suffix = path.suffix.lower()
    size = path.stat().st_size
    return suffix in CODE_LANGUAGES and 0 < size <= cfg.max_file_bytes and entry_problem(batch, path) is None


def _read_bytes(path: Path) -> bytes | None:
    try:
        with path.open("rb") as f:
            return f.read()
    except OSError:
        return None


def read_image_pairs(batch: Batch, cfg: ImageFilterConfig) -> Iterator[Record]:
    """One record per captions.jsonl line (source: the image's path), then one per file in images/
    that no caption line names, one per sample of a WebDataset shard (`formats.read_shard`) and one
    per row of a Parquet file (`formats.read_image_parquet`). Images are not decoded here:
    `ImageDecode` does that in chunks."""
    images_dir = batch.path / MODALITY_DIRS["image_text"]
    captions = images_dir / CAPTIONS_FILE
    files = batch.files("image_text")
    named: set[str] = set()
    if captions in files and (unread := _unread(batch, captions, "image_text")):
        yield unread
    elif captions in files:
        for number, raw in _caption_lines(captions, cfg.max_caption_bytes):
            if number == 0:  # the file broke off here
                src = source_of(batch, captions)
                yield Record(src, "image_text", src, reject=Reject("file_unreadable", raw.decode()))  # type: ignore[union-attr]
                continue
            line_src = source_of(batch, captions, number)
            if raw is None:
                yield Record(line_src, "image_text", line_src, reject=Reject("record_too_large", f"line > {cfg.max_caption_bytes} bytes"))
                continue
            try:
                obj = json.loads(raw)
            except UnicodeDecodeError as e:
                yield Record(line_src, "image_text", line_src, reject=Reject("utf8_invalid", str(e)))
                continue
            except ValueError as e:
                yield Record(line_src, "image_text", line_src, reject=Reject("json_malformed", str(e)))
                continue
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str):
                yield Record(line_src, "image_text", line_src, reject=Reject("json_malformed", "expected {\"image\": str, \"caption\": str}"))
                continue
            named.add(obj["image"])
            yield _pair_record(batch, images_dir, obj, line_src)
    names = {p.relative_to(images_dir).as_posix() for p in files}
    for path in files:
        if path == captions:
            continue
        src = source_of(batch, path)
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.relative_to(images_dir).as_posix() in named:
            continue  # its caption line is its record
        if unread := _unread(batch, path, "image_text"):
            yield unread
        elif shard := shards.companion_of(path.relative_to(images_dir).as_posix(), names):
            yield Record(src, "image_text", src, reject=Reject("shard_metadata", f"what img2dataset wrote about {shard}, whose samples are the records; not read"))
        elif shards.is_shard(path.name):
            yield from read_shard(batch, path, cfg)
        elif path.suffix.lower() == ".parquet":
            yield from read_image_parquet(batch, path, cfg)
        elif path.suffix.lower() not in IMAGE_EXTENSIONS:
            yield Record(src, "image_text", src, reject=Reject("unsupported_extension", f"'{path.suffix or path.name}' in images/"))
        else:
            yield Record(src, "image_text", src, image_path=path, reject=Reject("caption_missing", f"no line of {CAPTIONS_FILE} names it"))


def _caption_lines(path: Path, limit: int) -> Iterator[tuple[int, bytes | None]]:
    """`read_lines`, ending with (0, why) if the file cannot be read to its end."""
    try:
        yield from read_lines(path, limit)
    except OSError as e:
        yield 0, f"{type(e).__name__}: {e.strerror or e}"[:500].encode()


def _pair_record(batch: Batch, images_dir: Path, obj: dict[str, Any], line_src: str) -> Record:
    name = obj["image"]
    path = images_dir / name
    inside = images_dir.resolve() in path.resolve().parents
    source = source_of(batch, path) if inside else f"{batch.name}/images/{name}"
    rec = Record(line_src, "image_text", source, image_path=path)
    rec.id, rec.reject = _record_id(obj, line_src)
    caption = obj.get("caption")
    match = obj.get("match")
    rec.expected_match = match if isinstance(match, bool) else None
    if rec.reject:
        return rec
    if not _encodable(name):
        rec.reject = Reject("utf8_invalid", "lone surrogate in 'image'")
        rec.source = f"{batch.name}/images/{name.encode('utf-8', 'replace').decode()}"
    elif not inside:
        rec.reject = Reject("outside_landing_zone", "the image is outside the batch's images/; not read")
    elif not path.is_file():
        rec.reject = Reject("image_missing", "no such file, or not a regular file")
    elif not isinstance(caption, str):
        rec.reject = Reject("caption_invalid", "'caption' missing" if caption is None else f"'caption' is {type(caption).__name__}")
    elif not _encodable(caption):
        rec.reject = Reject("utf8_invalid", "lone surrogate in 'caption'")
    elif not caption.strip():
        rec.text = caption
        rec.reject = Reject("caption_empty", "empty or whitespace-only caption")
    else:
        rec.text = caption
    return rec

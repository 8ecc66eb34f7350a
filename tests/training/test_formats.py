"""Data in the formats users' tools write: WebDataset shards, Parquet with an image column, code as
Parquet rows (The Stack), text under other field names. Every sample and row is one record, kept or
rejected with its reason, and counted by the accounting independently of the readers."""

import gzip
import io
import json
import tarfile
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import webdataset as wds
from PIL import Image

from tests.byod_zone import CONFIG, byod_batch
from tests.helpers import accounting, clean, rows
from training.config import CleaningConfig, CodeFilterConfig, ImageFilterConfig, TextFilterConfig
from training.data.clean import chunks
from training.demo.landing import _png_bomb
from training.data.filters.image import ImageDecode
from training.data.landing import Batch, count_records
from training.data.readers import read_code, read_image_pairs, read_text
from training.data.records import Record


def test_a_batch_in_users_formats_is_cleaned_with_every_record_accounted(tmp_path):
    """Issue 26's zone: a WebDataset shard from webdataset's TarWriter, The Stack-shaped and
    FineWeb-shaped Parquet files."""
    landing = tmp_path / "landing"
    expected = byod_batch(landing)
    clean(landing, tmp_path, cfg=CONFIG)
    out = rows(tmp_path / "kept") + rows(tmp_path / "rejected")
    got = {r["source"]: r.get("reason") for r in out}
    assert len(got) == len(out)  # one row per source
    assert {s: got.get(s, "absent") for s in expected} == expected
    assert all(a.ok for a in accounting(landing, tmp_path))
    by = {(a.modality): a.records_in for a in accounting(landing, tmp_path)}
    assert by == {"image_text": 100 + 2, "code": 200, "text": 40}  # samples, the shard's two log files; rows
    kept = {r["source"]: r for r in rows(tmp_path / "kept")}
    pair = kept["b1/images/00000.tar:000000000"]
    assert pair["text"] == "a red square, photograph 0" and json.loads(pair["metadata"])["url"] == "https://images.example.com/0.jpg"
    assert kept["b1/code/the-stack.parquet:1"]["language"] == "python"
    assert kept["b1/code/the-stack.parquet:6"]["language"] == "python"  # lang null: from the path's .py
    assert json.loads(kept["b1/code/the-stack.parquet:6"]["metadata"]) == {"path": "src/python/step_5.py"}
    assert {kept[f"b1/code/the-stack.parquet:{n}"]["language"] for n in range(1, 6)} == {"python", "javascript", "java", "c", "go"}
    assert kept["b1/text/fineweb.parquet:1"]["id"] == "<urn:uuid:00000000-kiln>"


# --- WebDataset shards -------------------------------------------------------------------------------


def _jpeg(color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), color).save(buf, format="JPEG")
    return buf.getvalue()


def _tar(members: list[tuple[str, bytes | None]], gz: bool = False, pax: dict | None = None) -> bytes:
    """A tar of (name, data) members; data None makes a symbolic link to /etc/passwd."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gz else "w", format=tarfile.PAX_FORMAT) as t:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if pax:
                info.pax_headers = pax
            if data is None:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                t.addfile(info)
            else:
                info.size = len(data)
                t.addfile(info, io.BytesIO(data))
    return buf.getvalue()


PAIR = [("k1.jpg", _jpeg()), ("k1.txt", b"a red square"), ("k1.json", b'{"url": "https://x.example/1.jpg", "id": "img-1"}')]
OK = [("k0.jpg", _jpeg()), ("k0.txt", b"a first red square")]

# shard name -> (its bytes, image config, {source suffix after the shard: reason or None}, or a list for the
# records in order when the shard breaks off)
SHARDS = {
    "a pair, its .json kept, its id from it": (_tar(PAIR), ImageFilterConfig(), {"k1": None}),
    ".tar.gz": (_tar(OK + PAIR, gz=True), ImageFilterConfig(), {"k0": None, "k1": None}),
    "no image": (_tar([("k1.txt", b"a caption"), *OK]), ImageFilterConfig(), {"k1": "image_missing", "k0": None}),
    "no caption": (_tar([("k1.jpg", _jpeg())]), ImageFilterConfig(), {"k1": "caption_missing"}),
    "empty caption": (_tar([("k1.jpg", _jpeg()), ("k1.txt", b"  \n")]), ImageFilterConfig(), {"k1": "caption_empty"}),
    "caption not UTF-8": (_tar([("k1.jpg", _jpeg()), ("k1.txt", b"caf\xe9")]), ImageFilterConfig(), {"k1": "utf8_invalid"}),
    "caption over the bound, not read": (
        _tar([("k1.jpg", _jpeg()), ("k1.txt", b"x" * 200)]), ImageFilterConfig(max_caption_bytes=100), {"k1": "record_too_large"}),
    "image over the bound, not read": (_tar(PAIR), ImageFilterConfig(max_image_bytes=100), {"k1": "file_too_large"}),
    "a PNG bomb, judged from its header": (_tar([("k1.png", _png_bomb(50_000, 50_000)), ("k1.txt", b"a red square")]), ImageFilterConfig(),
                                           {"k1": "image_too_large"}),
    "a truncated JPEG": (_tar([("k1.jpg", _jpeg()[:-200]), ("k1.txt", b"a red square")]), ImageFilterConfig(), {"k1": "image_truncated"}),
    "metadata not JSON": (_tar([("k1.jpg", _jpeg()), ("k1.txt", b"cap"), ("k1.json", b"{nope")]), ImageFilterConfig(), {"k1": "json_malformed"}),
    "caption from the .json": (
        _tar([("k1.jpg", _jpeg()), ("k1.json", b'{"caption": "a red square"}'), ("k2.jpg", _jpeg()), ("k2.json", b"{}")]),
        ImageFilterConfig(shard_caption="json"), {"k1": None, "k2": "caption_missing"}),
    "member named ../x.jpg": (_tar([("../x.jpg", _jpeg()), ("../x.txt", b"cap"), *OK]), ImageFilterConfig(), {"../x": "outside_landing_zone", "k0": None}),
    "absolute member name": (_tar([("/tmp/x.jpg", _jpeg()), *OK]), ImageFilterConfig(), {"/tmp/x": "outside_landing_zone", "k0": None}),
    "a member that is a link": (_tar([("k1.jpg", None), ("k1.txt", b"cap"), *OK]), ImageFilterConfig(), {"k1": "not_a_regular_file", "k0": None}),
    "a member without an extension": (_tar([("README", b"hello"), *OK]), ImageFilterConfig(), {"README": "unsupported_extension", "k0": None}),
    "two images of one key": (_tar([("k1.jpg", _jpeg()), ("k1.jpg", _jpeg()), ("k1.txt", b"c")]), ImageFilterConfig(), {"k1": "sample_malformed"}),
    "sub-folders as keys": (_tar([("a/k1.jpg", _jpeg()), ("a/k1.txt", b"a red square"), ("b/k1.jpg", _jpeg())]), ImageFilterConfig(),
                            {"a/k1": None, "b/k1": "caption_missing"}),
    "not a tar": (b"this is not a tar archive" * 40, ImageFilterConfig(), {"": "file_unreadable"}),
    "cut inside a member": (_tar(OK + PAIR + [("k2.jpg", _jpeg() * 20)])[:-2500], ImageFilterConfig(),
                            [("k0", None), ("k1", None), ("k2", "file_unreadable"), ("", "file_unreadable")]),
    "a 2 MB pax header": (_tar(OK, pax={"comment": "x" * (2 << 20)}), ImageFilterConfig(), {"": "file_unreadable"}),
}


def _images_batch(tmp_path: Path, files: dict[str, bytes]) -> Batch:
    (tmp_path / "b" / "images").mkdir(parents=True)
    for name, data in files.items():
        (tmp_path / "b" / "images" / name).write_bytes(data)
    return Batch("b", tmp_path / "b")


def _reason(rec: Record, decode: ImageDecode | None = None) -> str | None:
    if rec.reject is None and decode is not None:
        rec.reject = decode.check(rec)
    return rec.reject.reason if rec.reject else None


@pytest.mark.parametrize("case", list(SHARDS))
def test_webdataset_shard_table(tmp_path, case):
    data, cfg, expected = SHARDS[case]
    name = "00000.tar.gz" if case == ".tar.gz" else "00000.tar"
    batch = _images_batch(tmp_path, {name: data})
    decode = ImageDecode(cfg.max_image_bytes, cfg.max_image_pixels)
    recs = list(read_image_pairs(batch, cfg))
    got = [(r.source.removeprefix(f"b/images/{name}").removeprefix(":"), _reason(r, decode)) for r in recs]
    assert got == (expected if isinstance(expected, list) else list(expected.items()))
    assert count_records(batch, "image_text", CleaningConfig(image=cfg)) == len(recs)
    assert all(r.image_bytes is None for r in recs)  # decoded, or never attached
    if case.startswith("a pair"):
        [rec] = recs
        assert rec.id == "img-1" and json.loads(rec.metadata) == {"url": "https://x.example/1.jpg", "id": "img-1"}
        assert rec.image is not None and rec.text == "a red square"


def test_img2dataset_output_folder(tmp_path):
    """img2dataset's output as it is: shards made by webdataset's ShardWriter, each with the
    download log (`.parquet`) and `_stats.json` beside it, which are reported, not read as pairs."""
    images = tmp_path / "b" / "images"
    images.mkdir(parents=True)
    with wds.ShardWriter(str(images / "%05d.tar"), maxcount=3) as sink:
        for i in range(7):
            sink.write({"__key__": f"{i:09d}", "jpg": _jpeg(), "txt": f"a red square {i}", "json": json.dumps({"key": f"{i:09d}"})})
    for shard in ("00000", "00001", "00002"):
        pq.write_table(pa.table({"key": ["x"], "status": ["success"]}), images / f"{shard}.parquet")
        (images / f"{shard}_stats.json").write_text("{}")
    pq.write_table(pa.table({"image": [_jpeg()], "caption": ["a lone parquet of pairs"]}), images / "extra.parquet")
    batch = Batch("b", tmp_path / "b")
    recs = list(read_image_pairs(batch, ImageFilterConfig()))
    reasons = {r.source: _reason(r) for r in recs}
    assert [s for s, why in reasons.items() if why is None] == [f"b/images/0000{i // 3}.tar:{i:09d}" for i in range(7)] + ["b/images/extra.parquet:1"]
    assert {s for s, why in reasons.items() if why == "shard_metadata"} == {
        f"b/images/0000{n}{suffix}" for n in range(3) for suffix in (".parquet", "_stats.json")}
    assert count_records(batch, "image_text", CleaningConfig()) == len(recs) == 7 + 6 + 1


# --- Parquet with an image column ----------------------------------------------------------------------

STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])


@pytest.mark.parametrize(
    "columns, cfg, expected",
    [
        ({"image": [_jpeg()], "caption": ["a red square"]}, ImageFilterConfig(), [None]),
        ({"image": pa.array([{"bytes": _jpeg(), "path": "0.jpg"}, {"bytes": None, "path": "/etc/passwd"}], STRUCT),
          "caption": ["a red square", "no bytes"]}, ImageFilterConfig(), [None, "image_missing"]),
        ({"jpg": [_jpeg()], "text": ["mapped"], "key": ["k-1"]}, ImageFilterConfig(image_field="jpg", caption_field="text", id_field="key"), [None]),
        ({"picture": [_jpeg()], "caption": ["no image column"]}, ImageFilterConfig(), ["image_missing"]),
        ({"image": [_jpeg(), _jpeg()], "caption": [None, " "]}, ImageFilterConfig(), ["caption_missing", "caption_empty"]),
        ({"image": [_jpeg()], "caption": ["big"]}, ImageFilterConfig(max_image_bytes=50), ["file_too_large"]),
        ({"image": [b"not an image"], "caption": ["garbage bytes"]}, ImageFilterConfig(), ["image_unreadable"]),
        ({"image": [_png_bomb(60_000, 60_000)], "caption": ["a bomb"]}, ImageFilterConfig(), ["image_too_large"]),
        ({"image": [1], "caption": ["an int"]}, ImageFilterConfig(), ["image_unreadable"]),
    ],
)
def test_parquet_image_column_table(tmp_path, columns, cfg, expected):
    buf = io.BytesIO()
    pq.write_table(pa.table(columns), buf)
    batch = _images_batch(tmp_path, {"pairs.parquet": buf.getvalue()})
    decode = ImageDecode(cfg.max_image_bytes, cfg.max_image_pixels)
    recs = list(read_image_pairs(batch, cfg))
    assert [_reason(r, decode) for r in recs] == expected
    assert [r.source for r in recs] == [f"b/images/pairs.parquet:{i + 1}" for i in range(len(expected))]
    assert count_records(batch, "image_text", CleaningConfig(image=cfg)) == len(recs)
    if "key" in columns:
        assert recs[0].id == "k-1" and recs[0].text == "mapped"


# --- Code as Parquet rows ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "row, cfg, reason, language",
    [
        ({"content": "x = 1\n", "lang": "Python"}, CodeFilterConfig(), None, "python"),
        ({"content": "int main() { return 0; }\n", "lang": "C++"}, CodeFilterConfig(), None, "cpp"),
        ({"content": "fn main() {}\n", "lang": None, "path": "src/main.rs"}, CodeFilterConfig(), None, "rust"),
        ({"content": "namespace k { class A {}; }\n", "lang": "C", "path": "include/a.h"}, CodeFilterConfig(), None, "c_or_cpp"),  # the filter decides
        ({"content": "x = 1\n", "max_stars_repo_path": "a/b.py"}, CodeFilterConfig(), None, "python"),
        ({"content": "IDENTIFICATION DIVISION.\n", "lang": "COBOL"}, CodeFilterConfig(), "unsupported_language", None),
        ({"content": "hello\n", "lang": None, "path": "notes.txt"}, CodeFilterConfig(), "unsupported_extension", None),
        ({"content": "x = 1\n"}, CodeFilterConfig(), "unsupported_language", None),
        ({"content": None, "lang": "Python"}, CodeFilterConfig(), "content_missing", "python"),
        ({"content": "x = 1\0\n", "lang": "Python"}, CodeFilterConfig(), "binary_file", "python"),
        ({"content": "x = 1\n" * 400, "lang": "Python"}, CodeFilterConfig(max_file_bytes=1000), "file_too_large", "python"),
        ({"content": "   \n", "lang": "Python"}, CodeFilterConfig(), "file_empty", "python"),
        ({"content": b"caf\xe9 = 1\n", "lang": "Python"}, CodeFilterConfig(), "undecodable", "python"),
        ({"code": "y = 2\n", "language": "python", "hexsha": "abc"},
         CodeFilterConfig(content_field="code", language_field="language", id_field="hexsha"), None, "python"),
    ],
)
def test_code_parquet_row_table(tmp_path, row, cfg, reason, language):
    (tmp_path / "b" / "code").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([row]), tmp_path / "b" / "code" / "the-stack.parquet")
    batch = Batch("b", tmp_path / "b")
    [rec] = list(read_code(batch, cfg))
    assert (rec.source, rec.reject.reason if rec.reject else None, rec.language) == ("b/code/the-stack.parquet:1", reason, language)
    assert count_records(batch, "code", CleaningConfig(code=cfg)) == 1
    if reason is None:
        assert rec.text == row.get("content", row.get("code"))
    if "hexsha" in row:
        assert rec.id == "abc"


def test_code_parquet_rows_and_files_side_by_side(tmp_path):
    code = tmp_path / "b" / "code"
    code.mkdir(parents=True)
    (code / "a.py").write_text("x = 1\n")
    (code / "bad.parquet").write_bytes(b"PAR1 not parquet PAR1")
    pq.write_table(pa.table({"content": ["a = 1\n"] * 5, "lang": ["Python"] * 5}), code / "rows.parquet", row_group_size=2)
    batch = Batch("b", tmp_path / "b")
    recs = list(read_code(batch, CodeFilterConfig()))
    assert [(r.source, r.reject.reason if r.reject else None) for r in recs] == [
        ("b/code/a.py", None), ("b/code/bad.parquet", "file_unreadable"), *[(f"b/code/rows.parquet:{i}", None) for i in range(1, 6)]]
    assert count_records(batch, "code", CleaningConfig()) == len(recs)


# --- Text under other field names ---------------------------------------------------------------------

DOC = "Kilns fire clay at high temperature until it turns hard and dense."


@pytest.mark.parametrize(
    "name, data, cfg, expected",
    [
        ("a.jsonl", json.dumps({"content": DOC, "doc_id": "d1"}).encode() + b"\n", TextFilterConfig(text_field="content", id_field="doc_id"), [(None, "d1")]),
        ("a.jsonl", json.dumps({"content": DOC}).encode() + b"\n", TextFilterConfig(), [("text_missing", "b/text/a.jsonl:1")]),
        ("dolma-0000.json.gz", gzip.compress(json.dumps({"id": "x", "text": DOC, "source": "web", "metadata": {}}).encode() + b"\n"),
         TextFilterConfig(), [(None, "x")]),
        ("a.parquet", None, TextFilterConfig(text_field="raw_content"), [(None, "b/text/a.parquet:1"), ("text_missing", "b/text/a.parquet:2")]),
    ],
)
def test_text_column_mapping(tmp_path, name, data, cfg, expected):
    (tmp_path / "b" / "text").mkdir(parents=True)
    path = tmp_path / "b" / "text" / name
    if data is None:
        pq.write_table(pa.table({"raw_content": [DOC, None]}), path)
    else:
        path.write_bytes(data)
    batch = Batch("b", tmp_path / "b")
    recs = list(read_text(batch, cfg))
    assert [(r.reject.reason if r.reject else None, r.id) for r in recs] == expected
    assert all(r.text == DOC for r in recs if r.reject is None)
    assert count_records(batch, "text", CleaningConfig(text=cfg)) == len(recs)


def test_chunks_end_early_at_the_image_bytes_bound():
    recs = [Record(str(i), "image_text", str(i), image_bytes=b"x" * 100) for i in range(10)]
    assert [len(c) for c in chunks(recs, 8, image_bytes=250)] == [3, 3, 3, 1]
    assert [len(c) for c in chunks(recs, 8)] == [8, 2]


def test_a_parquet_row_group_that_cannot_be_read(tmp_path):
    """Rows are decoded a batch at a time inside each row group: a corrupt row group's rows are
    `file_unreadable` records, the other groups' rows are read, the count is the footer's."""
    (tmp_path / "b" / "text").mkdir(parents=True)
    path = tmp_path / "b" / "text" / "a.parquet"
    pq.write_table(pa.table({"text": [f"{DOC} Row {i}." for i in range(30)]}), path, row_group_size=10, compression="zstd")
    column = pq.read_metadata(path).row_group(1).column(0)
    data = bytearray(path.read_bytes())
    start = column.data_page_offset + 40  # inside the first page's compressed values
    data[start : start + 64] = b"\xa5" * 64
    path.write_bytes(bytes(data))
    batch = Batch("b", tmp_path / "b")
    recs = list(read_text(batch, TextFilterConfig()))
    assert [r.reject.reason if r.reject else None for r in recs] == [None] * 10 + ["file_unreadable"] * 10 + [None] * 10
    assert [r.source for r in recs] == [f"b/text/a.parquet:{i}" for i in range(1, 31)]
    assert count_records(batch, "text", CleaningConfig()) == 30

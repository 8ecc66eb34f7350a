"""Every line, row and file becomes exactly one record; bad input becomes a rejected record."""

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.config import CleaningConfig, TextFilterConfig
from training.data.landing import Batch, count_records
from training.data.readers import read_text

PROSE = "Kilns fire clay at high temperature until it turns hard and dense."


def _batch(tmp_path: Path) -> Batch:
    (tmp_path / "b" / "text").mkdir(parents=True)
    return Batch("b", tmp_path / "b")


@pytest.mark.parametrize(
    "line, expected_reason, expected_id",
    [
        (json.dumps({"id": "r1", "text": PROSE}).encode(), None, "r1"),
        (json.dumps({"id": 7, "text": PROSE}).encode(), None, "7"),
        (json.dumps({"text": PROSE}).encode(), None, "b/text/a.jsonl:1"),
        (b'{"text": "unterminated', "json_malformed", "b/text/a.jsonl:1"),
        (b'"just a string"', "json_malformed", "b/text/a.jsonl:1"),
        (b'{"text": "caf\xe9"}', "utf8_invalid", "b/text/a.jsonl:1"),
        (b'{"text": "\\ud800 lone surrogate"}', "utf8_invalid", "b/text/a.jsonl:1"),
        (b'{"id": "x", "body": "no text field"}', "text_missing", "x"),
        (b'{"text": null}', "text_missing", "b/text/a.jsonl:1"),
        (b'{"text": ["a", "list"]}', "text_not_string", "b/text/a.jsonl:1"),
        (b'{"text": 3.5}', "text_not_string", "b/text/a.jsonl:1"),
        (b'{"id": true, "text": "a boolean is not an id"}', "id_invalid", "b/text/a.jsonl:1"),
        (b'{"id": "", "text": "an empty id is not an id"}', "id_invalid", "b/text/a.jsonl:1"),
        (json.dumps({"text": "x" * 300}).encode(), "record_too_large", "b/text/a.jsonl:1"),
    ],
)
def test_jsonl_line_table(tmp_path, line, expected_reason, expected_id):
    batch = _batch(tmp_path)
    (batch.path / "text" / "a.jsonl").write_bytes(line + b"\n")
    [rec] = list(read_text(batch, TextFilterConfig(max_record_bytes=200)))
    assert (rec.reject.reason if rec.reject else None) == expected_reason
    assert rec.id == expected_id
    assert rec.source == "b/text/a.jsonl:1"
    if expected_reason is None:
        assert rec.text == PROSE


def test_jsonl_line_numbers_skip_blank_lines_and_survive_oversized_lines(tmp_path):
    batch = _batch(tmp_path)
    big = json.dumps({"text": "y" * 5000}).encode()
    ok = json.dumps({"text": PROSE}).encode()
    (batch.path / "text" / "a.jsonl").write_bytes(ok + b"\n\n   \n" + big + b"\n" + ok)  # no final newline
    recs = list(read_text(batch, TextFilterConfig(max_record_bytes=1000)))
    assert [r.source for r in recs] == ["b/text/a.jsonl:1", "b/text/a.jsonl:4", "b/text/a.jsonl:5"]
    assert [r.reject.reason if r.reject else None for r in recs] == [None, "record_too_large", None]
    assert count_records(batch, "text", CleaningConfig(text=TextFilterConfig(max_record_bytes=1000))) == 3


def test_parquet_rows_and_bad_files(tmp_path):
    batch = _batch(tmp_path)
    text = batch.path / "text"
    pq.write_table(pa.table({"id": ["p1", None], "text": [PROSE, None]}), text / "a.parquet")
    pq.write_table(pa.table({"body": [PROSE, PROSE]}), text / "b.parquet")
    pq.write_table(pa.table({"text": [1, 2]}), text / "c.parquet")
    pq.write_table(pa.table({"text": pa.array([PROSE.encode(), b"\xff\xfe"], pa.binary())}), text / "d.parquet")
    (text / "e.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (text / "f.csv").write_text("text\nhello\n")
    recs = list(read_text(batch, TextFilterConfig()))
    got = [(r.source, r.id, r.reject.reason if r.reject else None) for r in recs]
    assert got == [
        ("b/text/a.parquet:1", "p1", None),
        ("b/text/a.parquet:2", "b/text/a.parquet:2", "text_missing"),
        ("b/text/b.parquet:1", "b/text/b.parquet:1", "text_missing"),
        ("b/text/b.parquet:2", "b/text/b.parquet:2", "text_missing"),
        ("b/text/c.parquet:1", "b/text/c.parquet:1", "text_not_string"),
        ("b/text/c.parquet:2", "b/text/c.parquet:2", "text_not_string"),
        ("b/text/d.parquet:1", "b/text/d.parquet:1", None),
        ("b/text/d.parquet:2", "b/text/d.parquet:2", "utf8_invalid"),
        ("b/text/e.parquet", "b/text/e.parquet", "file_unreadable"),
        ("b/text/f.csv", "b/text/f.csv", "unsupported_extension"),
    ]
    assert count_records(batch, "text", CleaningConfig()) == len(recs)
    # A file without the text column names the columns it has (the fix is most often text_field); a null is a null.
    details = {r.source: r.reject.detail for r in recs if r.reject}
    assert details["b/text/b.parquet:1"] == "no 'text' column; the file has 'body': TextFilterConfig.text_field names the one holding the text"
    assert details["b/text/a.parquet:2"] == "'text' is null"

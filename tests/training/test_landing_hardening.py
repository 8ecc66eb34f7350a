"""Landing zones written by other teams and tools: every entry that is not a plain file inside its
batch becomes one rejected record with its reason, is never opened, and is counted by the accounting."""

import json
import os
from pathlib import Path

import pytest

from tests.helpers import PROSE, accounting, clean, rows, sources, write_batch
from training.config import CleaningConfig, TextFilterConfig
from training.data.landing import ready_batch, ready_batches, unusable_batches

SECRET = "SECRET-TOKEN-123 must never reach the training corpus, whatever happens"


def _secret_files(root: Path) -> None:
    """Outside the landing zone: a JSONL file, a Python file, a PNG and a captions file."""
    (root / "elsewhere").mkdir()
    (root / "elsewhere" / "s.jsonl").write_text(json.dumps({"text": SECRET}) + "\n")
    (root / "elsewhere" / "s.py").write_text(f"SECRET = {SECRET!r}\n")
    (root / "elsewhere" / "captions.jsonl").write_text(json.dumps({"image": "red.png", "caption": SECRET}) + "\n")
    (root / "secret.png").write_bytes((root / "landing" / "b1" / "images" / "red.png").read_bytes())


def _link(path: Path, target: Path) -> None:
    if path.exists() or path.is_symlink():
        path.unlink() if not path.is_dir() or path.is_symlink() else None
    path.symlink_to(target, target_is_directory=target.is_dir())


# (what is done to batch b2, given (b2, tmp_path)) -> {source: reason} expected among b2's rejections
CASES = {
    "link to a file outside, in text/": (
        lambda b, t: _link(b / "text" / "leak.jsonl", t / "elsewhere" / "s.jsonl"),
        {"b2/text/leak.jsonl": "outside_landing_zone"},
    ),
    "link to a folder outside, in text/": (
        lambda b, t: _link(b / "text" / "linked", t / "elsewhere"),
        {"b2/text/linked": "outside_landing_zone"},
    ),
    "link to a folder outside, in code/": (
        lambda b, t: _link(b / "code" / "vendor", t / "elsewhere"),
        {"b2/code/vendor": "outside_landing_zone"},
    ),
    "text/ itself a link to a folder outside": (
        lambda b, t: (os.rename(b / "text", t / "moved"), _link(b / "text", t / "elsewhere")),
        {"b2/text": "outside_landing_zone"},
    ),
    "link to a folder inside the batch": (
        lambda b, t: (os.mkdir(b / "code" / "pkg"), (b / "code" / "pkg" / "m.py").write_text("y = 2\n"), _link(b / "code" / "again", b / "code" / "pkg")),
        {"b2/code/again": "linked_folder"},
    ),
    "link to another batch": (
        lambda b, t: _link(b / "text" / "other.jsonl", t / "landing" / "b1" / "text" / "a.jsonl"),
        {"b2/text/other.jsonl": "outside_landing_zone"},
    ),
    "dangling link": (
        lambda b, t: _link(b / "code" / "gone.py", b / "code" / "never-written.py"),
        {"b2/code/gone.py": "not_a_regular_file"},
    ),
    "named pipe in text/ and code/": (
        lambda b, t: (os.mkfifo(b / "text" / "pipe.jsonl"), os.mkfifo(b / "code" / "pipe.py")),
        {"b2/text/pipe.jsonl": "not_a_regular_file", "b2/code/pipe.py": "not_a_regular_file"},
    ),
    "captions.jsonl a link outside": (
        lambda b, t: _link(b / "images" / "captions.jsonl", t / "elsewhere" / "captions.jsonl"),
        {"b2/images/captions.jsonl": "outside_landing_zone", "b2/images/red.png": "caption_missing", "b2/images/blue.png": "caption_missing"},
    ),
    "a captioned image that links outside": (
        lambda b, t: _link(b / "images" / "red.png", t / "secret.png"),
        {"b2/images/red.png": "outside_landing_zone"},
    ),
    "an uncaptioned image that links outside": (
        lambda b, t: _link(b / "images" / "extra.png", t / "secret.png"),
        {"b2/images/extra.png": "outside_landing_zone"},
    ),
    "a caption naming a path out of the batch": (
        lambda b, t: (b / "images" / "captions.jsonl").write_text(json.dumps({"image": "../../../secret.png", "caption": SECRET}) + "\n"),
        {"b2/images/../../../secret.png": "outside_landing_zone", "b2/images/red.png": "caption_missing", "b2/images/blue.png": "caption_missing"},
    ),
    "a named pipe named by a caption": (
        lambda b, t: (os.unlink(b / "images" / "red.png"), os.mkfifo(b / "images" / "red.png")),
        {"b2/images/red.png": "image_missing"},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_entries_that_are_not_plain_files_of_the_batch(tmp_path, case):
    mutate, expected = CASES[case]
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    b = write_batch(landing, "b2", [f"{p} Landed again, a day later." for p in PROSE])
    _secret_files(tmp_path)
    mutate(b, tmp_path)
    clean(landing, tmp_path)  # would hang on a pipe it opened
    rejected = sources(tmp_path / "rejected" / "b2")
    assert {s: rejected.get(s) for s in expected} == expected
    kept = rows(tmp_path / "kept")
    assert not any(SECRET.split()[0] in (r["text"] or "") for r in kept)
    assert all(a.ok for a in accounting(landing, tmp_path)), case
    details = {r["source"]: r["detail"] for r in rows(tmp_path / "rejected" / "b2")}
    assert all(details[s] for s in expected)


def test_a_batch_folder_that_is_a_link_is_not_read(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    write_batch(tmp_path / "elsewhere", "b9", [SECRET])
    (landing / "b2").symlink_to(tmp_path / "elsewhere" / "b9", target_is_directory=True)
    assert [b.name for b in ready_batches(landing)] == ["b1"]
    assert "link" in unusable_batches(landing)["b2"]
    with pytest.raises(ValueError, match="link"):
        ready_batch(landing, "b2")
    clean(landing, tmp_path)
    assert not any(SECRET.split()[0] in (r["text"] or "") for r in rows(tmp_path / "kept"))


def _jsonl(texts: list[str]) -> bytes:
    return "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts).encode()


def _compressed(codec: str, data: bytes) -> bytes:
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.CompressedOutputStream(sink, codec) as out:
        out.write(data)
    return sink.getvalue().to_pybytes()


DOCS = [f"{p} Exported by another team's tool." for p in PROSE]

# file name -> (its bytes, {line: reason or None (kept)})
FILES = {
    "a.jsonl.gz": (_compressed("gzip", _jsonl(DOCS)), {1: None, 2: None, 3: None, 4: None}),
    "B.JSONL.GZ": (_compressed("gzip", _jsonl(DOCS[:1])), {1: None}),
    "a.jsonl.zst": (_compressed("zstd", _jsonl(DOCS[1:])), {1: None, 2: None, 3: None}),
    "a.jsonl.bz2": (_compressed("bz2", _jsonl(DOCS[2:])), {1: None, 2: None}),
    "truncated.jsonl.gz": (_compressed("gzip", _jsonl([f"{d} Copy {i}." for i in range(5000) for d in DOCS]))[:20_000], {1: None, None: "file_unreadable"}),
    "not-gzip.jsonl.gz": (_jsonl(DOCS), {None: "file_unreadable"}),
    "utf16le.jsonl": ("\ufeff".encode("utf-16-le") + _jsonl(DOCS).decode().encode("utf-16-le"), {1: None, 2: None, 3: None, 4: None}),
    "utf16be.jsonl": ("\ufeff".encode("utf-16-be") + _jsonl(DOCS[:2]).decode().replace("\n", "\r\n").encode("utf-16-be"), {1: None, 2: None}),
    "a.json": (_jsonl(DOCS), {None: "unsupported_extension"}),
}


@pytest.mark.parametrize("name", list(FILES))
def test_text_files_other_tools_write(tmp_path, name):
    data, expected = FILES[name]
    landing = tmp_path / "landing"
    b = write_batch(landing, "b1", [])
    (b / "text" / "a.jsonl").unlink()
    (b / "text" / name).write_bytes(data)
    clean(landing, tmp_path, cfg=CleaningConfig(text=TextFilterConfig(min_words=3)))
    got = {r["source"]: r.get("reason") for r in rows(tmp_path / "kept") + rows(tmp_path / "rejected") if r["modality"] == "text"}
    src = f"b1/text/{name}"
    want = {f"{src}:{n}" if n else src: reason for n, reason in expected.items()}
    if name.startswith("truncated"):  # the lines decompressed before the break, then one record for the rest
        assert got[src] == "file_unreadable" and got[f"{src}:1"] is None and len(got) > 2
        got = {k: v for k, v in got.items() if k in want}
    assert got == want
    assert all(a.ok for a in accounting(landing, tmp_path))
    if expected.get(1, "") is None and not name.startswith("truncated"):
        kept = {r["text"] for r in rows(tmp_path / "kept") if r["modality"] == "text"}
        assert kept <= set(DOCS) and kept  # decoded exactly, byte-order marks and CRLF aside


def test_files_that_cannot_be_opened_are_rejected_and_counted(tmp_path, monkeypatch):
    """Permission denied (as another team's umask leaves files) on a JSONL, a code file and the
    captions: one `file_unreadable` record each, the rest of the batch cleans."""
    landing = tmp_path / "landing"
    b = write_batch(landing, "b1", PROSE)
    (b / "text" / "locked.jsonl").write_bytes(_jsonl(DOCS))
    (b / "code" / "locked.py").write_text("z = 3\n")
    locked = {b / "text" / "locked.jsonl", b / "code" / "locked.py", b / "images" / "captions.jsonl"}

    path_open = Path.open  # the readers open every entry through it (an object store's entries alike)

    def guarded_open(path, *args, **kwargs):
        if path in locked:
            raise PermissionError(13, "Permission denied", str(path))
        return path_open(path, *args, **kwargs)

    monkeypatch.setattr(Path, "open", guarded_open)
    clean(landing, tmp_path)
    got = sources(tmp_path / "rejected" / "b1")
    assert [got.get(s) for s in ("b1/text/locked.jsonl", "b1/code/locked.py", "b1/images/captions.jsonl")] == ["file_unreadable"] * 3
    assert {r["source"] for r in rows(tmp_path / "kept") if r["modality"] == "code"} == {"b1/code/ok.py"}
    assert all(a.ok for a in accounting(landing, tmp_path))


def _zstd_bomb(path: Path, line_bytes: int) -> int:
    """A .jsonl.zst whose second line decompresses to `line_bytes` (zstd frames of 64 MiB of one
    letter, a couple of KB each, concatenated: seconds to make, whatever the size); returns its size."""
    frame = 64 << 20
    head = _compressed("zstd", b'{"text": "' + DOCS[0].encode() + b'"}\n{"text": "' + b"a" * frame)
    body = _compressed("zstd", b"a" * frame)
    tail = _compressed("zstd", b'"}\n' + json.dumps({"text": DOCS[1]}).encode() + b"\n")
    with path.open("wb") as f:
        f.write(head)
        for _ in range(line_bytes // frame - 1):
            f.write(body)
        f.write(tail)
    return path.stat().st_size


BOMB_RUN = """
import json, resource, sys
from pathlib import Path
import psutil
from tests.helpers import clean, rows
from training.config import CleaningConfig, TextFilterConfig

tmp, headroom = Path(sys.argv[1]), int(sys.argv[2])
limit = psutil.Process().memory_info().vms + headroom  # the imports' address space, and headroom for the work
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
report = clean(tmp / "landing", tmp, cfg=CleaningConfig(workers=1, text=TextFilterConfig(min_words=3)))
print(json.dumps({
    "text": {r["source"]: r.get("reason") for r in rows(tmp / "kept") + rows(tmp / "rejected") if r["modality"] == "text"},
    "accounted": all(r.records_in == r.kept + r.rejected for r in report.results),  # records_in: count_records
    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
}))
"""


def test_a_decompression_bomb_is_one_record_too_large_under_a_memory_limit(tmp_path):
    """Issue 25: a few KB of .jsonl.zst whose one line decompresses to 4 GiB. The readers and the
    record count read every line up to `max_record_bytes` and skip the rest while streaming, so the
    cleaning runs with 1.5 GiB of address space to spare beyond its imports (it needed the 4 GiB and
    more when the count read lines without a bound)."""
    import subprocess
    import sys

    b = write_batch(tmp_path / "landing", "b1", [])
    (b / "text" / "a.jsonl").unlink()
    size = _zstd_bomb(b / "text" / "bomb.jsonl.zst", 4 << 30)
    assert size < 300_000
    run = subprocess.run(
        [sys.executable, "-c", BOMB_RUN, str(tmp_path), str(3 << 29)], capture_output=True, text=True, timeout=300,
        cwd=Path(__file__).parents[2],
    )
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    src = "b1/text/bomb.jsonl.zst"
    assert out["text"] == {f"{src}:1": None, f"{src}:2": "record_too_large", f"{src}:3": None}
    assert out["accounted"]
    print(f"bomb: {size} bytes compressed, 4 GiB line; cleaning's peak RSS {out['peak_rss_mb']} MB")

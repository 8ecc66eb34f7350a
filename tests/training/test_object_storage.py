"""Landing zones on object storage (training/data/zone.py): a real S3-compatible server (moto's, on
127.0.0.1, started once for the module: about 0.7 s, most of it importing moto) and fsspec's memory://
filesystem serve the same batches as a local folder, and give the same cleaned records in the same
order; a zone that cannot be found is an error whatever its scheme; change detection reads only
metadata; nothing outside a batch's prefix is read; a batch whose listing changes while it is read."""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import fsspec
import pytest

from tests.helpers import PROSE, _png, accounting, clean, rows, sources, write_batch
from tests.object_store import moto_s3, upload
from training.data import zone
from training.data.landing import ready_batch, ready_batches, unusable_batches
from training.data.readers import read_text
from training.config import CleaningConfig, TextFilterConfig
from training.data.zone import LandingZoneNotFound, ObjectPath

SECRET = "SECRET-TOKEN-123 must never reach the training corpus, whatever happens"


@pytest.fixture(scope="module")
def s3_server():
    with moto_s3() as (fs, _):
        yield fs


@pytest.fixture(params=["memory", "s3"])
def bucket(request, tmp_path):
    """(fsspec filesystem, root key, URL) of an empty zone on each kind of object store."""
    if request.param == "memory":
        fs, root = fsspec.filesystem("memory"), f"/kiln-{uuid.uuid4().hex[:8]}/zone"
        yield fs, root, f"memory://{root}"
        fs.rm(root.split("/zone")[0], recursive=True) if fs.exists(root.split("/zone")[0]) else None
    else:
        fs = request.getfixturevalue("s3_server")
        name = f"kiln-{uuid.uuid4().hex[:8]}"
        fs.mkdir(name)
        yield fs, f"{name}/zone", f"s3://{name}/zone"


def _records(out: Path) -> list[tuple]:
    """Every kept and rejected record, in the order written: (modality, source, id, text, reason)."""
    keys = ("modality", "source", "id", "text", "reason")
    kept = [tuple(r.get(k) for k in keys) for r in rows(out / "kept")]
    return kept + [tuple(r.get(k) for k in keys) for r in rows(out / "rejected")]


def test_a_bucket_gives_the_same_cleaned_corpus_as_the_folder_it_was_copied_from(bucket, tmp_path):
    fs, root, url = bucket
    local = tmp_path / "landing"
    write_batch(local, "b1", PROSE, code={"ok.py": "x = 1\n", "bad.py": "def f(:\n", "pkg/deep/m.go": "package m\n"})
    write_batch(local, "b2", PROSE[:2] + ["buy now " * 40])
    (local / "b2" / "text" / "docs.jsonl.gz").write_bytes(__import__("gzip").compress(b'{"text": "gzipped line"}\n'))
    (local / "b2" / "notes.md").write_text("a file outside the modality folders: reported, never read\n")
    write_batch(local, "b3", PROSE, ready=False)  # still landing: not read
    upload(local, fs, root)

    on_disk = clean(local, tmp_path / "disk")
    from_bucket = clean(url, tmp_path / "bucket")

    assert [b.name for b in ready_batches(url)] == ["b1", "b2"]
    assert _records(tmp_path / "bucket") == _records(tmp_path / "disk") and _records(tmp_path / "disk")
    assert [(r.batch, r.modality, r.kept, r.rejected, r.reasons) for r in from_bucket.results] == [
        (r.batch, r.modality, r.kept, r.rejected, r.reasons) for r in on_disk.results
    ]
    assert from_bucket.unrecognized_files == on_disk.unrecognized_files == ["b2/notes.md"]
    assert all(a.ok for a in accounting(url, tmp_path / "bucket"))


@pytest.mark.parametrize(
    "location, says",
    [
        ("{tmp}/no-such-folder", "no such folder"),
        ("memory://{uid}/never-written", "memory://{uid}/never-written not found"),
        ("s3://{uid}-no-such-bucket/zone", "cannot be listed"),
        ("s3://{bucket}/no-such-prefix", "no object under that prefix"),
        ("nosuchscheme://bucket/zone", "no filesystem for nosuchscheme://"),
    ],
)
def test_a_landing_zone_that_cannot_be_found_is_an_error_whatever_its_scheme(s3_server, tmp_path, location, says):
    """Never an empty corpus that "succeeds" (the issue: 692 rows on disk, 0 from the bucket)."""
    name = f"kiln-{uuid.uuid4().hex[:8]}"
    s3_server.mkdir(name)
    s3_server.pipe_file(f"{name}/zone/b1/_SUCCESS", b"")
    uid = uuid.uuid4().hex[:8]
    location, says = (x.format(tmp=tmp_path, uid=uid, bucket=name) for x in (location, says))
    with pytest.raises(LandingZoneNotFound, match=says):
        ready_batches(location)
    with pytest.raises(LandingZoneNotFound):
        clean(location, tmp_path / "out")
    with pytest.raises(LandingZoneNotFound):  # the partition's cleaning and its records_accounted check
        ready_batch(location, "b1")
    assert not (tmp_path / "out" / "kept").exists()


def test_an_empty_zone_is_marked_by_a_folder_object_and_has_no_batches(s3_server):
    name = f"kiln-{uuid.uuid4().hex[:8]}"
    s3_server.mkdir(name)
    s3_server.pipe_file(f"{name}/zone/", b"")  # what a console's "create folder" writes
    assert ready_batches(f"s3://{name}/zone") == []


def test_batches_are_prefixes_with_success_and_bad_names_are_reported(bucket):
    fs, root, url = bucket
    for key in ("b1/_SUCCESS", "b1/text/a.jsonl", "b2/text/a.jsonl", "_tmp/_SUCCESS", ".hidden/_SUCCESS",
                "a...b/_SUCCESS", "b0/code/", "b0/_SUCCESS"):
        fs.pipe_file(f"{root}/{key}", b'{"text": "x"}\n' if key.endswith(".jsonl") else b"")
    assert [b.name for b in ready_batches(url)] == ["b0", "b1"]  # b2 has no _SUCCESS yet
    assert list(unusable_batches(url)) == ["a...b"]
    assert ready_batch(url, "b1").files("text")[0].name == "a.jsonl"
    assert ready_batch(url, "b0").files("code") == []  # a folder marker object is not an entry
    for name in ("b2", "../zone", "b1/text", "_tmp", ""):
        with pytest.raises(ValueError, match="not a ready batch"):
            ready_batch(url, name)


def _secret_batch(fs, root: str, other_bucket: str) -> None:
    """b1 holds a secret-free batch; b2 tries every way out of its prefix."""
    red = _png((255, 0, 0))
    fs.pipe_file(f"{root}/b1/images/red.png", red)
    fs.pipe_file(f"{root}/b1/_SUCCESS", b"")
    fs.pipe_file(f"{other_bucket}/secret.png", red)
    fs.pipe_file(f"{other_bucket}/s.jsonl", json.dumps({"text": SECRET}).encode() + b"\n")
    fs.pipe_file(f"{root}/secret.png", red)
    names = {
        "other-batch": "../../b1/images/red.png",
        "zone-root": "../../secret.png",
        "absolute": f"/{root.lstrip('/')}/secret.png",
        "url": f"s3://{other_bucket.lstrip('/')}/secret.png",
        "other-bucket-key": f"/{other_bucket.lstrip('/')}/secret.png",
    }
    lines = [json.dumps({"image": n, "caption": SECRET, "id": k}) for k, n in names.items()]
    fs.pipe_file(f"{root}/b2/images/captions.jsonl", ("\n".join(lines) + "\n").encode())
    fs.pipe_file(f"{root}/b2/text/../../../{other_bucket.lstrip('/').split('/')[-1]}/s.jsonl", json.dumps({"text": SECRET}).encode())
    fs.pipe_file(f"{root}/b2/text/ok.jsonl", json.dumps({"text": PROSE[0]}).encode() + b"\n")
    fs.pipe_file(f"{root}/b2/_SUCCESS", b"")


def test_nothing_outside_a_batch_prefix_is_read(bucket, tmp_path):
    fs, root, url = bucket
    other = f"{root.rsplit('/', 1)[0]}-other" if fs.protocol == "memory" else f"kiln-{uuid.uuid4().hex[:8]}"
    if fs.protocol != "memory":
        fs.mkdir(other)
    _secret_batch(fs, root, other)
    clean(url, tmp_path)
    got = sources(tmp_path / "rejected" / "b2")
    assert SECRET not in json.dumps(rows(tmp_path / "kept") + rows(tmp_path / "rejected"))
    reasons = {r["id"]: r["reason"] for r in rows(tmp_path / "rejected" / "b2") if r["modality"] == "image_text"}
    assert reasons == {
        "other-batch": "outside_landing_zone", "zone-root": "outside_landing_zone", "absolute": "outside_landing_zone",
        "other-bucket-key": "outside_landing_zone", "url": "image_missing",  # a key under b2/images/, never another bucket
    }
    [(leak, why)] = [(s, r) for s, r in got.items() if "s.jsonl" in s]
    assert why == "outside_landing_zone" and leak.startswith("b2/text/")
    assert all(a.ok for a in accounting(url, tmp_path))


def test_change_detection_reads_metadata_only(s3_server, monkeypatch):
    """The sensor's stat hash and the cleaning's content hash come from one listing (size, ETag,
    time): no object is opened. Each kind of change moves the stat hash; a rewrite of identical
    bytes moves neither the content hash (same ETag) nor, within a second, much else."""
    name = f"kiln-{uuid.uuid4().hex[:8]}"
    s3_server.mkdir(name)
    root = f"{name}/zone"
    for key, data in (("b1/text/a.jsonl", b'{"text": "one"}\n'), ("b1/code/m.py", b"x = 1\n"), ("b1/_SUCCESS", b"")):
        s3_server.pipe_file(f"{root}/{key}", data)
    url = f"s3://{root}"

    def never(self, mode="rb"):
        raise AssertionError(f"{self} was opened to detect a change")

    monkeypatch.setattr(ObjectPath, "open", never)
    look = lambda: (lambda b: (b.stat_fingerprint(), b.fingerprint("text"), b.fingerprint("code")))(ready_batch(url, "b1"))  # noqa: E731
    first = look()
    assert look() == first
    changes = {
        "rewritten, same size": lambda: s3_server.pipe_file(f"{root}/b1/text/a.jsonl", b'{"text": "two"}\n'),
        "added": lambda: s3_server.pipe_file(f"{root}/b1/code/n.py", b"y = 2\n"),
        "removed": lambda: s3_server.rm_file(f"{root}/b1/code/m.py"),
    }
    seen = [first]
    for what, change in changes.items():
        change()
        now = look()
        assert now[0] not in [s[0] for s in seen], what
        seen.append(now)
    assert seen[1][1] != first[1] and seen[1][2] == first[2]  # only the text's content changed
    assert seen[2][2] != seen[1][2] and seen[3][2] != seen[2][2]


def test_a_batch_whose_listing_changes_while_it_is_read(s3_server, tmp_path):
    """The cleaning reads the listing it took: an object added afterwards waits for the next look,
    one replaced or deleted afterwards becomes `file_unreadable` (S3 refuses the listed ETag), never
    a mix of two versions; the accounting, from a new listing, then fails, and the stat hash the
    landing sensor compares has moved, so the batch is cleaned again."""
    name = f"kiln-{uuid.uuid4().hex[:8]}"
    s3_server.mkdir(name)
    root = f"{name}/zone"
    lines = lambda tag: "".join(json.dumps({"text": f"{tag} {t}"}) + "\n" for t in PROSE).encode()  # noqa: E731
    for f in ("a", "b", "c"):
        s3_server.pipe_file(f"{root}/b1/text/{f}.jsonl", lines(f))
    s3_server.pipe_file(f"{root}/b1/_SUCCESS", b"")
    batch = ready_batch(f"s3://{root}", "b1")
    before = batch.stat_fingerprint()
    assert [p.name for p in batch.files("text")] == ["a.jsonl", "b.jsonl", "c.jsonl"]  # the listing is taken
    s3_server.pipe_file(f"{root}/b1/text/b.jsonl", lines("replaced"))
    s3_server.rm_file(f"{root}/b1/text/c.jsonl")
    s3_server.pipe_file(f"{root}/b1/text/d.jsonl", lines("d"))
    got = [(r.source, r.reject.reason if r.reject else None, r.text) for r in read_text(batch, TextFilterConfig())]
    assert [s for s, _, _ in got if s.startswith("b1/text/a.jsonl")] == [f"b1/text/a.jsonl:{i + 1}" for i in range(len(PROSE))]
    assert ("b1/text/b.jsonl", "file_unreadable") in [(s, r) for s, r, _ in got]
    assert ("b1/text/c.jsonl", "file_unreadable") in [(s, r) for s, r, _ in got]
    assert not any("replaced" in (t or "") or s.startswith("b1/text/d.jsonl") for s, _, t in got)
    assert ready_batch(f"s3://{root}", "b1").stat_fingerprint() != before


def test_object_paths_join_like_paths_and_never_show_credentials():
    fs = fsspec.filesystem("memory")
    batch = ObjectPath(fs, "/zone/b1")
    assert (batch / "images/../../b0/x.png").key == "/zone/b0/x.png"
    assert (batch / "/etc/passwd").key == "etc/passwd"
    assert (batch / "images" / "a.png").relative_to(batch).as_posix() == "images/a.png"
    assert batch in (batch / "images" / "a.png").parents
    assert str(batch / "t.jsonl.gz") == "memory://zone/b1/t.jsonl.gz" and (batch / "t.jsonl.gz").suffix == ".gz"
    assert zone.shown("s3://AKIA:secret@bucket/zone") == "s3://bucket/zone"
    assert isinstance(zone.landing_root("file:///srv/landing"), Path) and isinstance(zone.landing_root("/srv/landing"), Path)
    with pytest.raises(ValueError, match="read-only"):
        (batch / "x").open("wb")


def test_the_formats_users_tools_write_give_the_same_corpus_from_a_bucket(s3_server, tmp_path):
    """Issue 26's zone (a WebDataset shard from TarWriter, The Stack and FineWeb Parquet): the same
    cleaned records, in the same order, from the S3 server as from disk, every record accounted for."""
    from tests.byod_zone import byod_batch

    fs, root = s3_server, f"kiln-{uuid.uuid4().hex[:8]}/zone"
    fs.mkdir(root.split("/")[0])
    url = f"s3://{root}"
    local = tmp_path / "landing"
    byod_batch(local, "b1")
    upload(local, fs, root)
    clean(local, tmp_path / "disk")
    clean(url, tmp_path / "bucket")
    assert _records(tmp_path / "bucket") == _records(tmp_path / "disk")
    assert len(_records(tmp_path / "disk")) >= 100 + 200
    assert all(a.ok for a in accounting(url, tmp_path / "bucket"))


def test_read_ahead_keeps_order_and_bounds_the_reads_in_flight():
    import threading

    from training.data.zone import read_ahead

    lock, state = threading.Lock(), {"now": 0, "most": 0}

    def read(i):
        with lock:
            state["now"] += 1
            state["most"] = max(state["most"], state["now"])
        time.sleep(0.002 * (i % 3))  # out-of-order completion
        with lock:
            state["now"] -= 1
        return i * i

    got = []
    for i, square in read_ahead(range(40), read, window=4):
        got.append((i, square))
        assert state["most"] <= 4
    assert got == [(i, i * i) for i in range(40)] and state["most"] > 1
    assert list(read_ahead([], read)) == []


def test_the_text_files_other_tools_write_read_the_same_from_a_bucket(s3_server, tmp_path):
    """The local landing zone's table (byte-order marks, CRLF, UTF-16, gzip/zstd/bz2, truncated and
    corrupt streams: tests/training/test_landing_hardening.py), every file in one batch, streamed from
    the S3 server: the same records, reasons and order as from disk."""
    from tests.training.test_landing_hardening import FILES

    local = tmp_path / "landing"
    b = write_batch(local, "b1", [])
    for name, (data, _) in FILES.items():
        (b / "text" / name).write_bytes(data)
    root = f"kiln-{uuid.uuid4().hex[:8]}/zone"
    s3_server.mkdir(root.split("/")[0])
    upload(local, s3_server, root)
    cfg = CleaningConfig(text=TextFilterConfig(min_words=3))
    clean(local, tmp_path / "disk", cfg=cfg)
    clean(f"s3://{root}", tmp_path / "bucket", cfg=cfg)
    assert _records(tmp_path / "bucket") == _records(tmp_path / "disk")
    assert {s.split(":")[0] for _, s, *_ in _records(tmp_path / "disk") if "/text/" in s} >= {f"b1/text/{n}" for n in FILES}
    assert all(a.ok for a in accounting(f"s3://{root}", tmp_path / "bucket"))

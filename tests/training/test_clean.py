"""The cleaning runner: accounting, incremental re-runs, cross-batch duplicates, atomic outputs."""

import json

import pytest

from tests.helpers import PROSE, accounting, clean, rows, sources, write_batch
from training.config import CleaningConfig, TextFilterConfig


def test_every_record_is_kept_or_rejected_once(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE + ["buy now " * 30, "", PROSE[0]])
    clean(landing, tmp_path)
    kept, rejected = rows(tmp_path / "kept"), rows(tmp_path / "rejected")
    assert {r["source"] for r in kept}.isdisjoint({r["source"] for r in rejected} - {"b1/images/red.png"})
    assert sources(tmp_path / "rejected") == {
        "b1/text/a.jsonl:5": "entropy_low",
        "b1/text/a.jsonl:6": "text_empty",
        "b1/text/a.jsonl:7": "duplicate",
        "b1/text/a.jsonl:8": "json_malformed",
        "b1/code/bad.py": "tree_sitter_error",
        "b1/images/blue.png": "clip_low",
    }
    assert {r["modality"] for r in kept} == {"text", "code", "image_text"}
    pair = next(r for r in kept if r["modality"] == "image_text")
    assert pair["source"] == "b1/images/red.png" and pair["text"] == "a red square" and pair["clip_score"] == 2.5
    assert next(r for r in kept if r["modality"] == "code")["language"] == "python"
    assert all(r["detail"] for r in rejected)
    table = accounting(landing, tmp_path)
    assert [(a.batch, a.modality, a.records_in, a.kept + a.rejected) for a in table] == [
        ("b1", "text", 8, 8),
        ("b1", "code", 2, 2),
        ("b1", "image_text", 2, 2),
    ]
    assert all(a.ok for a in table)


def test_accounting_check_detects_a_lost_record(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    clean(landing, tmp_path)
    # A record lands after cleaning without the batch being re-cleaned: the check must notice.
    with open(landing / "b1" / "text" / "a.jsonl", "a") as f:
        f.write(json.dumps({"text": "a late record that nobody cleaned, sneaking in"}) + "\n")
    bad = [a for a in accounting(landing, tmp_path) if not a.ok]
    assert [(a.batch, a.modality, a.records_in, a.kept + a.rejected) for a in bad] == [("b1", "text", 6, 5)]


def test_batches_without_success_marker_are_not_read(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    write_batch(landing, "b2", PROSE[:1], ready=False)
    report = clean(landing, tmp_path)
    assert {r.batch for r in report.results} == {"b1"}
    assert not (tmp_path / "kept" / "b2").exists()


def test_rerun_is_incremental(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE[:2])
    first = clean(landing, tmp_path)
    assert not any(r.cached for r in first.results)
    stamp = (tmp_path / "kept" / "b1" / "text.parquet").stat().st_mtime_ns

    def no_scorer():
        raise AssertionError("cached batches must not load the CLIP")

    again = clean(landing, tmp_path, scorer=no_scorer)
    assert all(r.cached for r in again.results)
    assert (tmp_path / "kept" / "b1" / "text.parquet").stat().st_mtime_ns == stamp

    # A new batch: only it is cleaned, and its duplicate of b1 is judged against b1's kept records.
    write_batch(landing, "b2", [PROSE[0], PROSE[3]])
    third = clean(landing, tmp_path)
    assert {(r.batch, r.cached) for r in third.results} == {("b1", True), ("b2", False)}
    dup = [r for r in rows(tmp_path / "rejected" / "b2") if r["reason"] == "duplicate"]
    assert [(d["source"], d["detail"]) for d in dup] == [
        ("b2/code/ok.py", "first seen at b1/code/ok.py"),
        ("b2/text/a.jsonl:1", "first seen at b1/text/a.jsonl:1"),
    ]

    assert third.deduplicated == [("b2", "text"), ("b2", "code"), ("b2", "image_text")]

    # A changed batch is cleaned again on its own; its duplicates, and those of the batches after it, are judged again.
    (landing / "b1" / "code" / "ok.py").write_text("y = 2\n")
    fourth = clean(landing, tmp_path)
    assert {(r.batch, r.modality) for r in fourth.results if not r.cached} == {("b1", "code")}
    assert fourth.deduplicated == [("b1", "code"), ("b2", "code")]
    assert sources(tmp_path / "kept" / "b2").get("b2/code/ok.py", "gone") is None  # no longer a duplicate

    # A changed filter config cleans that modality again.
    fifth = clean(landing, tmp_path, CleaningConfig(text=TextFilterConfig(min_words=3)))
    assert {(r.batch, r.modality) for r in fifth.results if not r.cached} == {("b1", "text"), ("b2", "text")}

    # A different CLIP re-scores the pairs only.
    sixth = clean(landing, tmp_path, CleaningConfig(text=TextFilterConfig(min_words=3)), fp="another-clip")
    assert {(r.batch, r.modality) for r in sixth.results if not r.cached} == {("b1", "image_text"), ("b2", "image_text")}
    manifest = json.loads((tmp_path / "kept" / "b2" / "_manifest.json").read_text())
    assert manifest["clip"] == {"version": "another-clip", "provenance": "a test scorer"}


def test_removed_batch_outputs_are_dropped(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    write_batch(landing, "b2", PROSE[:1])
    clean(landing, tmp_path)
    (landing / "b2" / "_SUCCESS").unlink()
    report = clean(landing, tmp_path)
    assert report.removed_batches == ["b2"]
    for root in ("kept", "rejected", "batches"):
        assert not (tmp_path / root / "b2").exists(), root


def test_failure_leaves_no_partial_output(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    clean(landing, tmp_path)
    before = sources(tmp_path / "kept")
    (landing / "b1" / "images" / "captions.jsonl").write_text(json.dumps({"image": "red.png", "caption": "red"}) + "\n")

    def broken(images, captions):
        raise RuntimeError("GPU fell off the bus")

    with pytest.raises(RuntimeError, match="GPU fell off"):
        clean(landing, tmp_path, scorer=lambda: broken)
    assert sources(tmp_path / "kept") == before
    leftovers = [p for p in tmp_path.rglob("*") if ".tmp-" in p.name]
    assert leftovers == []


def test_without_a_clip_pairs_wait_with_a_reason_and_text_and_code_clean(tmp_path):
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    clean(landing, tmp_path, scorer=None)
    rejected = rows(tmp_path / "rejected")
    waiting = [r for r in rejected if r["reason"] == "clip_unavailable"]
    assert sorted(r["source"] for r in waiting) == ["b1/images/blue.png", "b1/images/red.png"]
    assert "min_pairs" in waiting[0]["detail"]
    kept = rows(tmp_path / "kept")
    assert {r["modality"] for r in kept} == {"text", "code"} and len([r for r in kept if r["modality"] == "text"]) == 4
    assert all(a.ok for a in accounting(landing, tmp_path))
    # Once a CLIP exists, cleaning the batch again scores the pairs (and only them).
    again = clean(landing, tmp_path)
    assert {r.modality for r in again.results if not r.cached} == {"image_text"}
    assert "b1/images/red.png" in sources(tmp_path / "kept")


@pytest.mark.parametrize(
    "name, problem",
    [
        ("batch-0001", None),
        ("2026-11-23T07:00:00Z", None),
        ("数据批次-7", None),
        ("batch...2", "..."),
        ("tab\there", "control characters"),
        ("line\nbreak", "control characters"),
        ("bytes-\udcff", "not valid UTF-8"),
    ],
)
def test_which_folder_names_can_name_a_batch(name, problem):
    from training.data.landing import name_problem

    got = name_problem(name)
    assert (got is None) if problem is None else (problem in got)


def test_a_folder_whose_name_cannot_name_a_batch_is_reported_not_read(tmp_path):
    from training.data.landing import ready_batches, unusable_batches

    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    write_batch(landing, "b...2", PROSE)
    assert [b.name for b in ready_batches(landing)] == ["b1"]
    assert list(unusable_batches(landing)) == ["b...2"]


def test_a_batch_whose_records_are_not_all_accounted_for_stays_out_of_the_corpus(tmp_path):
    from training.data.clean import cleaned_batches

    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    write_batch(landing, "b2", PROSE[:1])
    clean(landing, tmp_path)
    assert cleaned_batches(tmp_path / "batches", ["b1", "b2", "b3"]) == ["b1", "b2"]  # b3: never cleaned
    manifest = tmp_path / "batches" / "b2" / "_manifest.json"
    m = json.loads(manifest.read_text())
    m["modalities"]["text"]["kept"] -= 1  # a record lost on the way
    manifest.write_text(json.dumps(m))
    assert cleaned_batches(tmp_path / "batches", ["b1", "b2"]) == ["b1"]


@pytest.mark.parametrize("data", [b"", b"a", b"a\n", b"a\n\n  \nb", b"\n\n", b"x" * 10 + b"\n  \t\r\n" + b"y", b"\xef\xbb\xbf{}\n"])
@pytest.mark.parametrize("chunk", [1, 3, 1 << 20])
def test_records_are_counted_in_bounded_chunks_like_the_reader_reads_them(tmp_path, data, chunk):
    from training.data.landing import _count_nonblank_lines
    from training.data.readers import read_lines

    path = tmp_path / "a.jsonl"
    path.write_bytes(data)
    assert _count_nonblank_lines(path, chunk) == sum(1 for _ in read_lines(path, 1 << 20))


def test_files_other_tools_write_and_links_out_of_the_batch(tmp_path):
    """A UTF-8 byte-order mark and CRLF line ends (Windows tools) are decoded; a link to a file outside
    the batch, in text/ or code/, or under a linked folder, is rejected unread, as is one to another batch."""
    landing = tmp_path / "landing"
    write_batch(landing, "b1", PROSE)
    b = write_batch(landing, "b2", [])
    lines = [json.dumps({"text": f"{t} Written on Windows."}).encode() for t in PROSE[:2]]
    (b / "text" / "a.jsonl").write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines) + b"\r\n")
    secret = tmp_path / "secret.jsonl"
    secret.write_text(json.dumps({"text": "SECRET-TOKEN-123 must never reach the training corpus, whatever happens"}) + "\n")
    (b / "text" / "leak.jsonl").symlink_to(secret)
    (b / "code" / "leak.py").symlink_to(secret)
    (b / "text" / "other-batch.jsonl").symlink_to(landing / "b1" / "text" / "a.jsonl")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "s.py").write_text("SECRET = 'token'\n")
    (b / "code" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (b / "images" / "captions.jsonl").write_bytes(b"\xef\xbb\xbf" + json.dumps({"image": "red.png", "caption": "a red square"}).encode() + b"\r\n")
    (b / "images" / "blue.png").unlink()
    clean(landing, tmp_path)
    kept = rows(tmp_path / "kept" / "b2")
    assert not any("SECRET" in (r["text"] or "") for r in kept)
    got = sources(tmp_path / "rejected" / "b2")
    assert {s: r for s, r in got.items() if r == "outside_landing_zone"} == {
        "b2/text/leak.jsonl": "outside_landing_zone",
        "b2/text/other-batch.jsonl": "outside_landing_zone",
        "b2/code/leak.py": "outside_landing_zone",
        "b2/code/linked": "outside_landing_zone",
    }
    assert {r["source"] for r in kept if r["modality"] == "text"} == {"b2/text/a.jsonl:1", "b2/text/a.jsonl:2"}
    assert "b2/images/red.png" in {r["source"] for r in kept}  # the BOM'd caption line names its image
    assert all(a.ok for a in accounting(landing, tmp_path))

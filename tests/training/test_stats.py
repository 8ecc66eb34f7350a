"""Per-batch histograms: counts against hand-computed ones on a tiny synthetic batch, the picture, and
the empty cases."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from training.data import stats
from training.data.records import MODALITIES, Record, RecordWriter, Reject
from training.layout import HISTOGRAMS_JSON, HISTOGRAMS_PNG
from training.data.stats import (
    _reason_rows,
    batch_histograms,
    batch_panels,
    batch_stats,
    level_counts,
    level_histograms,
    summary,
)


def _write(folder: Path, modality: str, records: list[Record], rejected: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    writer = RecordWriter(folder / f"{modality}.parquet", rejected=rejected)
    writer.write(records)
    writer.close()


def _rec(i: int, modality: str, text: str | None, reject: str | None = None, **fields) -> Record:
    return Record(f"{modality}-{i}", modality, f"batch-1/{modality}/f:{i}", text=text, reject=Reject(reject) if reject else None, **fields)


def write_batch(root: Path, records: dict[str, list[Record]]) -> tuple[Path, Path]:
    """cleaned_batch/batch-1/ and rejected/batch-1/ as the cleaner leaves them: one kept and one
    rejected file per modality, empty ones included."""
    kept_dir, rejected_dir = root / "cleaned_batch" / "batch-1", root / "rejected" / "batch-1"
    for modality in MODALITIES:
        recs = records.get(modality, [])
        _write(kept_dir, modality, [r for r in recs if r.reject is None], rejected=False)
        _write(rejected_dir, modality, [r for r in recs if r.reject is not None], rejected=True)
    return kept_dir, rejected_dir


# Lengths in characters: 5 -> bin 2 (log10 5 * 4 = 2.8), 50 -> 6, 500 -> 10, 2 -> 1, 12 -> 4.
RECORDS = {
    "text": [
        _rec(0, "text", "a" * 50, entropy=0.85, language="en"),  # entropy bin 17
        _rec(1, "text", "a" * 50, entropy=0.93, language="en"),  # 18
        _rec(2, "text", "a" * 500, entropy=0.97),  # 19, language unknown
        _rec(3, "text", "a" * 50, "entropy_low", entropy=0.2, language="de"),  # 4
        _rec(4, "text", "a" * 50, "entropy_low", entropy=0.79),  # 15
        _rec(5, "text", "hi", "too_few_words", language="en"),  # never scored: no entropy
    ],
    "code": [
        _rec(0, "code", "x" * 500, language="python"),
        _rec(1, "code", "x" * 500, language="python"),
        _rec(2, "code", "x" * 50, language="go"),
        _rec(3, "code", "x" * 5, "tree_sitter_error", language="python"),
    ],
    "image_text": [
        _rec(0, "image_text", "a cat sits.", clip_score=1.0),  # 11 characters; CLIP bin 8
        _rec(1, "image_text", "a" * 12, clip_score=2.5),  # the top of the range: the last bin, 19
        _rec(2, "image_text", "a" * 12, "clip_low", clip_score=0.5),  # 4
        _rec(3, "image_text", None, "image_decode_error"),  # no caption read, no score
    ],
}


def _hist(bins: int, **counts: int) -> list[int]:
    out = [0] * bins
    for k, v in counts.items():
        out[int(k[1:])] = v
    return out


@pytest.fixture
def batch(tmp_path):
    return write_batch(tmp_path, RECORDS)


@pytest.mark.parametrize(
    "path, expected",
    [
        (("entropy", "counts"), {"kept": _hist(20, b17=1, b18=1, b19=1), "rejected": _hist(20, b4=1, b15=1)}),
        (("clip_score", "counts"), {"kept": _hist(20, b8=1, b19=1), "rejected": _hist(20, b4=1)}),
        (("length", "counts", "text"), {"kept": _hist(28, b6=2, b10=1), "rejected": _hist(28, b6=2, b1=1)}),
        (("length", "counts", "code"), {"kept": _hist(28, b10=2, b6=1), "rejected": _hist(28, b2=1)}),
        (("length", "counts", "image_text"), {"kept": _hist(28, b4=2), "rejected": _hist(28, b4=1)}),
        (("languages", "text"), {"de": {"rejected": 1}, "en": {"kept": 2, "rejected": 1}, "unknown": {"kept": 1, "rejected": 1}}),
        (("languages", "code"), {"go": {"kept": 1}, "python": {"kept": 2, "rejected": 1}}),
        (("languages", "image_text"), {"unknown": {"kept": 2, "rejected": 2}}),
        (("reasons",), {"code": {"tree_sitter_error": 1}, "image_text": {"clip_low": 1, "image_decode_error": 1}, "text": {"entropy_low": 2, "too_few_words": 1}}),
        (("entropy", "quantiles", "kept", "p50"), 0.93),
        (("entropy", "quantiles", "kept", "p5"), 0.858),  # 0.85 + 0.1 * (0.93 - 0.85), linear
        (("clip_score", "quantiles", "rejected"), {"p5": 0.5, "p50": 0.5, "p95": 0.5}),
        (("length", "quantiles", "code", "p50"), 500.0),
    ],
)
def test_counts_equal_hand_computed(batch, path, expected):
    got = batch_stats(*batch)
    for key in path:
        got = got[key]
    assert got == expected


def test_the_picture_is_a_png_with_one_panel_per_statistic(batch):
    result = batch_histograms(*batch, entropy_threshold=0.8, clip_threshold=0.75)
    assert result.drawn and result.path == batch[0] / HISTOGRAMS_PNG and result.path.stat().st_size > 0
    with Image.open(result.path) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 200
    # entropy, CLIP, length, language (text and code; captions have none), reasons
    assert len(batch_panels(result.stats, 0.8, 0.75)) == 5
    assert json.loads((batch[0] / HISTOGRAMS_JSON).read_text())["stats"] == result.stats


def test_unchanged_numbers_keep_the_picture_and_a_change_redraws_it(batch, monkeypatch):
    first = batch_histograms(*batch, entropy_threshold=0.8, clip_threshold=0.75)
    stamp = first.path.stat().st_mtime_ns
    again = batch_histograms(*batch, entropy_threshold=0.8, clip_threshold=0.75)
    assert not again.drawn and again.path.stat().st_mtime_ns == stamp and again.stats == first.stats
    assert batch_histograms(*batch, entropy_threshold=0.7, clip_threshold=0.75).drawn
    monkeypatch.setattr(stats, "DRAWING_VERSION", stats.DRAWING_VERSION + 1)
    assert batch_histograms(*batch, entropy_threshold=0.7, clip_threshold=0.75).drawn


@pytest.mark.parametrize(
    "present, panels",
    [
        ({"text"}, 4),  # entropy, length, language, reasons
        ({"code"}, 3),  # length, language, reasons
        ({"image_text"}, 3),  # CLIP, length, reasons (no language known)
        ({"text", "code"}, 4),
    ],
)
def test_empty_modalities_draw_no_panel(tmp_path, present, panels):
    batch = write_batch(tmp_path, {m: r for m, r in RECORDS.items() if m in present})
    stats = batch_stats(*batch)
    assert set(stats["length"]["counts"]) == present and set(stats["reasons"]) == present
    assert len(batch_panels(stats, 0.8, 0.75)) == panels
    assert batch_histograms(*batch, entropy_threshold=0.8, clip_threshold=0.75).path is not None


def test_an_empty_batch_draws_nothing_and_removes_an_earlier_picture(tmp_path, batch):
    assert batch_histograms(*batch, 0.8, 0.75).path.is_file()
    empty = write_batch(tmp_path, {})  # the same batch, landed again empty
    result = batch_histograms(*empty, 0.8, 0.75)
    assert result.path is None and not (empty[0] / HISTOGRAMS_PNG).exists()
    assert batch_panels(result.stats, 0.8, 0.75) == []
    assert summary(result.stats) == {"entropy_quantiles": {}, "clip_score_quantiles": {}, "length_quantiles": {}, "languages": {}}


def test_a_batch_without_files_is_empty(tmp_path):
    result = batch_histograms(tmp_path / "cleaned_batch" / "b", tmp_path / "rejected" / "b", 0.8, 0.75)
    assert result.path is None and result.stats["reasons"] == {} and result.stats["entropy"]["counts"] == {}


def test_only_unknown_languages_still_draw_a_language_panel_for_text(tmp_path):
    """Before language identification every text record is `unknown`: counted, and drawn for text
    only when some text language is known."""
    records = {"text": [_rec(i, "text", "a" * 50, entropy=0.9) for i in range(3)]}
    stats = batch_stats(*write_batch(tmp_path, records))
    assert stats["languages"] == {"text": {"unknown": {"kept": 3}}}
    assert summary(stats)["languages"] == {"text": {"unknown": 3}}
    assert len(batch_panels(stats, 0.8, 0.75)) == 2  # entropy, length


def test_summary_holds_the_compact_numbers(batch):
    numbers = summary(batch_stats(*batch))
    # Kept records only: `de` was rejected.
    assert numbers["languages"] == {"code": {"go": 1, "python": 2}, "image_text": {"unknown": 2}, "text": {"en": 2, "unknown": 1}}
    assert set(numbers["entropy_quantiles"]) == {"kept", "rejected"} and set(numbers["length_quantiles"]) == set(MODALITIES)
    json.dumps(numbers)  # metadata as JSON


def test_many_reasons_are_capped_per_modality(tmp_path):
    reasons = [f"reason_{k}" for k in range(7)]
    records = {"code": [_rec(i, "code", "x", reasons[i % 7]) for i in range(7 + 3)]}  # reason_0..2 twice
    stats = batch_stats(*write_batch(tmp_path, records))
    assert _reason_rows(stats["reasons"]) == [
        ("code", "reason_0", 2), ("code", "reason_1", 2), ("code", "reason_2", 2), ("code", "reason_3", 1),
        ("code", "other (3 reasons)", 3),
    ]


def _scores(path: Path, rows: list[tuple[str, int]]) -> Path:
    pq.write_table(pa.table({"batch": pa.array([b for b, _ in rows], pa.string()), "level": pa.array([lv for _, lv in rows], pa.int8())}), path)
    return path


def test_level_counts_per_batch_over_one_file_or_one_per_batch(tmp_path):
    rows = [("b-2", 5), ("b-1", 1), ("b-1", 1), ("b-1", 3), ("b-2", 2)]
    expected = {"b-1": [2, 0, 1, 0, 0], "b-2": [0, 1, 0, 0, 1]}
    scores = _scores(tmp_path / "scores.parquet", rows)
    per_batch = [_scores(tmp_path / f"{b}.parquet", [r for r in rows if r[0] == b]) for b in ("b-2", "b-1")]
    assert level_counts(scores, 5) == level_counts(per_batch, 5) == expected
    assert list(level_counts(per_batch, 5)) == ["b-1", "b-2"]  # in batch order, whatever the files' order
    png, counts = level_histograms(per_batch, tmp_path / "levels.png", 5)
    assert counts == expected
    with Image.open(png) as image:
        assert image.format == "PNG"


def test_no_scores_no_level_picture(tmp_path):
    (tmp_path / "levels.png").write_bytes(b"stale")
    png, counts = level_histograms(_scores(tmp_path / "scores.parquet", []), tmp_path / "levels.png", 5)
    assert png is None and counts == {} and not (tmp_path / "levels.png").exists()
    assert level_histograms([], tmp_path / "levels.png", 5) == (None, {})  # a corpus of no batches

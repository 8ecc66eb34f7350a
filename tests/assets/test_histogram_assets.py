"""The histogram pictures in the metadata of cleaned_batch and curriculum, on the embedded default: a
thumbnail of at most MAX_INLINE_BYTES in the event log, and the path of the full picture."""

import base64
import io
import re

import pyarrow.parquet as pq
import pytest
from PIL import Image

from assets.metadata import MAX_INLINE_BYTES, THUMBNAIL_PIXELS
from tests.helpers import meta as _meta
from training.layout import HISTOGRAMS_PNG, LEVELS_PNG

pytestmark = pytest.mark.slow


def _png(markdown: str, full) -> bytes:
    """The thumbnail inlined in a markdown image, as the UI renders it, after checking that the markdown
    stays within the event log's bound and names the full picture `full`."""
    assert len(markdown.encode()) <= MAX_INLINE_BYTES
    match = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)\n\nfull picture: `(.+)`", markdown)
    assert match, markdown[:80]
    assert match.group(2) == str(full)
    data = base64.b64decode(match.group(1))
    with Image.open(io.BytesIO(data)) as image, Image.open(full) as picture:
        assert image.format == "PNG" and 100 < image.width <= min(picture.width, THUMBNAIL_PIXELS)
    return data


def test_every_cleaned_batch_shows_its_histograms_and_their_numbers(cleaned):
    data, _, results, _ = cleaned
    code_languages = set()
    for batch, result in results["batches"].items():
        meta = _meta(result, "cleaned_batch")
        png = data / "cleaned_batch" / batch / HISTOGRAMS_PNG
        _png(meta["histograms"], png)
        assert meta["histograms_path"] == str(png)
        # Kept text exceeds the entropy threshold (0.8); kept pairs reach the CLIP one (0.75).
        assert meta["histograms/entropy_quantiles"]["kept"]["p5"] > 0.8
        assert meta["histograms/clip_score_quantiles"]["kept"]["p5"] >= 0.75
        assert set(meta["histograms/length_quantiles"]) == {"text", "code", "image_text"}
        code_languages |= set(meta["histograms/languages"]["code"])
    assert {"python", "rust", "go"} <= code_languages


def test_rematerializing_a_batch_keeps_its_picture_and_still_shows_it(cleaned):
    data, _, results, pipeline = cleaned
    batch = sorted(results["batches"])[0]
    png = data / "cleaned_batch" / batch / HISTOGRAMS_PNG
    stamp = png.stat().st_mtime_ns
    meta = _meta(pipeline.materialize("cleaned_batch", batch), "cleaned_batch")
    assert meta["cleaned"] == [] and png.stat().st_mtime_ns == stamp
    assert _png(meta["histograms"], png) == _png(_meta(results["batches"][batch], "cleaned_batch")["histograms"], png)


def test_curriculum_shows_the_difficulty_levels_of_every_batch(downstream):
    data, result, _ = downstream
    meta = _meta(result, "curriculum")
    _png(meta["levels_by_batch"], data / "curriculum" / LEVELS_PNG)
    expected = {}
    for path in sorted((data / "difficulty_scores").glob("*/scores.parquet")):
        for row in pq.read_table(path, columns=["batch", "level"]).to_pylist():
            expected.setdefault(row["batch"], [0] * 5)[row["level"] - 1] += 1
    assert meta["levels_by_batch/counts"] == expected and set(expected) == {"batch-0001", "batch-0002"}

"""The histogram pictures in the metadata of cleaned_batch and curriculum, on the embedded default."""

import base64
import io
import re

import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import meta as _meta
from training.layout import HISTOGRAMS_PNG, LEVELS_PNG

pytestmark = pytest.mark.slow


def _png(markdown: str) -> bytes:
    """The PNG inlined in a markdown image, as the UI renders it."""
    match = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", markdown)
    assert match, markdown[:80]
    data = base64.b64decode(match.group(1))
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG" and image.width > 300
    return data


def test_every_cleaned_batch_shows_its_histograms_and_their_numbers(cleaned):
    data, _, results, _ = cleaned
    code_languages = set()
    for batch, result in results["batches"].items():
        meta = _meta(result, "cleaned_batch")
        png = data / "cleaned_batch" / batch / HISTOGRAMS_PNG
        assert _png(meta["histograms"]) == png.read_bytes() and meta["histograms_path"] == str(png)
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
    assert _png(meta["histograms"]) == png.read_bytes()


def test_curriculum_shows_the_difficulty_levels_of_every_batch(downstream):
    data, result, _ = downstream
    meta = _meta(result, "curriculum")
    assert _png(meta["levels_by_batch"]) == (data / "curriculum" / LEVELS_PNG).read_bytes()
    expected = {}
    for path in sorted((data / "difficulty_scores").glob("*/scores.parquet")):
        for row in pq.read_table(path, columns=["batch", "level"]).to_pylist():
            expected.setdefault(row["batch"], [0] * 5)[row["level"] - 1] += 1
    assert meta["levels_by_batch/counts"] == expected and set(expected) == {"batch-0001", "batch-0002"}

"""What a picture adds to Dagster's event log: a small thumbnail and the full picture's path, never the
whole PNG (every materialization's metadata stays in the instance's database)."""

import base64
import io
import re

import numpy as np
import pytest
from dagster import serialize_value
from PIL import Image

from assets.metadata import MAX_INLINE_BYTES, THUMBNAIL_PIXELS, md_image
from assets.pretraining import stage_metadata
from training.layout import LOSS_PNG
from training.pretrain.report import plot_loss


def _thumbnail(markdown: str, path) -> Image.Image:
    match = re.fullmatch(r"!\[[^\]]+\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)\n\nfull picture: `(.+)`", markdown)
    assert match, markdown[:120]
    assert match.group(2) == str(path)
    image = Image.open(io.BytesIO(base64.b64decode(match.group(1))))
    assert image.format == "PNG"
    return image


def _loss_plot(path):
    plot_loss([{"global_step": s, "loss": 9 / (1 + s / 50)} for s in range(400)], path, "stage 1")


def _noise(path, width, height):
    """The worst case for PNG compression: every pixel random."""
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path)


def _translucent(path, width, height):
    image = Image.new("RGBA", (width, height), (0, 0, 0, 0))
    image.paste((200, 60, 10, 255), (0, 0, width // 2, height))
    image.save(path)


@pytest.mark.parametrize(
    ("draw", "size", "longest_side"),
    [
        (_loss_plot, None, THUMBNAIL_PIXELS),  # a real loss curve (600 x 320, about 38 KB; 51 KB inlined whole)
        (_noise, (1600, 1200), THUMBNAIL_PIXELS // 2),  # too many bytes at full thumbnail size: halved until it fits
        (_translucent, (300, 100), 300),  # smaller than a thumbnail: kept at its size, on white
    ],
)
def test_a_picture_adds_a_bounded_thumbnail_and_its_path_to_the_event_log(tmp_path, draw, size, longest_side):
    path = tmp_path / "picture.png"
    draw(path, *size) if size else draw(path)
    value = md_image(path, "a picture", "none")
    assert len(value.md_str.encode()) <= MAX_INLINE_BYTES
    assert len(serialize_value(value)) <= MAX_INLINE_BYTES + 200  # what the event log stores
    thumbnail = _thumbnail(value.md_str, path)
    assert max(thumbnail.size) <= longest_side
    with Image.open(path) as full:  # the proportions of the full picture, which stays as it was
        assert abs(thumbnail.width / thumbnail.height - full.width / full.height) < 0.05
    if draw is _translucent:
        rgb = thumbnail.convert("RGB")
        assert rgb.getpixel((thumbnail.width - 1, 0)) == (255, 255, 255)  # transparency flattened on white
        assert rgb.getpixel((0, 0))[0] > 150


@pytest.mark.parametrize("path", [None, "absent.png"])
def test_no_picture_says_so(tmp_path, path):
    assert md_image(path and tmp_path / path, "a picture", "no records to draw").md_str == "no records to draw"


def test_a_stage_shows_its_loss_curve_as_a_thumbnail_and_links_the_picture(tmp_path):
    _loss_plot(tmp_path / LOSS_PNG)
    summary = dict.fromkeys(
        ["final_loss", "steps", "tokens", "tokens_per_s", "mfu", "train_seconds", "wall_seconds", "resumed_from_step",
         "initialised_from", "peak_learning_rate", "frozen_layers", "parameters", "device", "ranks", "precision",
         "zero_stage", "global_batch", "micro_batch", "grad_accum", "total_steps"], 1
    ) | {"global_steps": [1, 400]}
    metadata = stage_metadata(summary, tmp_path, "key", False)
    assert (tmp_path / LOSS_PNG).stat().st_size > MAX_INLINE_BYTES  # the whole picture would not fit
    assert len(metadata["loss_curve"].md_str.encode()) <= MAX_INLINE_BYTES
    _thumbnail(metadata["loss_curve"].md_str, tmp_path / LOSS_PNG)
    assert metadata["loss_curve_path"].path == str(tmp_path / LOSS_PNG)

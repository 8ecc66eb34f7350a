"""Image-caption pairs: reader reasons, defensive decoding, and the CLIP score filter."""

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.config import CleaningConfig, ImageFilterConfig
from training.demo.landing import _png_bomb
from training.data.filters.image import ClipScore, ImageDecode
from training.data.landing import Batch, count_records
from training.data.readers import read_image_pairs


def _png(size=(32, 24), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.effect_noise((64, 64), 40).convert("RGB").save(buf, format="JPEG")
    return buf.getvalue()


IMAGES = {
    "ok.png": _png(),
    "ok.webp": None,  # written below from a PIL image
    "empty.png": b"",
    "truncated.png": _png((64, 64))[:60],
    "truncated.jpg": _jpeg()[:400],
    "garbage.jpg": b"\x00\x01not an image at all" * 20,
    "bomb.png": _png_bomb(50_000, 50_000),
    "huge.png": b"\x89PNG" + b"\0" * 5000,
}
DECODE_EXPECTED = {
    "ok.png": None,
    "ok.webp": None,
    "empty.png": "image_empty",
    "truncated.png": "image_truncated",
    "truncated.jpg": "image_truncated",
    "garbage.jpg": "image_unreadable",
    "bomb.png": "image_too_large",
    "huge.png": "file_too_large",
}


@pytest.fixture
def batch(tmp_path: Path) -> Batch:
    images = tmp_path / "b" / "images"
    images.mkdir(parents=True)
    for name, data in IMAGES.items():
        if data is None:
            Image.new("RGB", (40, 40), (0, 90, 200)).save(images / name, format="WEBP")
        else:
            (images / name).write_bytes(data)
    (images / "uncaptioned.png").write_bytes(_png())
    (images / "readme.md").write_text("not an image")
    lines = [json.dumps({"image": name, "caption": f"a picture called {name}"}) for name in IMAGES]
    lines += [
        json.dumps({"image": "nowhere.png", "caption": "a missing picture"}),
        json.dumps({"image": "../../etc/passwd", "caption": "escaping the batch"}),
        json.dumps({"image": "ok.png", "caption": ""}),
        json.dumps({"image": "ok.png"}),
        json.dumps({"image": "ok.png", "caption": "labelled", "match": False, "id": "pair-1"}),
        '{"image": "ok.png", "caption": "unterminated',
        json.dumps({"caption": "no image field"}),
        "",
    ]
    (images / "captions.jsonl").write_text("\n".join(lines) + "\n")
    return Batch("b", tmp_path / "b")


def test_image_reader_reasons(batch):
    recs = list(read_image_pairs(batch, ImageFilterConfig()))
    got = [(r.source, r.reject.reason if r.reject else None) for r in recs]
    n = len(IMAGES)
    assert got[:n] == [(f"b/images/{name}", None) for name in IMAGES]
    assert got[n:] == [
        ("b/images/nowhere.png", "image_missing"),
        ("b/images/../../etc/passwd", "outside_landing_zone"),
        ("b/images/ok.png", "caption_empty"),
        ("b/images/ok.png", "caption_invalid"),
        ("b/images/ok.png", None),
        (f"b/images/captions.jsonl:{n + 6}", "json_malformed"),
        (f"b/images/captions.jsonl:{n + 7}", "json_malformed"),
        ("b/images/readme.md", "unsupported_extension"),
        ("b/images/uncaptioned.png", "caption_missing"),
    ]
    labelled = recs[n + 4]
    assert labelled.id == "pair-1" and labelled.expected_match is False
    assert recs[0].id == "b/images/captions.jsonl:1"  # a pair's default id is its caption line
    assert count_records(batch, "image_text", CleaningConfig()) == len(recs)


@pytest.mark.parametrize("workers", [1, 3])
def test_decode_reasons(batch, workers):
    recs = [r for r in read_image_pairs(batch, ImageFilterConfig()) if r.reject is None and r.text.startswith("a picture")]
    verdicts = ImageDecode(max_bytes=4096, max_pixels=10_000_000, workers=workers)(recs)
    got = {Path(r.source).name: (v.reason if v else None) for r, v in zip(recs, verdicts)}
    assert got == DECODE_EXPECTED
    ok = next(r for r in recs if r.source.endswith("ok.png"))
    assert ok.image.mode == "RGB" and ok.image.size == (32, 24)


def test_declared_size_is_checked_before_decoding(tmp_path):
    # A 60000x60000 image would need 10 GB to decode; the header alone must reject it.
    from training.data.records import Record

    path = tmp_path / "bomb.png"
    path.write_bytes(_png_bomb(60_000, 60_000))
    rec = Record("x", "image_text", "b/images/bomb.png", text="c", image_path=path)
    verdict = ImageDecode(max_bytes=1 << 20, max_pixels=40_000_000).check(rec)
    assert verdict.reason == "image_too_large" and "pixels" in verdict.detail
    assert rec.image is None


def test_clip_score_threshold_and_annotation():
    from training.data.records import Record

    recs = [Record(str(i), "image_text", f"b/images/{i}.png", text=f"caption {i}") for i in range(5)]
    for r in recs:
        r.image = Image.new("RGB", (8, 8))

    def score(images, captions):  # a fixed score per caption, to test the threshold rule alone
        return np.array([float(c.split()[1]) * 0.4 for c in captions])

    verdicts = ClipScore(score, threshold=0.75, batch_size=2)(recs)
    assert [v.reason if v else None for v in verdicts] == ["clip_low", "clip_low", None, None, None]
    assert [r.clip_score for r in recs] == pytest.approx([0.0, 0.4, 0.8, 1.2, 1.6])
    assert all(r.image is None for r in recs)


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory) -> Path:
    """A randomly initialised small CLIP saved with a CLIP image processor (pixels do not depend on weights)."""
    from transformers import CLIPImageProcessorPil

    from training.clip.train import build_model, train_caption_tokenizer
    from training.config import ClipTrainConfig

    cfg = ClipTrainConfig(image_size=56)
    tokenizer = train_caption_tokenizer(["a red circle on the left", "a blue square at the top"] * 8, cfg)
    out = tmp_path_factory.mktemp("clip")
    build_model(cfg, tokenizer).save_pretrained(out)
    tokenizer.save_pretrained(out)
    CLIPImageProcessorPil(size={"shortest_edge": 64}, crop_size={"height": 56, "width": 56}).save_pretrained(out)
    return out


@pytest.mark.parametrize(
    "size, mode",
    [((96, 96), "RGB"), ((50, 49), "RGB"), ((300, 121), "RGB"), ((121, 300), "RGB"), ((64, 64), "RGB"),
     ((57, 1000), "RGB"), ((80, 60), "L"), ((70, 90), "RGBA"), ((90, 70), "P")],
)
def test_clip_pixels_on_threads_equal_the_processor(clip_dir, size, mode):
    from training.clip.score import ClipScorer

    scorer = ClipScorer(str(clip_dir), workers=2)
    assert scorer.resize == "threads"  # the default on a CPU, not the processor
    noise = np.random.default_rng(size[0]).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    images = [Image.fromarray(noise).convert(mode), Image.fromarray(noise).convert(mode).transpose(Image.Transpose.ROTATE_90)]
    reference = scorer.processor(images=images, return_tensors="pt")["pixel_values"]
    threads = scorer.pixel_values(images)
    assert threads.shape == reference.shape == (2, 3, 56, 56)
    assert float((threads - reference).abs().max()) < 1e-5
    # On the device: torch's antialiased bicubic instead of Pillow's, within a fraction of a level
    # on average even on noise (one level is 1/255/std = about 0.015 here).
    scorer.resize = "device"
    device = scorer.pixel_values(images)
    assert device.shape == reference.shape
    assert float((device - reference).abs().mean()) < 0.015


def test_clip_processor_of_another_shape_is_used_as_is(clip_dir, tmp_path):
    import shutil

    from transformers import CLIPImageProcessorPil

    from training.clip.score import ClipScorer

    other = tmp_path / "clip"
    shutil.copytree(clip_dir, other)
    CLIPImageProcessorPil(size={"height": 40, "width": 60}, crop_size={"height": 40, "width": 40}).save_pretrained(other)
    scorer = ClipScorer(str(other))
    assert scorer.resize == "processor"
    image = Image.new("RGB", (120, 90), (10, 200, 30))
    assert scorer.pixel_values([image]).shape == (1, 3, 40, 40)

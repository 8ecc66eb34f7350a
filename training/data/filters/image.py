"""Image-caption filters: decode defensively, then score the pair with CLIP.

`ImageDecode` reads the header first and rejects a declared size above the bound before a single
pixel is decoded (decompression bombs), then decodes fully so truncated files are caught here, not
in the model. `ClipScore` computes CLIPScore = 2.5 * max(cos(image, caption), 0) in batches.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from PIL import Image, UnidentifiedImageError

from training.data.filters.base import Filter, Verdict
from training.data.zone import io_workers
from training.data.records import Record, Reject

# Pixels kept after decoding: CLIP inputs are at most 448 px, so larger images are reduced on load
# (JPEG draft mode decodes at a fraction of the size), which bounds memory per chunk.
MAX_SIDE = 512


class ImageDecode(Filter):
    """Decodes a chunk on `workers` threads: Pillow releases the GIL while it decodes and resizes."""

    name = "image_decode"

    def __init__(self, max_bytes: int, max_pixels: int, workers: int = 1):
        self.max_bytes, self.max_pixels, self.workers = max_bytes, max_pixels, workers

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        workers = io_workers((r.image_path for r in records), self.workers)  # more from an object store: requests wait
        if workers <= 1:
            return super().__call__(records)
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(self.check, records))

    def check(self, record: Record) -> Verdict:
        data, path = record.image_bytes, record.image_path  # an image inside a landing file, or a file
        assert data is not None or path is not None
        record.image_bytes = None  # decoded once, then let go
        size = len(data) if data is not None else path.stat().st_size  # type: ignore[union-attr]
        if size == 0:
            return Reject("image_empty", "0 bytes")
        if size > self.max_bytes:
            return Reject("file_too_large", f"{size} bytes > {self.max_bytes}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                with io.BytesIO(data) if data is not None else path.open("rb") as f, Image.open(f) as img:  # type: ignore[union-attr]
                    w, h = img.size
                    if w * h > self.max_pixels:
                        return Reject("image_too_large", f"declared {w}x{h} > {self.max_pixels} pixels")
                    img.draft("RGB", (MAX_SIDE, MAX_SIDE))
                    img.load()
                    rgb = img.convert("RGB")
        except Image.DecompressionBombError as e:
            return Reject("image_too_large", str(e))
        except UnidentifiedImageError:  # its message names the open file object, which differs per run
            return Reject("image_unreadable", "not an image format Pillow can identify")
        except (OSError, SyntaxError, ValueError, EOFError) as e:
            msg = str(e)
            truncated = isinstance(e, EOFError) or "truncated" in msg.lower()
            return Reject("image_truncated" if truncated else "image_unreadable", msg[:300])
        rgb.thumbnail((MAX_SIDE, MAX_SIDE))
        record.image = rgb
        return None


class ClipScore(Filter):
    """Batched CLIPScore; `score(images, captions)` is any function returning CLIPScores
    (`training.clip.score.ClipScorer.score`), so the filter does not care where the model runs."""

    name = "clip"

    def __init__(self, score: Callable[[list[Image.Image], list[str]], np.ndarray], threshold: float, batch_size: int):
        self.score, self.threshold, self.batch_size = score, threshold, batch_size

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        verdicts: list[Verdict] = []
        for i in range(0, len(records), self.batch_size):
            chunk = records[i : i + self.batch_size]
            scores = self.score([r.image for r in chunk], [r.text or "" for r in chunk])
            for rec, s in zip(chunk, scores):
                rec.clip_score = float(s)
                rec.image = None  # decoded pixels are not needed past this point
                ok = rec.clip_score >= self.threshold
                verdicts.append(None if ok else Reject("clip_low", f"CLIPScore {rec.clip_score:.3f} < {self.threshold}"))
        return verdicts


class ClipUnavailable(Filter):
    """Stands in for `ClipScore` while no CLIP exists (a landing zone with too few pairs for kiln to
    train its own, and none configured): each decodable pair is rejected with a reason, nothing is
    lost, and the pair is scored when its batch is cleaned again with a CLIP."""

    name = "clip"
    DETAIL = (
        "no CLIP to score pairs yet: kiln trains its own once ClipTrainConfig.min_pairs pairs have landed "
        "(or set ImageFilterConfig.clip_model); the batch is re-scored when a CLIP exists"
    )

    def check(self, record: Record) -> Verdict:
        record.image = None
        return Reject("clip_unavailable", self.DETAIL)

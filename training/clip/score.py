"""Scoring image-caption pairs with any `transformers` CLIPModel (CLIPScore), and how well a threshold
on it separates the landing zone's known mismatches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from transformers import AutoImageProcessor, AutoTokenizer, CLIPModel

from training.config import ImageFilterConfig
from training.data.filters.image import ImageDecode
from training.data.landing import Batch
from training.data.readers import read_image_pairs
from training.device import pick_device
from training.fsutil import fingerprint, tree_fingerprint


def model_fingerprint(ref: str) -> str:
    """Content hash of a local model directory, or the hub id itself."""
    path = Path(ref)
    if path.is_dir():
        return tree_fingerprint(path, [p for p in path.rglob("*") if p.is_file()])
    return fingerprint("hub", ref)



class ClipScorer:
    """A CLIPModel with its tokenizer and image processor, scoring (image, caption) pairs.

    For processors of CLIP's shape (shortest-edge resize, centre crop, rescale, normalize) the
    pixels are made without the processor's float images on the host, in one of two ways (`resize`):

    - "threads" (the default on a CPU): the processor's own Pillow resize and crop on `workers`
      threads (Pillow releases the GIL), equal to the processor's output within float rounding;
    - "device" (the default on a GPU): decoded uint8 images go to the device as they are, and the
      resize (antialiased bicubic, Pillow's filter), crop, rescale and normalize run there. Host
      work per image drops to decoding (the bicubic resize costs Pillow more than the JPEG decode);
      pixels differ from Pillow's by 0.02 of a level on average.

    "processor" (and any other processor shape) calls the processor itself."""

    def __init__(self, ref: str, device: torch.device | None = None, workers: int | None = None, resize: str | None = None):
        self.device = device or pick_device()
        self.model = CLIPModel.from_pretrained(ref).to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(ref)
        self.processor = AutoImageProcessor.from_pretrained(ref)
        self.max_tokens = self.model.config.text_config.max_position_embeddings
        self.dtype = torch.bfloat16 if self.device.type == "cuda" else torch.float32
        self.workers = workers or os.cpu_count() or 1
        p = self.processor
        clip_shaped = all(
            getattr(p, flag, False) for flag in ("do_resize", "do_center_crop", "do_rescale", "do_normalize", "do_convert_rgb")
        ) and bool(getattr(p.size, "shortest_edge", None)) and not getattr(p.size, "longest_edge", None) and not getattr(p, "do_pad", False)
        # A crop larger than the resized image would need the processor's padding.
        clip_shaped = clip_shaped and max(p.crop_size.height, p.crop_size.width) <= p.size.shortest_edge
        self.resize = (resize or ("device" if self.device.type == "cuda" else "threads")) if clip_shaped else "processor"
        if self.resize not in ("threads", "device", "processor"):
            raise ValueError(f"resize must be threads, device or processor, not {resize!r}")
        if clip_shaped:
            self._mean = torch.tensor(p.image_mean, device=self.device).view(1, 3, 1, 1)
            self._std = torch.tensor(p.image_std, device=self.device).view(1, 3, 1, 1)

    def _resized_size(self, w: int, h: int) -> tuple[int, int]:
        """(height, width) after the processor's shortest-edge resize (transformers' arithmetic)."""
        short = self.processor.size.shortest_edge
        long = int(short * max(w, h) / min(w, h))
        return (long, short) if w <= h else (short, long)

    def _centre(self, height: int, width: int) -> tuple[slice, slice]:
        """Rows and columns of the processor's centre crop of a `height` x `width` image."""
        ch, cw = self.processor.crop_size.height, self.processor.crop_size.width
        top, left = (height - ch) // 2, (width - cw) // 2
        return slice(top, top + ch), slice(left, left + cw)

    def _crop(self, image: Image.Image) -> np.ndarray:
        """The processor's resize (its resampling filter) and centre crop in Pillow, as uint8 HWC."""
        image = image.convert("RGB")
        h, w = self._resized_size(*image.size)
        rows, cols = self._centre(h, w)
        return np.asarray(image.resize((w, h), resample=self.processor.resample))[rows, cols]

    def _on_device(self, image: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(image).to(self.device).permute(2, 0, 1)[None].float()
        h, w = self._resized_size(image.shape[1], image.shape[0])
        x = torch.nn.functional.interpolate(x, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        rows, cols = self._centre(h, w)
        return x.round_().clamp_(0, 255)[..., rows, cols]  # Pillow resizes to uint8

    def pixel_values(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """What the processor returns for `images`, on the device."""
        if self.resize == "processor":
            return self.processor(images=list(images), return_tensors="pt")["pixel_values"].to(self.device)
        with ThreadPoolExecutor(self.workers) as pool:
            if self.resize == "device":
                arrays = list(pool.map(lambda im: np.array(im.convert("RGB")), images))  # writable, as torch wants
                x = torch.cat([self._on_device(a) for a in arrays])
            else:
                crops = torch.from_numpy(np.stack(list(pool.map(self._crop, images))))
                if self.device.type == "cuda":
                    crops = crops.pin_memory()
                x = crops.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()
        return (x * self.processor.rescale_factor - self._mean) / self._std

    @torch.inference_mode()
    def cosine(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        pixels = self.pixel_values(images)
        text = self.tokenizer(
            list(captions), padding=True, truncation=True, max_length=self.max_tokens, return_tensors="pt"
        ).to(self.device)
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.device.type == "cuda"):
            img = self.model.get_image_features(pixel_values=pixels)
            txt = self.model.get_text_features(input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        img = _as_tensor(img)
        txt = _as_tensor(txt)
        cos = torch.nn.functional.cosine_similarity(img.float(), txt.float(), dim=-1)
        return cos.cpu().numpy()

    def score(self, images: Sequence[Image.Image], captions: Sequence[str]) -> np.ndarray:
        """CLIPScore (Hessel et al., 2021): 2.5 * max(cos, 0)."""
        return 2.5 * np.maximum(self.cosine(images, captions), 0.0)



def _as_tensor(out: object) -> torch.Tensor:
    # transformers 5 returns a model output from get_*_features; older versions a tensor.
    return out if isinstance(out, torch.Tensor) else out.pooler_output  # type: ignore[attr-defined]



@dataclass
class Pair:
    image: Image.Image
    caption: str
    expected_match: bool | None
    source: str



def landing_pairs(batches: list[Batch], image_cfg: ImageFilterConfig) -> list[Pair]:
    """Every decodable, captioned pair in the given batches (what the CLIP filter would score)."""
    decode = ImageDecode(image_cfg.max_image_bytes, image_cfg.max_image_pixels)
    pairs = []
    for batch in batches:
        for rec in read_image_pairs(batch, image_cfg):
            if rec.reject is None and decode.check(rec) is None:
                pairs.append(Pair(rec.image, rec.text or "", rec.expected_match, rec.source))
    return pairs



def evaluate_filter(scorer: ClipScorer, pairs: list[Pair], threshold: float, batch_size: int) -> dict:
    """How well `clip_low` finds the known mismatches: a rejected pair is a positive."""
    scores = np.concatenate(
        [
            scorer.score([p.image for p in pairs[i : i + batch_size]], [p.caption for p in pairs[i : i + batch_size]])
            for i in range(0, len(pairs), batch_size)
        ]
    ) if pairs else np.zeros(0)
    labelled = [(s, p.expected_match) for s, p in zip(scores, pairs) if p.expected_match is not None]
    result: dict = {"pairs_scored": len(pairs), "labelled_pairs": len(labelled), "threshold": threshold}
    if not labelled:
        return result
    s = np.array([x for x, _ in labelled])
    mismatch = np.array([not m for _, m in labelled])
    rejected = s < threshold
    tp = int((rejected & mismatch).sum())
    result.update(
        known_mismatches=int(mismatch.sum()),
        rejected=int(rejected.sum()),
        precision=tp / max(1, int(rejected.sum())),
        recall=tp / max(1, int(mismatch.sum())),
        mean_score_matched=float(s[~mismatch].mean()) if (~mismatch).any() else None,
        mean_score_mismatched=float(s[mismatch].mean()) if mismatch.any() else None,
    )
    return result

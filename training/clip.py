"""CLIP for the image-caption filter: load any `transformers` CLIPModel, score pairs, and train the
small CLIP kiln uses by default.

No pretrained CLIP weights can be fetched offline, so unless a model directory or hub id is
configured, kiln trains a small CLIP (ViT image tower, Transformer text tower, byte-level BPE caption
tokenizer) contrastively on the landing zone's own pairs. It is labelled as such wherever it is used.
Run by hand:  python -m training.clip <landing dir> <out dir>
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers, decoders
from transformers import (
    AutoImageProcessor,
    AutoTokenizer,
    CLIPConfig,
    CLIPImageProcessorPil,
    CLIPModel,
    PreTrainedTokenizerFast,
)

from training.config import ClipTrainConfig, ImageFilterConfig
from training.data.clean import Clip
from training.data.filters.image import ImageDecode
from training.data.landing import Batch, ready_batches
from training.data.readers import read_image_pairs
from training.fsutil import atomic_path, fingerprint, sha256_file, tree_fingerprint

CARD_FILE = "kiln_clip.json"
PROVENANCE = "trained by kiln on the landing zone's image-caption pairs; not a pretrained CLIP"


def pick_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


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


def _train_caption_tokenizer(captions: list[str], cfg: ClipTrainConfig) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<s>", "</s>"]
    trainer = trainers.BpeTrainer(
        vocab_size=cfg.vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(captions, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", bos), ("</s>", eos)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>", model_max_length=cfg.max_caption_tokens
    )


def _build_model(cfg: ClipTrainConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
    tower = dict(
        hidden_size=cfg.hidden_size,
        intermediate_size=4 * cfg.hidden_size,
        num_hidden_layers=cfg.layers,
        num_attention_heads=cfg.heads,
    )
    config = CLIPConfig(
        text_config=dict(
            tower,
            vocab_size=len(tokenizer),
            max_position_embeddings=cfg.max_caption_tokens,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        ),
        vision_config=dict(tower, image_size=cfg.image_size, patch_size=cfg.patch_size),
        projection_dim=cfg.projection_dim,
    )
    return CLIPModel(config)


def train_clip(
    pairs: list[Pair], cfg: ClipTrainConfig, out_dir: Path, key: str = "", device: torch.device | None = None
) -> dict:
    """Contrastive training of a small CLIP on `pairs`; writes a loadable model folder atomically,
    with a card (`kiln_clip.json`) saying what it is and what it was trained on (`key`)."""
    if len(pairs) < cfg.min_pairs:
        raise ValueError(
            f"{len(pairs)} decodable image-caption pairs are too few to train a CLIP on (need {cfg.min_pairs}); "
            "land more pairs or configure a pretrained CLIP (ImageFilterConfig.clip_model)"
        )
    device = device or pick_device()
    torch.manual_seed(cfg.seed)
    tokenizer = _train_caption_tokenizer([p.caption for p in pairs], cfg)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    model = _build_model(cfg, tokenizer).to(device)
    pixels = processor(images=[p.image for p in pairs], return_tensors="pt")["pixel_values"]
    text = tokenizer([p.caption for p in pairs], padding="max_length", truncation=True, return_tensors="pt")

    steps_per_epoch = math.ceil(len(pairs) / cfg.batch_size)
    total = steps_per_epoch * cfg.epochs
    warmup = max(1, int(cfg.warmup_fraction * total))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min((s + 1) / warmup, 0.5 * (1 + math.cos(math.pi * min(1.0, (s - warmup) / max(1, total - warmup)))))
    )
    gen = torch.Generator().manual_seed(cfg.seed)
    losses = []
    start = time.perf_counter()
    model.train()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(pairs), generator=gen)
        for i in range(0, len(pairs), cfg.batch_size):
            idx = order[i : i + cfg.batch_size]
            if len(idx) < 2:
                continue
            out = model(
                input_ids=text["input_ids"][idx].to(device),
                attention_mask=text["attention_mask"][idx].to(device),
                pixel_values=pixels[idx].to(device),
                return_loss=True,
            )
            opt.zero_grad(set_to_none=True)
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            losses.append(out.loss.item())
    seconds = time.perf_counter() - start
    model.eval()
    stats = {
        "key": key,
        "version": f"kiln-{key[:12]}",
        "provenance": PROVENANCE,
        "pairs": len(pairs),
        "steps": len(losses),
        "first_loss": losses[0],
        "final_loss": float(np.mean(losses[-steps_per_epoch:])),
        "train_seconds": round(seconds, 2),
        "parameters": sum(p.numel() for p in model.parameters()),
        "device": str(device),
        "config": asdict(cfg),
    }
    with atomic_path(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
        (tmp / CARD_FILE).write_text(json.dumps(stats, indent=2) + "\n")
    return stats


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


def clip_due(pairs: int, card: dict, cfg: ClipTrainConfig) -> str | None:
    """Why kiln's own CLIP should be (re)trained now on `pairs` decodable pairs, or None. `card` is
    the current model's card ({} when there is none)."""
    if not card.get("version"):
        return f"first CLIP: {pairs} pairs >= {cfg.min_pairs}" if pairs >= cfg.min_pairs else None
    if card.get("config") != asdict(cfg):
        return "the CLIP training config changed"
    if pairs >= cfg.retrain_growth * card.get("pairs", 0):
        return f"pairs grew from {card.get('pairs', 0)} to {pairs} (retrain at x{cfg.retrain_growth})"
    return None


def read_card(clip_dir: Path) -> dict:
    """The card of kiln's CLIP in `clip_dir`; {} when there is none (or it was never trained)."""
    card = clip_dir / CARD_FILE
    try:
        data = json.loads(card.read_text())
    except (OSError, ValueError):
        return {}
    return data if data.get("version") and (clip_dir / "config.json").is_file() else {}


def current_clip(clip_dir: Path, image_cfg: ImageFilterConfig) -> Clip | None:
    """The CLIP that scores pairs now: the configured one, else kiln's own in `clip_dir` once trained,
    else None (pairs are rejected as `clip_unavailable` until then)."""
    if image_cfg.clip_model:
        ref = image_cfg.clip_model
        return Clip(model_fingerprint(ref)[:16], f"configured: {ref}", lambda: ClipScorer(ref).score)
    card = read_card(clip_dir)
    if not card:
        return None
    return Clip(card["version"], card["provenance"], lambda: ClipScorer(str(clip_dir)).score)


def build_clip_model(
    landing: Path, out_dir: Path, train_cfg: ClipTrainConfig, image_cfg: ImageFilterConfig
) -> dict:
    """The CLIP the image filter will use, and how well it separates the known mismatches.

    With `image_cfg.clip_model` set, that model is only evaluated. Otherwise kiln's own CLIP is
    trained into `out_dir` when `clip_due` says so (first at `min_pairs` pairs, then each time the
    pairs have grown by `retrain_growth`); too few pairs is not an error: there is no CLIP yet."""
    batches = ready_batches(landing)
    pairs = landing_pairs(batches, image_cfg)
    if image_cfg.clip_model:
        clip = current_clip(out_dir, image_cfg)
        stats: dict = {"provenance": clip.provenance, "version": clip.version, "cached": True}  # type: ignore[union-attr]
    else:
        card = read_card(out_dir)
        reason = clip_due(len(pairs), card, train_cfg)
        if reason:
            key = fingerprint(train_cfg, [b.fingerprint("image_text") for b in batches])
            stats = {**train_clip(pairs, train_cfg, out_dir, key), "cached": False, "reason": reason}
        elif card:
            stats = {**card, "cached": True}
        else:
            return {"provenance": f"none: {len(pairs)} decodable pairs < {train_cfg.min_pairs}", "version": None,
                    "cached": False, "model": None, "evaluation": {"pairs_scored": 0, "threshold": image_cfg.clip_threshold}}
    ref = image_cfg.clip_model or str(out_dir)
    stats["evaluation"] = evaluate_filter(ClipScorer(ref), pairs, image_cfg.clip_threshold, image_cfg.batch_size)
    stats["model"] = ref
    return stats


if __name__ == "__main__":
    report = build_clip_model(Path(sys.argv[1]), Path(sys.argv[2]), ClipTrainConfig(), ImageFilterConfig())
    print(json.dumps(report, indent=2, default=str))

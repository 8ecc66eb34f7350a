"""Model-side benchmarks of the data stages: CLIP scoring end to end (image files on disk to
CLIPScores, decoding included) and tokenizer training (difficulty: bench/difficulty.py).

CLIP runs at ViT-B/32 size (the `CLIPConfig` defaults) with random weights: speed does not depend
on the weights, and no pretrained CLIP can be fetched offline. The smoke scale uses the size of
kiln's own small CLIP instead.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from bench.cleaning import median_seconds
from training.clip.score import ClipScorer
from training.clip.train import train_caption_tokenizer
from training.config import ClipTrainConfig, ImageFilterConfig, TextFilterConfig, TokenizerConfig
from training.data.clean import chunks
from training.demo.landing import scene_caption, draw_scene, encode_image, random_scene
from training.data.filters.image import ClipScore, ImageDecode
from training.data.landing import READY_MARKER, ready_batches
from training.data.readers import read_image_pairs, read_text
from training.fsutil import atomic_path
from training.curriculum.tokenizer import train_tokenizer


def write_image_batch(batch: Path, pairs: int, side: int = 384, seed: int = 0) -> Path:
    """`pairs` procedurally drawn scenes of `side` pixels as JPEG (quality 90, as photographs
    arrive), each with its caption; reused when it already lies there."""
    card = batch.parent / f"{batch.name}.corpus.json"
    want = {"pairs": pairs, "side": side, "seed": seed}
    if card.is_file() and json.loads(card.read_text()) == want:
        return batch
    rng = random.Random(seed)
    with atomic_path(batch) as tmp:
        (tmp / "images").mkdir(parents=True)
        lines = []
        for i in range(pairs):
            scene = random_scene(rng)
            (tmp / "images" / f"{i:06d}.jpg").write_bytes(encode_image(draw_scene(scene, side, rng), "JPEG"))
            lines.append(json.dumps({"image": f"{i:06d}.jpg", "caption": scene_caption(scene, rng)}) + "\n")
        (tmp / "images" / "captions.jsonl").write_text("".join(lines))
        (tmp / READY_MARKER).touch()
    card.write_text(json.dumps(want))
    return batch


def clip_model(out: Path, vit_b32: bool) -> Path:
    """A CLIP with random weights, its caption tokenizer and CLIP's image processor: ViT-B/32 size
    (`CLIPConfig`'s defaults, 224 px) or the size of the CLIP kiln trains by default."""
    from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel

    from training.clip.train import build_model

    if (out / "config.json").is_file():
        return out
    captions = [f"a {c} {s} on the {p}" for c in ("red", "blue") for s in ("circle", "square") for p in ("left", "right")]
    small = ClipTrainConfig()
    tokenizer = train_caption_tokenizer(captions, small)
    if vit_b32:
        config = CLIPConfig()
        config.text_config.vocab_size = len(tokenizer)
        config.text_config.pad_token_id = tokenizer.pad_token_id
        config.text_config.bos_token_id, config.text_config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
        model, processor = CLIPModel(config), CLIPImageProcessorPil()
    else:
        side = {"height": small.image_size, "width": small.image_size}
        model, processor = build_model(small, tokenizer), CLIPImageProcessorPil(size={"shortest_edge": small.image_size}, crop_size=side)
    with atomic_path(out) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    return out


def clip_table(batch_dir: Path, model_dir: Path, pairs: int, model_pairs: int, batch_size: int, repeats: int, workers: int) -> list[dict]:
    """Pairs/s from files to CLIPScores: kiln's paths (decoding on threads; the resize on the device,
    or Pillow's on threads) against the serial one (decode one by one, the processor's float
    pixels), with the model and without it (decoding and preprocessing alone)."""
    cfg = ImageFilterConfig(batch_size=batch_size)
    [batch] = ready_batches(batch_dir)
    records = [r for r, _ in zip(read_image_pairs(batch, cfg), range(pairs)) if r.reject is None]
    scorer = ClipScorer(str(model_dir), workers=workers)
    variants = [("kiln: threaded decode, resize on the device", workers, "device"),
                ("kiln: threaded decode, Pillow resize on threads", workers, "threads"),
                ("serial decode, the processor", 1, "processor")]
    if scorer.device.type != "cuda":  # the device path is for GPUs; on a CPU threads are the default
        variants = variants[1:] + variants[:1]
    rows = []
    for variant, threads, resize in variants:
        decode = ImageDecode(cfg.max_image_bytes, cfg.max_image_pixels, threads)
        scorer.workers, scorer.resize = threads, resize
        for with_model in (False, True):
            clip = ClipScore(scorer.score, 0.0, batch_size)
            subset = records[:model_pairs] if with_model else records

            def run() -> None:
                for chunk in chunks(subset, batch_size):
                    decode(chunk)
                    if with_model:
                        clip(chunk)
                    else:
                        scorer.pixel_values([r.image for r in chunk])
                    if scorer.device.type == "cuda":
                        torch.cuda.synchronize()
                    for r in chunk:
                        r.image = None

            run()  # warm up (CUDA kernels, thread start)
            seconds, all_s = median_seconds(run, repeats)
            rows.append({"path": variant, "model": with_model, "pairs": len(subset), "pairs_per_s": round(len(subset) / seconds, 1),
                         "device": str(scorer.device), "batch_size": batch_size, "seconds": [round(t, 3) for t in all_s]})
    return rows


def _texts(text_landing: Path, limit_mb: float = float("inf"), limit_records: float = float("inf")) -> list[str]:
    """The first readable texts of the corpus, up to `limit_mb` or `limit_records`."""
    [batch] = ready_batches(text_landing)
    out, size = [], 0
    for r in read_text(batch, TextFilterConfig()):
        if r.reject is None and r.text:
            out.append(r.text)
            size += len(r.text.encode("utf-8"))
            if size >= limit_mb * 1e6 or len(out) >= limit_records:
                break
    return out


def tokenizer_row(text_landing: Path, work: Path, mb: float, repeats: int) -> dict:
    """MB/s of byte-level BPE training at the default vocabulary (65,536)."""
    texts = _texts(text_landing, limit_mb=mb)
    size = sum(len(t.encode("utf-8")) for t in texts) / 1e6
    cfg = TokenizerConfig()
    seconds, all_s = median_seconds(lambda: train_tokenizer(iter(texts), cfg, work / "tokenizer"), repeats)
    return {"mb": round(size, 1), "mb_per_s": round(size / seconds, 2), "vocab_size": cfg.vocab_size,
            "threads": torch.get_num_threads(), "seconds": [round(t, 3) for t in all_s]}

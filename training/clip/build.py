"""The CLIP the image-caption filter uses: the configured model, or kiln's own, (re)trained when the
landing zone's pairs have grown enough, then evaluated on the known mismatches.
Run by hand:  python -m training clip <landing dir> <out dir>
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from training.cache import key_of
from training.clip.score import ClipScorer, evaluate_filter, landing_pairs, model_fingerprint
from training.clip.train import train_clip
from training.config import ClipTrainConfig, ImageFilterConfig
from training.data.clean import Clip
from training.data.landing import ready_batches
from training.layout import CLIP_CARD


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
    card = clip_dir / CLIP_CARD
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
            key = key_of(train_cfg, [b.fingerprint("image_text") for b in batches])  # the card's key and version
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

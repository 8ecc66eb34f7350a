"""Training the small CLIP kiln uses by default: no pretrained CLIP weights can be fetched offline, so
unless a model is configured kiln trains one (ViT image tower, Transformer text tower, byte-level BPE
caption tokenizer) contrastively on the landing zone's own pairs, labelled as such wherever it is used."""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import CLIPConfig, CLIPImageProcessorPil, CLIPModel, PreTrainedTokenizerFast

from training.clip.score import Pair
from training.config import ClipTrainConfig
from training.device import pick_device
from training.fsutil import atomic_path
from training.layout import CLIP_CARD



PROVENANCE = "trained by kiln on the landing zone's image-caption pairs; not a pretrained CLIP"



def train_caption_tokenizer(captions: list[str], cfg: ClipTrainConfig) -> PreTrainedTokenizerFast:
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



def build_model(cfg: ClipTrainConfig, tokenizer: PreTrainedTokenizerFast) -> CLIPModel:
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
    tokenizer = train_caption_tokenizer([p.caption for p in pairs], cfg)
    processor = CLIPImageProcessorPil(
        size={"shortest_edge": cfg.image_size}, crop_size={"height": cfg.image_size, "width": cfg.image_size}
    )
    model = build_model(cfg, tokenizer).to(device)
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
        (tmp / CLIP_CARD).write_text(json.dumps(stats, indent=2) + "\n")
    return stats

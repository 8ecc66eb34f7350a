"""A release assembled from the pipeline's own records: `assemble_release` asks the release gate, then
reads what the evaluation, the int8 quantization, the GGUF export, the curriculum, the pretraining
stages and the cleaning recorded, writes the model card, and publishes base_model with int8/, gguf/
and eval_tasks/ through `write_release` (training/release/publish.py)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from training.config import KilnConfig
from training.data.clean import lineage
from training.layout import (
    CURRICULUM_JSON, EVAL_TASKS, EVALUATION_JSON, GGUF_JSON, LINEAGE_JSON, MODEL_CARD, QUANTIZATION_JSON, RELEASE_GGUF,
    RELEASE_INT8, RELEASE_MANIFEST, WEIGHTS, Layout, archive_name,
)
from training.pretrain.plan import read_summary
from training.release.model_card import model_card
from training.release.package import folder_bytes
from training.release.publish import WEIGHTS_SHA256, release_blockers, version_name, write_release


class NotReleasable(Exception):
    """The release gate refused the candidate before anything was read for packaging or written;
    `reasons` are `release_blockers`' answers, the message "not released: " and them joined by "; "."""

    def __init__(self, reasons: list[str]):
        super().__init__("not released: " + "; ".join(reasons))
        self.reasons = reasons


@dataclass(frozen=True)
class Released:
    """A published release: releases/<version>/, its archive beside it, its model card and manifest."""

    version: str
    path: Path
    archive: Path
    card: str
    """README.md's text."""
    files: dict[str, dict]
    """manifest.json's files: relative path -> {"sha256", "bytes"}."""

    @property
    def bytes(self) -> int:
        return sum(f["bytes"] for f in self.files.values())


def assemble_release(layout: Layout, config: KilnConfig) -> Released:
    """Release base_model under layout.releases/, with the model card written from the records under
    `layout` and `config`'s model and training configuration; raises NotReleasable when the release
    gate does not pass, on every path (by hand, a retry, the automation), before reading anything else."""
    base, int8, gguf_dir = layout.base_model, layout.quantized_model, layout.gguf_model
    if blockers := release_blockers(
        layout.evaluation / EVALUATION_JSON, int8 / QUANTIZATION_JSON, base / WEIGHTS, gguf_dir / GGUF_JSON
    ):
        raise NotReleasable(blockers)
    plan = json.loads((layout.curriculum / CURRICULUM_JSON).read_text())
    stages = [read_summary(layout.pretrain_stage(s["stage"])) for s in plan["stages"]]
    result = json.loads((layout.evaluation / EVALUATION_JSON).read_text())
    quantization = json.loads((int8 / QUANTIZATION_JSON).read_text()) | {"int8_bytes": folder_bytes(int8)}
    gguf = json.loads((gguf_dir / GGUF_JSON).read_text())
    batches = lineage(layout.cleaned_corpus)
    version = version_name(base / WEIGHTS)
    card = model_card(
        version, batches, plan, stages,
        model=dataclasses.asdict(config.model) | {"parameters": stages[-1]["parameters"]},
        training=dataclasses.asdict(config.training),
        evaluation=result["candidate"], previous=result["previous"], quantization=quantization, gguf=gguf,
    )
    texts = {
        MODEL_CARD: card,
        EVALUATION_JSON: json.dumps(result, indent=2) + "\n",
        LINEAGE_JSON: json.dumps({"batches": batches, "curriculum": plan, "stages": stages}, indent=2) + "\n",
    }
    # The lm-evaluation-harness tasks the evaluation ran (a flat folder), so anyone can rerun them offline.
    folders = {"": base, RELEASE_INT8: int8, RELEASE_GGUF: gguf_dir}
    if (tasks := layout.eval_tasks).is_dir() and "harness" in result["candidate"]:
        folders[EVAL_TASKS] = tasks
    # The weights published must be the ones the gate judged, even if base_model is rewritten meanwhile;
    # likewise the GGUF files: those llama.cpp was checked on.
    expect_sha256 = {WEIGHTS: result[WEIGHTS_SHA256]} | {f"{RELEASE_GGUF}/{n}": f["sha256"] for n, f in gguf["files"].items()}
    path = write_release(layout.releases, version, folders, texts, expect_sha256=expect_sha256)
    files = json.loads((path / RELEASE_MANIFEST).read_text())["files"]
    return Released(version, path, path.with_name(archive_name(version)), card, files)

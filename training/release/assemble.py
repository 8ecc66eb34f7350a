"""A release assembled from the pipeline's own records: `assemble_release` asks the release gate, then
reads what the evaluation, the int8 quantization, the GGUF export, the curriculum, the pretraining
stages and the cleaning recorded, writes the model card, and publishes base_model with int8/, gguf/
and eval_tasks/ through `write_release` (training/release/publish.py)."""

from __future__ import annotations

import dataclasses
import hashlib
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
from training.release.publish import EVALUATION, GGUF, QUANTIZATION, judge, version_name, write_release


class NotReleasable(Exception):
    """The release gate refused the candidate before anything was read for packaging or written;
    `reasons` are the gate's (`judge`'s) answers, the message "not released: " and them joined by "; "."""

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
    gate does not pass, on every path (by hand, a retry, the automation), before reading anything else.
    The release is packaged from the records the gate read (evaluation.json, quantization.json and
    gguf.json as they were then), and every file they vouch for is pinned by the sha256 they or the
    gate recorded: the weights, the int8 files, the GGUF files, and the records themselves."""
    base, int8, gguf_dir = layout.base_model, layout.quantized_model, layout.gguf_model
    judged = judge(layout.evaluation / EVALUATION_JSON, int8 / QUANTIZATION_JSON, base / WEIGHTS, gguf_dir / GGUF_JSON)
    if judged.blockers:
        raise NotReleasable(judged.blockers)
    result, quantization, gguf = judged.record(EVALUATION), judged.record(QUANTIZATION), judged.record(GGUF)
    plan = json.loads((layout.curriculum / CURRICULUM_JSON).read_text())
    stages = [read_summary(layout.pretrain_stage(s["stage"])) for s in plan["stages"]]
    int8_bytes = sum(f["bytes"] for name, f in quantization["files"].items() if name.endswith(".safetensors"))
    batches = lineage(layout.cleaned_corpus)
    version = version_name(judged.weights_sha256)
    card = model_card(
        version, batches, plan, stages,
        model=dataclasses.asdict(config.model) | {"parameters": stages[-1]["parameters"]},
        training=dataclasses.asdict(config.training),
        evaluation=result["candidate"], previous=result["previous"], quantization=quantization | {"int8_bytes": int8_bytes},
        gguf=gguf,
    )
    texts = {
        MODEL_CARD: card,
        EVALUATION_JSON: judged.records[EVALUATION].decode(),
        LINEAGE_JSON: json.dumps({"batches": batches, "curriculum": plan, "stages": stages}, indent=2) + "\n",
    }
    # The lm-evaluation-harness tasks the evaluation ran (a flat folder), so anyone can rerun them offline.
    folders = {"": base, RELEASE_INT8: int8, RELEASE_GGUF: gguf_dir}
    if (tasks := layout.eval_tasks).is_dir() and "harness" in result["candidate"]:
        folders[EVAL_TASKS] = tasks
    # What is published must be what the gate judged, even if base_model, quantized_model or gguf_model
    # is rewritten meanwhile: the weights it hashed, the int8 and GGUF files their records measured, and
    # those records as it read them.
    expect_sha256 = (
        {WEIGHTS: judged.weights_sha256}
        | {f"{RELEASE_INT8}/{n}": f["sha256"] for n, f in quantization["files"].items()}
        | {f"{RELEASE_INT8}/{QUANTIZATION_JSON}": hashlib.sha256(judged.records[QUANTIZATION]).hexdigest()}
        | {f"{RELEASE_GGUF}/{n}": f["sha256"] for n, f in gguf["files"].items()}
        | {f"{RELEASE_GGUF}/{GGUF_JSON}": hashlib.sha256(judged.records[GGUF]).hexdigest()}
    )
    path = write_release(layout.releases, version, folders, texts, expect_sha256=expect_sha256)
    files = json.loads((path / RELEASE_MANIFEST).read_text())["files"]
    return Released(version, path, path.with_name(archive_name(version)), card, files)

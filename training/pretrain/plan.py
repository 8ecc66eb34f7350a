"""Pretraining stages as plain data: what one stage trains on, where it keeps its state, and what it
starts from.

A `StageSpec` is everything the trainer (`python -m training.pretrain.train --spec spec.json`) needs; it is
written as JSON beside the stage's checkpoints, so a stage can be rerun by hand exactly as the
pipeline ran it. Its fingerprint is the stage's cache key (`training.cache`): the configs, the plan
and the contents of the stage's records and tokenizer, chained with the previous stage's fingerprint.
Checkpoints left by a different spec are never resumed, and a finished stage whose record
(`_step.json` in its output, written by the trainer) holds this fingerprint is not trained again.

    $KILN_DATA_DIR/checkpoints/stage_NN/   spec.json, FINGERPRINT, packed.npy (its tokens, from the shards), step_NNNNNN/ (DeepSpeed), latest
    $KILN_DATA_DIR/pretrain_stage_N/       model/ (Hugging Face, safetensors), stage.json, metrics.jsonl, loss.png, _step.json
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydantic import ConfigDict, TypeAdapter, with_config

from training.cache import key_of, reused
from training.config import ModelConfig, TrainingConfig
from training.fsutil import atomic_path, sha256_file
from training.curriculum.tokens import gather, shard_dtype
from training.layout import STAGE_JSON, TOKENIZER_JSON, Layout, batch_folders, stage_file
from training.pretrain.deepspeed_config import StagePlan, plan_stages

STEP = "pretrain_stage"
VERSION = 2
"""The stages' logic version in their fingerprints (`training.cache`): bump it when the trainer's code
changes what a stage writes. 2: stages read their tokens from the token shards."""


@with_config(ConfigDict(extra="forbid", strict=True))  # read by `from_json`, and for the nested configs too
@dataclasses.dataclass(frozen=True)
class StageSpec:
    stage: int
    plan: StagePlan
    total_steps: int
    """Optimizer steps of all stages together: the length of the one learning-rate schedule."""
    records: str
    """The stage's Parquet file from the curriculum: its records' tokens in the token shards (columns
    batch, offset, tokens), in training order."""
    tokens: str
    """The token shards' folder (training/curriculum/tokens.py)."""
    tokenizer: str
    model: ModelConfig
    training: TrainingConfig
    ranks: int
    checkpoints: str
    out: str
    previous: str | None
    """The previous stage's output folder; its final checkpoint is where this stage starts."""
    previous_fingerprint: str | None
    fingerprint: str

    @property
    def seq_len(self) -> int:
        return self.model.max_seq_len

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str) -> "StageSpec":
        """The spec `to_json` wrote, validated by pydantic: the nested configs come back as their
        dataclasses and JSON's lists as tuples, so the spec compares and hashes equal to the one written.
        An unknown key or a value of the wrong type is an error (`pydantic.ValidationError`)."""
        return _SPEC.validate_json(text)


_SPEC = TypeAdapter(StageSpec)
"""Strict (`with_config` above): no key the dataclasses lack, no string where a number belongs (a JSON
integer may still fill a float field, and comes back a float)."""


def stage_specs(
    data_dir: Path, curriculum: dict, model: ModelConfig, training: TrainingConfig, ranks: int
) -> list[StageSpec]:
    """Specs of every stage of a built curriculum (its `curriculum.json`), chained by fingerprint. A
    curriculum that starts from a release (`RetrainingPolicy.start_from`) starts stage 1 from its weights."""
    layout = Layout(data_dir)
    start = curriculum.get("start", {})
    if start.get("from") == "release":
        training = dataclasses.replace(training, init_from=str(layout.releases / start["release"]))
    plans = plan_stages([(s["level"], s["tokens"]) for s in curriculum["stages"]], model.max_seq_len, training, ranks)
    total = sum(p.steps for p in plans)
    tokenizer_hash = sha256_file(layout.tokenizer / TOKENIZER_JSON)
    specs: list[StageSpec] = []
    for plan, entry in zip(plans, curriculum["stages"]):
        records = layout.curriculum / stage_file(plan.stage)
        prev = specs[-1] if specs else None
        # The curriculum records each file's hash as it writes it: every stage asset computes every
        # spec of the chain, and hashing all stage files each time would read the corpus nine times.
        content = entry.get("sha256") or sha256_file(records)
        # The selection names tokens by offset: the shards' keys (the corpus and the tokenizer) say which.
        shards = curriculum.get("token_shards", {})
        key = key_of(STEP, VERSION, model, training, plan, total, ranks, content, tokenizer_hash, shards, prev and prev.fingerprint)
        specs.append(
            StageSpec(
                stage=plan.stage, plan=plan, total_steps=total, records=str(records), tokens=str(layout.tokenized_corpus), tokenizer=str(layout.tokenizer),
                model=model, training=training, ranks=ranks,
                checkpoints=str(layout.checkpoints(plan.stage)),
                out=str(layout.pretrain_stage(plan.stage)),
                previous=prev.out if prev else None, previous_fingerprint=prev.fingerprint if prev else None,
                fingerprint=key,
            )
        )
    return specs


def read_summary(out: str | Path) -> dict | None:
    path = Path(out) / STAGE_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def completed(spec: StageSpec) -> dict | None:
    """The stage's summary if it already finished with exactly this spec: the cache rule
    (`training.cache`), keyed by the spec's fingerprint, recorded by the trainer as it exports."""
    return reused(Path(spec.out), spec.fingerprint)


def pack_stage(records: str | Path, tokens_dir: str | Path, seq_len: int, out: Path, chunk: int = 4096) -> int:
    """Write the stage's tokens to `out` (.npy, rows of `seq_len`, in the shards' token type: uint16
    while the vocabulary fits) atomically: its records' tokens from the token shards (each record
    <|begin_of_text|> ... <|end_of_text|>), concatenated in training order; the incomplete last row is
    dropped. Streams `chunk` records at a time, so memory holds a chunk's tokens whatever the stage's
    size. Returns the rows written."""
    stage = pq.ParquetFile(records)
    total = int(pc.sum(stage.read(columns=["tokens"])["tokens"]).as_py() or 0)
    rows = total // seq_len
    left = rows * seq_len
    dtype = np.result_type(np.uint16, *(shard_dtype(Path(tokens_dir) / b) for b in batch_folders(Path(tokens_dir))))
    with atomic_path(out) as tmp, open(tmp, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": False, "shape": (rows, seq_len)})
        for part in stage.iter_batches(batch_size=chunk, columns=["batch", "offset", "tokens"]):
            if left <= 0:
                break
            batch, offset, tokens = (part.column(c).to_numpy(zero_copy_only=False) for c in ("batch", "offset", "tokens"))
            data = gather(Path(tokens_dir), batch, offset, tokens)[:left]
            data.astype(dtype).tofile(f)
            left -= len(data)
    return rows

"""A stage's checkpoint folder (`StageSpec.checkpoints`, checkpoints/stage_NN/), as rank 0 keeps it:

    spec.json      the spec, written by whoever planned the stage; never removed here
    .lock          an exclusive flock held by the training rank 0 (one run of a stage at a time)
    FINGERPRINT    the spec whose checkpoints these are: checkpoints of another spec are never resumed
    packed.npy     the stage's records as rows of `seq_len` tokens, packed once
    metrics.jsonl  one line per step trained so far
    step_NNNNNN/   DeepSpeed checkpoints, the newest `keep_checkpoints` kept
    latest         the tag of the newest complete checkpoint (DeepSpeed's own name for it), which kiln
                   writes atomically once every rank has saved
"""

from __future__ import annotations

import fcntl
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from training.fsutil import atomic_path, remove
from training.layout import METRICS_JSONL, SPEC_JSON
from training.pretrain.plan import StageSpec, pack_stage

Log = Callable[[str], None]

LOCK = ".lock"
FINGERPRINT = "FINGERPRINT"
PACKED = "packed.npy"
LATEST = "latest"


class CheckpointDir:
    """One stage's checkpoint folder: its lock, its fingerprint, its packed tokens, its tags and `latest`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.metrics = self.path / METRICS_JSONL
        self._lock = None

    def tags(self) -> list[Path]:
        """The checkpoints in the folder, oldest first."""
        return sorted(p for p in self.path.glob("step_*") if p.is_dir())

    def latest(self) -> str | None:
        """The tag of the newest complete checkpoint, None before the first."""
        latest = self.path / LATEST
        return latest.read_text().strip() if latest.is_file() else None

    def prune(self, keep: int) -> None:
        """Keep the newest `keep` checkpoints, never the one `latest` names; drop any newer than it (a
        save that died half-way)."""
        latest = self.latest()
        tags = [t for t in self.tags() if latest is None or t.name <= latest]
        for t in tags[:-keep] + [t for t in self.tags() if latest is not None and t.name > latest]:
            remove(t)

    def lock(self) -> None:
        """Rank 0: create the folder and hold an exclusive lock on it while this object lives; the
        kernel releases it when the process dies, however it dies."""
        self.path.mkdir(parents=True, exist_ok=True)
        handle = open(self.path / LOCK, "w")  # noqa: SIM115 (held for the life of this object)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise RuntimeError(f"{self.path} is in use by another run of this stage") from None
        self._lock = handle

    def prepare(self, spec: StageSpec, log: Log) -> None:
        """Rank 0, holding the lock: discard checkpoints of a different spec, record this one, pack the records once."""
        marker = self.path / FINGERPRINT
        if marker.is_file() and marker.read_text().strip() != spec.fingerprint:
            log(f"stage {spec.stage}: inputs or config changed; discarding the checkpoints of the earlier spec")
            for p in self.path.iterdir():
                if p.name not in (SPEC_JSON, LOCK):
                    remove(p)
        if not marker.is_file():
            marker.write_text(spec.fingerprint + "\n")
        self.prune(spec.training.keep_checkpoints)
        if not (self.path / PACKED).is_file():
            pack_stage(spec.records, spec.tokens, spec.seq_len, self.path / PACKED)

    def packed(self, spec: StageSpec) -> np.ndarray:
        """The packed token rows (memory-mapped), checked against the plan."""
        data = np.load(self.path / PACKED, mmap_mode="r")
        if data.shape != (spec.plan.sequences, spec.seq_len):
            raise RuntimeError(f"stage {spec.stage}: packed {data.shape[0]} sequences, the plan expected {spec.plan.sequences}")
        return data

    def resume(self, engine) -> tuple[str, dict] | None:
        """Load the `latest` checkpoint into `engine`: (its tag, its client state), or None when there is none."""
        if tag := self.latest():
            _, client = engine.load_checkpoint(str(self.path), tag)
            return tag, client
        return None

    def save(self, engine, tag: str, client: dict, keep: int) -> None:
        """Every rank: save checkpoint `tag`; once all have, rank 0 points `latest` at it and keeps `keep`."""
        # DeepSpeed writes `latest` in place, so a kill between its open and its write would leave it
        # empty and the resumed stage would start over: kiln writes it, atomically, once every rank has saved.
        engine.save_checkpoint(str(self.path), tag=tag, client_state=client, save_latest=False)
        torch.distributed.barrier()
        if torch.distributed.get_rank() == 0:
            with atomic_path(self.path / LATEST) as tmp:
                tmp.write_text(tag)
            self.prune(keep)

"""The one resource every asset shares: where kiln reads and writes, and which preset it runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from training.presets import preset
from training.config import KilnConfig
from training.data.zone import ObjectPath, landing_root
from training.layout import Layout


class Kiln(dg.ConfigurableResource):
    data_dir: str
    """KILN_DATA_DIR (default ./data): every artifact lives under it, in a folder named after its asset (`layout`)."""
    landing_dir: str
    """KILN_LANDING_DIR (default $KILN_DATA_DIR/landing): where batches arrive, a folder or an fsspec URL
    (s3://bucket/prefix, gs://...; training/data/zone.py)."""
    preset: str = "tiny"
    """KILN_PRESET: the name of a function in training/presets.py."""
    start_from: str = ""
    """KILN_START_FROM: where a retraining starts, "scratch" or "release" (RetrainingPolicy.start_from),
    over the preset's choice; empty: the preset's. Settable per run in the launchpad (resources.kiln.config)."""
    output_lock_wait_seconds: float = 600.0
    """KILN_OUTPUT_LOCK_WAIT_SECONDS: how long a step waits for another run that writes the same output
    (assets/steps.py `exclusive_outputs`) before it fails naming that run. Long enough for a by-hand
    tokenizer or curriculum beside the daemon's to wait and then reuse its result; a pretraining stage
    held by another run takes hours, and such a run fails after this instead of queueing silently."""
    gpu_slots_wait_seconds: float = 1800.0
    """KILN_GPU_SLOTS_WAIT_SECONDS: how long a step on several GPUs, holding one slot of the `gpu` pool,
    waits for the others (assets/gpus.py `gpu_slots`) before it gives its slots back and fails naming
    their holders. Two such steps each holding part of the pool would otherwise wait for each other
    forever; a wait this long still lets a one-GPU evaluation or quantization finish first."""

    @classmethod
    def from_env(cls) -> "Kiln":
        data = Path(os.environ.get("KILN_DATA_DIR", "data")).resolve()
        location = os.environ.get("KILN_LANDING_DIR") or str(Layout(data).landing)
        landing = location if "://" in location else Path(location).resolve()
        return cls(
            data_dir=str(data), landing_dir=str(landing), preset=os.environ.get("KILN_PRESET", "tiny"),
            start_from=os.environ.get("KILN_START_FROM", ""),
            output_lock_wait_seconds=float(os.environ.get("KILN_OUTPUT_LOCK_WAIT_SECONDS", "600")),
            gpu_slots_wait_seconds=float(os.environ.get("KILN_GPU_SLOTS_WAIT_SECONDS", "1800")),
        )

    @property
    def config(self) -> KilnConfig:
        from training.retraining import starting_from  # imports the data library: only when a step asks

        return starting_from(preset(self.preset), self.start_from or None)

    @property
    def landing(self) -> Path | ObjectPath:
        return landing_root(self.landing_dir)

    @property
    def layout(self) -> Layout:
        """Every folder under KILN_DATA_DIR (training/layout.py)."""
        return Layout(Path(self.data_dir))

"""The one resource every asset shares: where kiln reads and writes, and which preset it runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from training.presets import preset
from training.config import KilnConfig
from training.layout import Layout
from training.retraining import starting_from


class Kiln(dg.ConfigurableResource):
    data_dir: str
    """KILN_DATA_DIR (default ./data): every artifact lives under it, in a folder named after its asset (`layout`)."""
    landing_dir: str
    """KILN_LANDING_DIR (default $KILN_DATA_DIR/landing): where batches arrive."""
    preset: str = "tiny"
    """KILN_PRESET: the name of a function in training/presets.py."""
    start_from: str = ""
    """KILN_START_FROM: where a retraining starts, "scratch" or "release" (RetrainingPolicy.start_from),
    over the preset's choice; empty: the preset's. Settable per run in the launchpad (resources.kiln.config)."""

    @classmethod
    def from_env(cls) -> "Kiln":
        data = Path(os.environ.get("KILN_DATA_DIR", "data")).resolve()
        landing = Path(os.environ.get("KILN_LANDING_DIR") or Layout(data).landing).resolve()
        return cls(
            data_dir=str(data), landing_dir=str(landing), preset=os.environ.get("KILN_PRESET", "tiny"),
            start_from=os.environ.get("KILN_START_FROM", ""),
        )

    @property
    def config(self) -> KilnConfig:
        return starting_from(preset(self.preset), self.start_from or None)

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir)

    @property
    def layout(self) -> Layout:
        """Every folder under KILN_DATA_DIR (training/layout.py)."""
        return Layout(Path(self.data_dir))

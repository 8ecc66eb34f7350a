"""The one resource every asset shares: where kiln reads and writes, and which preset it runs."""

from __future__ import annotations

import os
from pathlib import Path

import dagster as dg

from pipelines.presets import preset
from training.config import KilnConfig


class Kiln(dg.ConfigurableResource):
    data_dir: str
    """KILN_DATA_DIR (default ./data): every artifact lives under it, in a folder named after its asset."""
    landing_dir: str
    """KILN_LANDING_DIR (default $KILN_DATA_DIR/landing): where batches arrive."""
    preset: str = "tiny"
    """KILN_PRESET: the name of a function in pipelines/presets.py."""

    @classmethod
    def from_env(cls) -> "Kiln":
        data = Path(os.environ.get("KILN_DATA_DIR", "data")).resolve()
        landing = Path(os.environ.get("KILN_LANDING_DIR") or data / "landing").resolve()
        return cls(data_dir=str(data), landing_dir=str(landing), preset=os.environ.get("KILN_PRESET", "tiny"))

    @property
    def config(self) -> KilnConfig:
        return preset(self.preset)

    @property
    def landing(self) -> Path:
        return Path(self.landing_dir)

    def path(self, name: str) -> Path:
        """The folder of an asset's artifacts: $KILN_DATA_DIR/<name>."""
        return Path(self.data_dir) / name

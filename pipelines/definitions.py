"""The one Definitions object of kiln: assets, checks and resources (`dagster dev` / `dagster asset
materialize -m pipelines.definitions`)."""

from __future__ import annotations

import dagster as dg

from assets import cleaning, curriculum, difficulty, tokenizer
from pipelines.resources import Kiln

MODULES = [cleaning, difficulty, tokenizer, curriculum]

defs = dg.Definitions(
    assets=dg.load_assets_from_modules(MODULES),
    asset_checks=dg.load_asset_checks_from_modules(MODULES),
    resources={"kiln": Kiln.from_env()},
)

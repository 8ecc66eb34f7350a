"""The one Definitions object of kiln: assets, checks and resources (`dagster dev` / `dagster asset
materialize -m pipelines.definitions`)."""

from __future__ import annotations

import dagster as dg

from assets import cleaning
from pipelines.resources import Kiln

defs = dg.Definitions(
    assets=dg.load_assets_from_modules([cleaning]),
    asset_checks=dg.load_asset_checks_from_modules([cleaning]),
    resources={"kiln": Kiln.from_env()},
)

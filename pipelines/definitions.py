"""The one Definitions object of kiln: assets, checks and resources (`dagster dev` / `dagster asset
materialize -m pipelines.definitions`). The pretraining stages follow the preset's curriculum schedule
(KILN_PRESET), one asset per stage."""

from __future__ import annotations

import dagster as dg

from assets import cleaning, curriculum, difficulty, evaluation, pretraining, release, tokenizer
from pipelines.resources import Kiln

# Modules whose assets do not depend on the preset; the pretraining stages are built per schedule.
MODULES = [cleaning, difficulty, tokenizer, curriculum, evaluation, release]


def build_definitions(kiln: Kiln) -> dg.Definitions:
    stages = len(kiln.config.curriculum.schedule)
    return dg.Definitions(
        assets=[*dg.load_assets_from_modules(MODULES), *pretraining.pretraining_assets(stages)],
        asset_checks=[*dg.load_asset_checks_from_modules(MODULES), pretraining.base_model_generates],
        resources={"kiln": kiln, "pipes": dg.PipesSubprocessClient()},
    )


defs = build_definitions(Kiln.from_env())

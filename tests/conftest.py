"""Shared fixtures: the embedded default landing zone is generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from training.data.default_landing import write_default_landing

    landing = tmp_path_factory.mktemp("landing")
    expected = write_default_landing(landing)
    return landing, expected


@pytest.fixture(scope="session")
def cleaned(default_landing, tmp_path_factory):
    """The cleaning assets materialized once on the default landing zone with the real CLIP:
    (data dir, expected defects, the first result, a function materializing a selection again)."""
    import dagster as dg

    from pipelines.definitions import build_definitions
    from pipelines.resources import Kiln

    landing, expected = default_landing
    data = tmp_path_factory.mktemp("data")
    defs = build_definitions(Kiln(data_dir=str(data), landing_dir=str(landing)))

    def materialize(selection: str = "clip_model cleaned_corpus") -> dg.ExecuteInProcessResult:
        keys = selection.split()
        return dg.materialize(
            [*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.assets(*keys), resources=defs.resources
        )

    return data, expected, materialize(), materialize


@pytest.fixture(scope="session")
def downstream(cleaned):
    """difficulty_scores, tokenizer and curriculum materialized once on the cleaned default:
    (data dir, the result)."""
    data, _, _, materialize = cleaned
    return data, materialize("difficulty_scores tokenizer curriculum")


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)

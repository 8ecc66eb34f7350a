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

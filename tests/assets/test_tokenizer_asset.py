"""The tokenizer asset on a generated corpus: a trained tokenizer records its sample; tokenizer.source
"release" copies the latest release's tokenizer (trains while there is none), and the cache key follows
the release's tokenizer file."""

import dataclasses
import json

import dagster as dg
import pytest

from assets import resources
from assets.resources import Kiln
from assets.tokenizer import tokenizer, tokenizer_round_trip
from tests.helpers import meta
from tests.training.test_tokenizer_sample import write_corpus
from training.config import TokenizerConfig
from training.curriculum.tokenizer import train_tokenizer
from training.layout import LATEST
from training.presets import preset


@pytest.fixture
def kiln(tmp_path, monkeypatch) -> Kiln:
    def small(name: str):
        cfg = preset(name)
        return dataclasses.replace(cfg, tokenizer=TokenizerConfig(vocab_size=300, source="release"))

    monkeypatch.setattr(resources, "preset", small)
    write_corpus(tmp_path / "data", batches=2, per_modality=100)
    return Kiln(data_dir=str(tmp_path / "data"), landing_dir=str(tmp_path / "landing"))


def _run(kiln: Kiln) -> tuple[dict, bool]:
    result = dg.materialize([tokenizer, tokenizer_round_trip], resources={"kiln": kiln})
    [check] = result.get_asset_check_evaluations()
    return meta(result, "tokenizer"), check.passed


def _release(kiln: Kiln, version: str, text: str) -> None:
    train_tokenizer([text] * 20, TokenizerConfig(vocab_size=280), kiln.layout.releases / version)
    (kiln.layout.releases / LATEST).write_text(version)


def test_release_source_trains_without_a_release_then_copies_the_latest(kiln):
    out = kiln.layout.tokenizer / "tokenizer.json"
    trained, passed = _run(kiln)
    assert passed and trained["source"] == "trained" and trained["sample/fraction"] == 1.0 and trained["training_records"] > 500
    assert json.loads((kiln.layout.tokenizer / "_step.json").read_text())["result"]["sample"]["records"] == trained["training_records"]

    _release(kiln, "v1", "kilns fire clay at high temperature until it turns hard")
    copied, passed = _run(kiln)
    assert passed and copied["source"] == "release v1" and copied["key"] != trained["key"] and "reused" not in copied
    assert out.read_bytes() == (kiln.layout.releases / "v1" / "tokenizer.json").read_bytes()
    assert copied["vocab_size"] < 300 and copied["bytes_per_token/text"] > 0

    again, _ = _run(kiln)
    assert again["reused"] == copied["key"]

    # The key holds the release's tokenizer file: the same release folder with another tokenizer in it
    # is copied again, not reused from the cache.
    _release(kiln, "v1", "glaze melts into glass on the surface of the pot")
    newer, _ = _run(kiln)
    assert newer["source"] == "release v1" and newer["key"] != copied["key"] and "reused" not in newer
    assert out.read_bytes() == (kiln.layout.releases / "v1" / "tokenizer.json").read_bytes() != b""

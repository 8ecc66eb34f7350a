"""Shared fixtures: the embedded default landing zone is generated once per test session."""

from __future__ import annotations

import os
from pathlib import Path
from unittest import mock

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def default_landing(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    from training.demo.landing import write_default_landing

    landing = tmp_path_factory.mktemp("landing")
    expected = write_default_landing(landing)
    return landing, expected


class Pipeline:
    """kiln's Definitions on a data dir and landing zone, materialized in process on one instance, the
    way the daemon or `make demo` runs it: the CLIP, each ready batch as its partition, the corpus."""

    def __init__(self, data: Path, landing: Path, instance=None, **kiln):
        import dagster as dg

        from pipelines.definitions import build_definitions
        from assets.resources import Kiln

        self.data, self.landing = data, landing
        self.kiln = Kiln(data_dir=str(data), landing_dir=str(landing), **kiln)
        self.defs = build_definitions(self.kiln)
        self.instance = instance or dg.DagsterInstance.ephemeral()

    def materialize(self, selection: str, partition: str | None = None, raise_on_error: bool = True):
        import dagster as dg

        return dg.materialize(
            [*self.defs.assets, *self.defs.asset_checks], selection=dg.AssetSelection.assets(*selection.split()),
            resources=self.defs.resources, instance=self.instance, partition_key=partition, raise_on_error=raise_on_error,
        )

    def clean(self) -> dict:
        """clip_model, every ready batch's partition, cleaned_corpus: {"clip_model": result,
        "batches": {name: result}, "cleaned_corpus": result}."""
        from pipelines.batches import sync_partitions

        clip = self.materialize("clip_model")
        ready, _, _ = sync_partitions(self.instance, self.kiln)
        batches = {b: self.materialize("cleaned_batch", b) for b in ready}
        return {"clip_model": clip, "batches": batches, "cleaned_corpus": self.materialize("cleaned_corpus")}


@pytest.fixture(scope="session")
def cleaned(default_landing, tmp_path_factory):
    """The suite's one lifecycle run, first part: the cleaning assets materialized once on the default
    landing zone with the real CLIP, on the `smoke` preset: (data dir, expected defects, the first
    results (Pipeline.clean), the Pipeline)."""
    landing, expected = default_landing
    pipeline = Pipeline(tmp_path_factory.mktemp("data"), landing, preset="smoke")
    return pipeline.data, expected, pipeline.clean(), pipeline


@pytest.fixture(scope="session")
def downstream(cleaned):
    """The shared run, second part: each batch's difficulty_scores (a run per batch, as the difficulty
    sensor requests them), then tokenizer, tokenized_corpus and curriculum: (data dir, the last run's result, {batch:
    its difficulty run's result})."""
    data, _, results, pipeline = cleaned
    difficulty = {b: pipeline.materialize("difficulty_scores", b) for b in sorted(results["batches"])}
    return data, pipeline.materialize("tokenizer tokenized_corpus curriculum"), difficulty


@pytest.fixture(scope="session")
def lifecycle(cleaned, downstream):
    """The shared run, to the end: both pretraining stages through Dagster Pipes, base_model, evaluation
    with its gate, quantized_model, gguf_model and the release, on the same data dir and instance:
    (data dir, the result, materialize(selection) -> result for later runs, the instance)."""
    data, _, _, pipeline = cleaned

    def materialize(keys: str):
        return pipeline.materialize(keys, raise_on_error=False)

    first = materialize("pretrain_stage_1 pretrain_stage_2 base_model evaluation quantized_model gguf_model release")
    return data, first, materialize, pipeline.instance


SHARED_RUN = {"cleaned", "downstream", "lifecycle"}
SHARED_RUN_TIMEOUT_S = 1200
"""The first test to use the shared run builds it within its own time: about 4 minutes on 2 idle cores."""


def pytest_collection_modifyitems(config, items):
    import torch

    for item in items:
        if SHARED_RUN & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(SHARED_RUN_TIMEOUT_S))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)



@pytest.fixture(autouse=True, scope="module")
def _environment_stays_in_its_module():
    """What a module-scoped fixture sets in os.environ (the training benchmark starts a process group
    in pytest's own process) leaves with the module; see the test-scoped fixture below."""
    with mock.patch.dict(os.environ):
        yield


@pytest.fixture(autouse=True)
def _environment_stays_in_its_test():
    """A test that starts a process group in pytest's own process (`init_one_rank`) sets torchrun's
    variables (RANK, WORLD_SIZE, MASTER_PORT, ...) in os.environ; later tests hand os.environ to
    subprocesses (`make demo`, `lm_eval`), which would then join a rendezvous that is not theirs."""
    with mock.patch.dict(os.environ):
        yield

"""`make demo` from the repository root into a fresh KILN_DATA_DIR: the command the README promises."""

import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_demo_materializes_every_asset(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "DAGSTER_", "MAKE"))}
    env["KILN_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = tmp_path / "data"
    assert (data / "landing" / "batch-0001" / "_SUCCESS").is_file()
    for batch in ("batch-0001", "batch-0002"):
        for modality in ("text", "code", "image_text"):
            assert (data / "cleaned_corpus" / batch / f"{modality}.parquet").is_file()
            assert (data / "rejected" / batch / f"{modality}.parquet").is_file()
    assert not (data / "cleaned_corpus" / "batch-0003").exists()  # no _SUCCESS yet
    assert (data / "difficulty_scores" / "scores.parquet").is_file()
    assert (data / "tokenizer" / "tokenizer.json").is_file()
    assert (data / "curriculum" / "stage_09.parquet").is_file()

    instance = dg.DagsterInstance.from_config(str(data / "dagster_home"))
    try:
        for key in ("clip_model", "cleaned_corpus", "difficulty_scores", "tokenizer", "curriculum"):
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        [run] = instance.get_runs()
        assert run.is_success
    finally:
        instance.dispose()

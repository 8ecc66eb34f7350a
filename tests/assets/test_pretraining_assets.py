"""The lifecycle after the curriculum, read from the suite's shared run (tests/conftest.py `lifecycle`,
the `smoke` preset: two stages, a small model): pretraining stages through Dagster Pipes, base_model,
evaluation with its regression gate, quantized_model, gguf_model and release."""

import json
import math
from pathlib import Path

import dagster as dg
import pytest
import torch
from safetensors.torch import load_file, save_file

from pipelines.definitions import build_definitions
from assets.resources import Kiln
import training.release.publish as rel
from training.release.publish import verify

pytestmark = pytest.mark.slow


def _meta(result, key):
    [mat] = result.asset_materializations_for_node(key)
    return {k: v.value for k, v in mat.metadata.items()}


def _checks(result):
    return {e.check_name: e.passed for e in result.get_asset_check_evaluations()}


def test_one_asset_per_curriculum_stage_then_base_model(tmp_path):
    defs = build_definitions(Kiln(data_dir=str(tmp_path), landing_dir="/nonexistent"))
    graph = defs.resolve_asset_graph()
    keys = {k.to_user_string() for k in graph.get_all_asset_keys()}
    assert {f"pretrain_stage_{i}" for i in range(1, 10)} | {"base_model", "evaluation", "quantized_model", "gguf_model", "release"} <= keys
    parents = {k.to_user_string() for k in graph.get(dg.AssetKey("pretrain_stage_4")).parent_keys}
    assert parents == {"pretrain_stage_3", "curriculum", "tokenized_corpus", "tokenizer"}


def test_stages_train_through_pipes_and_report_their_numbers(lifecycle):
    data, result, _, instance = lifecycle
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    first, second = _meta(result, "pretrain_stage_1"), _meta(result, "pretrain_stage_2")
    assert first["steps"] == 12 and first["resumed_from_step"] == 0 and "reused" not in first and len(first["key"]) == 64
    assert first["initialised_from"] == "random initialization"
    assert second["initialised_from"].endswith("checkpoints/stage_01/step_000012")
    assert second["global_steps"].startswith("13-")
    assert first["loss_curve"].startswith("![loss curve](data:image/png;base64,")
    assert first["metrics"].count("\n| ") == 12 and "| 12 | 12 |" in first["metrics"]  # first to last step
    assert first["tokens_per_s"] > 0 and second["final_loss"] < first["final_loss"] and "cpu x 2" in first["device"]
    summary = json.loads((data / "pretrain_stage_2" / "stage.json").read_text())
    assert summary["final_loss"] == second["final_loss"]
    # The trainer's step lines reached the run's log through Pipes.
    messages = [e.user_message for e in instance.all_logs(result.run_id)]
    assert any("step 12 global_step 12 loss" in m for m in messages)
    assert any("starting from stage 1's checkpoint" in m for m in messages)


def test_a_finished_stage_is_not_trained_again(lifecycle):
    """The cache rule every step follows: the stage's record (_step.json, written last by the trainer)
    under the spec's fingerprint."""
    data, first_result, materialize, _ = lifecycle
    first = _meta(first_result, "pretrain_stage_1")
    meta = _meta(materialize("pretrain_stage_1"), "pretrain_stage_1")
    assert meta["reused"] == meta["key"] == first["key"] and meta["steps"] == 12
    record = json.loads((data / "pretrain_stage_1" / "_step.json").read_text())
    assert record["key"] == first["key"] and "model/model.safetensors" in record["files"]


def test_evaluation_quantization_and_release(lifecycle):
    data, result, _, _ = lifecycle
    checks = _checks(result)
    assert checks["base_model_generates"] and checks["no_regression"] and checks["quantization_within_bound"]
    assert checks["release_verifies"]
    ev = _meta(result, "evaluation")
    assert ev["previous_release"] == "none" and ev["perplexity"] > 1 and 0 <= ev["bleu"] <= 100
    assert "| modality: text |" in ev["evaluation"] and "| level " in ev["evaluation"]
    q = _meta(result, "quantized_model")
    assert q["int8_bytes"] < q["full_bytes"] and abs(q["perplexity_change"]) <= 0.02
    version = (data / "releases" / "LATEST").read_text().strip()
    assert _meta(result, "release")["version"] == version
    release = data / "releases" / version
    assert verify(release) == []
    card = (release / "README.md").read_text()
    assert "batch-0001" in card and "tree_sitter_error" in card and "2-4" in card and '"zero_stage": 1' in card
    # kiln's lm-evaluation-harness tasks: run by the evaluation, shipped flat in eval_tasks/, shown in the card.
    harness = json.loads((release / "evaluation.json").read_text())["candidate"]["harness"]
    assert math.isfinite(harness["results"]["kiln"]["bits_per_byte"]) and "kiln_cloze" in harness["results"]
    assert "| `kiln` | bits_per_byte |" in ev["harness"] and ev["harness_seconds"] > 0
    shipped = {p.name for p in (release / "eval_tasks").iterdir()}
    assert {"kiln.yaml", "kiln_text_ppl.yaml", "kiln_text_ppl.jsonl", "kiln_tasks.py", "README.md"} <= shipped
    assert {p.name for p in (data / "evaluation" / "eval_tasks").iterdir() if p.is_file()} == shipped
    assert "### lm-evaluation-harness" in card and f"--include_path {version}/eval_tasks" in card
    # The GGUF files, checked against transformers by llama.cpp, ship in gguf/ with their sha256 in the card.
    assert checks["gguf_matches_transformers"]
    record = json.loads((data / "gguf_model" / "gguf.json").read_text())
    assert sorted(p.name for p in (release / "gguf").iterdir()) == ["Modelfile", "gguf.json", "kiln-f32.gguf", "kiln-q8_0.gguf"]
    for name, f in record["files"].items():
        assert f["comparison"]["passed"] and f["comparison"]["tokenization_mismatches"] == []
        assert f["sha256"] in card and rel.sha256_file(release / "gguf" / name) == f["sha256"]
    assert record["files"]["kiln-f32.gguf"]["comparison"]["max_abs_diff"] <= 1e-3
    assert f"llama-cli -m {version}/gguf/kiln-f32.gguf" in card and f"-f {version}/gguf/Modelfile" in card


def test_the_release_refuses_a_failed_or_stale_gguf_check(lifecycle):
    """The release asset asks the GGUF rule itself: a release run by hand after a failed check is refused."""
    data, _, materialize, _ = lifecycle
    record_path = data / "gguf_model" / "gguf.json"
    good = record_path.read_text()
    latest = (data / "releases" / "LATEST").read_text()
    try:
        for change, reason in (
            ({"max_abs_diff": 0.5}, "kiln-f32.gguf: llama.cpp logits within 0.5 of transformers"),
            ({"tokenization_mismatches": [0], "tokenization_agrees": 7}, "tokenization agrees on 7/"),
        ):
            record = json.loads(good)
            record["files"]["kiln-f32.gguf"]["comparison"] |= change
            record_path.write_text(json.dumps(record))
            result = materialize("release")
            assert not result.success and not result.asset_materializations_for_node("release")
            failure = next(e for e in result.all_events if e.is_step_failure)
            assert reason in failure.step_failure_data.error.message, failure.step_failure_data.error.message
        record_path.write_text(json.dumps(json.loads(good) | {"weights_sha256": "0" * 64}))
        result = materialize("release")
        failure = next(e for e in result.all_events if e.is_step_failure)
        assert "gguf.json is of weights 00000000" in failure.step_failure_data.error.message
        assert (data / "releases" / "LATEST").read_text() == latest
    finally:
        record_path.write_text(good)


def _randomize(model_dir: Path) -> None:
    weights = load_file(model_dir / "model.safetensors")
    gen = torch.Generator().manual_seed(0)
    save_file({k: torch.randn(v.shape, generator=gen) * 0.02 if v.ndim == 2 else v for k, v in weights.items()},
              model_dir / "model.safetensors", metadata={"format": "pt"})


def test_the_regression_gate_blocks_a_worse_model_and_passes_one_that_is_not(lifecycle):
    data, _, materialize, _ = lifecycle
    releases = data / "releases"
    first = (releases / "LATEST").read_text().strip()
    trained = (data / "base_model" / "model.safetensors").read_bytes()

    _randomize(data / "base_model")  # an untrained candidate
    blocked = materialize("evaluation quantized_model release")
    gate = next(e for e in blocked.get_asset_check_evaluations() if e.check_name == "no_regression")
    assert not gate.passed and "worse than release " + first in gate.description
    assert "harness bits per byte" in gate.description and "worse" in gate.description.split(";")[-1]
    assert gate.metadata["candidate_harness_bits_per_byte"].value > gate.metadata["previous_harness_bits_per_byte"].value
    assert not blocked.asset_materializations_for_node("release")
    assert (releases / "LATEST").read_text().strip() == first
    # The same weights against the same release: the evaluation is reused (training/cache.py), not run again.
    stamp = (data / "evaluation" / "evaluation.json").stat().st_mtime_ns
    again, fresh = _meta(materialize("evaluation"), "evaluation"), _meta(blocked, "evaluation")
    assert again.pop("reused") == fresh["key"] and again == fresh and "reused" not in fresh
    assert (data / "evaluation" / "evaluation.json").stat().st_mtime_ns == stamp
    assert sorted(p.name for p in releases.iterdir() if p.is_dir()) == [first]

    (data / "base_model" / "model.safetensors").write_bytes(trained)  # as good as the release
    passed = materialize("evaluation quantized_model release")
    assert _checks(passed)["no_regression"]
    second = (releases / "LATEST").read_text().strip()
    assert second > first and verify(releases / second) == []
    result = json.loads((releases / second / "evaluation.json").read_text())
    same = [run["harness"]["results"]["kiln"]["bits_per_byte"] for run in (result["candidate"], result["previous"])]
    assert same[0] == pytest.approx(same[1], rel=1e-6)  # the same weights, measured by the harness twice
    assert f"| release {first} |" in (releases / second / "README.md").read_text()

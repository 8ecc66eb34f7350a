"""The release gate holds on every path: the automation does not request a release past a failed
blocking check, and the release asset itself (the same body for a hand-run, a re-execution, a retry
or an automated run) fails past a failed gate before it writes anything."""

import json
from pathlib import Path

import dagster as dg
import pytest

from pipelines.definitions import build_definitions
from assets.resources import Kiln
from training.fsutil import sha256_file
from training.release.publish import latest, verify, write_release

K = dg.AssetKey
PREVIOUS = "20000101-000000-aaaaaaaa"
"""The release already published; sorts before any version made now."""
GATES = {"evaluation": "no_regression", "quantized_model": "quantization_within_bound", "base_model": "base_model_generates",
         "gguf_model": "gguf_matches_transformers"}
"""release's dependencies and their blocking checks."""


# --- the automation ---------------------------------------------------------------------------------


def _defs(tmp_path: Path) -> dg.Definitions:
    return build_definitions(Kiln(data_dir=str(tmp_path), landing_dir=str(tmp_path)))


def _materialized(instance: dg.DagsterInstance, asset: str, check_passed: bool = True) -> None:
    """What a run materializing `asset` with its blocking check leaves in the instance."""
    instance.report_runless_asset_event(dg.AssetMaterialization(asset))
    instance.report_runless_asset_event(
        dg.AssetCheckEvaluation(
            asset_key=K(asset), check_name=GATES[asset], passed=check_passed,
            description=None if check_passed else f"{GATES[asset]} failed in this test",
        )
    )


def _released_state(tmp_path: Path):
    """A deployment with a release out: every dependency materialized, its checks passed, released;
    then one tick of the automation, which finds nothing to do."""
    defs, instance = _defs(tmp_path), dg.DagsterInstance.ephemeral()
    instance.report_runless_asset_event(dg.AssetMaterialization("curriculum"))
    for asset in GATES:
        _materialized(instance, asset)
    instance.report_runless_asset_event(dg.AssetMaterialization("release"))
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance)
    assert result.total_requested == 0
    return defs, instance, result.cursor


def _requested(result) -> set[str]:
    return {k for k in ("evaluation", "quantized_model", "release") if result.get_num_requested(K(k))}


def _find(result, asset: str, label: str):
    """The evaluation of the sub-condition labelled `label` in `asset`'s condition tree (what the UI shows)."""
    [top] = [r for r in result.results if r.key == K(asset)]
    stack = [top]
    while stack:
        node = stack.pop()
        if node.condition.label == label:
            return node
        stack.extend(node.child_results)
    raise AssertionError(f"no {label!r} in {asset}'s condition")


@pytest.mark.parametrize("failed", list(GATES))
def test_the_automation_requests_no_release_past_a_failed_blocking_check(tmp_path, failed):
    defs, instance, cursor = _released_state(tmp_path)
    # The candidate's record arrives (by hand, as `dagster asset materialize --select evaluation` would);
    # one of its blocking checks fails.
    for asset in ("base_model",) if failed == "base_model" else ("evaluation", "quantized_model", "gguf_model"):
        _materialized(instance, asset, check_passed=asset != failed)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert "release" not in _requested(result)
    # Held back by the gate, not for want of a trigger: eager alone would have released it.
    assert _find(result, "release", "eager").true_subset.size == 1
    assert _find(result, "release", "no dependency's blocking check failed").true_subset.size == 0
    # The same dependency materialized again with its check passing: the release follows.
    _materialized(instance, failed)
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=result.cursor)
    assert "release" in _requested(result)


@pytest.mark.parametrize("before", ["a release", "a failed gate"])
def test_a_new_base_model_is_evaluated_quantized_and_released_in_one_run(tmp_path, before):
    """A dependency requested in the same tick counts as passing, even when its last check failed: its
    checks run again in that run and, being blocking, stop the release step there if they fail."""
    defs, instance, cursor = _released_state(tmp_path)
    if before == "a failed gate":
        _materialized(instance, "evaluation", check_passed=False)
        result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
        assert _requested(result) == set()
        cursor = result.cursor
    _materialized(instance, "base_model")
    result = dg.evaluate_automation_conditions(defs=defs, instance=instance, cursor=cursor)
    assert _requested(result) == {"evaluation", "quantized_model", "release"}


# --- the release asset by hand (and any retry or automation: the same asset body) ---------------------


def _ready(data: Path, change: float = 0.01, int8_change: float = 0.001, evaluated: str | None = None, gguf_diff: float = 1e-5) -> str:
    """A data dir holding everything `release` reads, as small as it can be, with a previous release.
    `change`: byte perplexity against it; `evaluated`: the weights evaluation.json is of (default: base_model's)."""
    base, int8 = data / "base_model", data / "quantized_model"
    for folder in (base, int8, data / "cleaned_corpus", data / "curriculum", data / "pretrain_stage_1", data / "evaluation"):
        folder.mkdir(parents=True)
    (base / "model.safetensors").write_bytes(b"the candidate's weights")
    (base / "config.json").write_text("{}\n")
    (int8 / "model.safetensors").write_bytes(b"int8")
    sha = sha256_file(base / "model.safetensors")
    (int8 / "quantization.json").write_text(json.dumps({
        "full_perplexity": 10.0, "int8_perplexity": 10.0 * (1 + int8_change), "perplexity_change": int8_change,
        "bound": 0.02, "full_bytes": 23, "weights_sha256": sha,
        "files": {"model.safetensors": {"sha256": sha256_file(int8 / "model.safetensors"), "bytes": 4}},
    }))
    (data / "gguf_model").mkdir()
    (data / "gguf_model" / "kiln-f32.gguf").write_bytes(b"GGUF")
    comparison = {"prompts": 2, "positions": 20, "max_abs_diff": gguf_diff, "top1_agreement": 1.0, "tokenization_agrees": 2,
                  "tokenization_mismatches": [], "tolerance": 1e-3, "passed": True, "llama_cpp_python": "0.3.36"}
    (data / "gguf_model" / "gguf.json").write_text(json.dumps({"weights_sha256": sha, "files": {"kiln-f32.gguf": {
        "file_type": "f32", "sha256": sha256_file(data / "gguf_model" / "kiln-f32.gguf"), "bytes": 4, "comparison": comparison}}}))
    (data / "curriculum" / "curriculum.json").write_text(json.dumps({"schedule": [1], "seed": 0, "stages": [{"stage": 1, "records": 3}]}))
    (data / "pretrain_stage_1" / "stage.json").write_text(json.dumps(
        {"stage": 1, "level": 1, "tokens": 100, "steps": 2, "global_batch": 8, "final_loss": 3.0, "parameters": 1000}
    ))
    group = {"records": 3, "tokens": 100, "perplexity": 10.0, "byte_perplexity": 2.0 * (1 + change), "bits_per_byte": 1.0}
    candidate = {"overall": group, "by_modality": {}, "by_level": {}, "continuation": {"all": {"records": 3, "bleu": 1.0, "chrf": 2.0}}}
    previous = {"version": PREVIOUS, "evaluation": {"overall": group | {"byte_perplexity": 2.0}}, "change": change}
    (data / "evaluation" / "evaluation.json").write_text(json.dumps(
        {"candidate": candidate, "previous": previous, "device": "cpu", "margin": 0.05, "weights_sha256": evaluated or sha}
    ))
    (data / "old").mkdir()
    (data / "old" / "model.safetensors").write_bytes(b"the released weights")
    write_release(data / "releases", PREVIOUS, {"": data / "old"}, {}, archive=False)
    return sha


def _release_by_hand(data: Path) -> dg.ExecuteInProcessResult:
    defs = _defs(data)
    return dg.materialize(
        [*defs.assets, *defs.asset_checks], selection=dg.AssetSelection.assets("release").without_checks(),
        resources=defs.resources, raise_on_error=False,
    )


def test_a_release_by_hand_past_the_gate_is_published(tmp_path):
    """The control for the cases below: the same records, passing, do publish."""
    sha = _ready(tmp_path)
    result = _release_by_hand(tmp_path)
    assert result.success
    new = latest(tmp_path / "releases")
    assert new.name != PREVIOUS and new.name.endswith(sha[:8]) and verify(new) == []


@pytest.mark.parametrize(
    ("ready", "reason"),
    [
        ({"change": 0.123}, f"byte perplexity 12.30% worse than release {PREVIOUS} (margin 5%)"),
        ({"int8_change": 0.05}, "int8 perplexity +5.00% against the full model (bound 2%)"),
        ({"evaluated": "0123abcd" + "0" * 56}, "evaluation.json is of weights 0123abcd, base_model is {base}: materialize evaluation first"),
        ({"missing": "evaluation/evaluation.json"}, "evaluation.json is missing"),
        ({"missing": "quantized_model/quantization.json"}, "quantization.json is missing"),
        ({"gguf_diff": 0.5}, "kiln-f32.gguf: llama.cpp logits within 0.5 of transformers (tolerance 0.001)"),
        ({"missing": "gguf_model/gguf.json"}, "gguf.json is missing"),
    ],
    ids=["regressed", "int8-beyond-bound", "evaluation-of-other-weights", "no-evaluation", "no-quantization",
         "gguf-beyond-tolerance", "no-gguf"],
)
def test_a_release_by_hand_past_a_failed_gate_fails_and_publishes_nothing(tmp_path, ready, reason):
    missing = ready.pop("missing", None)
    sha = _ready(tmp_path, **ready)
    if missing:
        (tmp_path / missing).unlink()
    result = _release_by_hand(tmp_path)
    assert not result.success
    failure = result.failure_data_for_node("release").user_failure_data
    assert failure.description.startswith("not released: ") and reason.format(base=sha[:8]) in failure.description
    assert not result.asset_materializations_for_node("release")
    assert (tmp_path / "releases" / "LATEST").read_text().strip() == PREVIOUS
    assert sorted(p.name for p in (tmp_path / "releases").iterdir()) == [PREVIOUS, "LATEST"]

"""Evaluation of the base model on the held-out split (kiln's own measures, then kiln's
lm-evaluation-harness tasks), the regression gate against the previous release, and the int8 variant
with its own quality bound."""

import json
from pathlib import Path

import dagster as dg
from transformers import AutoModelForCausalLM, AutoTokenizer

from assets.curriculum import curriculum
from assets.gpus import GPU_STEP
from assets.resources import Kiln
from assets.steps import key_metadata, lookup
from training.cache import forget, record
from training.device import pick_device
from training.release.evaluate import evaluate, load_heldout
from training.fsutil import remove, sha256_file, write_json
from training.release.harness import GROUP, run_tasks, write_tasks
from training.release.model_card import evaluation_tables, harness_table
from training.release.quantize import quantize_int8
from training.layout import BASE_MODEL, EVALUATION_JSON, HELDOUT, QUANTIZATION_JSON, WEIGHTS
from training.release.publish import WEIGHTS_SHA256, latest, quantization_gate, regression_gate

STEP, VERSION = "evaluation", 1
"""The evaluation's step name and logic version in its cache key (training/cache.py): bump VERSION when
this asset, training/release/evaluate.py or training/release/harness.py change what evaluation/ holds."""


def _evaluate(kiln: Kiln, path, device) -> dict:
    model = AutoModelForCausalLM.from_pretrained(path).to(device)
    cfg = kiln.config
    return evaluate(model, AutoTokenizer.from_pretrained(path), kiln.layout.curriculum / HELDOUT, cfg.evaluation, cfg.difficulty.span_words)


def _harness(kiln: Kiln, path, device) -> dict:
    cfg = kiln.config.evaluation
    folders = [kiln.layout.eval_tasks, *cfg.harness_include]
    return run_tasks(path, folders, [GROUP, *cfg.harness_tasks], str(device), cfg.batch_size, cfg.harness_limit)


@dg.asset(
    group_name="release",
    automation_condition=dg.AutomationCondition.eager(),
    deps=[BASE_MODEL, curriculum],
    kinds={"pytorch"},
    **GPU_STEP,
    description="Held-out perplexity (overall, per modality, per level), BLEU/chrF of greedy continuations, "
    "code parse rate; the previous release measured on the same records for the regression gate.",
)
def evaluation(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    out, cfg = kiln.layout.evaluation, kiln.config.evaluation
    release = latest(kiln.layout.releases)
    # evaluation.json compares with the latest release: which one, and its weights, are in the key.
    config = (cfg, kiln.config.difficulty.span_words, release.name if release else None)
    inputs = [kiln.layout.base_model, *([release / WEIGHTS] if release else []), kiln.layout.curriculum / HELDOUT, *cfg.harness_include]
    key, result = lookup(context, out, STEP, VERSION, config, inputs)
    was_reused = result is not None
    if result is None:
        forget(out)  # evaluation/ is updated in place: no record until everything below is written
        result = _run(context, kiln, release)
        write_json(out / EVALUATION_JSON, result)
        record(out, STEP, VERSION, key, result)
    candidate, previous = result["candidate"], result["previous"]
    overall = candidate["overall"]
    return dg.MaterializeResult(
        metadata={
            "evaluation": dg.MetadataValue.md(evaluation_tables(candidate)),
            "perplexity": overall["perplexity"],
            "byte_perplexity": overall["byte_perplexity"],
            "bleu": candidate["continuation"]["all"]["bleu"],
            "chrf": candidate["continuation"]["all"]["chrf"],
            "code_parseable": candidate["code_parseable"],
            **({"harness": dg.MetadataValue.md(harness_table(
                candidate["harness"], (previous or {}).get("harness"), previous["version"] if previous else None
            )), "harness_seconds": candidate["harness"]["seconds"] + ((previous or {}).get("harness") or {}).get("seconds", 0)}
               if "harness" in candidate else {}),
            "previous_release": previous["version"] if previous else "none",
            "change_vs_previous": f"{previous['change']:+.2%}" if previous else "n/a",
            "device": result["device"],
            "weights_sha256": result[WEIGHTS_SHA256],
            "path": dg.MetadataValue.path(out / EVALUATION_JSON),
            **key_metadata(key, was_reused),
        }
    )


def _run(context: dg.AssetExecutionContext, kiln: Kiln, release: Path | None) -> dict:
    """Measure the base model and the latest release (if any): evaluation.json's content."""
    device = pick_device()
    # Hashed before loading: the release gate accepts this evaluation only for these very weights.
    weights = sha256_file(kiln.layout.base_model / WEIGHTS)
    candidate = _evaluate(kiln, kiln.layout.base_model, device)
    cfg, tasks = kiln.config.evaluation, kiln.layout.eval_tasks
    if cfg.harness:  # the same records as kiln's own evaluation, as lm-evaluation-harness tasks
        write_tasks(
            kiln.layout.curriculum / HELDOUT, tasks, cfg.max_records, kiln.config.difficulty.span_words,
            cfg.harness_cloze_choices, cfg.harness_cloze_words,
        )
        candidate["harness"] = _harness(kiln, kiln.layout.base_model, device)
    else:
        remove(tasks)  # never ship tasks the evaluation did not run
    previous = None
    if release is not None:
        old = _evaluate(kiln, release, device)
        change = candidate["overall"]["byte_perplexity"] / old["overall"]["byte_perplexity"] - 1
        previous = {"version": release.name, "evaluation": old, "change": round(change, 6)}
        if cfg.harness:
            previous["harness"] = _harness(kiln, release, device)
        context.log.info(f"byte perplexity {change:+.2%} against release {release.name}")
    return {"candidate": candidate, "previous": previous, "device": str(device), "margin": cfg.regression_margin, WEIGHTS_SHA256: weights}


@dg.asset_check(
    asset=evaluation,
    blocking=True,
    description="The candidate's held-out byte perplexity is within the margin of the previous release's, "
    "both measured on the same records; a worse candidate is not packaged.",
)
def no_regression(kiln: Kiln) -> dg.AssetCheckResult:
    result = json.loads((kiln.layout.evaluation / EVALUATION_JSON).read_text())
    gate, previous = regression_gate(result), result["previous"]  # the rule the release asset applies too
    metadata = {"previous_release": previous["version"] if previous else "none", "margin": result["margin"]}
    if previous:
        metadata |= {
            "candidate_byte_perplexity": result["candidate"]["overall"]["byte_perplexity"],
            "previous_byte_perplexity": previous["evaluation"]["overall"]["byte_perplexity"],
            "change": previous["change"],
        }
        harness = [run.get("harness") or {} for run in (result["candidate"], previous)]
        if all(h.get("results", {}).get(GROUP) for h in harness):  # the harness rule applies too
            metadata |= {
                "candidate_harness_bits_per_byte": harness[0]["results"][GROUP].get("bits_per_byte"),
                "previous_harness_bits_per_byte": harness[1]["results"][GROUP].get("bits_per_byte"),
            }
    return dg.AssetCheckResult(passed=gate.passed, description=gate.description, metadata=metadata)


@dg.asset(
    group_name="release",
    automation_condition=dg.AutomationCondition.eager(),
    deps=[BASE_MODEL, curriculum],
    kinds={"pytorch", "safetensors"},
    **GPU_STEP,
    description="int8 weight-only quantization of the base model (torchao), with its size, held-out "
    "perplexity and speed against the full model.",
)
def quantized_model(kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config.evaluation
    texts = [r["text"] for r in load_heldout(kiln.layout.curriculum / HELDOUT, cfg.max_records)]
    out = kiln.layout.quantized_model
    stats = quantize_int8(kiln.layout.base_model, out, texts, cfg.batch_size, cfg.quantization_bound, pick_device())
    return dg.MaterializeResult(
        metadata={
            **{k: v for k, v in stats.items() if k != "method"},
            "size_ratio": round(stats["int8_bytes"] / stats["full_bytes"], 4),
            "path": dg.MetadataValue.path(out),
        }
    )


@dg.asset_check(asset=quantized_model, blocking=True, description="int8 perplexity within the configured bound of the full model's.")
def quantization_within_bound(kiln: Kiln) -> dg.AssetCheckResult:
    stats = json.loads((kiln.layout.quantized_model / QUANTIZATION_JSON).read_text())
    gate = quantization_gate(stats)  # the rule the release asset applies too
    return dg.AssetCheckResult(
        passed=gate.passed,
        description=gate.description,
        metadata={k: stats[k] for k in ("full_perplexity", "int8_perplexity", "perplexity_change", "bound")},
    )

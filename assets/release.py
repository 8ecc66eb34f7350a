"""The release: base model, int8 variant, model card and manifest, published atomically under
releases/<version>/ with releases/LATEST pointing at it, only past the release gate."""

import dataclasses
import json

import dagster as dg

from assets.evaluation import evaluation, quantized_model
from assets.gguf import gguf_model
from assets.resources import Kiln
from training.data.clean import lineage
from training.release.model_card import model_card
from training.release.package import folder_bytes
from training.layout import (
    BASE_MODEL, CURRICULUM_JSON, EVAL_TASKS, EVALUATION_JSON, GGUF_JSON, LINEAGE_JSON, MODEL_CARD, QUANTIZATION_JSON,
    RELEASE_GGUF, RELEASE_INT8, RELEASE_MANIFEST, WEIGHTS, archive_name,
)
from training.release.publish import WEIGHTS_SHA256, latest, release_blockers, verify, version_name, write_release
from training.pretrain.plan import read_summary

# eager(), but never while a blocking check of a dependency (base_model_generates, no_regression,
# quantization_within_bound, gguf_matches_transformers) has failed, or not run, on that dependency's
# latest materialization: a failed gate followed by the next tick would otherwise publish the regressed
# model. A dependency requested in the same tick counts as passing, because its checks run in that run
# and block the release step there. (The built-in all_deps_blocking_checks_passed() accepts a requested *check*,
# but the sensor requests checks only as riders of their asset, so for a first model, or one after a
# failed gate, it holds the release back to a second run; this keeps the three in one run.)
RELEASE_CONDITION = dg.AutomationCondition.eager() & dg.AutomationCondition.all_deps_match(
    dg.AutomationCondition.all_checks_match(dg.AutomationCondition.check_passed(), blocking_only=True).with_label(
        "its blocking checks passed"
    )
    | dg.AutomationCondition.will_be_requested().with_label("runs with the release, its checks with it")
).with_label("no dependency's blocking check failed")


@dg.asset(
    group_name="release",
    automation_condition=RELEASE_CONDITION,
    deps=[evaluation, quantized_model, gguf_model, BASE_MODEL],
    kinds={"huggingface"},
    description="releases/<version>/: the model in Hugging Face format with its tokenizer, int8/ variant, "
    "gguf/ (GGUF files for llama.cpp and Ollama), eval_tasks/ (lm-evaluation-harness tasks), model card "
    "(lineage, curriculum, training config, evaluation) and a sha256 manifest; LATEST names it.",
)
def release(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config
    base, int8 = kiln.layout.base_model, kiln.layout.quantized_model
    # The gate holds on every path, not only where a blocking check runs in the same run: a release
    # materialized (or re-executed) by hand after a failed check, a retry, and any automation all
    # pass here first, before anything is read for packaging or written.
    gguf_dir = kiln.layout.gguf_model
    if blockers := release_blockers(
        kiln.layout.evaluation / EVALUATION_JSON, int8 / QUANTIZATION_JSON, base / WEIGHTS, gguf_dir / GGUF_JSON
    ):
        raise dg.Failure(
            description="not released: " + "; ".join(blockers),
            metadata={"reasons": dg.MetadataValue.md("\n".join(f"- {b}" for b in blockers))},
            allow_retries=False,  # the same files give the same verdict
        )
    plan = json.loads((kiln.layout.curriculum / CURRICULUM_JSON).read_text())
    stages = [read_summary(kiln.layout.pretrain_stage(s["stage"])) for s in plan["stages"]]
    result = json.loads((kiln.layout.evaluation / EVALUATION_JSON).read_text())
    quantization = json.loads((int8 / QUANTIZATION_JSON).read_text()) | {"int8_bytes": folder_bytes(int8)}
    gguf = json.loads((gguf_dir / GGUF_JSON).read_text())
    batches = lineage(kiln.layout.cleaned_corpus)
    version = version_name(base / WEIGHTS)
    card = model_card(
        version, batches, plan, stages,
        model=dataclasses.asdict(cfg.model) | {"parameters": stages[-1]["parameters"]},
        training=dataclasses.asdict(cfg.training),
        evaluation=result["candidate"], previous=result["previous"], quantization=quantization, gguf=gguf,
    )
    texts = {
        MODEL_CARD: card,
        EVALUATION_JSON: json.dumps(result, indent=2) + "\n",
        LINEAGE_JSON: json.dumps({"batches": batches, "curriculum": plan, "stages": stages}, indent=2) + "\n",
    }
    # The lm-evaluation-harness tasks the evaluation ran (a flat folder), so anyone can rerun them offline.
    folders = {"": base, RELEASE_INT8: int8, RELEASE_GGUF: gguf_dir}
    if (tasks := kiln.layout.eval_tasks).is_dir() and "harness" in result["candidate"]:
        folders[EVAL_TASKS] = tasks
    # The weights published must be the ones the gate judged, even if base_model is rewritten meanwhile.
    path = write_release(
        kiln.layout.releases, version, folders, texts,
        # Likewise the GGUF files: those llama.cpp was checked on.
        expect_sha256={WEIGHTS: result[WEIGHTS_SHA256]} | {f"{RELEASE_GGUF}/{n}": f["sha256"] for n, f in gguf["files"].items()},
    )
    context.log.info(f"released {version} at {path}")
    files = json.loads((path / RELEASE_MANIFEST).read_text())["files"]
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "files": len(files),
            "bytes": sum(f["bytes"] for f in files.values()),
            "model_card": dg.MetadataValue.md(card.split("---\n", 2)[-1]),
            "path": dg.MetadataValue.path(path),
            "archive": dg.MetadataValue.path(path.with_name(archive_name(version))),
        }
    )


@dg.asset_check(asset=release, description="The latest release's files match its manifest, and it loads and generates.")
def release_verifies(kiln: Kiln) -> dg.AssetCheckResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = latest(kiln.layout.releases)
    problems = verify(path)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok("The ", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    return dg.AssetCheckResult(
        passed=not problems and out.shape[1] > ids["input_ids"].shape[1],
        metadata={"version": path.name, "problems": problems, "sample": tok.decode(out[0], skip_special_tokens=True)},
    )

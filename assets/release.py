"""The release: base model, int8 variant, model card and manifest, published atomically under
releases/<version>/ with releases/LATEST pointing at it."""

import dataclasses
import json

import dagster as dg

from assets.evaluation import evaluation, quantized_model
from pipelines.resources import Kiln
from training.data.clean import lineage
from training.model_card import model_card
from training.package import folder_bytes
from training.release import latest, verify, version_name, write_release
from training.stages import read_summary


@dg.asset(
    group_name="release",
    automation_condition=dg.AutomationCondition.eager(),
    deps=[evaluation, quantized_model, "base_model"],
    kinds={"huggingface"},
    description="releases/<version>/: the model in Hugging Face format with its tokenizer, int8/ variant, "
    "model card (lineage, curriculum, training config, evaluation) and a sha256 manifest; LATEST names it.",
)
def release(context: dg.AssetExecutionContext, kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config
    base, int8 = kiln.path("base_model"), kiln.path("quantized_model")
    plan = json.loads((kiln.path("curriculum") / "curriculum.json").read_text())
    stages = [read_summary(kiln.path(f"pretrain_stage_{s['stage']}")) for s in plan["stages"]]
    result = json.loads((kiln.path("evaluation") / "evaluation.json").read_text())
    quantization = json.loads((int8 / "quantization.json").read_text()) | {"int8_bytes": folder_bytes(int8)}
    batches = lineage(kiln.path("cleaned_corpus"))
    version = version_name(base / "model.safetensors")
    card = model_card(
        version, batches, plan, stages,
        model=dataclasses.asdict(cfg.model) | {"parameters": stages[-1]["parameters"]},
        training=dataclasses.asdict(cfg.training),
        evaluation=result["candidate"], previous=result["previous"], quantization=quantization,
    )
    texts = {
        "README.md": card,
        "evaluation.json": json.dumps(result, indent=2) + "\n",
        "lineage.json": json.dumps({"batches": batches, "curriculum": plan, "stages": stages}, indent=2) + "\n",
    }
    path = write_release(kiln.path("releases"), version, {"": base, "int8": int8}, texts)
    context.log.info(f"released {version} at {path}")
    files = json.loads((path / "manifest.json").read_text())["files"]
    return dg.MaterializeResult(
        metadata={
            "version": version,
            "files": len(files),
            "bytes": sum(f["bytes"] for f in files.values()),
            "model_card": dg.MetadataValue.md(card.split("---\n", 2)[-1]),
            "path": dg.MetadataValue.path(path),
            "archive": dg.MetadataValue.path(path.with_name(version + ".tar.gz")),
        }
    )


@dg.asset_check(asset=release, description="The latest release's files match its manifest, and it loads and generates.")
def release_verifies(kiln: Kiln) -> dg.AssetCheckResult:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = latest(kiln.path("releases"))
    problems = verify(path)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path)
    ids = tok("The ", return_tensors="pt", add_special_tokens=False)
    out = model.generate(**ids, max_new_tokens=8, do_sample=False, pad_token_id=tok.pad_token_id)
    return dg.AssetCheckResult(
        passed=not problems and out.shape[1] > ids["input_ids"].shape[1],
        metadata={"version": path.name, "problems": problems, "sample": tok.decode(out[0], skip_special_tokens=True)},
    )

"""The base model as GGUF files for llama.cpp and Ollama, checked against transformers: llama.cpp's
next-token logits on held-out prompts must match within the configured tolerance (a blocking check,
and a rule of the release gate)."""

import json

import dagster as dg

from assets.curriculum import curriculum
from assets.metadata import md_table
from assets.resources import Kiln
from training.layout import BASE_MODEL, GGUF_JSON, HELDOUT
from training.release.evaluate import load_heldout
from training.release.gguf import export_and_check, heldout_prompts
from training.release.publish import gguf_gate


@dg.asset(
    group_name="release",
    automation_condition=dg.AutomationCondition.eager(),
    deps=[BASE_MODEL, curriculum],
    kinds={"gguf"},
    description="The base model as GGUF files (f32, q8_0) with an Ollama Modelfile, and llama.cpp's "
    "next-token logits against transformers' on held-out prompts (gguf.json).",
)
def gguf_model(kiln: Kiln) -> dg.MaterializeResult:
    cfg = kiln.config.gguf
    # Evenly spaced over the held-out split (sorted by modality and id): code, captions and prose alike.
    records = load_heldout(kiln.layout.curriculum / HELDOUT, cfg.prompts)
    prompts = heldout_prompts([r["text"] for r in records], cfg.prompts, cfg.prompt_chars)
    tolerances = {t: cfg.tolerance_of(t) for t in cfg.file_types}
    out = kiln.layout.gguf_model
    record = export_and_check(kiln.layout.base_model, out, prompts, cfg.file_types, tolerances)
    files = record["files"]
    return dg.MaterializeResult(
        metadata={
            "files": md_table(
                ["file", "MB", "sha256", "max abs logit diff", "tolerance", "top-1 agreement", "tokenization", "export s"],
                [[name, round(f["bytes"] / 1e6, 2), f"`{f['sha256'][:16]}`", f"{f['comparison']['max_abs_diff']:.3g}",
                  f["comparison"]["tolerance"], f"{f['comparison']['top1_agreement']:.2%}",
                  f"{f['comparison']['tokenization_agrees']}/{f['comparison']['prompts']}", f["export_seconds"]]
                 for name, f in files.items()],
            ),
            "prompts": len(prompts),
            "weights_sha256": record["weights_sha256"],
            "path": dg.MetadataValue.path(out),
        }
    )


@dg.asset_check(
    asset=gguf_model,
    blocking=True,
    description="llama.cpp's next-token logits from every GGUF file match transformers' on held-out prompts "
    "within the tolerance, and llama.cpp tokenizes them as kiln's tokenizer does.",
)
def gguf_matches_transformers(kiln: Kiln) -> dg.AssetCheckResult:
    record = json.loads((kiln.layout.gguf_model / GGUF_JSON).read_text())
    gate = gguf_gate(record)  # the rule the release asset applies too
    return dg.AssetCheckResult(
        passed=gate.passed,
        description=gate.description,
        metadata={
            f"{name} {key}": f["comparison"][key]
            for name, f in record["files"].items()
            for key in ("max_abs_diff", "tolerance", "top1_agreement", "tokenization_agrees")
        },
    )

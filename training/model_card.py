"""The release's README.md: how to load the model, and where it came from (data lineage, curriculum,
training configuration, evaluation), written from the pipeline's own records."""

from __future__ import annotations

import json
from collections import Counter


def _table(headers: list[str], rows: list[list[object]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    return "\n".join(lines + ["| " + " | ".join("" if c is None else str(c) for c in row) + " |" for row in rows])


def evaluation_tables(evaluation: dict) -> str:
    groups = [("all", evaluation["overall"])]
    groups += [(f"modality: {k}", v) for k, v in evaluation["by_modality"].items()]
    groups += [(f"level {k}", v) for k, v in evaluation["by_level"].items()]
    ppl = _table(
        ["held-out records", "records", "tokens", "perplexity", "byte perplexity", "bits/byte"],
        [[name, g["records"], g["tokens"], g["perplexity"], g["byte_perplexity"], g["bits_per_byte"]] for name, g in groups],
    )
    cont = _table(
        ["continuations", "records", "BLEU", "chrF"],
        [[name, c["records"], c["bleu"], c["chrf"]] for name, c in evaluation["continuation"].items()],
    )
    code = ""
    if evaluation.get("code_files"):
        code = (
            f"\n\nCode files still parsing (Tree-sitter) after the model's continuation: "
            f"{evaluation['code_parseable']:.0%} of {evaluation['code_files']} "
            f"(after the true continuation: {evaluation['code_parseable_reference']:.0%})."
        )
    return f"{ppl}\n\n{cont}{code}"


def decontamination_line(curriculum: dict) -> str:
    """What the curriculum moved out of every stage because it shares text with the held-out split."""
    d = curriculum.get("decontamination")
    if d is None:  # a curriculum built before kiln checked held-out overlap
        return "This curriculum was built without a held-out overlap check."
    modalities = ", ".join(f"{k} {v}" for k, v in d["by_modality"].items())
    return (
        f"{d['removed']} training records overlapping the held-out split were removed ({d['ngram']}-gram"
        f"{': ' + modalities if modalities else ''}): a training record sharing {d['ngram']} consecutive words "
        f"(lowercased; a shorter record: all its words) with a held-out record is in no stage."
    )


def model_card(
    version: str,
    lineage: list[dict],
    curriculum: dict,
    stages: list[dict],
    model: dict,
    training: dict,
    evaluation: dict,
    previous: dict | None,
    quantization: dict,
) -> str:
    reasons: Counter[str] = Counter()
    for row in lineage:
        reasons.update(row["reasons"])
    kept, rejected = sum(r["kept"] for r in lineage), sum(r["rejected"] for r in lineage)
    batches = _table(
        ["batch", "modality", "content sha256", "kept", "rejected"],
        [[r["batch"], r["modality"], f"`{r['content_sha256']}`", r["kept"], r["rejected"]] for r in lineage],
    )
    by_reason = _table(["rejection reason", "records"], [[k, v] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])
    stage_rows = [
        [s["stage"], s["level"], c["records"], s["tokens"], s["steps"], s["global_batch"], s["final_loss"]]
        for s, c in zip(stages, curriculum["stages"])
    ]
    comparison = "This is the first release; there is no previous one to compare with."
    if previous:
        comparison = (
            f"Previous release {previous['version']}, measured now on the same held-out records: byte perplexity "
            f"{previous['evaluation']['overall']['byte_perplexity']} against this release's "
            f"{evaluation['overall']['byte_perplexity']} ({previous['change']:+.2%})."
        )
    return f"""---
library_name: transformers
pipeline_tag: text-generation
tags: [kiln, llama, causal-lm]
---

# kiln release {version}

A Llama-architecture causal language model ({model['parameters'] / 1e6:.2f}M parameters, context
{model['max_seq_len']} tokens) trained by kiln from its landing zone: cleaned, scored for difficulty,
and pretrained with DeepSpeed over a curriculum of {len(stages)} stages.

## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{version}")
model = AutoModelForCausalLM.from_pretrained("{version}")
ids = tokenizer("def main():", return_tensors="pt", add_special_tokens=False)
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0]))
```

`int8/` holds the int8 weight-only variant (torchao; the output head stays in full precision). It loads
the same way from `"{version}/int8"` and needs `torchao` installed. On the held-out records its
perplexity is {quantization['int8_perplexity']} against {quantization['full_perplexity']} for the full
model ({quantization['perplexity_change']:+.2%}), at {quantization['int8_bytes'] / 1e6:.1f} MB on disk against
{quantization['full_bytes'] / 1e6:.1f} MB.

Every file is listed with its sha256 in `manifest.json`; only safetensors and JSON hold weights and
configuration (no pickle).

## Evaluation (held-out records, never trained on)

{evaluation_tables(evaluation)}

{comparison}

## Data lineage

{kept} records kept and {rejected} rejected, by landing batch:

{batches}

{by_reason}

## Curriculum

Schedule of difficulty levels: {'-'.join(str(x) for x in curriculum['schedule'])}; a stage of level k trains on
every training record of level ≤ k, in a seeded order (seed {curriculum['seed']}).
{decontamination_line(curriculum)}

{_table(["stage", "level", "records", "tokens seen", "steps", "global batch", "final loss"], stage_rows)}

## Training configuration

```json
{json.dumps({"model": model, "training": training}, indent=2)}
```
"""

"""The release's README.md: how to load the model, and where it came from (data lineage, curriculum,
training configuration, evaluation), written from the pipeline's own records."""

from __future__ import annotations

import json
from collections import Counter

from training.curriculum.schedule import start_line
from training.markdown import markdown_table


def evaluation_tables(evaluation: dict) -> str:
    groups = [("all", evaluation["overall"])]
    groups += [(f"modality: {k}", v) for k, v in evaluation["by_modality"].items()]
    groups += [(f"level {k}", v) for k, v in evaluation["by_level"].items()]
    ppl = markdown_table(
        ["held-out records", "records", "tokens", "perplexity", "byte perplexity", "bits/byte"],
        [[name, g["records"], g["tokens"], g["perplexity"], g["byte_perplexity"], g["bits_per_byte"]] for name, g in groups],
    )
    cont = markdown_table(
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


HARNESS_METRICS = ("bits_per_byte", "byte_perplexity", "word_perplexity", "acc", "acc_norm")


def harness_table(candidate: dict, previous: dict | None = None, previous_version: str | None = None) -> str:
    """lm-evaluation-harness results ({"results": {task: {metric: value}}}, as training.release.harness.run_tasks
    returns them) as a table: one row per task and metric, the previous release's beside the candidate's."""
    headers = ["task", "metric", "this model"] + ([f"release {previous_version}"] if previous else [])
    rows = []
    for task, metrics in candidate["results"].items():
        for metric in HARNESS_METRICS:
            if metric in metrics:
                row = [f"`{task}`", metric, metrics[metric]]
                if previous:
                    row.append(previous["results"].get(task, {}).get(metric))
                rows.append(row)
    return markdown_table(headers, rows)


def harness_section(version: str, candidate: dict | None, previous: dict | None) -> str:
    """The model card's lm-evaluation-harness section: results and the command that reruns them offline."""
    if not candidate:
        return ""
    old = (previous or {}).get("harness")
    limit = f" (at most {candidate['limit']} records per task)" if candidate.get("limit") else ""
    return f"""

### lm-evaluation-harness

kiln's held-out records as lm-evaluation-harness tasks, shipped in `eval_tasks/` (see its README.md);
lm-eval {candidate['lm_eval_version']}{limit}. `kiln` is the group: its bits per byte, the mean over the
`*_ppl` tasks weighted by records, is gated against the previous release like the byte perplexity above.

{harness_table(candidate, old, previous['version'] if old else None)}

Rerun offline from the folder holding the release:

```sh
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf --model_args pretrained={version} \\
    --include_path {version}/eval_tasks --tasks kiln --device cpu
```"""


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


def gguf_section(version: str, gguf: dict | None) -> str:
    """The model card's GGUF paragraph: the files with their sha256, llama.cpp's agreement with
    transformers on held-out prompts, and how to run them with llama.cpp and Ollama."""
    if not gguf:
        return ""
    rows = [
        [f"`gguf/{name}`", f["file_type"], f"{f['bytes'] / 1e6:.1f} MB", f"`{f['sha256']}`",
         f"{f['comparison']['max_abs_diff']:.2g} (tolerance {f['comparison']['tolerance']:g})",
         f"{f['comparison']['top1_agreement']:.2%}", f"{f['comparison']['tokenization_agrees']}/{f['comparison']['prompts']}"]
        for name, f in sorted(gguf["files"].items())
    ]
    first = next(iter(gguf["files"].values()))["comparison"]
    file = f"{version}/gguf/" + sorted(gguf["files"])[0]
    return f"""

`gguf/` holds the model as GGUF files for llama.cpp and the runtimes built on it. Each was checked
against transformers: the next-token logits at every position of {first['prompts']} held-out prompts
({first['positions']} positions, llama-cpp-python {first['llama_cpp_python']}) differ by at most:

{markdown_table(["file", "weights", "size", "sha256", "max abs logit difference", "top-1 agreement", "same tokenization"], rows)}

```sh
llama-cli -m {file} -p "def main():" -n 32      # llama.cpp
llama-server -m {file} --port 8080              # an OpenAI-compatible server
ollama create kiln -f {version}/gguf/Modelfile && ollama run kiln "def main():"
```

The prompt starts with `<|begin_of_text|>` as kiln's documents do; the model is a base model, not a chat
model, so it continues text (the Modelfile passes the prompt through as it is)."""


def serve_section(version: str, context: int) -> str:
    """The model card's Serve section: `make serve` and a request to it."""
    return f"""## Serve

`make serve`, in the kiln checkout that released this model (while `releases/LATEST` names it), serves
it with an OpenAI-compatible HTTP API on 127.0.0.1, port `$KILN_SERVE_PORT` (default 8000): llama.cpp
through llama-cpp-python's server, on the q8_0 GGUF file (`KILN_SERVE_GGUF=f32` for the exact weights).
`GET /v1/models` lists it as `{version}`; `POST /v1/completions` continues a prompt:

```sh
curl -s http://127.0.0.1:8000/v1/completions -H 'Content-Type: application/json' \\
    -d '{{"prompt": "def main():", "max_tokens": 32, "temperature": 0}}'
```

Requests are answered one at a time; the prompt and `max_tokens` together must fit in the context
({context} tokens). A newer release is served after restarting `make serve`."""


FRONT_MATTER = """---
library_name: transformers
pipeline_tag: text-generation
tags: [kiln, llama, causal-lm]
---"""
"""The Hugging Face Hub's metadata block, which opens the card."""


def intro_section(version: str, model: dict, stages: list[dict]) -> str:
    """The title and what the model is."""
    return f"""# kiln release {version}

A Llama-architecture causal language model ({model['parameters'] / 1e6:.2f}M parameters, context
{model['max_seq_len']} tokens) trained by kiln from its landing zone: cleaned, scored for difficulty,
and pretrained with DeepSpeed over a curriculum of {len(stages)} stages."""


def loading_section(version: str, quantization: dict, gguf: dict | None) -> str:
    """How to load the model with transformers, the int8/ variant against the full model, the GGUF files."""
    return f"""## Loading

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{version}")
model = AutoModelForCausalLM.from_pretrained("{version}")
ids = tokenizer("<|begin_of_text|>def main():", return_tensors="pt")  # a record's start, as in training
print(tokenizer.decode(model.generate(**ids, max_new_tokens=32)[0], skip_special_tokens=True))
```

The tokenizer adds no special tokens of its own: write `<|begin_of_text|>` before a prompt, as above.

`int8/` holds the int8 weight-only variant (torchao; the output head stays in full precision). It loads
the same way from `"{version}/int8"` and needs `torchao` installed. On the held-out records its
perplexity is {quantization['int8_perplexity']} against {quantization['full_perplexity']} for the full
model ({quantization['perplexity_change']:+.2%}), at {quantization['int8_bytes'] / 1e6:.1f} MB on disk against
{quantization['full_bytes'] / 1e6:.1f} MB.{gguf_section(version, gguf)}

Every file is listed with its sha256 in `manifest.json`; only safetensors, GGUF and JSON hold weights
and configuration (no pickle)."""


def comparison_line(evaluation: dict, previous: dict | None) -> str:
    """The candidate's byte perplexity against the previous release's, both measured now."""
    if not previous:
        return "This is the first release; there is no previous one to compare with."
    return (
        f"Previous release {previous['version']}, measured now on the same held-out records: byte perplexity "
        f"{previous['evaluation']['overall']['byte_perplexity']} against this release's "
        f"{evaluation['overall']['byte_perplexity']} ({previous['change']:+.2%})."
    )


def evaluation_section(version: str, evaluation: dict, previous: dict | None) -> str:
    """The held-out measurements, the comparison with the previous release and the harness's results."""
    return f"""## Evaluation (held-out records, never trained on)

{evaluation_tables(evaluation)}

{comparison_line(evaluation, previous)}{harness_section(version, evaluation.get("harness"), previous)}"""


def lineage_section(lineage: list[dict]) -> str:
    """Records kept and rejected per landing batch (training.data.clean.lineage), and why rejected."""
    reasons: Counter[str] = Counter()
    for row in lineage:
        reasons.update(row["reasons"])
    kept, rejected = sum(r["kept"] for r in lineage), sum(r["rejected"] for r in lineage)
    batches = markdown_table(
        ["batch", "modality", "content sha256", "kept", "rejected"],
        [[r["batch"], r["modality"], f"`{r['content_sha256']}`", r["kept"], r["rejected"]] for r in lineage],
    )
    by_reason = markdown_table(["rejection reason", "records"], [[k, v] for k, v in sorted(reasons.items(), key=lambda kv: -kv[1])])
    return f"""## Data lineage

{kept} records kept and {rejected} rejected, by landing batch:

{batches}

{by_reason}"""


def difficulty_line(curriculum: dict) -> str:
    """Which predictor the difficulty levels came from (one for every batch: the curriculum never mixes two)."""
    d = curriculum.get("difficulty")
    if not d:  # a curriculum built before kiln recorded it
        return "The difficulty's predictor was not recorded."
    return f"Difficulty: BERTScore of each record's continuation against the prediction of `{d['predictor']}`, in {len(d['batches'])} batch(es) (per batch scorer in lineage.json)."


def curriculum_section(curriculum: dict, stages: list[dict]) -> str:
    """The schedule, the held-out decontamination and, per stage, what it trained on and how it ended."""
    stage_rows = [
        [s["stage"], s["level"], c["records"], s["tokens"], s["steps"], s["global_batch"], s["final_loss"]]
        for s, c in zip(stages, curriculum["stages"])
    ]
    return f"""## Curriculum

Schedule of difficulty levels: {'-'.join(str(x) for x in curriculum['schedule'])}; a stage of level k trains on
every training record of level ≤ k, in a seeded order (seed {curriculum['seed']}).
Training started {start_line(curriculum.get("start", {}))}.
{difficulty_line(curriculum)}
{decontamination_line(curriculum)}

{markdown_table(["stage", "level", "records", "tokens seen", "steps", "global batch", "final loss"], stage_rows)}"""


def training_section(model: dict, training: dict) -> str:
    """The model and training configuration, as JSON."""
    return f"""## Training configuration

```json
{json.dumps({"model": model, "training": training}, indent=2)}
```"""


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
    gguf: dict | None = None,
) -> str:
    """The release's README.md: `model` is the model configuration with its "parameters", `training` the
    training configuration, `evaluation` and `previous` evaluation.json's "candidate" and "previous"."""
    sections = [
        FRONT_MATTER,
        intro_section(version, model, stages),
        loading_section(version, quantization, gguf),
        serve_section(version, model["max_seq_len"]),
        evaluation_section(version, evaluation, previous),
        lineage_section(lineage),
        curriculum_section(curriculum, stages),
        training_section(model, training),
    ]
    return "\n\n".join(sections) + "\n"

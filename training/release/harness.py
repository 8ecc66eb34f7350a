"""kiln's held-out split as lm-evaluation-harness tasks, and running them through the harness.

`write_tasks` turns curriculum/heldout.parquet into a self-contained task folder (YAMLs, JSONL data and a
small loader module beside them), which the release ships as `eval_tasks/` so that anyone can rerun::

    HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
        --model_args pretrained=<release> --include_path <release>/eval_tasks --tasks kiln

Tasks:
- `kiln_<modality>_ppl` (one per modality present): rolling log-likelihood of each record; word perplexity,
  byte perplexity and bits per byte.
- `kiln_cloze`: the beginning of a held-out record (as the difficulty split cuts it) followed by its true
  continuation or by a continuation of another held-out record of the same modality; acc and acc_norm
  (log-likelihood per byte of the choice).
- `kiln`: the group of all of them; its bits_per_byte is the record-weighted mean over the ppl tasks.

How records are scored (the special tokens): kiln trains on records as `<|begin_of_text|> text
<|end_of_text|>`. The harness, by default, lets the tokenizer add its special tokens; the rolling scorer
puts its own `<|begin_of_text|>` in front as context, and would also score a tokenizer's `<|begin_of_text|>`
after it, a pair kiln never trains on. So the tasks spell the tokens out themselves, and kiln's tokenizer
adds none (tokenizer VERSION 2; for a model whose tokenizer does, `add_bos_token=False`, which the loader
asks for): a ppl record is `text<|end_of_text|>` scored after the harness's `<|begin_of_text|>`, the very
tokens kiln's own perplexity predicts, and bytes and words are counted on the text alone. A cloze context is
`<|begin_of_text|>beginning`, the choice is scored after it. For a record within the model's context the
harness's bits per byte equals `training.release.evaluate`'s; longer records differ a little, since the harness
rolls its windows with one token of overlap where kiln's own evaluation starts each window afresh.
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from unittest import mock

from training.curriculum.difficulty import split_record
from training.release.evaluate import cut_to_words, load_heldout
from training.fsutil import atomic_path
from training.curriculum.tokenizer import BOS, EOS

GROUP = "kiln"
CLOZE = "kiln_cloze"
MODULE = "kiln_tasks"
GATE_METRIC = "bits_per_byte"
"""The group metric the regression gate compares (training.release.publish.regression_gate)."""
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
DISTRIBUTED = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
"""Unset while the harness runs: the evaluation is one process, but accelerate (under lm-eval's `hf`
model) starts a process group whenever these say otherwise, e.g. when kiln itself was started from a
torchrun or MPI environment, and then waits on, or collides with, a rendezvous that is not its own."""
MODEL_ARGS = "add_bos_token=False"

# The loader the YAMLs name with `!function`: lm-eval imports it from the YAMLs' folder, so the data is
# found beside it wherever the folder is copied, and the harness's model arguments reach it as keyword
# arguments (lm-eval merges them into the task metadata), which lets it refuse a scoring it would get wrong:
# a model whose tokenizer adds special tokens of its own (kiln's before tokenizer VERSION 2, most others)
# run without add_bos_token=False.
_LOADER = f'''"""Data loader and per-record scoring of kiln's lm-evaluation-harness tasks: the JSONL files beside
this file, wherever the folder lies."""

import json
import re
from pathlib import Path

import datasets

HERE = Path(__file__).resolve().parent


def load(data_file, add_bos_token=None, pretrained=None, **_):
    if add_bos_token is not False and isinstance(pretrained, str) and _adds_special_tokens(pretrained):
        raise ValueError(
            "kiln tasks write the special tokens {BOS} and {EOS} themselves, and the tokenizer of " + pretrained
            + " adds its own: run them with --model_args pretrained=<model>,{MODEL_ARGS}"
        )
    lines = (HERE / data_file).read_text(encoding="utf-8").splitlines()
    return datasets.DatasetDict({{"test": datasets.Dataset.from_list([json.loads(x) for x in lines if x.strip()])}})


def _adds_special_tokens(pretrained):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(pretrained)
    return tokenizer("kiln")["input_ids"] != tokenizer("kiln", add_special_tokens=False)["input_ids"]


def rolling_results(doc, results):
    """Perplexities of the text alone: its bytes and words, not those of the {EOS} scored with it."""
    (loglikelihood,) = results
    text = doc["text"]
    words, nbytes = len(re.split(r"\\s+", text)), len(text.encode("utf-8"))
    return {{
        "word_perplexity": (loglikelihood, words),
        "byte_perplexity": (loglikelihood, nbytes),
        "bits_per_byte": (loglikelihood, nbytes),
    }}
'''

_README = """# kiln evaluation tasks (lm-evaluation-harness)

Built by kiln from its held-out split (records no training stage saw). Run offline from any directory:

```sh
HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 lm_eval --model hf \\
    --model_args pretrained=<model folder> --include_path <this folder> --tasks {group} --device cpu
```

The tasks write kiln's special tokens ({bos}, {eos}) themselves, so each record is scored as kiln
trained on it. kiln's tokenizer adds none of its own; for a model whose tokenizer does, add
`,{model_args}` to `--model_args` (the tasks refuse to run without it).

| task | what | records |
|---|---|---|
{rows}

Needs `lm-eval[hf]>=0.4.13,<0.5`. Data: the `.jsonl` files here; `{module}.py` loads them.
"""


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def _task(folder: Path, task: str, rows: list[dict], fields: dict) -> None:
    """A task's data (`<task>.jsonl`) and its YAML, which loads that file through the folder's loader."""
    _jsonl(folder / f"{task}.jsonl", rows)
    _yaml(folder / f"{task}.yaml", {
        "task": task,
        "dataset_path": "json",
        "custom_dataset": f"!function {MODULE}.load",
        "dataset_kwargs": {"data_file": f"{task}.jsonl"},
        "test_split": "test",
        **fields,
    })


def _yaml(path: Path, fields: dict) -> None:
    # JSON is YAML; the one non-JSON value is the `!function` tag, written as a plain scalar.
    lines = []
    for key, value in fields.items():
        tagged = isinstance(value, str) and value.startswith("!function ")
        lines.append(f"{key}: {value if tagged else json.dumps(value, ensure_ascii=False)}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def cloze_items(records: Sequence[dict], span_words: int, choices: int, words: int, seed: int) -> list[dict]:
    """One item per usable record: its beginning (as the difficulty split cuts it), and its true
    continuation, cut to its first `words` words so that a choice fits a small model's context, among
    `choices - 1` continuations (cut alike) of other records of the same modality (distinct strings), in
    a seeded order. Records whose beginning or continuation is blank are skipped, and so is a modality
    with too few distinct continuations to fill the choices."""
    by_modality: dict[str, list[tuple[dict, str, str]]] = defaultdict(list)
    for r in records:
        beginning, continuation = split_record(r["text"], span_words)
        continuation = cut_to_words(continuation, words)
        if beginning.strip() and continuation.strip():
            by_modality[r["modality"]].append((r, beginning, continuation))
    items = []
    for modality, usable in sorted(by_modality.items()):
        pool = sorted({c for _, _, c in usable})
        if len(pool) < choices:
            continue
        for r, beginning, truth in usable:
            rng = random.Random(f"{seed}:{r['id']}")
            others = rng.sample([c for c in pool if c != truth], choices - 1)
            answer = rng.randrange(choices)
            items.append({
                "id": r["id"], "modality": modality, "beginning": beginning,
                "choices": others[:answer] + [truth] + others[answer:], "answer": answer,
            })
    return items


def write_tasks(
    heldout: Path,
    out_dir: Path,
    max_records: int | None = None,
    span_words: int = 48,
    cloze_choices: int = 4,
    cloze_words: int = 16,
    seed: int = 0,
) -> dict[str, int]:
    """Write the task folder `out_dir` (atomically, replacing an older one) from the held-out Parquet;
    returns the records per task. Flat: YAMLs, JSONL, the loader module and a README, no subfolders."""
    records = load_heldout(heldout, max_records)
    if not records:
        raise ValueError(f"{heldout} holds no held-out records to build evaluation tasks from")
    if cloze_choices < 2:
        raise ValueError(f"cloze_choices must be at least 2, got {cloze_choices}")
    counts: dict[str, int] = {}
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        (tmp / f"{MODULE}.py").write_text(_LOADER, encoding="utf-8")
        by_modality: dict[str, list[dict]] = defaultdict(list)
        for r in records:
            by_modality[r["modality"]].append({"id": r["id"], "level": r["level"], "text": r["text"]})
        for modality, rows in sorted(by_modality.items()):
            if not re.fullmatch(r"[a-z0-9_]+", modality):
                raise ValueError(f"modality {modality!r} cannot name a task")
            task = f"kiln_{modality}_ppl"
            _task(tmp, task, rows, {
                "output_type": "loglikelihood_rolling",
                "doc_to_text": "",
                "doc_to_target": "{{text}}" + EOS,
                "process_results": f"!function {MODULE}.rolling_results",
                "metric_list": [{"metric": m} for m in ("word_perplexity", "byte_perplexity", "bits_per_byte")],
                "metadata": {"version": 1},
            })
            counts[task] = len(rows)
        items = cloze_items(records, span_words, cloze_choices, cloze_words, seed)
        if items:
            _task(tmp, CLOZE, items, {
                "output_type": "multiple_choice",
                "doc_to_text": BOS + "{{beginning}}",
                "doc_to_choice": "choices",
                "doc_to_target": "answer",
                "target_delimiter": "",  # the continuation carries its own leading whitespace
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True},
                                {"metric": "acc_norm", "aggregation": "mean", "higher_is_better": True}],
                "metadata": {"version": 1},
            })
            counts[CLOZE] = len(items)
        _yaml(tmp / f"{GROUP}.yaml", {
            "group": GROUP,
            "task": list(counts),
            "aggregate_metric_list": [{"metric": GATE_METRIC, "aggregation": "mean", "weight_by_size": True}],
            "metadata": {"version": 1},
        })
        rows = "\n".join(
            f"| `{t}` | {'beginning -> true continuation among ' + str(cloze_choices) + ' (acc, acc_norm)' if t == CLOZE else 'rolling log-likelihood (word/byte perplexity, bits per byte)'} | {n} |"
            for t, n in counts.items()
        )
        (tmp / "README.md").write_text(
            _README.format(model_args=MODEL_ARGS, group=GROUP, bos=BOS, eos=EOS, rows=rows, module=MODULE), encoding="utf-8"
        )
    return counts


def task_names(task_dir: Path) -> list[str]:
    """The task and group names the YAMLs of `task_dir` declare (a quick scan, no YAML parser needed)."""
    names = []
    for path in sorted(task_dir.glob("*.yaml")):
        for line in path.read_text(encoding="utf-8").splitlines():
            if m := re.match(r"(task|group):\s*\"?([A-Za-z0-9_.-]+)\"?\s*$", line):
                names.append(m.group(2))
    return names


def _compact(results: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, metrics in sorted(results.items()):
        row = {}
        for key, value in metrics.items():
            metric, _, filtered = key.partition(",")  # "acc,none"; a user's task may filter: "exact_match,strict"
            name = metric if filtered in ("", "none") else key
            if metric == "alias" or metric.endswith("_stderr") or not isinstance(value, (int, float)):
                continue
            row[name] = round(float(value), 6) if math.isfinite(value) else float(value)
        out[task] = row
    return out


def run_tasks(
    model_path: Path, task_dirs: Sequence[Path], tasks: Sequence[str], device: str, batch_size: int, limit: int | None = None,
) -> dict:
    """Run `tasks` (task or group names found in `task_dirs`) on the Hugging Face model folder
    `model_path` through lm-eval's Python API, offline, with `add_bos_token=False` (see the module
    docstring). Returns {"lm_eval_version", "model_args", "limit", "results": {task: {metric: value}},
    "samples": {task: records scored}, "seconds"}."""
    for d in task_dirs:
        if not Path(d).is_dir():
            raise FileNotFoundError(f"lm-evaluation-harness task folder {d} does not exist")
    start = time.perf_counter()
    # lm-eval imports the tasks' loader module; no __pycache__ is left in the task folder it ships from.
    bytecode, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        with mock.patch.dict(os.environ, OFFLINE):  # the whole environment is restored on the way out
            for k in DISTRIBUTED:
                os.environ.pop(k, None)
            import lm_eval
            from lm_eval.tasks import TaskManager

            model_args = f"pretrained={model_path},{MODEL_ARGS}"
            manager = TaskManager(
                include_path=[str(d) for d in task_dirs], include_defaults=False,
                metadata={"pretrained": str(model_path), "add_bos_token": False},
            )
            out = lm_eval.simple_evaluate(
                model="hf", model_args=model_args, tasks=list(tasks), task_manager=manager, device=device,
                batch_size=batch_size, limit=limit, log_samples=False, bootstrap_iters=0, random_seed=0,
                numpy_random_seed=0, torch_random_seed=0, fewshot_random_seed=0,
            )
    finally:
        sys.dont_write_bytecode = bytecode
    from importlib.metadata import version

    return {
        "lm_eval_version": version("lm-eval"),
        "model_args": model_args,
        "limit": limit,
        "seconds": round(time.perf_counter() - start, 1),
        "results": _compact(out["results"]) | _compact(out.get("groups", {})),
        "samples": {t: n.get("effective", n.get("original")) if isinstance(n, dict) else n for t, n in sorted(out.get("n-samples", {}).items())},
    }

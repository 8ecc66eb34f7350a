"""kiln's held-out split as lm-evaluation-harness tasks: the folder written, the harness run on a small
Llama with a kiln tokenizer (scored as kiln scores), and the folder run by the CLI from elsewhere, offline."""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.config import EvaluationConfig, ModelConfig, TokenizerConfig
from training.curriculum.difficulty import split_record
from training.release.evaluate import record_nll
from training.release.harness import CLOZE, GROUP, MODULE, cloze_items, run_tasks, task_names, write_tasks
from training.pretrain.model import build_model, llama_config
from training.release.package import assemble_model
from training.curriculum.tokenizer import EOS, train_tokenizer

MODEL = ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=64)


def _texts() -> list[str]:
    from pydoc_data.topics import topics

    return [t for t in topics.values() if len(t) > 200]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    """A small random Llama with a kiln tokenizer, in Hugging Face format."""
    root = tmp_path_factory.mktemp("harness_model")
    tok = train_tokenizer(_texts(), TokenizerConfig(vocab_size=512), root / "tokenizer")
    torch.manual_seed(0)
    build_model(llama_config(MODEL, tok)).save_pretrained(root / "weights")
    assemble_model(root / "weights", root / "tokenizer", root / "base")
    return root / "base"


@pytest.fixture(scope="module")
def adding_model(model, tmp_path_factory) -> Path:
    """The same model with a tokenizer that adds <|begin_of_text|> and <|end_of_text|> itself, as
    kiln's did before tokenizer VERSION 2 and many tokenizers do."""
    from tokenizers import Tokenizer, processors

    root = tmp_path_factory.mktemp("adding_model") / "base"
    shutil.copytree(model, root)
    tok = Tokenizer.from_file(str(root / "tokenizer.json"))
    ids = [(t, tok.token_to_id(t)) for t in ("<|begin_of_text|>", EOS)]
    tok.post_processor = processors.TemplateProcessing(single=f"{ids[0][0]} $A {EOS}", special_tokens=ids)
    tok.save(str(root / "tokenizer.json"))
    return root


def _heldout(path: Path, records: list[dict]) -> Path:
    pq.write_table(pa.Table.from_pylist(records, schema=pa.schema(
        [("id", pa.string()), ("modality", pa.string()), ("level", pa.int64()), ("text", pa.string())])), path)
    return path


def _records(chars: int) -> list[dict]:
    texts = _texts()
    return [{"id": f"doc-{i:02d}", "modality": "text" if i < 8 else "code", "level": 1 + i % 5, "text": texts[i][:chars]}
            for i in range(14)]


@pytest.fixture(scope="module")
def short_tasks(tmp_path_factory) -> tuple[Path, list[dict]]:
    """Records short enough for the model's context (each within one window, for kiln and the harness)."""
    root = tmp_path_factory.mktemp("short_tasks")
    records = _records(100)
    write_tasks(_heldout(root / "heldout.parquet", records), root / "tasks", span_words=6, cloze_choices=3, cloze_words=4)
    return root / "tasks", records


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_the_folder_holds_one_ppl_task_per_modality_a_cloze_and_the_group(tmp_path):
    records = _records(400)
    counts = write_tasks(_heldout(tmp_path / "h.parquet", records), tmp_path / "tasks", span_words=10, cloze_choices=4, cloze_words=5)
    tasks = tmp_path / "tasks"
    assert counts == {"kiln_code_ppl": 6, "kiln_text_ppl": 8, CLOZE: 14}
    assert sorted(p.name for p in tasks.iterdir()) == sorted(
        ["README.md", f"{MODULE}.py", "kiln.yaml", "kiln_code_ppl.yaml", "kiln_code_ppl.jsonl", "kiln_text_ppl.yaml",
         "kiln_text_ppl.jsonl", "kiln_cloze.yaml", "kiln_cloze.jsonl"]
    )  # flat: the release copies the folder's files
    assert task_names(tasks) == ["kiln", CLOZE, "kiln_code_ppl", "kiln_text_ppl"]
    assert [r["text"] for r in _jsonl(tasks / "kiln_code_ppl.jsonl")] == [r["text"] for r in records[8:]]
    ppl = (tasks / "kiln_text_ppl.yaml").read_text()
    assert "output_type: \"loglikelihood_rolling\"" in ppl and f"custom_dataset: !function {MODULE}.load" in ppl
    assert json.dumps("{{text}}" + EOS) in ppl and "/" not in ppl.split("dataset_kwargs:")[1].splitlines()[0]  # no path
    assert "--model_args pretrained=<model folder> --include_path" in (tasks / "README.md").read_text()
    by_id = {r["id"]: r["text"] for r in records}
    for item in _jsonl(tasks / "kiln_cloze.jsonl"):
        beginning, continuation = split_record(by_id[item["id"]], 10)
        truth = item["choices"][item["answer"]]
        assert item["beginning"] == beginning and continuation.startswith(truth) and truth.strip()
        assert item["choices"].count(truth) == 1 and len(set(item["choices"])) == 4
    before = {p.name: p.read_bytes() for p in tasks.iterdir()}
    write_tasks(tmp_path / "h.parquet", tasks, span_words=10, cloze_choices=4, cloze_words=5)  # replaces it whole
    assert {p.name: p.read_bytes() for p in tasks.iterdir()} == before  # deterministic
    assert not list(tmp_path.glob(".tasks.tmp-*"))


@pytest.mark.parametrize(
    ("texts", "choices", "expected"),
    [
        (["one two three four", "five six seven eight", "nine ten eleven twelve"], 3, 3),
        (["one two three four", "five six seven eight", "nine ten eleven twelve"], 4, 0),  # too few distractors
        (["one two three four", "five six seven eight", "single", "nine ten eleven twelve"], 3, 3),  # too short
        (["one two three four", "five six three four", "nine ten eleven twelve"], 3, 0),  # two alike: 2 distinct
    ],
    ids=["enough", "too-few-records", "short-record-skipped", "duplicate-continuations"],
)
def test_cloze_items_skip_what_cannot_make_an_honest_item(texts, choices, expected):
    records = [{"id": f"r{i}", "modality": "text", "text": t} for i, t in enumerate(texts)]
    items = cloze_items(records, span_words=2, choices=choices, words=5, seed=0)
    assert len(items) == expected
    assert all(len(i["choices"]) == choices and i["choices"].count(i["choices"][i["answer"]]) == 1 for i in items)
    assert items == cloze_items(records, span_words=2, choices=choices, words=5, seed=0)


def test_bad_input_is_a_clear_error(tmp_path, model):
    with pytest.raises(ValueError, match="no held-out records"):
        write_tasks(_heldout(tmp_path / "empty.parquet", []), tmp_path / "tasks")
    assert not (tmp_path / "tasks").exists()
    with pytest.raises(FileNotFoundError, match="task folder .*nowhere does not exist"):
        run_tasks(model, [tmp_path / "nowhere"], [GROUP], "cpu", 4)
    with pytest.raises(ValueError, match="no such task folder: /nonexistent/tasks"):
        EvaluationConfig(harness_include=("/nonexistent/tasks",))
    with pytest.raises(ValueError, match="harness is off"):
        EvaluationConfig(harness=False, harness_tasks=("mine",))


def test_the_loader_refuses_only_a_run_that_would_score_special_tokens_twice(short_tasks, model, adding_model):
    tasks, _ = short_tasks
    spec = importlib.util.spec_from_file_location("kiln_tasks_under_test", tasks / f"{MODULE}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert AutoTokenizer.from_pretrained(model)("kiln")["input_ids"] == AutoTokenizer.from_pretrained(model)("kiln", add_special_tokens=False)["input_ids"]
    with pytest.raises(ValueError, match=f"tokenizer of {adding_model} adds its own: .*add_bos_token=False"):
        module.load("kiln_text_ppl.jsonl", pretrained=str(adding_model))
    for kwargs in ({"pretrained": str(model)}, {"pretrained": str(model), "add_bos_token": True},
                   {"pretrained": str(adding_model), "add_bos_token": False}):
        assert len(module.load("kiln_text_ppl.jsonl", **kwargs)["test"]) == 8


def test_a_run_that_would_score_special_tokens_twice_stops(short_tasks, adding_model, monkeypatch):
    import lm_eval
    from lm_eval.tasks import TaskManager

    tasks, _ = short_tasks
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # As the CLI does: the model arguments become the tasks' metadata, which the loader reads.
    with pytest.raises(ValueError, match="add_bos_token=False"):
        lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={adding_model}", tasks=["kiln_text_ppl"], device="cpu",
                                task_manager=TaskManager(include_path=str(tasks), include_defaults=False,
                                                         metadata={"pretrained": str(adding_model)}))


@pytest.mark.slow
def test_the_harness_scores_records_as_kiln_does(short_tasks, model):
    tasks, records = short_tasks
    got = run_tasks(model, [tasks], [GROUP], "cpu", batch_size=4)
    assert got["lm_eval_version"].startswith("0.4.") and "add_bos_token=False" in got["model_args"]
    assert got["samples"] == {CLOZE: 14, "kiln_code_ppl": 6, "kiln_text_ppl": 8}
    assert not list(tasks.rglob("__pycache__"))
    tok, lm = AutoTokenizer.from_pretrained(model), AutoModelForCausalLM.from_pretrained(model)
    assert max(len(ids) for ids in tok([r["text"] for r in records])["input_ids"]) <= MODEL.max_seq_len
    for modality in ("text", "code"):
        texts = [r["text"] for r in records if r["modality"] == modality]
        nll, _, _ = record_nll(lm, tok, texts, 4)
        own = sum(nll) / sum(len(t.encode()) for t in texts) / math.log(2)  # kiln's bits per byte
        harness = got["results"][f"kiln_{modality}_ppl"]
        assert harness["bits_per_byte"] == pytest.approx(own, rel=1e-4)
    ppl = [got["results"][f"kiln_{m}_ppl"]["bits_per_byte"] for m in ("code", "text")]
    assert got["results"][GROUP]["bits_per_byte"] == pytest.approx((6 * ppl[0] + 8 * ppl[1]) / 14, rel=1e-5)
    assert 0 <= got["results"][CLOZE]["acc"] <= 1 and 0 <= got["results"][CLOZE]["acc_norm"] <= 1


def test_a_users_own_task_folder_runs_beside_kilns(short_tasks, model, tmp_path):
    tasks, _ = short_tasks
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in (f"{MODULE}.py", "kiln_text_ppl.jsonl"):
        shutil.copy(tasks / name, mine / name)
    (mine / "my_ppl.yaml").write_text((tasks / "kiln_text_ppl.yaml").read_text().replace('task: "kiln_text_ppl"', 'task: "my_ppl"'))
    got = run_tasks(model, [tasks, mine], ["kiln_text_ppl", "my_ppl"], "cpu", batch_size=4, limit=3)
    assert got["samples"] == {"kiln_text_ppl": 3, "my_ppl": 3} and got["limit"] == 3
    assert got["results"]["my_ppl"]["bits_per_byte"] == pytest.approx(got["results"]["kiln_text_ppl"]["bits_per_byte"])



def test_a_torchrun_environment_around_kiln_does_not_reach_the_harness(short_tasks, model, monkeypatch):
    """kiln started where a process group is described (torchrun's variables, its port taken): the
    harness still runs as one process, and the environment is as it was afterwards."""
    import socket

    tasks, _ = short_tasks
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        env = {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
               "MASTER_PORT": str(taken.getsockname()[1])}
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        got = run_tasks(model, [tasks], ["kiln_text_ppl"], "cpu", batch_size=4, limit=2)
    assert got["samples"] == {"kiln_text_ppl": 2} and math.isfinite(got["results"]["kiln_text_ppl"]["bits_per_byte"])
    assert {k: os.environ.get(k) for k in env} == env

@pytest.mark.slow
def test_the_copied_folder_runs_with_the_cli_from_another_directory_offline(short_tasks, model, tmp_path):
    """The plain command (no add_bos_token) scores exactly what kiln's own run (add_bos_token=False) does."""
    tasks, _ = short_tasks
    shipped = tmp_path / "release" / "eval_tasks"
    shutil.copytree(tasks, shipped)
    (tmp_path / "elsewhere").mkdir()
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [str(Path(sys.executable).with_name("lm_eval")), "--model", "hf", "--model_args",
           f"pretrained={model}", "--include_path", str(shipped), "--tasks", "kiln_text_ppl",
           "--device", "cpu", "--batch_size", "4", "--output_path", str(tmp_path / "out")]
    run = subprocess.run(cmd, cwd=tmp_path / "elsewhere", env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    [out] = (tmp_path / "out").rglob("results_*.json")
    cli = json.loads(out.read_text())["results"]["kiln_text_ppl"]["bits_per_byte,none"]
    api = run_tasks(model, [tasks], ["kiln_text_ppl"], "cpu", batch_size=4)["results"]["kiln_text_ppl"]["bits_per_byte"]
    assert cli == pytest.approx(api, rel=1e-5)
    assert sorted(p.name for p in shipped.iterdir()) == sorted(p.name for p in tasks.iterdir())  # nothing written there

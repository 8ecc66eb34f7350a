"""`make demo` from the repository root into a fresh KILN_DATA_DIR: the command the README promises."""

import json
import os
import subprocess
from pathlib import Path

import dagster as dg
import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.release.publish import verify

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_make_demo_materializes_every_asset(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KILN_", "DAGSTER_", "MAKE"))}
    env["KILN_DATA_DIR"] = str(tmp_path / "data")
    proc = subprocess.run(["make", "demo"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=1800)  # about 10 minutes on 2 idle cores
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = tmp_path / "data"
    assert (data / "landing" / "batch-0001" / "_SUCCESS").is_file()
    for batch in ("batch-0001", "batch-0002"):
        for modality in ("text", "code", "image_text"):
            assert (data / "cleaned_corpus" / batch / f"{modality}.parquet").is_file()
            assert (data / "rejected" / batch / f"{modality}.parquet").is_file()
    assert not (data / "cleaned_corpus" / "batch-0003").exists()  # no _SUCCESS yet
    assert (data / "difficulty_scores" / "scores.parquet").is_file()
    assert (data / "tokenizer" / "tokenizer.json").is_file()
    assert (data / "curriculum" / "stage_09.parquet").is_file()
    losses = []
    for stage in range(1, 10):
        summary = json.loads((data / f"pretrain_stage_{stage}" / "stage.json").read_text())
        assert summary["ranks"] == 2 and summary["resumed_from_step"] == 0
        losses.append(summary["final_loss"])
    assert losses[-1] < losses[0] - 1.0  # nine stages learned something
    tok = AutoTokenizer.from_pretrained(data / "base_model")
    model = AutoModelForCausalLM.from_pretrained(data / "base_model")
    ids = tok("def main():", return_tensors="pt")
    assert model.generate(**ids, max_new_tokens=4, do_sample=False).shape[1] > ids["input_ids"].shape[1]

    version = (data / "releases" / "LATEST").read_text().strip()
    assert verify(data / "releases" / version) == []
    assert (data / "releases" / f"{version}.tar.gz").is_file()
    # The lm-evaluation-harness tasks the evaluation ran ship with the release, and their results with it.
    shipped = data / "releases" / version / "eval_tasks"
    assert {"kiln.yaml", "kiln_text_ppl.yaml", "kiln_code_ppl.yaml", "kiln_image_text_ppl.yaml", "kiln_cloze.yaml",
            "kiln_tasks.py", "README.md"} <= {p.name for p in shipped.iterdir()}
    harness = json.loads((data / "releases" / version / "evaluation.json").read_text())["candidate"]["harness"]
    assert 0 < harness["results"]["kiln"]["bits_per_byte"] < 8 and 0 <= harness["results"]["kiln_cloze"]["acc"] <= 1
    assert f"--include_path {version}/eval_tasks" in (data / "releases" / version / "README.md").read_text()
    # Anyone reruns a task with the harness's own command, offline, and gets what the evaluation got.
    release = data / "releases" / version
    cli_env = env | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cli = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "lm_eval"), "--model", "hf", "--model_args", f"pretrained={release}",
         "--include_path", str(release / "eval_tasks"), "--tasks", "kiln_text_ppl", "--device", "cpu",
         "--output_path", str(tmp_path / "lm_eval")],
        cwd=tmp_path, env=cli_env, capture_output=True, text=True, timeout=900,
    )
    assert cli.returncode == 0, cli.stderr[-3000:]
    [results] = (tmp_path / "lm_eval").rglob("results_*.json")
    rerun = json.loads(results.read_text())["results"]["kiln_text_ppl"]["bits_per_byte,none"]
    assert rerun == pytest.approx(harness["results"]["kiln_text_ppl"]["bits_per_byte"], rel=1e-4)
    assert verify(release) == []  # the loader's __pycache__ left in eval_tasks/ is not a change to the release
    # The GGUF files llama.cpp was checked on ship in gguf/, with the Ollama Modelfile and the check's numbers.
    gguf = json.loads((data / "releases" / version / "gguf" / "gguf.json").read_text())
    assert {"kiln-f32.gguf", "kiln-q8_0.gguf", "Modelfile"} <= {p.name for p in (data / "releases" / version / "gguf").iterdir()}
    assert all(f["comparison"]["passed"] for f in gguf["files"].values())

    instance = dg.DagsterInstance.from_config(str(data / "dagster_home"))
    try:
        # Every ready batch is a materialized partition; batch-0003 (no _SUCCESS) is not one.
        assert instance.get_dynamic_partitions("landing_batches") == ["batch-0001", "batch-0002"]
        assert instance.get_materialized_partitions(dg.AssetKey("cleaned_batch")) == {"batch-0001", "batch-0002"}
        keys = ["clip_model", "cleaned_corpus", "difficulty_scores", "tokenizer", "curriculum", "base_model",
                "evaluation", "quantized_model", "gguf_model", "release"]
        for key in keys + [f"pretrain_stage_{i}" for i in range(1, 10)]:
            assert instance.get_latest_materialization_event(dg.AssetKey(key)) is not None, key
        runs = instance.get_runs()
        assert len(runs) == 4 and all(run.is_success for run in runs)  # the CLIP, two batches, the retraining
    finally:
        instance.dispose()

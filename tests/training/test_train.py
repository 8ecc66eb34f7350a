"""The trainer as the pipeline runs it: torchrun, 2 CPU ranks over gloo, DeepSpeed's CPU accelerator.

The training tests launch real multi-rank runs of a small Llama on prose from the standard library's
pydoc topics, in their own data directory laid out as the pipeline lays it out; the spec tests read
and write spec.json only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from training.config import ModelConfig, TokenizerConfig, TrainingConfig
from training.generate import encode_records
from training.presets import PRESETS
from training.pretrain.deepspeed_config import StagePlan
from training.pretrain.launch import check_launch, launch_command, launch_env
from training.pretrain.model import build_model, count_parameters, llama_config
from training.pretrain.plan import StageSpec, completed, pack_stage, read_summary, stage_specs
from training.curriculum.tokenizer import train_tokenizer
from training.curriculum.tokens import encode_corpus

pytestmark = pytest.mark.slow

MODEL = ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=64)
TRAINING = TrainingConfig(learning_rate=4e-3, global_batch=(8,), micro_batch=2, max_steps_per_stage=6, checkpoint_every=2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    """A tokenizer and a two-stage curriculum (pydoc topics), the files a stage reads."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("corpus")
    texts = [t for t in topics.values() if len(t) > 200][:180]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=512), root / "tokenizer")
    (root / "cleaned_corpus" / "b1").mkdir(parents=True)
    pq.write_table(pa.table({"id": [f"t{i}" for i in range(len(texts))], "modality": ["text"] * len(texts), "text": texts}),
                   root / "cleaned_corpus" / "b1" / "text.parquet")
    encode_corpus(root / "cleaned_corpus", root / "tokenizer", root / "tokenized_corpus")
    index = pq.read_table(root / "tokenized_corpus" / "b1" / "index.parquet")
    (root / "curriculum").mkdir()
    stages = []
    for stage, rows in ((1, range(60)), (2, range(60, len(texts)))):
        selection = index.take(list(rows)).select(["id", "modality", "offset", "tokens"])
        selection = selection.append_column("batch", pa.array(["b1"] * selection.num_rows))
        pq.write_table(selection, root / "curriculum" / f"stage_{stage:02d}.parquet")
        tokens = sum(len(ids) for ids in encode_records(tok, [texts[i] for i in rows]))
        stages.append({"stage": stage, "level": stage, "tokens": tokens})
    return root, {"stages": stages}


def _specs(corpus, data: Path, model=MODEL, training=TRAINING, ranks=2) -> list[StageSpec]:
    root, plan = corpus
    for name in ("tokenizer", "tokenized_corpus", "curriculum"):
        if not (data / name).exists():
            data.mkdir(parents=True, exist_ok=True)
            (data / name).symlink_to(root / name)
    specs = stage_specs(data, plan, model, training, ranks=ranks)
    for spec in specs:
        Path(spec.checkpoints).mkdir(parents=True, exist_ok=True)
        (Path(spec.checkpoints) / "spec.json").write_text(spec.to_json())
    return specs


def _launch(spec: StageSpec, gpu: bool = False, **popen) -> subprocess.Popen:
    """CPU ranks unless `gpu`: the multi-rank tests run on gloo also on a GPU machine."""
    gpus = torch.cuda.device_count() if gpu else 0
    env = {**os.environ, **launch_env(spec.ranks, gpus=gpus), **({} if gpu else {"CUDA_VISIBLE_DEVICES": ""})}
    return subprocess.Popen(
        launch_command(Path(spec.checkpoints) / "spec.json", _on_one_node(spec.training, spec.ranks, gpus), gpus), env=env,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen,
    )


def _on_one_node(training: TrainingConfig, ranks: int, gpus: int) -> TrainingConfig:
    return replace(training, gpus_per_node=ranks) if gpus else replace(training, cpu_ranks=ranks)


def _losses(spec: StageSpec) -> list[float]:
    return [json.loads(line)["loss"] for line in (Path(spec.out) / "metrics.jsonl").read_text().splitlines()]


def _train(spec: StageSpec, gpu: bool = False) -> dict:
    proc = _launch(spec, gpu)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-4000:]
    return read_summary(spec.out)


def _processes_running(spec: StageSpec) -> list[int]:
    """Pids whose command line names the spec (ranks run in their own sessions under torchrun)."""
    needle = str(Path(spec.checkpoints) / "spec.json").encode()
    pids = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if needle in cmdline.read_bytes():
                pids.append(int(cmdline.parent.name))
        except OSError:
            pass
    return pids


def _weights(spec: StageSpec) -> dict[str, torch.Tensor]:
    return load_file(Path(spec.out) / "model" / "model.safetensors")


@pytest.fixture(scope="module")
def chained(corpus, tmp_path_factory):
    """Stage 1 then stage 2, with layer 0 frozen in stage 2."""
    data = tmp_path_factory.mktemp("chained")
    specs = _specs(corpus, data, training=replace(TRAINING, frozen_layers=((), (0,))))
    return specs, [_train(s) for s in specs]


def test_parameter_count_matches_the_built_model(corpus):
    tok = AutoTokenizer.from_pretrained(corpus[0] / "tokenizer")
    for cfg in (MODEL, replace(MODEL, tie_embeddings=True), replace(MODEL, kv_heads=None, intermediate_size=None)):
        config = llama_config(cfg, tok)
        assert count_parameters(config) == sum(p.numel() for p in build_model(config).parameters())


@pytest.mark.parametrize("chunk", [1, 7, 4096])
def test_packing_copies_the_stage_tokens_in_training_order(corpus, tmp_path, chunk):
    root, plan = corpus
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    texts = pq.read_table(root / "cleaned_corpus" / "b1" / "text.parquet")["text"].to_pylist()
    order = [int(i[1:]) for i in pq.read_table(root / "curriculum" / "stage_02.parquet")["id"].to_pylist()]
    stream = np.array([t for ids in encode_records(tok, [texts[i] for i in order]) for t in ids], np.int32)
    assert pack_stage(root / "curriculum" / "stage_02.parquet", root / "tokenized_corpus", 64, tmp_path / "p.npy", chunk) == len(stream) // 64
    rows = np.load(tmp_path / "p.npy")
    assert rows.dtype == np.uint16 and rows.shape == (plan["stages"][1]["tokens"] // 64, 64)  # a vocabulary of 512
    assert (rows.ravel() == stream[: rows.size]).all()  # the same tokens as encoding the stage's texts in its order


def test_spec_round_trips_through_json(corpus, tmp_path):
    spec = _specs(corpus, tmp_path, training=replace(TRAINING, frozen_layers=((), (0,))))[1]
    back = StageSpec.from_json(spec.to_json())
    assert back == spec and hash(back) == hash(spec) and back.to_json() == spec.to_json()
    assert type(back.plan) is type(spec.plan) and type(back.model) is ModelConfig and type(back.training) is TrainingConfig
    assert back.plan.frozen_layers == (0,) and back.training.frozen_layers == ((), (0,))
    assert spec.previous == _specs(corpus, tmp_path)[0].out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_specs_of_every_preset_read_back_typed_and_equal(name):
    """Every tuple field (nested ones included) comes back a tuple, every float a float."""
    cfg = PRESETS[name]()
    training = replace(cfg.training, frozen_layers=((), (0, 1), (2,)), init_from="/models/base", betas=(0.9, 0.99))
    plan = StagePlan(
        stage=2, level=3, sequences=100, global_batch=16, micro_batch=4, grad_accum=2, steps=6, first_step=6,
        learning_rate=1e-3, frozen_layers=(0, 1),
    )
    spec = StageSpec(
        stage=2, plan=plan, total_steps=12, records="r.parquet", tokens="shards", tokenizer="tok", model=cfg.model, training=training,
        ranks=2, checkpoints="ckpt", out="out", previous="prev", previous_fingerprint="p" * 64, fingerprint="f" * 64,
    )
    back = StageSpec.from_json(spec.to_json())
    assert back == spec and hash(back) == hash(spec)
    for a, b in ((back.plan, plan), (back.model, cfg.model), (back.training, training)):
        assert {f: type(v) for f, v in vars(a).items()} == {f: type(v) for f, v in vars(b).items()}
    assert all(type(t) is tuple for t in back.training.frozen_layers)


@pytest.mark.parametrize(
    ("path", "value", "error"),
    [
        (("surprise",), 1, "unexpected_keyword_argument"),
        (("training", "learning_rat"), 1e-3, "unexpected_keyword_argument"),
        (("training", "micro_batch"), "8", "int_type"),
        (("plan", "frozen_layers"), "0", "tuple_type"),
        (("model",), None, "dataclass_type"),
    ],
)
def test_a_spec_with_an_unknown_key_or_a_wrong_type_is_refused(corpus, tmp_path, path, value, error):
    raw = json.loads(_specs(corpus, tmp_path)[0].to_json())
    *parents, key = path
    node = raw
    for p in parents:
        node = node[p]
    node[key] = value
    with pytest.raises(ValidationError, match=error):
        StageSpec.from_json(json.dumps(raw))


def test_a_two_rank_stage_trains_and_writes_a_loadable_model(chained, corpus):
    specs, (first, _) = chained
    assert first["ranks"] == 2 and first["device"] == "cpu" and first["precision"] == "fp32"
    assert first["steps"] == 6 and first["resumed_from_step"] == 0 and first["initialised_from"] == "random initialization"
    assert first["tokens"] == 6 * 8 * 64
    metrics = [json.loads(line) for line in (Path(specs[0].out) / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(m["loss"]) and m["grad_norm"] > 0 and m["tokens_per_s"] > 0 for m in metrics)
    assert metrics[-1]["loss"] < metrics[0]["loss"]
    assert (Path(specs[0].out) / "loss.png").read_bytes().startswith(b"\x89PNG")
    # The finished stage keeps only its final checkpoint, which the next stage starts from.
    assert sorted(p.name for p in Path(specs[0].checkpoints).glob("step_*")) == ["step_000006"]
    model = AutoModelForCausalLM.from_pretrained(Path(specs[0].out) / "model")
    assert sum(p.numel() for p in model.parameters()) == first["parameters"]
    assert completed(specs[0]) == first


def test_two_nodes_meeting_at_a_c10d_rendezvous_train_as_one_node_of_two_ranks(chained, corpus, tmp_path):
    """The command every node of a multi-node stage runs (torchrun, `--nnodes 2`, a c10d rendezvous),
    started twice on this machine: two agents of one CPU rank each, over gloo, train stage 1 to the
    losses of one agent with two ranks (`chained`)."""
    specs, (one_node, _) = chained
    [spec, _] = _specs(corpus, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = replace(spec.training, nodes=2, cpu_ranks=1, master_addr="127.0.0.1", master_port=port)
    command = launch_command(Path(spec.checkpoints) / "spec.json", cfg, gpus=0, run_id="two-nodes")
    assert "--nnodes=2" in command and "--rdzv_backend=c10d" in command and "--nproc_per_node=1" in command
    env = {**os.environ, **launch_env(1, gpus=0), "CUDA_VISIBLE_DEVICES": ""}
    agents = [subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [agent.communicate(timeout=600)[0] for agent in agents]
    assert [agent.returncode for agent in agents] == [0, 0], "\n".join(out[-3000:] for out in outputs)
    two_nodes = read_summary(spec.out)
    assert two_nodes["ranks"] == 2 and two_nodes["steps"] == one_node["steps"] == 6
    assert _losses(spec) == pytest.approx(_losses(specs[0]), rel=1e-5)
    assert two_nodes["final_loss"] == pytest.approx(one_node["final_loss"], rel=1e-5)


def test_a_hostfile_starts_the_ranks_through_deepspeeds_launcher(chained, corpus, tmp_path):
    """The hostfile path (DeepSpeed's launcher, which reaches other hosts over ssh/pdsh), on a hostfile
    of this machine alone: the launcher starts both ranks itself, and they train as torchrun's do.
    The launcher first checks each host answers `ssh <host> hostname`; this machine runs no ssh
    server, so an `ssh` on PATH runs the command here, as passwordless ssh to localhost would."""
    specs, (one_node, _) = chained
    [spec, _] = _specs(corpus, tmp_path / "data")
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    cfg = replace(spec.training, cpu_ranks=2, hostfile=str(hostfile))
    check_launch(cfg, gpus=0, kubernetes=False)
    command = launch_command(Path(spec.checkpoints) / "spec.json", cfg, gpus=0)
    assert command[1:3] == ["-m", "deepspeed.launcher.runner"]
    ssh = tmp_path / "bin" / "ssh"
    ssh.parent.mkdir()
    ssh.write_text('#!/bin/sh\nwhile [ "$1" = -o ]; do shift 2; done\nshift\nexec "$@"\n')
    ssh.chmod(0o755)
    env = {**os.environ, **launch_env(2, gpus=0), "CUDA_VISIBLE_DEVICES": "", "PATH": f"{ssh.parent}:{os.environ['PATH']}"}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert read_summary(spec.out)["ranks"] == 2
    assert _losses(spec) == pytest.approx(_losses(specs[0]), rel=1e-5)


def test_stages_chain_their_checkpoints_and_schedule(chained):
    specs, (first, second) = chained
    assert second["initialised_from"] == f"{specs[0].checkpoints}/step_000006"
    assert second["global_steps"] == [7, specs[1].plan.steps + 6] and second["total_steps"] == specs[1].total_steps
    # One schedule across stages (its shape: tests/training/test_deepspeed_config.py), as a share of
    # each stage's own peak: it rises over the warmup to about the peak, then only falls, through the
    # stage boundary (no second warmup), to min_lr_ratio of the peak at the last step of the last stage.
    ratios = []
    for spec in specs:
        metrics = [json.loads(line) for line in (Path(spec.out) / "metrics.jsonl").read_text().splitlines()]
        assert [m["global_step"] for m in metrics] == list(range(spec.plan.first_step + 1, spec.plan.first_step + 7))
        ratios += [m["lr"] / spec.plan.learning_rate for m in metrics]
    assert len(ratios) == specs[1].total_steps
    top = ratios.index(max(ratios))
    assert 0 < top < len(ratios) // 2 and 0 < ratios[0] < ratios[top] <= 1 and ratios[top] == pytest.approx(1, abs=0.05)
    assert all(a < b for a, b in zip(ratios[:top], ratios[1 : top + 1]))
    assert all(a >= b for a, b in zip(ratios[top:], ratios[top + 1 :])) and ratios[top] > 2 * ratios[-1]
    assert ratios[-1] == pytest.approx(TRAINING.min_lr_ratio)


def test_frozen_layers_do_not_change_and_the_rest_does(chained):
    specs, _ = chained
    before, after = _weights(specs[0]), _weights(specs[1])
    layer0 = [k for k in before if k.startswith("model.layers.0.")]
    layer1 = [k for k in before if k.startswith("model.layers.1.")]
    assert layer0 and all(torch.equal(before[k], after[k]) for k in layer0)
    assert all(not torch.equal(before[k], after[k]) for k in layer1 if "norm" not in k)


def test_a_stage_refuses_a_previous_stage_trained_from_other_inputs(corpus, chained, tmp_path):
    specs = _specs(corpus, tmp_path, training=replace(TRAINING, learning_rate=1e-3))
    (tmp_path / "pretrain_stage_1").symlink_to(chained[0][0].out)  # trained with another config
    proc = _launch(specs[1])
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0 and "materialize the previous stage first" in out


def test_resume_after_kill_9_ends_where_an_uninterrupted_run_does(corpus, tmp_path):
    training = replace(TRAINING, max_steps_per_stage=40, checkpoint_every=3)
    [reference, _] = _specs(corpus, tmp_path / "reference", training=training)
    [killed, _] = _specs(corpus, tmp_path / "killed", training=training)
    assert reference.fingerprint == killed.fingerprint
    uninterrupted = _train(reference)

    proc = _launch(killed, start_new_session=True)
    latest = Path(killed.checkpoints) / "latest"
    deadline = time.monotonic() + 240
    while not latest.is_file() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)  # the launcher, mid-stage
    proc.communicate()
    time.sleep(0.5)
    assert not _processes_running(killed), "ranks outlived their launcher"
    assert read_summary(killed.out) is None, "the stage finished before it could be killed"

    resumed = _train(killed)
    assert 3 <= resumed["resumed_from_step"] < 40 and resumed["resumed_from_step"] % 3 == 0
    assert resumed["final_loss"] == pytest.approx(uninterrupted["final_loss"], abs=1e-6)
    a, b = _weights(reference), _weights(killed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    steps = [json.loads(line)["step"] for line in (Path(killed.out) / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 41))  # the steps logged before the kill are not repeated


def test_nan_loss_stops_the_stage_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    root, _ = corpus
    tok = AutoTokenizer.from_pretrained(root / "tokenizer")
    pack_stage(root / "curriculum" / "stage_01.parquet", root / "tokenized_corpus", MODEL.max_seq_len, tmp_path / "p.npy")
    rows = np.load(tmp_path / "p.npy")
    batch = TRAINING.global_batch[0]
    seen = set(np.unique(rows[: 3 * batch]))
    # A token first seen in step 4: poison its embedding, so steps 1-3 train and step 4 diverges.
    token = next(t for t in np.unique(rows[3 * batch : 4 * batch]) if t not in seen)
    torch.manual_seed(0)
    model = build_model(llama_config(MODEL, tok))
    with torch.no_grad():
        model.model.embed_tokens.weight[token] = float("nan")
    model.save_pretrained(tmp_path / "poisoned")
    [spec, _] = _specs(
        corpus, tmp_path / "data", training=replace(TRAINING, checkpoint_every=1, init_from=str(tmp_path / "poisoned"))
    )
    proc = _launch(spec)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode != 0
    assert "NonFiniteLoss" in out and "the loss became nan at stage step 4 (global step 4)" in out
    assert (Path(spec.checkpoints) / "latest").read_text().strip() == "step_000003"
    assert read_summary(spec.out) is None  # no half-trained output


ZERO_VARIANTS = {
    "zero0": {"zero_stage": 0},
    "zero2-offload": {"zero_stage": 2, "offload_optimizer": True},
    "zero3": {"zero_stage": 3},
    "activation-checkpointing": {"zero_stage": 1, "activation_checkpointing": True},
}


def test_zero_stages_offload_and_checkpointing_train_the_same_model(chained, corpus, tmp_path):
    """Data parallelism over 2 ranks is exact: every option reaches stage 1's loss of the ZeRO-1 run.
    The variants train one after another in one launch of the 2 ranks (tests/training/stages_in_one_launch.py)."""
    specs, (first, _) = chained
    variants = {name: _specs(corpus, tmp_path / name, training=replace(TRAINING, **o))[0] for name, o in ZERO_VARIANTS.items()}
    driver = Path(__file__).with_name("stages_in_one_launch.py")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", str(driver),
               *(str(Path(spec.checkpoints) / "spec.json") for spec in variants.values())]
    env = {**os.environ, **launch_env(2, gpus=0), "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(Path(__file__).parents[2])}
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    for name, spec in variants.items():
        summary = read_summary(spec.out)
        assert summary["zero_stage"] == spec.training.zero_stage, name
        assert summary["final_loss"] == pytest.approx(first["final_loss"], abs=1e-4), name
        # The written model holds every weight whole (ZeRO-3 gathers its shards), loadable by transformers.
        model = AutoModelForCausalLM.from_pretrained(Path(spec.out) / "model")
        assert sum(p.numel() for p in model.parameters()) == summary["parameters"] == first["parameters"], name
        assert {k: v.shape for k, v in _weights(spec).items()} == {k: v.shape for k, v in _weights(specs[0]).items()}, name


@pytest.mark.gpu
def test_a_gpu_stage_trains_in_bf16_and_reports_mfu(corpus, tmp_path):
    gpus = torch.cuda.device_count()
    [spec, _] = _specs(corpus, tmp_path, training=replace(TRAINING, global_batch=(8 * gpus,), micro_batch=4), ranks=gpus)
    summary = _train(spec, gpu=True)
    assert summary["precision"] == "bf16" and summary["ranks"] == gpus and summary["device"] != "cpu"
    assert np.isfinite(summary["final_loss"]) and 0 < summary["mfu"] < 1

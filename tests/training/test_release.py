"""Release packaging: manifest, tamper detection, atomic publication, version order, loading, int8."""

import hashlib
import json
import os
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import training.release.assemble as assemble
import training.release.publish as rel
from training import fsutil
from training.config import ModelConfig, TokenizerConfig
from training.layout import Layout
from training.presets import tiny
from training.release.assemble import NotReleasable, assemble_release
from training.release.evaluate import record_nll
from training.pretrain.model import build_model, llama_config
from training.release.package import assemble_model, folder_bytes
from training.release.quantize import load_int8, quantize_int8, save_model
from training.curriculum.tokenizer import train_tokenizer

MODEL = ModelConfig(hidden_size=64, layers=2, heads=4, kv_heads=2, intermediate_size=128, max_seq_len=64)


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> tuple[Path, Path, list[str]]:
    """A small Llama with its tokenizer in Hugging Face format, and its int8 variant."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("model")
    texts = [t for t in topics.values() if len(t) > 200]
    tok = train_tokenizer(texts, TokenizerConfig(vocab_size=512), root / "tokenizer")
    torch.manual_seed(0)
    build_model(llama_config(MODEL, tok)).save_pretrained(root / "weights")
    assemble_model(root / "weights", root / "tokenizer", root / "base")
    save_model(load_int8(root / "base"), root / "base", root / "int8")
    return root / "base", root / "int8", texts[:20]


def _release(releases: Path, model_dirs, version: str) -> Path:
    base, int8, _ = model_dirs
    return rel.write_release(releases, version, {"": base, "int8": int8}, {"README.md": "# card\n"})


def test_a_release_loads_generates_and_holds_no_pickle(model_dirs, tmp_path):
    path = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    assert (tmp_path / "LATEST").read_text().strip() == path.name
    names = {p.relative_to(path).as_posix() for p in path.rglob("*") if p.is_file()}
    assert {"config.json", "model.safetensors", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "README.md", "manifest.json", "int8/model.safetensors", "int8/config.json"} <= names
    assert all(Path(n).suffix in (".json", ".safetensors", ".md") for n in names)
    for variant in (path, path / "int8"):
        tok, model = AutoTokenizer.from_pretrained(variant), AutoModelForCausalLM.from_pretrained(variant)
        ids = tok("The ", return_tensors="pt", add_special_tokens=False)
        assert model.generate(**ids, max_new_tokens=5, do_sample=False).shape[1] == ids["input_ids"].shape[1] + 5
    # The archive beside it: an uncompressed tar (weights barely compress) of the same files, and its sha256.
    tarball = tmp_path / f"{path.name}.tar"
    assert (tmp_path / f"{path.name}.tar.sha256").read_text() == f"{rel.sha256_file(tarball)}  {tarball.name}\n"
    with tarfile.open(tarball, "r:") as tar:  # "r:": refuses a compressed file
        members = {m.name: m for m in tar.getmembers() if m.isfile()}
        assert set(members) == {f"{path.name}/{n}" for n in names}
        weights = tar.extractfile(members[f"{path.name}/model.safetensors"]).read()
    assert hashlib.sha256(weights).hexdigest() == rel.sha256_file(path / "model.safetensors")


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda p: (p / "config.json").write_text("{}"), "sha256 mismatch: config.json"),
        (lambda p: (p / "int8" / "model.safetensors").unlink(), "missing: int8/model.safetensors"),
        (lambda p: (p / "extra.bin").write_bytes(b"\x80\x04"), "not in the manifest: extra.bin"),
        (lambda p: (p / "int8" / "extra.py").write_text("x = 1"), "not in the manifest: int8/extra.py"),
        # Python's bytecode of a shipped module (eval_tasks' loader, run in place) is not a change.
        (lambda p: (p / "int8" / "__pycache__").mkdir() or (p / "int8" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\x00"), None),
    ],
    ids=["changed", "removed", "added", "added module", "bytecode cache"],
)
def test_the_manifest_detects_tampering(model_dirs, tmp_path, tamper, problem):
    path = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    assert rel.verify(path) == []
    tamper(path)
    assert rel.verify(path) == ([problem] if problem else [])


def test_an_interrupted_packaging_leaves_latest_and_the_releases_unchanged(model_dirs, tmp_path, monkeypatch):
    first = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    copies = []

    def failing_copy(src, dst, **kw):
        copies.append(src)
        if len(copies) == 3:
            raise OSError("disk full")
        return rel.shutil.copyfile(src, dst)

    monkeypatch.setattr(rel.shutil, "copy2", failing_copy)
    with pytest.raises(OSError, match="disk full"):
        _release(tmp_path, model_dirs, "20261122-130000-bbbbbbbb")
    assert (tmp_path / "LATEST").read_text().strip() == first.name
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [first.name]


def test_packaging_removes_only_dead_packagings_leftovers(model_dirs, tmp_path):
    """A packaging killed midway leaves its hidden folder, which the next removes; a packaging still
    running (here: this process) or on another machine sharing releases/ keeps its own."""
    dead = tmp_path / f".20261122-130000-bbbbbbbb.tmp-{fsutil._HOST}-999999999-0123abcd"
    running = tmp_path / f".20261122-133000-bbbbbbbb.tmp-{fsutil._HOST}-{os.getpid()}-0123abcd"
    remote = tmp_path / ".20261122-133000-bbbbbbbb.tmp-another-host-1-0123abcd"
    for leftover in (dead, running, remote):
        leftover.mkdir(parents=True)
        (leftover / "model.safetensors").write_bytes(b"half")
    _release(tmp_path, model_dirs, "20261122-140000-cccccccc")
    assert not dead.exists() and running.is_dir() and remote.is_dir()


def test_versions_are_unique_and_in_time_order(model_dirs, tmp_path):
    base = model_dirs[0]
    early = rel.version_name(fsutil.sha256_file(base / "model.safetensors"), datetime(2026, 11, 22, 9, 5, 1, tzinfo=timezone.utc))
    late = rel.version_name(fsutil.sha256_file(base / "model.safetensors"), datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc))
    assert early.startswith("20261122-090501-") and early < late
    _release(tmp_path, model_dirs, late)
    with pytest.raises(FileExistsError):
        _release(tmp_path, model_dirs, late)
    with pytest.raises(ValueError, match="does not sort after"):
        _release(tmp_path, model_dirs, early)


@pytest.mark.slow
def test_int8_is_smaller_and_within_the_perplexity_bound(model_dirs, tmp_path):
    base, _, texts = model_dirs
    stats = quantize_int8(base, tmp_path / "int8", texts, 8, 0.02, torch.device("cpu"))
    assert stats["int8_bytes"] == folder_bytes(tmp_path / "int8") < stats["full_bytes"] == folder_bytes(base)
    assert abs(stats["perplexity_change"]) < 0.02 and stats["full_tokens_per_s"] > 0 and stats["int8_tokens_per_s"] > 0
    # The numbers match a measurement of the saved folder, not only of the in-memory model.
    tok = AutoTokenizer.from_pretrained(base)
    nll, count, _ = record_nll(AutoModelForCausalLM.from_pretrained(tmp_path / "int8"), tok, texts, 8)
    assert torch.tensor(sum(nll) / sum(count)).exp().item() == pytest.approx(stats["int8_perplexity"], rel=1e-4)
    recorded = json.loads((tmp_path / "int8" / "quantization.json").read_text())
    assert recorded["bound"] == 0.02 and recorded["weights_sha256"] == rel.sha256_file(base / "model.safetensors")
    # Every other file of the int8 folder is pinned, so that packaging publishes only what was measured.
    assert recorded["files"] == {n: f for n, f in rel.file_manifest(tmp_path / "int8").items() if n != "quantization.json"}
    assert "model.safetensors" in recorded["files"]
    weight = AutoModelForCausalLM.from_pretrained(tmp_path / "int8").model.layers[0].mlp.up_proj.weight
    assert "Int8" in type(weight).__name__


# The release gate: (what is wrong with the candidate's records, the reasons given). `{base}` is the
# current weights' sha256[:8]; every case starts from records that pass.
WEIGHTS = b"the candidate's weights"
OTHER = "0123abcd" + "0" * 56


def _set(path: str, value):
    def change(ev: dict, q: dict) -> None:
        target, *keys, last = path.split(".")
        obj = ev if target == "ev" else q
        for k in keys:
            obj = obj[k]
        obj[last] = value

    return change


def _regressed(change: float):
    return _set("ev.previous", {"version": "20261122-120000-aaaaaaaa", "change": change})


@pytest.mark.parametrize(
    ("damage", "reasons"),
    [
        (lambda ev, q: None, []),
        (_set("ev.previous", None), []),  # the first release: nothing to regress from
        (_regressed(0.03), []),
        (_regressed(0.05), []),  # at the margin: allowed, only beyond it blocks
        (_regressed(-0.2), []),
        (_regressed(0.123), ["byte perplexity 12.30% worse than release 20261122-120000-aaaaaaaa (margin 5%)"]),
        (_regressed(float("nan")), ["byte perplexity change against release 20261122-120000-aaaaaaaa is nan, "
                                    "not a number to compare (margin 5%)"]),
        (_set("q.perplexity_change", 0.05), ["int8 perplexity +5.00% against the full model (bound 2%)"]),
        (_set("q.perplexity_change", 0.02), []),
        (_set("q.perplexity_change", float("inf")), ["int8 perplexity +inf% against the full model (bound 2%)"]),
        (_set("ev.weights_sha256", OTHER),
         ["evaluation.json is of weights 0123abcd, base_model is {base}: materialize evaluation first"]),
        (_set("q.weights_sha256", OTHER),
         ["quantization.json is of weights 0123abcd, base_model is {base}: materialize quantized_model first"]),
        (lambda ev, q: ev.pop("weights_sha256"),  # written before the weights were recorded
         ["evaluation.json is of unrecorded weights, base_model is {base}: materialize evaluation first"]),
        (lambda ev, q: (_regressed(0.5)(ev, q), _set("ev.weights_sha256", OTHER)(ev, q)),  # stale: its verdict is moot
         ["evaluation.json is of weights 0123abcd, base_model is {base}: materialize evaluation first"]),
        (lambda ev, q: (_regressed(0.5)(ev, q), _set("q.perplexity_change", 0.03)(ev, q)),
         ["byte perplexity 50.00% worse than release 20261122-120000-aaaaaaaa (margin 5%)",
          "int8 perplexity +3.00% against the full model (bound 2%)"]),
        (lambda ev, q: q.pop("files"),  # written before kiln pinned the int8 files: they could not be pinned
         ["quantization.json is unreadable (KeyError: 'files'): materialize quantized_model again"]),
    ],
    ids=["pass", "first-release", "within-margin", "at-margin", "better", "regressed", "nan", "int8-beyond-bound",
         "int8-at-bound", "int8-inf", "evaluation-of-other-weights", "int8-of-other-weights",
         "evaluation-unrecorded-weights", "stale-and-regressed", "regressed-and-int8", "int8-files-unpinned"],
)
def test_the_release_gate_names_every_reason(tmp_path, damage, reasons):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(WEIGHTS)
    sha = rel.sha256_file(weights)
    ev = {"candidate": {}, "previous": None, "margin": 0.05, "weights_sha256": sha}
    q = {"perplexity_change": 0.001, "bound": 0.02, "weights_sha256": sha, "files": {"model.safetensors": {"sha256": OTHER, "bytes": 1}}}
    damage(ev, q)
    (tmp_path / "evaluation.json").write_text(json.dumps(ev))
    (tmp_path / "quantization.json").write_text(json.dumps(q))
    (tmp_path / "gguf.json").write_text(json.dumps(_gguf_record(sha)))
    got = rel.release_blockers(tmp_path / "evaluation.json", tmp_path / "quantization.json", weights, tmp_path / "gguf.json")
    assert got == [r.format(base=sha[:8]) for r in reasons]


def _gguf_record(sha: str | None, f32: dict | None = None, q8_0: dict | None = None) -> dict:
    """gguf.json as the gguf_model asset writes it, passing unless `f32` / `q8_0` change a comparison."""
    def entry(file_type: str, tolerance: float, diff: float, change: dict | None) -> dict:
        comparison = {"prompts": 8, "positions": 1400, "max_abs_diff": diff, "top1_agreement": 1.0, "tokenization_agrees": 8,
                      "tokenization_mismatches": [], "tolerance": tolerance, "passed": True}
        return {"file_type": file_type, "sha256": "ab" * 32, "bytes": 1000, "comparison": comparison | (change or {})}

    record = {"files": {"kiln-f32.gguf": entry("f32", 1e-3, 2.1e-5, f32), "kiln-q8_0.gguf": entry("q8_0", 0.25, 0.04, q8_0)}}
    return record | ({"weights_sha256": sha} if sha is not None else {})


@pytest.mark.parametrize(
    ("record", "reasons"),
    [
        (lambda sha: _gguf_record(sha), []),
        (lambda sha: _gguf_record(sha, f32={"max_abs_diff": 1e-3}), []),  # at the tolerance: allowed
        (lambda sha: _gguf_record(sha, f32={"max_abs_diff": 0.9, "top1_agreement": 0.5}),
         ["kiln-f32.gguf: llama.cpp logits within 0.9 of transformers (tolerance 0.001), top-1 50.00%, tokenization "
          "agrees on 8/8 prompts"]),
        (lambda sha: _gguf_record(sha, q8_0={"max_abs_diff": 0.3}), ["kiln-q8_0.gguf: llama.cpp logits within 0.3"]),
        (lambda sha: _gguf_record(sha, f32={"max_abs_diff": float("nan")}), ["kiln-f32.gguf: llama.cpp logits within nan"]),
        (lambda sha: _gguf_record(sha, f32={"max_abs_diff": float("inf")}), ["kiln-f32.gguf: llama.cpp logits within inf"]),
        # A recorded verdict is not trusted: the numbers are judged again.
        (lambda sha: _gguf_record(sha, f32={"max_abs_diff": 0.5, "passed": True}), ["kiln-f32.gguf: llama.cpp logits within 0.5"]),
        (lambda sha: _gguf_record(sha, f32={"tokenization_agrees": 7, "tokenization_mismatches": [3]}),
         ["kiln-f32.gguf: llama.cpp logits within 2.1e-05 of transformers (tolerance 0.001), top-1 100.00%, tokenization "
          "agrees on 7/8"]),
        (lambda sha: _gguf_record(OTHER), ["gguf.json is of weights 0123abcd, base_model is {base}: materialize gguf_model first"]),
        (lambda sha: _gguf_record(None), ["gguf.json is of unrecorded weights, base_model is {base}: materialize gguf_model first"]),
        (lambda sha: {"weights_sha256": sha, "files": {}}, ["no GGUF file was checked"]),
        (lambda sha: {"weights_sha256": sha}, ["gguf.json is unreadable (KeyError: 'files'): materialize gguf_model again"]),
    ],
    ids=["pass", "at-tolerance", "f32-beyond", "q8_0-beyond", "nan", "inf", "recorded-pass-ignored", "tokenization",
         "other-weights", "unrecorded-weights", "no-files", "no-files-key"],
)
def test_the_release_gate_judges_the_gguf_record(tmp_path, record, reasons):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(WEIGHTS)
    sha = rel.sha256_file(weights)
    (tmp_path / "evaluation.json").write_text(json.dumps({"candidate": {}, "previous": None, "margin": 0.05, "weights_sha256": sha}))
    (tmp_path / "quantization.json").write_text(json.dumps({"perplexity_change": 0.0, "bound": 0.02, "weights_sha256": sha, "files": {}}))
    (tmp_path / "gguf.json").write_text(json.dumps(record(sha)))
    got = rel.release_blockers(tmp_path / "evaluation.json", tmp_path / "quantization.json", weights, tmp_path / "gguf.json")
    assert len(got) == len(reasons) and all(g.startswith(r.format(base=sha[:8])) for g, r in zip(got, reasons)), got
    assert all(g == r for g, r in zip(got, reasons) if r.endswith("prompts")), got  # and only the failing file named


@pytest.mark.parametrize(
    ("files", "reasons"),
    [
        ({"quantization.json": "{}"}, ["evaluation.json is missing (", "quantization.json is unreadable (KeyError",
                                       "gguf.json is missing ("]),
        ({}, ["evaluation.json is missing (", "quantization.json is missing (", "gguf.json is missing ("]),
        ({"evaluation.json": '{"candidate": {', "quantization.json": "{}", "gguf.json": '{"files": {"kiln-f32.gguf": {'},
         ["evaluation.json is unreadable (JSONDecodeError", "quantization.json is unreadable (KeyError",
          "gguf.json is unreadable (JSONDecodeError"]),
        ({"evaluation.json": "[]", "gguf.json": "[]"},
         ["evaluation.json is unreadable (AttributeError", "quantization.json is missing (", "gguf.json is unreadable (AttributeError"]),
    ],
    ids=["no-evaluation", "none", "half-written", "not-an-object"],
)
def test_the_release_gate_blocks_missing_or_unreadable_records(tmp_path, files, reasons):
    (tmp_path / "model.safetensors").write_bytes(WEIGHTS)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = rel.release_blockers(
        tmp_path / "evaluation.json", tmp_path / "quantization.json", tmp_path / "model.safetensors", tmp_path / "gguf.json"
    )
    assert len(got) == len(reasons) and all(g.startswith(r) for g, r in zip(got, reasons)), got
    assert all(g.endswith(tuple(f"materialize {a} {w}" for a in ("evaluation", "quantized_model", "gguf_model")
                                for w in ("first", "again"))) for g in got)


def test_the_release_gate_blocks_when_there_are_no_weights(tmp_path):
    assert rel.release_blockers(tmp_path / "e.json", tmp_path / "q.json", tmp_path / "model.safetensors", tmp_path / "g.json") == [
        f"model.safetensors is missing ({tmp_path / 'model.safetensors'}): materialize base_model first"
    ]


def test_assembling_a_release_asks_the_gate_before_reading_or_writing_anything(tmp_path):
    """Weights and nothing else: the gate's reasons, not a missing curriculum.json, and no releases/ folder."""
    layout = Layout(tmp_path)
    layout.base_model.mkdir()
    (layout.base_model / "model.safetensors").write_bytes(b"weights")
    with pytest.raises(NotReleasable) as refused:
        assemble_release(layout, tiny())
    assert [r.split(" (")[0] for r in refused.value.reasons] == [
        "evaluation.json is missing", "quantization.json is missing", "gguf.json is missing"
    ]
    assert str(refused.value) == "not released: " + "; ".join(refused.value.reasons)
    assert not layout.releases.exists()


def _harness(bits_per_byte: float) -> dict:
    return {"harness": {"results": {"kiln": {"bits_per_byte": bits_per_byte}, "kiln_text_ppl": {"bits_per_byte": 1.0}}}}


@pytest.mark.parametrize(
    ("record", "passed", "description"),
    [
        ({"previous": None, "margin": 0.05}, True, "no previous release: nothing to regress from"),
        ({"previous": {"version": "v1", "change": -0.021}, "margin": 0.05}, True, "byte perplexity 2.10% better than release v1 (margin 5%)"),
        ({"previous": {"version": "v1", "change": 0.0501}, "margin": 0.05}, False, "byte perplexity 5.01% worse than release v1 (margin 5%)"),
        # With lm-evaluation-harness results on both sides, the group's bits per byte is gated too.
        ({"candidate": _harness(2.08), "previous": {"version": "v1", "change": 0.01} | _harness(2.0), "margin": 0.05}, True,
         "byte perplexity 1.00% worse than release v1 (margin 5%); harness bits per byte 4.00% worse"),
        ({"candidate": _harness(2.2), "previous": {"version": "v1", "change": -0.01} | _harness(2.0), "margin": 0.05}, False,
         "byte perplexity 1.00% better than release v1 (margin 5%); harness bits per byte 10.00% worse"),
        ({"candidate": _harness(1.8), "previous": {"version": "v1", "change": 0.06} | _harness(2.0), "margin": 0.05}, False,
         "byte perplexity 6.00% worse than release v1 (margin 5%); harness bits per byte 10.00% better"),
        ({"candidate": _harness(float("nan")), "previous": {"version": "v1", "change": 0.0} | _harness(2.0), "margin": 0.05}, False,
         "byte perplexity 0.00% better than release v1 (margin 5%); harness bits per byte nan against 2.0, not a number to compare"),
        ({"candidate": {"harness": {"results": {}}}, "previous": {"version": "v1", "change": 0.0} | _harness(2.0), "margin": 0.05},
         False, "byte perplexity 0.00% better than release v1 (margin 5%); harness bits per byte nan against 2.0, not a number to compare"),
        # An evaluation.json from before the harness (or with it off): the byte perplexity rule alone.
        ({"candidate": {}, "previous": {"version": "v1", "change": 0.01} | _harness(2.0), "margin": 0.05}, True,
         "byte perplexity 1.00% worse than release v1 (margin 5%)"),
        ({"candidate": _harness(9.0), "previous": {"version": "v1", "change": 0.01}, "margin": 0.05}, True,
         "byte perplexity 1.00% worse than release v1 (margin 5%)"),
    ],
    ids=["first", "better", "worse", "harness-within", "harness-worse", "byte-worse-harness-better", "harness-nan",
         "harness-no-group", "no-candidate-harness", "no-previous-harness"],
)
def test_the_regression_rule_says_by_how_much(record, passed, description):
    assert rel.regression_gate(record) == rel.Gate(passed, description)


def test_weights_changed_while_packaging_are_not_released(model_dirs, tmp_path):
    first = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    base, int8, _ = model_dirs
    judged = rel.sha256_file(base / "model.safetensors")
    with pytest.raises(ValueError, match="model.safetensors changed while it was packaged"):
        rel.write_release(tmp_path, "20261122-130000-bbbbbbbb", {"": base, "int8": int8}, {}, expect_sha256={"model.safetensors": OTHER})
    assert (tmp_path / "LATEST").read_text().strip() == first.name
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == [first.name]
    rel.write_release(tmp_path, "20261122-130000-bbbbbbbb", {"": base, "int8": int8}, {}, expect_sha256={"model.safetensors": judged})
    assert (tmp_path / "LATEST").read_text().strip() == "20261122-130000-bbbbbbbb"


def _gated_layout(root: Path) -> Layout:
    """The records and files a release is assembled from, as the pipeline's steps write them (small
    stand-in bytes for the weights: packaging copies and hashes them, it does not load them), passing the gate."""
    layout = Layout(root)
    files = {
        layout.base_model / "model.safetensors": b"full weights", layout.base_model / "config.json": b"{}",
        layout.quantized_model / "model.safetensors": b"int8 weights", layout.quantized_model / "config.json": b"{}",
        layout.gguf_model / "kiln-f32.gguf": b"GGUF f32", layout.gguf_model / "kiln-q8_0.gguf": b"GGUF q8_0",
    }
    for path, data in files.items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    sha = rel.sha256_file(layout.base_model / "model.safetensors")
    q = {"perplexity_change": 0.001, "bound": 0.02, "full_perplexity": 10.0, "int8_perplexity": 10.01, "full_bytes": 12,
         "weights_sha256": sha, "files": {n: f for n, f in rel.file_manifest(layout.quantized_model).items()}}
    (layout.quantized_model / "quantization.json").write_text(json.dumps(q))
    gguf = _gguf_record(sha)
    for name in gguf["files"]:
        gguf["files"][name]["sha256"] = rel.sha256_file(layout.gguf_model / name)
    (layout.gguf_model / "gguf.json").write_text(json.dumps(gguf))
    layout.evaluation.mkdir(parents=True)
    (layout.evaluation / "evaluation.json").write_text(
        json.dumps({"candidate": {"perplexity": 9.0}, "previous": None, "margin": 0.05, "weights_sha256": sha}))
    layout.curriculum.mkdir(parents=True)
    (layout.curriculum / "curriculum.json").write_text(json.dumps({"stages": [{"stage": 1}]}))
    return layout


# Files rewritten after the gate read its records and before packaging: what is released.
@pytest.mark.parametrize(
    ("rewrite", "refused"),
    [
        (None, None),
        # The gate read a passing evaluation; a regressed one written later is not what is released.
        ("evaluation/evaluation.json", None),
        ("quantized_model/model.safetensors", "int8/model.safetensors changed while it was packaged"),
        ("quantized_model/quantization.json", "int8/quantization.json changed while it was packaged"),
        ("gguf_model/kiln-q8_0.gguf", "gguf/kiln-q8_0.gguf changed while it was packaged"),
        ("gguf_model/gguf.json", "gguf/gguf.json changed while it was packaged"),
        ("base_model/model.safetensors", "model.safetensors changed while it was packaged"),
    ],
    ids=["nothing", "evaluation", "int8-weights", "int8-record", "gguf-file", "gguf-record", "weights"],
)
def test_a_release_is_packaged_from_what_the_gate_read(tmp_path, monkeypatch, rewrite, refused):
    layout = _gated_layout(tmp_path)
    gate_read = (layout.evaluation / "evaluation.json").read_bytes()

    def lineage_meanwhile(_):  # read after the gate: the moment another run could rewrite a step's output
        if rewrite:
            path = tmp_path / rewrite
            if path.suffix == ".json":
                record = json.loads(path.read_text())
                record["previous"] = {"version": "20261122-120000-aaaaaaaa", "change": 0.5}
                path.write_text(json.dumps(record))
            else:
                path.write_bytes(b"rewritten")
        return []

    monkeypatch.setattr(assemble, "lineage", lineage_meanwhile)
    monkeypatch.setattr(assemble, "read_summary", lambda folder: {"parameters": 1})
    monkeypatch.setattr(assemble, "model_card", lambda *a, **k: "# card\n")
    if refused:
        with pytest.raises(ValueError, match=refused):
            assemble.assemble_release(layout, tiny())
        assert not rel.latest(layout.releases)
        return
    released = assemble.assemble_release(layout, tiny())
    assert (released.path / "evaluation.json").read_bytes() == gate_read
    assert rel.verify(released.path) == []
    assert {"int8/model.safetensors", "int8/quantization.json", "gguf/kiln-q8_0.gguf", "gguf/gguf.json"} <= set(released.files)


def test_the_archive_is_hashed_as_it_is_read_not_loaded_whole(model_dirs, tmp_path, monkeypatch):
    """A release of several GB: its archive's sha256 comes from a streamed read (a bounded buffer), never
    from the whole file in memory."""
    def whole_file(self):
        raise AssertionError(f"{self} read whole into memory")

    monkeypatch.setattr(Path, "read_bytes", whole_file)
    path = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    monkeypatch.undo()
    archive = tmp_path / f"{path.name}.tar"
    assert (tmp_path / f"{archive.name}.sha256").read_text().split() == [rel.sha256_file(archive), archive.name]

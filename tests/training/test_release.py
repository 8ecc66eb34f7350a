"""Release packaging: manifest, tamper detection, atomic publication, version order, loading, int8."""

import json
from datetime import datetime, timezone
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

import training.release as rel
from training.config import ModelConfig, TokenizerConfig
from training.evaluate import record_nll
from training.model import build_model, llama_config
from training.package import assemble_model, folder_bytes
from training.quantize import load_int8, quantize_int8, save_model
from training.tokenizer import train_tokenizer

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
    tarball = tmp_path / f"{path.name}.tar.gz"
    digest = (tmp_path / f"{path.name}.tar.gz.sha256").read_text().split()[0]
    assert rel.hashlib.sha256(tarball.read_bytes()).hexdigest() == digest


@pytest.mark.parametrize(
    ("tamper", "problem"),
    [
        (lambda p: (p / "config.json").write_text("{}"), "sha256 mismatch: config.json"),
        (lambda p: (p / "int8" / "model.safetensors").unlink(), "missing: int8/model.safetensors"),
        (lambda p: (p / "extra.bin").write_bytes(b"\x80\x04"), "not in the manifest: extra.bin"),
    ],
    ids=["changed", "removed", "added"],
)
def test_the_manifest_detects_tampering(model_dirs, tmp_path, tamper, problem):
    path = _release(tmp_path, model_dirs, "20261122-120000-aaaaaaaa")
    assert rel.verify(path) == []
    tamper(path)
    assert rel.verify(path) == [problem]


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


def test_a_dead_packagings_leftovers_are_removed_by_the_next(model_dirs, tmp_path):
    leftover = tmp_path / ".20261122-130000-bbbbbbbb.tmp-1234abcd"
    leftover.mkdir(parents=True)
    (leftover / "model.safetensors").write_bytes(b"half")
    _release(tmp_path, model_dirs, "20261122-140000-cccccccc")
    assert not leftover.exists()


def test_versions_are_unique_and_in_time_order(model_dirs, tmp_path):
    base = model_dirs[0]
    early = rel.version_name(base / "model.safetensors", datetime(2026, 11, 22, 9, 5, 1, tzinfo=timezone.utc))
    late = rel.version_name(base / "model.safetensors", datetime(2026, 11, 22, 10, 0, 0, tzinfo=timezone.utc))
    assert early.startswith("20261122-090501-") and early < late
    _release(tmp_path, model_dirs, late)
    with pytest.raises(FileExistsError):
        _release(tmp_path, model_dirs, late)
    with pytest.raises(ValueError, match="does not sort after"):
        _release(tmp_path, model_dirs, early)


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
    ],
    ids=["pass", "first-release", "within-margin", "at-margin", "better", "regressed", "nan", "int8-beyond-bound",
         "int8-at-bound", "int8-inf", "evaluation-of-other-weights", "int8-of-other-weights",
         "evaluation-unrecorded-weights", "stale-and-regressed", "regressed-and-int8"],
)
def test_the_release_gate_names_every_reason(tmp_path, damage, reasons):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(WEIGHTS)
    sha = rel.sha256_file(weights)
    ev = {"candidate": {}, "previous": None, "margin": 0.05, "weights_sha256": sha}
    q = {"perplexity_change": 0.001, "bound": 0.02, "weights_sha256": sha}
    damage(ev, q)
    (tmp_path / "evaluation.json").write_text(json.dumps(ev))
    (tmp_path / "quantization.json").write_text(json.dumps(q))
    got = rel.release_blockers(tmp_path / "evaluation.json", tmp_path / "quantization.json", weights)
    assert got == [r.format(base=sha[:8]) for r in reasons]


@pytest.mark.parametrize(
    ("files", "reasons"),
    [
        ({"quantization.json": "{}"}, ["evaluation.json is missing (", "quantization.json is unreadable (KeyError"]),
        ({}, ["evaluation.json is missing (", "quantization.json is missing ("]),
        ({"evaluation.json": '{"candidate": {', "quantization.json": "{}"},
         ["evaluation.json is unreadable (JSONDecodeError", "quantization.json is unreadable (KeyError"]),
        ({"evaluation.json": "[]"}, ["evaluation.json is unreadable (AttributeError", "quantization.json is missing ("]),
    ],
    ids=["no-evaluation", "neither", "half-written", "not-an-object"],
)
def test_the_release_gate_blocks_missing_or_unreadable_records(tmp_path, files, reasons):
    (tmp_path / "model.safetensors").write_bytes(WEIGHTS)
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    got = rel.release_blockers(tmp_path / "evaluation.json", tmp_path / "quantization.json", tmp_path / "model.safetensors")
    assert len(got) == len(reasons) and all(g.startswith(r) for g, r in zip(got, reasons)), got
    assert all(g.endswith(("materialize evaluation first", "materialize quantized_model first",
                           "materialize evaluation again", "materialize quantized_model again")) for g in got)


def test_the_release_gate_blocks_when_there_are_no_weights(tmp_path):
    assert rel.release_blockers(tmp_path / "e.json", tmp_path / "q.json", tmp_path / "model.safetensors") == [
        f"model.safetensors is missing ({tmp_path / 'model.safetensors'}): materialize base_model first"
    ]


@pytest.mark.parametrize(
    ("record", "passed", "description"),
    [
        ({"previous": None, "margin": 0.05}, True, "no previous release: nothing to regress from"),
        ({"previous": {"version": "v1", "change": -0.021}, "margin": 0.05}, True, "byte perplexity 2.10% better than release v1 (margin 5%)"),
        ({"previous": {"version": "v1", "change": 0.0501}, "margin": 0.05}, False, "byte perplexity 5.01% worse than release v1 (margin 5%)"),
    ],
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

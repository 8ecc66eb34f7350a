"""The one cache rule (training/cache.py): what changes a step's key, when its record is reused."""

import json
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from training.cache import MISSING, forget, input_hash, key_of, record, reused, step_key
from training.fsutil import atomic_path
from training.layout import STEP_JSON


@dataclass(frozen=True)
class Cfg:
    size: int = 8
    name: str = "a"


def _inputs(root: Path) -> list[Path]:
    (root / "folder" / "sub").mkdir(parents=True, exist_ok=True)
    (root / "file.txt").write_text("file content")
    (root / "folder" / "a.parquet").write_bytes(b"a bytes")
    (root / "folder" / "sub" / "b.json").write_text('{"b": 1}')
    return [root / "file.txt", root / "folder", root / "absent"]


def _same_bytes(root: Path) -> None:
    (root / "folder" / "a.parquet").unlink()
    (root / "folder" / "a.parquet").write_bytes(b"a bytes")


# (what is done between two keys, whether the key changes)
CHANGES = [
    ("nothing", lambda root, k: k(), False),
    ("config", lambda root, k: k(config=Cfg(size=9)), True),
    ("config type", lambda root, k: k(config={"size": 8, "name": "a"}), True),
    ("version", lambda root, k: k(version=2), True),
    ("step", lambda root, k: k(step="other"), True),
    ("file content", lambda root, k: ((root / "file.txt").write_text("file content!"), k())[1], True),
    ("file in a folder", lambda root, k: ((root / "folder" / "sub" / "b.json").write_text('{"b": 2}'), k())[1], True),
    ("file added to a folder", lambda root, k: ((root / "folder" / "c.txt").write_text(""), k())[1], True),
    ("file renamed in a folder", lambda root, k: ((root / "folder" / "sub" / "b.json").rename(root / "folder" / "sub" / "c.json"), k())[1], True),
    ("missing input appears", lambda root, k: ((root / "absent").write_text("x"), k())[1], True),
    ("input removed", lambda root, k: ((root / "file.txt").unlink(), k())[1], True),
    ("inputs reordered", lambda root, k: k(inputs=list(reversed(_inputs(root)))), True),
    ("rewritten with the same bytes", lambda root, k: (_same_bytes(root), k())[1], False),
    ("a step record in a folder", lambda root, k: ((root / "folder" / STEP_JSON).write_text("{}"), k())[1], False),
    ("a temporary sibling in a folder", lambda root, k: ((root / "folder" / ".a.parquet.tmp-1234").write_text("x"), k())[1], False),
    ("bytecode in a folder", lambda root, k: ((root / "folder" / "__pycache__").mkdir(), (root / "folder" / "__pycache__" / "m.pyc").write_text("x"), k())[2], False),
]


@pytest.mark.parametrize("change, changes", [(c, x) for _, c, x in CHANGES], ids=[n for n, _, _ in CHANGES])
def test_what_changes_the_key(tmp_path, change, changes):
    inputs = _inputs(tmp_path)

    def key(step="tokenizer", version=1, config=Cfg(), inputs=inputs):
        return step_key(step, version, config, inputs)

    before = key()
    assert (change(tmp_path, key) != before) is changes


def test_a_missing_input_hashes_as_missing_and_a_folder_by_its_files(tmp_path):
    assert input_hash(tmp_path / "nowhere") == MISSING
    assert input_hash(str(tmp_path / "nowhere")) == MISSING  # a str is a path too
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "a" / "x").write_text("same")
    (tmp_path / "b" / "x").write_text("same")
    assert input_hash(tmp_path / "a") == input_hash(tmp_path / "b")  # where a folder lies is not its content


def test_the_cleaning_and_clip_keys_are_the_fingerprints_they_were():
    """The same parts give the key they gave before `step_key` existed (the digest of the first
    release's fingerprint), so after an upgrade no batch is cleaned again and no CLIP gets a new
    version. A change that fails this invalidates every recorded key: make it knowingly."""
    assert key_of(4, "text", (Cfg(), {"x": (1, 2)}), "abc123") == "248f6bdacaf72efce7ca8e50281d789c0ef68c52e25945a9f27bef9457c1bdef"


def _write_step(out: Path, key: str, result: dict) -> None:
    with atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "out.txt").write_text("output")
        (tmp / "sub").mkdir()
        (tmp / "sub" / "pic.png").write_bytes(b"png")
        record(tmp, "step", 1, key, result)


def _delete(out: Path) -> None:
    (out / "sub" / "pic.png").unlink()


def _resize(out: Path) -> None:
    (out / "out.txt").write_text("truncat")


def _corrupt(out: Path) -> None:
    (out / STEP_JSON).write_text('{"key": "k1", "res')


def _forget(out: Path) -> None:
    forget(out)


# (what happens to the output after it was recorded under "k1", the key asked for, reused)
REUSE = [
    ("untouched", lambda out: None, "k1", True),
    ("another key", lambda out: None, "k2", False),
    ("an output file deleted", _delete, "k1", False),
    ("an output file resized", _resize, "k1", False),
    ("the record corrupt", _corrupt, "k1", False),
    ("the record forgotten", _forget, "k1", False),
    ("the folder gone", lambda out: __import__("shutil").rmtree(out), "k1", False),
]


@pytest.mark.parametrize("damage, key, expected", [(d, k, e) for _, d, k, e in REUSE], ids=[n for n, *_ in REUSE])
def test_when_a_record_is_reused(tmp_path, damage, key, expected):
    out = tmp_path / "out"
    result = {"records": 3, "per": {"text": 1.5}, "list": [1, 2]}
    _write_step(out, "k1", result)
    damage(out)
    assert reused(out, key) == (result if expected else None)


def test_the_record_names_its_step_and_files(tmp_path):
    out = tmp_path / "out"
    _write_step(out, "k1", {"a": 1})
    rec = json.loads((out / STEP_JSON).read_text())
    assert rec == {"step": "step", "version": 1, "key": "k1", "result": {"a": 1}, "files": {"out.txt": 6, "sub/pic.png": 3}}


def test_a_crash_leaves_no_record_without_its_output(tmp_path):
    out = tmp_path / "out"
    _write_step(out, "k1", {"a": 1})
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.mkdir()
        (tmp / "out.txt").write_text("half")
        raise RuntimeError("killed before the record")
    assert reused(out, "k1") == {"a": 1} and (out / "out.txt").read_text() == "output"  # the old one, whole
    assert reused(out, "k2") is None


def test_in_place_steps_forget_before_they_write(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "evaluation.json").write_text("{}")
    record(out, "evaluation", 1, "k1", {"a": 1})
    forget(out)
    (out / "evaluation.json").write_text('{"b": 2}')  # a run that dies here leaves no record
    assert reused(out, "k1") is None
    record(out, "evaluation", 1, "k2", {"b": 2})
    assert reused(out, "k2") == {"b": 2}


# --- The library steps write their record inside their atomic folder, and nothing else changes -----


def test_tokenizer_record_beside_the_same_files(tmp_path):
    from training.config import TokenizerConfig
    from training.curriculum.tokenizer import STEP, VERSION, bytes_per_token, fit_tokenizer, save_tokenizer, train_tokenizer

    texts = [f"kiln {i} fires clay at {i * 7} degrees" for i in range(50)]
    cfg = TokenizerConfig(vocab_size=300)
    train_tokenizer(texts, cfg, tmp_path / "plain")
    tok = fit_tokenizer(texts, cfg)
    result = {"vocab_size": len(tok), "bytes_per_token": bytes_per_token(tok, [("text", "kiln fires clay")])}
    save_tokenizer(tok, tmp_path / "keyed", "k1", result)
    plain = {p.name: p.read_bytes() for p in (tmp_path / "plain").iterdir()}
    keyed = {p.name: p.read_bytes() for p in (tmp_path / "keyed").iterdir() if p.name != STEP_JSON}
    assert keyed == plain  # measuring the tokenizer before it is saved changes nothing it writes
    assert reused(tmp_path / "keyed", "k1") == result and result["bytes_per_token"]["text"] > 1
    assert json.loads((tmp_path / "keyed" / STEP_JSON).read_text())["step"] == STEP and VERSION >= 1


def test_curriculum_record_beside_the_same_files(tmp_path):
    from training.config import CurriculumConfig
    from training.curriculum.schedule import build_curriculum

    from tests.helpers import token_shards

    n = 60
    ids = [f"r{i}" for i in range(n)]
    pq.write_table(pa.table({"id": ids, "modality": ["text"] * n, "batch": ["b1"] * n, "split": ["heldout" if i % 10 == 0 else "train" for i in range(n)],
                             "level": pa.array([1 + i % 5 for i in range(n)], pa.int8())}), tmp_path / "scores.parquet")
    (tmp_path / "corpus" / "b1").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "modality": ["text"] * n, "text": [f"record {i} of the kiln corpus" for i in range(n)]}),
                   tmp_path / "corpus" / "b1" / "text.parquet")
    args = ([tmp_path / "scores.parquet"], tmp_path / "corpus", token_shards(tmp_path / "corpus", tmp_path)[0])
    plain = build_curriculum(*args, tmp_path / "plain", CurriculumConfig())
    keyed = build_curriculum(*args, tmp_path / "keyed", CurriculumConfig(), "k1")
    files = lambda d: {p.name: p.read_bytes() for p in (tmp_path / d).iterdir() if p.name != STEP_JSON}  # noqa: E731
    assert files("keyed") == files("plain") and not (tmp_path / "plain" / STEP_JSON).exists()
    assert reused(tmp_path / "keyed", "k1") == keyed == plain

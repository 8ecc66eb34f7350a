from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from transformers import AutoTokenizer

from training.config import CurriculumConfig, TokenizerConfig
from training.curriculum.schedule import build_curriculum
from training.layout import stage_file
from training.fsutil import sha256_file
from training.curriculum.tokenizer import round_trip_failures, train_tokenizer
from training.generate import encode_records

from tests.helpers import token_shards


@pytest.fixture
def scored(tmp_path: Path) -> tuple[Path, Path]:
    n = 200
    ids = [f"r{i}" for i in range(n)]
    scores = pa.table(
        {
            "id": ids,
            "modality": ["text"] * n,
            "batch": ["b1"] * n,
            "split": ["heldout" if i % 10 == 0 else "train" for i in range(n)],
            "level": pa.array([1 + i % 5 for i in range(n)], pa.int8()),
        }
    )
    pq.write_table(scores, tmp_path / "scores.parquet")
    (tmp_path / "corpus" / "b1").mkdir(parents=True)
    pq.write_table(pa.table({"id": ids, "modality": ["text"] * n, "text": [f"record {i} " * 3 for i in range(n)]}), tmp_path / "corpus" / "b1" / "text.parquet")
    return tmp_path / "scores.parquet", tmp_path / "corpus"


def _build(scored, out: Path, cfg: CurriculumConfig) -> dict:
    tokens = out.parent / "tokenized_corpus"
    if not tokens.exists():
        token_shards(scored[1], out.parent)
    return build_curriculum([scored[0]], scored[1], tokens, out, cfg)


def test_pendulum_stages_sample_levels_up_to_k(scored, tmp_path):
    summary = _build(scored, tmp_path / "cur", CurriculumConfig())
    assert [s["level"] for s in summary["stages"]] == [1, 2, 3, 4, 5, 4, 3, 2, 1]
    # 40 records per level; every tenth record is held out, all of them level 1.
    assert [s["records"] for s in summary["stages"]] == [20, 60, 100, 140, 180, 140, 100, 60, 20]
    tok = AutoTokenizer.from_pretrained(tmp_path / "tokenizer")
    texts = dict(zip(*pq.read_table(scored[1] / "b1" / "text.parquet", columns=["id", "text"]).to_pydict().values()))
    for s in summary["stages"]:
        stage = pq.read_table(tmp_path / "cur" / stage_file(s["stage"]))
        assert max(stage["level"].to_pylist()) <= s["level"]
        # The stored counts are the stage's records as training encodes them.
        assert s["tokens"] == sum(map(len, encode_records(tok, [texts[i] for i in stage["id"].to_pylist()]))) > s["records"]
        assert s["sha256"] == sha256_file(tmp_path / "cur" / stage_file(s["stage"]))  # what stage specs fingerprint


def test_custom_schedule_and_determinism(scored, tmp_path):
    a = _build(scored, tmp_path / "a", CurriculumConfig(schedule=(2, 5), seed=7))
    _build(scored, tmp_path / "b", CurriculumConfig(schedule=(2, 5), seed=7))
    _build(scored, tmp_path / "c", CurriculumConfig(schedule=(2, 5), seed=8))
    assert [s["level"] for s in a["stages"]] == [2, 5]
    order = lambda d, i: pq.read_table(tmp_path / d / stage_file(i))["id"].to_pylist()  # noqa: E731
    assert order("a", 1) == order("b", 1) and order("a", 2) == order("b", 2)
    assert order("a", 2) != order("c", 2) and sorted(order("a", 2)) == sorted(order("c", 2))


def test_heldout_records_are_never_in_a_stage(scored, tmp_path):
    summary = _build(scored, tmp_path / "cur", CurriculumConfig())
    heldout = set(pq.read_table(tmp_path / "cur" / "heldout.parquet")["id"].to_pylist())
    assert len(heldout) == summary["heldout_records"] == 20
    for s in summary["stages"]:
        assert heldout.isdisjoint(pq.read_table(tmp_path / "cur" / stage_file(s["stage"]))["id"].to_pylist())


def test_empty_schedule_is_an_error(scored, tmp_path):
    with pytest.raises(ValueError, match="empty"):
        _build(scored, tmp_path / "cur", CurriculumConfig(schedule=()))


def test_tokenizer_round_trip_and_loading(tmp_path):
    corpus = [
        "def area(r):\n    return 3.14159 * r * r\n",
        "数据清洗是训练语言模型之前最费时的工作之一。",
        "Kilns fire clay at high temperature until it turns hard.",
    ] * 30
    train_tokenizer(corpus, TokenizerConfig(vocab_size=400), tmp_path / "tok")
    assert sorted(p.name for p in (tmp_path / "tok").iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    tok = AutoTokenizer.from_pretrained(tmp_path / "tok")
    assert tok.bos_token and tok.eos_token and tok.pad_token and tok.unk_token
    held = [("zh", "分词器决定了模型看到的基本单位。"), ("code", "fn main() {\n\tprintln!(\"hi\");\n}\n"), ("emoji", " 🎉 x\n")]
    assert list(round_trip_failures(tok, held)) == []
    # The tokenizer adds no special tokens itself; kiln writes them around each record.
    assert tok("hello")["input_ids"] == tok("hello", add_special_tokens=False)["input_ids"]
    [ids] = encode_records(tok, ["hello"])
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id and ids[1:-1] == tok("hello")["input_ids"]


def test_scores_in_another_order_than_the_corpus_make_the_same_curriculum(scored, tmp_path):
    """Scores row for row with the corpus are put side by side; in any other order they are joined."""
    aligned = _build(scored, tmp_path / "aligned", CurriculumConfig())
    shuffled = tmp_path / "shuffled.parquet"
    table = pq.read_table(scored[0])
    pq.write_table(table.take(list(reversed(range(table.num_rows)))), shuffled)
    joined = _build((shuffled, scored[1]), tmp_path / "joined", CurriculumConfig())
    assert joined["stages"] == aligned["stages"]  # records, tokens and each stage file's sha256

import numpy as np
import pytest

from training.config import DifficultyConfig
from training.curriculum.difficulty import BertScore, is_heldout, levels, split_record


@pytest.fixture(scope="module")
def bert():
    return BertScore(DifficultyConfig())


def test_bertscore_hand_checked_cases(bert):
    cands = ["The cat sat on the mat.", "def f(x): return x + 1", "quarterly tax filing deadlines for corporations"]
    refs = ["The cat sat on the mat.", "def g(y): return y + 1", "a red circle on the left"]
    p, r, f = bert(cands, refs)
    assert f[0] == pytest.approx(1.0, abs=1e-4) and p[0] == pytest.approx(1.0, abs=1e-4)  # identical: the maximum
    assert 0.5 < f[1] < 0.95  # renamed code: similar, not identical
    assert f[2] < 0.3 < f[1]  # unrelated: far lower
    assert np.all((0 <= r) & (r <= 1.0001))


def test_bertscore_is_order_independent_in_a_batch(bert):
    # torchmetrics 1.9 misaligns pairs in batches of three or more; bert-score must not.
    pairs = [("a cup of coffee", "a cup of coffee"), ("galaxies in deep space", "a brick wall"), ("x = 1", "x = 1")]
    _, _, f = bert([c for c, _ in pairs], [r for _, r in pairs])
    assert f[0] == pytest.approx(1.0, abs=1e-4) and f[2] == pytest.approx(1.0, abs=1e-4) and f[1] < 0.5


@pytest.mark.parametrize(
    "difficulty, level",
    [(0.0, 1), (0.2999, 1), (0.3, 2), (0.4999, 2), (0.5, 3), (0.6999, 3), (0.7, 4), (0.8999, 4), (0.9, 5), (1.0, 5)],
)
def test_level_bins(difficulty, level):
    assert levels(np.array([difficulty]), DifficultyConfig().level_edges)[0] == level


def test_level_edges_are_configurable():
    assert list(levels(np.array([0.1, 0.4, 0.6]), (0.5,))) == [1, 1, 2]


@pytest.mark.parametrize(
    "text, span, beginning, continuation",
    [
        ("one two three four", 48, "one two", " three four"),
        ("a b c d e f g h", 2, "a b", " c d"),
        ("line one\n\nline two", 48, "line one", "\n\nline two"),
        ("机器学习很有趣", 2, "机器", "学习"),
        ("def f(x): return x", 48, "def f(", "x): return x"),
        ("single", 48, "single", ""),
    ],
)
def test_split_record(text, span, beginning, continuation):
    assert split_record(text, span) == (beginning, continuation)


def test_heldout_split_is_deterministic_and_near_its_share():
    ids = [f"rec-{i}" for i in range(20000)]
    first = [is_heldout("text", i, 0.05) for i in ids]
    assert first == [is_heldout("text", i, 0.05) for i in ids]
    assert 0.04 < sum(first) / len(ids) < 0.06
    assert not any(is_heldout("text", i, 0.0) for i in ids[:100])


def _corpus(tmp_path, texts):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "corpus" / "b1").mkdir(parents=True)
    n = len(texts)
    pq.write_table(
        pa.table({"id": [f"r{i}" for i in range(n)], "modality": ["text"] * n, "batch": ["b1"] * n,
                  "source": [f"b1/text/a.jsonl:{i + 1}" for i in range(n)], "text": texts}),
        tmp_path / "corpus" / "b1" / "text.parquet",
    )
    return tmp_path / "corpus"


def test_persistence_rates_self_similar_records_easier_than_shifting_ones(tmp_path):
    import pyarrow.parquet as pq

    from training.curriculum.difficulty import Persistence, score_difficulty

    texts = [
        "the red kiln fires the red clay and the red kiln fires the red clay again and again today",
        "the red kiln fires the clay at dawn; meanwhile quarterly tax filings confuse every accountant in town",
        "word",
    ]
    stats = score_difficulty(_corpus(tmp_path, texts), tmp_path / "out", DifficultyConfig(span_words=8), Persistence(), key="k1")
    rows = pq.read_table(tmp_path / "out" / "scores.parquet").to_pylist()
    assert [r["id"] for r in rows] == ["r0", "r1", "r2"]
    assert rows[0]["difficulty"] < rows[1]["difficulty"]
    assert rows[2]["difficulty"] == 0.0 and rows[2]["level"] == 1  # one word: nothing to predict
    assert stats["records"] == 3 and stats["scored"] == 2 and "persistence" in stats["predictor"]
    # The folder is written whole: the scores, their picture and last the step's record of the result.
    from training.cache import reused

    assert stats["levels_png"] == "levels_by_batch.png" and (tmp_path / "out" / "levels_by_batch.png").is_file()
    assert reused(tmp_path / "out", "k1") == stats and sum(stats["histogram"]["text"].values()) == 3


def test_released_model_predictor_continues_each_beginning_as_it_would_alone(tmp_path):
    """Beginnings of different lengths are generated in one left-padded batch: each gets the greedy
    continuation it gets in a batch of its own."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.config import TokenizerConfig
    from training.curriculum.difficulty import ReleasedModel
    from training.curriculum.tokenizer import train_tokenizer

    tok = train_tokenizer(["kilns fire clay at high temperature"] * 20, TokenizerConfig(vocab_size=300), tmp_path / "rel")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp_path / "rel")
    beginnings = ["kilns fire", "clay at high temperature kilns", "temperature"]
    predictor = ReleasedModel(str(tmp_path / "rel"), max_new_tokens=5, batch_size=3)
    out = predictor.predict(beginnings)
    alone = ReleasedModel(str(tmp_path / "rel"), max_new_tokens=5, batch_size=1).predict(beginnings)
    assert out == alone and len(out) == 3 and all(out)
    assert str(tmp_path / "rel") in predictor.name

import numpy as np
import pytest

from training.config import DifficultyConfig
from training.data.difficulty import BertScore, is_heldout, levels, split_record


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
        ("one two three four", 48, "one two ", "three four"),
        ("a b c d e f g h", 2, "a b ", "c d"),
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

import numpy as np
import pytest

from training.config import DifficultyConfig
from training.curriculum.difficulty import BertScore, Persistence, is_heldout, levels, split_record


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
    # The folder is written whole: the scores and last the step's record of the result.
    from training.cache import reused

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
    # Its own batch size by default: a GPU generates many prompts at the cost of one.
    default = ReleasedModel(str(tmp_path / "rel"), max_new_tokens=5)
    assert default.batch_size == (128 if torch.cuda.is_available() else 16)
    assert default.fingerprint == predictor.fingerprint  # the files, not the batch size, make the predictions


# --- BERTScore with the encoder directly, against bert-score -------------------------------------------


def _sample_pairs(n=96, seed=0, longest=60):
    """Fragments of Python's documentation (1 to 60 words, so short and long), the edge cases bert-score
    handles specially (an empty or blank side), and non-ASCII text."""
    import random

    from pydoc_data.topics import topics

    words = " ".join(topics.values()).split()
    rng = random.Random(seed)

    def fragment():
        i = rng.randrange(len(words) - longest)
        return " ".join(words[i : i + rng.randint(1, longest)])

    cands = [fragment() for _ in range(n - 5)] + ["", "   ", "机器学习很有趣, café naïve", "Größe über 日本語の文", "x"]
    refs = [fragment() for _ in range(n - 5)] + ["a reference", "another one", "Straße über 日本語", "機械学習は面白い", ""]
    return cands, refs


@pytest.fixture(scope="module")
def reference_scorer():
    from bert_score import BERTScorer

    from training.curriculum.difficulty import default_encoder

    scorer = BERTScorer(model_type=default_encoder(), num_layers=DifficultyConfig().layer, batch_size=64, lang="en")
    tok = scorer._tokenizer
    # bert-score encodes an empty sentence with build_inputs_with_special_tokens([]), which transformers 5
    # removed (it raises AttributeError); what it returned on transformers 4: the special tokens alone.
    tok.build_inputs_with_special_tokens = lambda ids: [tok.cls_token_id, *ids, tok.sep_token_id]
    scorer.nthreads = 0  # idf counted in process: the patched tokenizer does not pickle
    return scorer


@pytest.mark.slow  # 4 x 96 pairs (two of the encoder's batches of 64) on 2 cores: about 10 s
@pytest.mark.parametrize("idf", [False, True])
def test_agrees_with_bert_score_within_1e5(reference_scorer, idf):
    cands, refs = _sample_pairs()
    reference_scorer._idf = idf
    if idf:
        reference_scorer.compute_idf(refs)
    expected = [t.numpy() for t in reference_scorer.score(cands, refs)]
    got = BertScore(DifficultyConfig(idf=idf), refs)(cands, refs)
    for name, g, e in zip("PRF", got, expected):
        assert g.shape == e.shape == (len(cands),)
        assert np.abs(g - e).max() < 1e-5, (name, int(np.abs(g - e).argmax()))
    # The cases bert-score treats specially: an empty or blank side scores 0; non-ASCII text does not.
    for i in (-5, -4, -1):
        assert [float(got[k][i]) for k in range(3)] == [0.0, 0.0, 0.0]
    assert got[2][-3] > 0.0 and got[2][-2] > 0.0


def test_bert_score_idf_weights_are_bert_scores_get_idf_dict():
    from math import log

    from training.curriculum.bertscore import Idf

    idf = Idf()
    idf.add([[101, 7, 8, 102], [101, 7, 7, 102], [101, 9, 102]])
    # log((M + 1) / (df + 1)): every sentence holds [CLS] and [SEP], so they weigh 0; an unseen token log(M + 1).
    assert idf.weights([101, 7, 8, 9, 102, 555]) == pytest.approx([0.0, log(4 / 3), log(4 / 2), log(4 / 2), 0.0, log(4)])


def test_scores_come_back_in_the_callers_order(bert):
    """Pairs are sorted by length and batched (2 pairs a pass here): each pair's scores are its own, in
    the order given, whatever the order given."""
    small = BertScore(DifficultyConfig(batch_size=4))
    cands, refs = _sample_pairs(12, seed=1, longest=16)
    p, r, f = small(cands, refs)
    alone = np.array([[x[0] for x in small([c], [r_])] for c, r_ in zip(cands, refs)])
    assert np.abs(np.stack([p, r, f], axis=1) - alone).max() < 1e-6  # batched vs alone: float rounding only
    perm = np.random.default_rng(0).permutation(len(cands))
    _, _, f_perm = small([cands[i] for i in perm], [refs[i] for i in perm])
    assert np.abs(f_perm - f[perm]).max() < 1e-6
    assert len(set(np.round(f, 4))) > 8  # distinct pairs, distinct scores: a mix-up would show


def test_a_pass_of_long_sentences_holds_fewer_and_the_scores_are_the_same(bert, monkeypatch):
    """Attention grows with the square of a pass's width: wide sentences go through a few at a time (at
    most the activations of a full pass at PASS_WIDTH tokens), short ones a full pass at once; each
    sentence's pass is one of its own length, whichever side of its pair it is."""
    from training.curriculum.bertscore import PASS_WIDTH

    words = "the potter shapes another bowl on the wheel by the window while galaxies drift apart".split()
    cands = [" ".join(words * k)[: 40 * k] for k in range(1, 41)] + [" ".join(words[i % 10 : i % 10 + 5]) for i in range(40)]
    refs = [" ".join(reversed(words * k))[: 40 * k] for k in range(1, 41)] + [" ".join(words[i % 7 : i % 7 + 8]) for i in range(40)]
    passes = []
    model = bert.model

    def recording(ids, **kwargs):
        passes.append(tuple(ids.shape))
        return model(ids, **kwargs)

    monkeypatch.setattr(bert, "model", recording)
    p, r, f = bert(cands, refs)
    full = bert.pairs_per_batch * 2
    assert sum(n for n, _ in passes) == 160 and passes[0][1] > 2 * PASS_WIDTH  # widest: about 290 tokens
    assert all(n * width**2 <= full * PASS_WIDTH**2 or n == 1 for n, width in passes)
    assert passes[0][0] < full // 4 and full in [n for n, width in passes if width <= PASS_WIDTH]
    monkeypatch.undo()
    alone = np.array([[x[0] for x in bert([c], [r_])] for c, r_ in zip(cands, refs)])
    assert np.abs(np.stack([p, r, f], axis=1) - alone).max() < 1e-5


# --- Streamed scoring of one batch ------------------------------------------------------------------------

SENTENCES = [
    "the red kiln fires the red clay and the red kiln fires the red clay again and again today",
    "the red kiln fires the clay at dawn; meanwhile quarterly tax filings confuse every accountant in town",
    "def f(x): return x + 1 if x > 0 else f(-x) + 2 * x",
    "机器学习很有趣，深度学习更有趣，强化学习最有趣",
    "galaxies drift apart while the potter shapes another bowl on the wheel by the window",
    "word",
    "",
    "import os\nimport sys\nprint(os.getcwd(), sys.argv)\nprint(os.getcwd(), sys.argv)",
]


def _batch_file(path, texts, ids=None, batch="b1"):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ids = ids or [f"r{i}" for i in range(len(texts))]
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(
        pa.table({"id": ids, "modality": ["text"] * len(texts), "batch": [batch] * len(texts),
                  "source": [f"{batch}/text/a.jsonl:{i + 1}" for i in range(len(texts))], "text": texts}),
        path,
    )
    return path


def _texts(n):
    return [f"{SENTENCES[i % len(SENTENCES)]} {i} and then {SENTENCES[(3 * i + 1) % len(SENTENCES)]}" for i in range(n)]


class Counting:
    """Persistence that counts the beginnings it is asked to continue, and can fail on a given call."""

    name, fingerprint = "persistence (counted)", "persistence-1"

    def __init__(self, fail_on_call=None):
        self.beginnings, self.calls, self.fail_on_call = [], 0, fail_on_call

    def predict(self, beginnings):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise RuntimeError("predictor died")
        self.beginnings += beginnings
        return list(beginnings)


def test_chunk_size_changes_no_score(tmp_path):
    """Each pair encoded alone (batch_size 1): the files are equal to the bit, metadata included.
    With batching, chunking changes which pairs share a forward pass: float rounding only (below)."""
    import pyarrow.parquet as pq

    from training.curriculum.difficulty import score_batch

    files = [_batch_file(tmp_path / "b1" / "text.parquet", _texts(10) + SENTENCES), _batch_file(tmp_path / "b1" / "code.parquet", _texts(9))]
    cfg = DifficultyConfig(span_words=8, batch_size=1)
    one = BertScore(cfg)
    a = score_batch(files, tmp_path / "a.parquet", cfg, Persistence(), chunk_rows=7, scorer=one)
    b = score_batch(files, tmp_path / "b.parquet", cfg, Persistence(), chunk_rows=2048, scorer=one)
    ta, tb = pq.read_table(tmp_path / "a.parquet"), pq.read_table(tmp_path / "b.parquet")
    assert ta.num_rows == 27 and ta.schema.equals(tb.schema, check_metadata=True)
    for name in ta.column_names:  # equal to the bit; NaN (nothing to predict) equal to NaN
        x, y = ta[name].to_numpy(zero_copy_only=False), tb[name].to_numpy(zero_copy_only=False)
        assert np.array_equal(x, y, equal_nan=x.dtype.kind == "f"), name
    assert pq.ParquetFile(tmp_path / "a.parquet").num_row_groups == 5  # 3 + 2 chunks: streamed
    assert {k: a[k] for k in ("records", "scored", "heldout", "histogram")} == {k: b[k] for k in ("records", "scored", "heldout", "histogram")}
    batched = BertScore(DifficultyConfig(span_words=8))
    score_batch(files, tmp_path / "c.parquet", cfg, Persistence(), chunk_rows=7, scorer=batched)
    tc = pq.read_table(tmp_path / "c.parquet")
    assert tc.drop_columns(["difficulty", "bert_precision", "bert_recall", "bert_f1"]).equals(ta.drop_columns(["difficulty", "bert_precision", "bert_recall", "bert_f1"]))
    assert np.nanmax(np.abs(tc["bert_f1"].to_numpy() - ta["bert_f1"].to_numpy())) < 1e-6


def test_rescoring_scores_only_new_and_changed_records(tmp_path, bert):
    import pyarrow.parquet as pq

    from training.curriculum.difficulty import score_batch

    cfg = DifficultyConfig(span_words=8)
    texts = _texts(12)
    first = score_batch([_batch_file(tmp_path / "v1.parquet", texts)], tmp_path / "scores.parquet", cfg, Persistence(), chunk_rows=5, scorer=bert)
    assert (first["records"], first["scored"], first["reused"]) == (12, 12, 0)
    before = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    changed = list(texts)
    changed[3] = "an entirely new text about glazes, cones and the colour of fired stoneware in reduction"
    changed[8] = texts[8] + " plus a sentence"
    changed.append("a record that arrived with this batch and was never scored before today")
    counting = Counting()
    again = score_batch([_batch_file(tmp_path / "v2.parquet", changed)], tmp_path / "scores.parquet", cfg, counting,
                        reuse=tmp_path / "scores.parquet", chunk_rows=5, scorer=bert)
    assert (again["records"], again["scored"], again["reused"]) == (13, 3, 10)
    assert counting.beginnings == [split_record(changed[i], 8)[0] for i in (3, 8, 12)]
    after = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    for i in set(range(12)) - {3, 8}:
        assert after[i] == before[i]  # taken as written: equal to the bit
    fresh = score_batch([tmp_path / "v2.parquet"], tmp_path / "fresh.parquet", cfg, Persistence(), scorer=bert)
    assert fresh["scored"] == 13
    for i in (3, 8, 12):
        assert after[i]["bert_f1"] == pytest.approx(pq.read_table(tmp_path / "fresh.parquet")["bert_f1"][i].as_py(), abs=1e-6)
    assert after[3]["text_blake2b"] != before[3]["text_blake2b"]


@pytest.mark.parametrize(
    "change, reused",
    [
        ({}, 12),  # the same scorer: everything
        ({"level_edges": (0.2, 0.4, 0.6, 0.8)}, 12),  # levels are recomputed from the scores, not rescored
        ({"heldout_share": 0.5}, 12),  # the split too
        ({"span_words": 9}, 0),  # another cut, other halves
        ({"layer": 5}, 0),  # other embeddings
        ({"idf": True}, 0),  # other weights
        ({"predictor": "release-abc"}, 0),  # other predictions
    ],
)
def test_scores_are_reused_only_under_the_same_scorer(tmp_path, bert, change, reused):
    from dataclasses import replace

    import pyarrow.parquet as pq

    from training.curriculum.difficulty import score_batch

    cfg = DifficultyConfig(span_words=8)
    path = _batch_file(tmp_path / "text.parquet", _texts(12))
    score_batch([path], tmp_path / "scores.parquet", cfg, Persistence(), scorer=bert)
    change = dict(change)
    predictor = Counting()
    if "predictor" in change:
        predictor.fingerprint = change.pop("predictor")
    new_cfg = replace(cfg, **change)
    scorer = bert if not ({"layer", "idf"} & set(change)) else None
    stats = score_batch([path], tmp_path / "scores.parquet", new_cfg, predictor, reuse=tmp_path / "scores.parquet", scorer=scorer)
    assert (stats["reused"], stats["scored"]) == (reused, 12 - reused)
    assert len(predictor.beginnings) == 12 - reused
    table = pq.read_table(tmp_path / "scores.parquet")
    assert table["level"].to_pylist() == levels(1 - np.asarray(table["bert_f1"].to_pylist()), new_cfg.level_edges).tolist()


def test_a_failure_mid_batch_leaves_no_file_and_the_old_scores_whole(tmp_path, bert):
    from training.curriculum.difficulty import score_batch

    cfg = DifficultyConfig(span_words=8)
    path = _batch_file(tmp_path / "in" / "text.parquet", _texts(12))
    out = tmp_path / "out" / "scores.parquet"
    with pytest.raises(RuntimeError, match="predictor died"):
        score_batch([path], out, cfg, Counting(fail_on_call=2), chunk_rows=5, scorer=bert)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []  # no file, no temporary left
    score_batch([path], out, cfg, Persistence(), scorer=bert)
    written = out.read_bytes()
    with pytest.raises(RuntimeError, match="predictor died"):
        score_batch([path], out, replace_span(cfg), Counting(fail_on_call=2), reuse=out, chunk_rows=5, scorer=bert)
    assert out.read_bytes() == written and list(out.parent.iterdir()) == [out]


def replace_span(cfg):
    from dataclasses import replace

    return replace(cfg, span_words=cfg.span_words + 1)  # another scorer: every record is predicted again


def test_score_difficulty_reuses_the_scores_already_in_its_folder(tmp_path):
    import pyarrow.parquet as pq

    from training.cache import reused
    from training.curriculum.difficulty import score_difficulty

    corpus = _corpus(tmp_path, _texts(10))
    cfg = DifficultyConfig(span_words=8)
    first = score_difficulty(corpus, tmp_path / "out", cfg, Persistence(), key="k1")
    table = pq.read_table(tmp_path / "out" / "scores.parquet")
    _batch_file(corpus / "b2" / "text.parquet", _texts(13)[10:], ids=["s10", "s11", "s12"], batch="b2")
    second = score_difficulty(corpus, tmp_path / "out", cfg, Persistence(), key="k2")
    assert (first["scored"], first["reused"]) == (10, 0) and (second["records"], second["scored"], second["reused"]) == (13, 3, 10)
    assert pq.read_table(tmp_path / "out" / "scores.parquet").slice(0, 10).to_pylist() == table.to_pylist()  # no NaN here
    assert reused(tmp_path / "out", "k2") == second


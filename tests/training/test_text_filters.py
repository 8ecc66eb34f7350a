import pytest

from training.config import TextFilterConfig
from training.data.filters.text import count_words, ngram_entropy, text_filters
from training.data.records import Record

LEGAL = (
    "Subject to the terms and conditions of this License Agreement, the Licensor hereby grants Licensee a "
    "nonexclusive, royalty-free, world-wide license to reproduce, analyze, test, perform and/or display "
    "publicly, prepare derivative works, distribute, and otherwise use the Software alone or in any "
    "derivative version, provided, however, that this License Agreement and the Licensor's notice of "
    "copyright are retained in the Software alone or in any derivative version prepared by Licensee. "
)


def _legal_5000_words() -> str:
    # A 5,000-word statute: the real clauses of Python's license, numbered, with their articles.
    import sys
    from pathlib import Path

    lic = Path(sys.base_prefix, "lib", f"python{sys.version_info.major}.{sys.version_info.minor}", "LICENSE.txt")
    base = lic.read_text() if lic.is_file() else LEGAL * 20
    parts, n = [], 0
    while count_words(" ".join(parts)) < 5000:
        n += 1
        parts.append(f"Article {n}. " + base[(n * 977) % len(base):][:2500])
    return "\n\n".join(parts)


def run(text: str, cfg: TextFilterConfig = TextFilterConfig()) -> str | None:
    rec = Record("x", "text", "b/text/a.jsonl:1", text=text)
    for f in text_filters(cfg):
        verdict = f([rec])[0]
        if verdict:
            return verdict.reason
    return None


@pytest.mark.parametrize(
    "text, expected",
    [
        ("The quick brown fox jumps over the lazy dog near the quiet river bank today.", None),  # a dozen words
        ("机器学习是人工智能的一个分支，它使计算机能够在没有明确编程的情况下从数据中学习。", None),  # Chinese
        ("Der schnelle braune Fuchs springt über den faulen Hund, der am Ufer des Flusses schläft.", None),
        ("Быстрая коричневая лиса перепрыгивает через ленивую собаку у реки.", None),
        (LEGAL, None),
        ("", "text_empty"),
        ("   \n\t ", "text_empty"),
        ("thanks a lot!", "too_few_words"),
        ("aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", "too_few_words"),
        ("buy now " * 50, "entropy_low"),
        ("BUY NOW buy now Buy Now " * 20, "entropy_low"),
        ("aaaa " * 100, "entropy_low"),
        ("hahaha hahahaha hahaha hahahahaha " * 20, "entropy_low"),
        ("ha " * 200, "entropy_low"),
        ("The committee shall review every application submitted before the deadline and publish it. " * 30, "entropy_low"),
    ],
)
def test_text_filter_table(text, expected):
    assert run(text) == expected


def test_long_legal_text_is_kept():
    text = _legal_5000_words()
    assert count_words(text) >= 5000
    assert run(text) is None


def test_entropy_is_bounded_and_orders_degenerate_below_prose():
    prose = ngram_entropy(LEGAL)
    spam = ngram_entropy("buy now " * 100)
    assert 0.0 <= spam < 0.5 < 0.9 < prose <= 1.0
    assert ngram_entropy("a" * 1000) == 0.0
    assert ngram_entropy("short") == 0.0  # fewer than two n-grams carry no information


def test_entropy_threshold_is_configurable():
    text = "buy now cheap pills today " * 10
    assert run(text) == "entropy_low"
    assert run(text, TextFilterConfig(entropy_threshold=0.1)) is None


@pytest.mark.parametrize(
    "text, words",
    [("one two three", 3), ("机器学习", 4), ("kiln 烧制 pottery", 4), ("it's 2026-11-22", 5), ("", 0)],
)
def test_word_count(text, words):
    assert count_words(text) == words


EDGE_TEXTS = [
    "", "a", "seven c", "exactly8", "hello world, hello world",
    "  leading and trailing whitespace  ", "\t\n\r\x0b\x0c", "x\u00a0\u00a0y " * 40,
    "buy now " * 60, "-----" * 100 + "x", "a -- b -- c ---- d __ e " * 40, "x" * 3000,
    "机器学习很有趣。" * 30, "ΣΑΣ ΟΔΟΣ σίσυφος " * 20, "İstanbul " * 30, "🎉🎉🎉 party 🎉🎉 time " * 30,
    "word " * 1600,  # a last window shorter than half joins the one before
    "curly \u201cquotes\u201d \u2014 mostly ASCII\u2026 " * 25, "lone \ud800\ud800 surrogate " * 20,
    "\uffff at the top of the 16-bit range \uffff\uffff " * 20, "Kelvin \u212a lowercases to ASCII " * 20,
    "\U0001f389 abcdefgh abefcdgh",  # hashed in blocks of two code points: the middle two swapped differ
]


@pytest.mark.parametrize("text", EDGE_TEXTS, ids=range(len(EDGE_TEXTS)))
def test_chunked_entropy_equals_the_per_record_definition(text):
    from training.data.filters.text import ngram_entropies

    # Alone, and inside a chunk with neighbours on both sides (no n-gram crosses a record).
    alone = ngram_entropies([text])[0]
    inside = ngram_entropies(["zzzz " * 9, text, "qqqq qqqq"])[1]
    assert alone == pytest.approx(ngram_entropy(text), abs=1e-9)
    assert inside == pytest.approx(ngram_entropy(text), abs=1e-9)


@pytest.mark.parametrize(
    "texts",
    [
        [t for t in EDGE_TEXTS if t.isascii()],  # bytes
        [t for t in EDGE_TEXTS if not t.isascii() and max(t) < "\uffff"],  # 16-bit code points
        EDGE_TEXTS,  # mixed: ASCII in bytes, the rest in 32-bit code points (an emoji is past 16 bits)
    ],
    ids=["ascii", "bmp", "mixed"],
)
@pytest.mark.parametrize("n, window", [(8, 1024), (1, 50), (2, 16), (3, 64), (5, 300), (12, 100)])
def test_chunked_entropy_on_each_stream_and_n_gram_key(texts, n, window):
    # n-grams of up to 8 bytes, 4 or 2 code points are their own keys, longer ones hashed.
    from training.data.filters.text import ngram_entropies

    expected = [ngram_entropy(t, n, window) for t in texts]
    assert list(ngram_entropies(texts, n, window)) == pytest.approx(expected, abs=1e-9)


def test_chunked_entropy_on_real_documents_and_other_window_sizes():
    from pydoc_data.topics import topics

    from training.data.filters.text import ngram_entropies

    texts = list(topics.values())[:200]
    for n, window in ((8, 1024), (3, 64), (5, 300)):
        expected = [ngram_entropy(t, n, window) for t in texts]
        assert list(ngram_entropies(texts, n, window)) == pytest.approx(expected, abs=1e-9)


def test_the_entropy_filter_gives_the_same_verdicts_per_chunk_and_per_record():
    from training.data.filters.text import Entropy

    records = [Record(str(i), "text", f"s{i}", text=t) for i, t in enumerate(EDGE_TEXTS)]
    chunked = Entropy(0.8, 8, 1024)(records)
    chunk_scores = [r.entropy for r in records]
    single = [Entropy(0.8, 8, 1024).check(r) for r in records]
    assert [v and v.reason for v in chunked] == [v and v.reason for v in single]
    assert chunk_scores == pytest.approx([r.entropy for r in records], abs=1e-9)

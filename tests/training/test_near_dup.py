"""Near-duplicates in the corpus step: light edits across batches, distinct documents on one topic,
incremental batches that do not hash the earlier ones again, the config's checks, the accounting."""

import json
import random
import re
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest

from training.config import CleaningConfig, NearDupConfig
from training.data import near_dup
from training.data.clean import clean_landing, verify_accounting, verify_corpus
from training.data.records import Record

VOCABULARY = (
    "kiln clay glaze fire cone pot potter wheel studio bisque stoneware porcelain earthenware slip oxide "
    "copper iron cobalt ash wood gas electric chamber shelf post vent damper flue brick arch door crack "
    "shrink warp bubble pinhole crawl craze dunt temperature hour minute morning evening night week season "
    "batch order record log note sample test tile color blue green brown white black red surface edge rim "
    "foot handle lid spout bowl plate cup vase jar bottle mug platter teapot pitcher form shape line curve"
).split()
DETAIL = re.compile(r"first kept at (\S+), estimated Jaccard (\d\.\d\d)")


def document(seed: int, sentences: int = 10) -> str:
    """About 1 KB of prose-like text drawn from the vocabulary: one topic, every document distinct."""
    rng = random.Random(seed)
    return " ".join(" ".join(rng.choice(VOCABULARY) for _ in range(rng.randint(12, 18))).capitalize() + "." for _ in range(sentences))


def write_batch(landing: Path, name: str, texts: list[str], code: dict[str, str] | None = None) -> None:
    b = landing / name
    (b / "text").mkdir(parents=True)
    (b / "text" / "a.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    for rel, src in (code or {}).items():
        (b / "code" / rel).parent.mkdir(parents=True, exist_ok=True)
        (b / "code" / rel).write_text(src)
    (b / "_SUCCESS").touch()


def clean(landing: Path, out: Path, cfg: CleaningConfig = CleaningConfig()):
    return clean_landing(landing, out / "kept", out / "rejected", cfg, batches_dir=out / "batches")


def rejected(out: Path) -> dict[str, tuple[str, str]]:
    path = out / "rejected"
    rows = ds.dataset(path, format="parquet").to_table().to_pylist() if path.exists() else []
    return {r["source"]: (r["reason"], r["detail"]) for r in rows}


def accounted(landing: Path, out: Path) -> bool:
    corpus = verify_corpus(out / "batches", out / "kept", out / "rejected")
    whole = verify_accounting(landing, out / "batches", out / "kept", out / "rejected", CleaningConfig())
    return bool(corpus) and all(r.ok for r in corpus + whole)


BASE = document(0)


def _change_word(t: str) -> str:
    words = t.split()
    words[len(words) // 2] = "zirconium"
    return " ".join(words)


EDITS = {
    "changed word": _change_word,
    "appended sentence": lambda t: t + " The potter wrote the firing down in the log that evening.",
    "upper case": str.upper,
    "spacing and line breaks": lambda t: "  ".join(t.split()).replace(". ", ".\n\n"),
    "punctuation": lambda t: t.replace(".", ";").replace(" kiln ", " kiln, "),
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_a_light_edit_in_a_later_batch_is_a_near_duplicate_of_the_first(tmp_path, edit):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", [document(1), BASE])
    write_batch(landing, "b2", [document(2), EDITS[edit](BASE)])
    write_batch(landing, "b3", [EDITS[edit](BASE + " The door stayed shut for a day."), document(3)])
    clean(landing, out)
    got = rejected(out)
    assert {s: reason for s, (reason, _) in got.items()} == {"b2/text/a.jsonl:2": "near_duplicate", "b3/text/a.jsonl:1": "near_duplicate"}
    for source in ("b2/text/a.jsonl:2", "b3/text/a.jsonl:1"):
        first, jaccard = DETAIL.fullmatch(got[source][1]).groups()
        assert first == "b1/text/a.jsonl:2" and 0.8 <= float(jaccard) <= 1.0
    assert accounted(landing, out)


def test_a_near_duplicate_inside_one_batch_and_across_its_chunks(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    texts = [BASE, document(1), _change_word(BASE), document(2), BASE.upper(), document(3)]
    write_batch(landing, "b1", texts)
    for chunk_size in (2048, 2):  # one chunk; then the copies land in later chunks than the original
        clean(landing, out / str(chunk_size), CleaningConfig(chunk_size=chunk_size))
        got = rejected(out / str(chunk_size))
        assert sorted(got) == ["b1/text/a.jsonl:3", "b1/text/a.jsonl:5"]
        assert all(DETAIL.fullmatch(d).group(1) == "b1/text/a.jsonl:1" for _, d in got.values())


def test_distinct_documents_on_one_topic_are_all_kept(tmp_path):
    """Documents from one template and vocabulary share many words and phrases (their true Jaccard
    is well above zero), yet none is an edit of another."""
    rng = random.Random(7)

    def report(i: int) -> str:
        sentences = []
        for _ in range(12):
            a, b, c, d = (rng.choice(VOCABULARY) for _ in range(4))
            sentences.append(f"The {a} kiln fired {rng.randint(2, 90)} {b} pots at cone {rng.randint(1, 12)} with {c} glaze and {d} ash.")
        return f"Firing report {i}. " + " ".join(sentences)

    texts = [report(i) for i in range(40)]
    hashes, offsets = near_dup.shingle_hashes(texts, NearDupConfig().shingle_words)
    sets = [set(hashes[offsets[i] : offsets[i + 1]].tolist()) for i in range(len(texts))]
    closest = max(len(sets[i] & sets[j]) / len(sets[i] | sets[j]) for i in range(len(sets)) for j in range(i))
    assert 0.05 < closest < 0.5  # similar, not near-duplicates
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", texts[:20])
    write_batch(landing, "b2", texts[20:])
    clean(landing, out)
    assert rejected(out) == {}
    assert accounted(landing, out)


def test_a_new_batch_is_compared_with_the_earlier_ones_without_hashing_them_again(tmp_path, monkeypatch):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", [BASE, document(1)])
    write_batch(landing, "b2", [document(2), document(3)])
    clean(landing, out)
    files = {b: out / "kept" / b / "_text.minhash.npy" for b in ("b1", "b2")}
    stamps = {b: p.stat().st_mtime_ns for b, p in files.items()}
    assert [np.load(p).shape for p in files.values()] == [(2, 128), (2, 128)]  # row for row with the kept records

    hashed: list[str] = []
    signatures = near_dup.signatures

    def counting(texts, cfg):
        hashed.extend(texts)
        return signatures(texts, cfg)

    monkeypatch.setattr(near_dup, "signatures", counting)
    write_batch(landing, "b3", [document(4), _change_word(BASE)])
    report = clean(landing, out)
    assert report.deduplicated == [("b3", "text"), ("b3", "code"), ("b3", "image_text")]
    assert hashed == [document(4), _change_word(BASE)]  # b3's records only: b1 and b2 were read back
    assert {b: p.stat().st_mtime_ns for b, p in files.items()} == stamps
    reason, detail = rejected(out)["b3/text/a.jsonl:2"]
    assert reason == "near_duplicate" and DETAIL.fullmatch(detail).group(1) == "b1/text/a.jsonl:1"
    assert accounted(landing, out)

    # A cached batch whose signatures are gone is deduplicated again; it keeps what it kept, so
    # the batches after it stay cached.
    files["b2"].unlink()
    hashed.clear()
    again = clean(landing, out)
    assert again.deduplicated == [("b2", "text")]
    assert hashed == [document(2), document(3)]
    assert files["b2"].is_file() and files["b1"].stat().st_mtime_ns == stamps["b1"]
    assert accounted(landing, out)


def test_the_config_is_part_of_the_corpus_key(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", [BASE, _change_word(BASE)])
    clean(landing, out)
    assert set(rejected(out)) == {"b1/text/a.jsonl:2"}
    strict = clean(landing, out, CleaningConfig(near_dup=NearDupConfig(threshold=0.99)))
    assert strict.deduplicated == [("b1", "text"), ("b1", "code")]  # not the pairs: near-dup never judges them
    assert rejected(out) == {}
    off = clean(landing, out, CleaningConfig(near_dup=NearDupConfig(enabled=False)))
    assert off.deduplicated == [("b1", "text"), ("b1", "code")]
    assert rejected(out) == {} and accounted(landing, out)


def test_disabled_keeps_near_duplicates_and_writes_no_signatures(tmp_path):
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", [BASE])
    write_batch(landing, "b2", [_change_word(BASE), BASE.upper()])
    clean(landing, out, CleaningConfig(near_dup=NearDupConfig(enabled=False)))
    assert rejected(out) == {}
    assert pq.read_metadata(out / "kept" / "b2" / "text.parquet").num_rows == 2
    assert sorted(p.name for p in (out / "kept").rglob("*.npy")) == ["_code.keys.npy"] * 2 + ["_image_text.keys.npy"] * 2 + ["_text.keys.npy"] * 2  # exact keys only


def test_near_duplicate_code_files_across_batches(tmp_path):
    source = "".join(f"def step_{i}(value, scale={i}):\n    total = value * scale + {i * 7}\n    return total - offset_{i}\n\n" for i in range(40))
    landing, out = tmp_path / "landing", tmp_path / "out"
    write_batch(landing, "b1", [BASE], code={"tool.py": source})
    write_batch(landing, "b2", [document(1)], code={"tool_copy.py": "# vendored copy\n" + source.replace("step_7(", "stage_7(")})
    clean(landing, out)
    reason, detail = rejected(out)["b2/code/tool_copy.py"]
    assert reason == "near_duplicate" and DETAIL.fullmatch(detail).group(1) == "b1/code/tool.py"
    assert accounted(landing, out)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"permutations": 128, "bands": 12}, "must divide"),
        ({"bands": 0}, "must divide"),
        ({"threshold": 0.0}, "threshold"),
        ({"threshold": 1.5}, "threshold"),
        ({"shingle_words": 0}, "shingle_words"),
        ({"modalities": ("text", "image_text")}, "image_text"),
        ({"seed": -1}, "seed"),
        ({"permutations": 128, "bands": 2}, "use more bands"),  # rows of 64: pairs at 0.8 almost never meet
    ],
)
def test_invalid_settings_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        NearDupConfig(**settings)


def test_estimates_follow_the_true_jaccard():
    """The estimate against exact Jaccard of shingle sets, over edits of every strength."""
    cfg = NearDupConfig()
    rng = random.Random(3)
    pairs = []
    for i in range(60):
        words = document(100 + i).split()
        keep = rng.randint(len(words) // 3, len(words))
        pairs.append((" ".join(words), " ".join(words[:keep] + document(200 + i).split()[: len(words) - keep])))
    a, b = near_dup.signatures([p[0] for p in pairs], cfg), near_dup.signatures([p[1] for p in pairs], cfg)
    hashes, offsets = near_dup.shingle_hashes([x for p in pairs for x in p], cfg.shingle_words, cfg.seed)
    sets = [set(hashes[offsets[i] : offsets[i + 1]].tolist()) for i in range(2 * len(pairs))]
    exact = np.array([len(sets[2 * i] & sets[2 * i + 1]) / len(sets[2 * i] | sets[2 * i + 1]) for i in range(len(pairs))])
    error = near_dup.estimate(a, b) - exact
    assert np.sqrt((error**2).mean()) < 0.05 and abs(error.mean()) < 0.02
    assert near_dup.estimate(near_dup.signatures(["", "!!"], cfg), near_dup.signatures(["", "!!"], cfg)).tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "text, words",
    [
        ("Hello, WORLD of x_y 42!", ["hello", "world", "of", "x_y", "42"]),
        ("Café au lait, s’il vous plaît", ["café", "au", "lait", "s", "il", "vous", "plaît"]),
        ("数据清洗 needs care", ["数", "据", "清", "洗", "needs", "care"]),
        ("KELVIN\u212a 😀 émoji", ["kelvink", "émoji"]),
        ("", []),
    ],
)
def test_words_hash_the_same_in_any_record(text, words):
    """A record's words are those of the table; each hashes as it does alone, in an ASCII record or
    not (one-word shingles are the words' hashes, in order)."""

    def word_hashes(texts):
        hashes, offsets = near_dup.shingle_hashes(texts, 1)
        return hashes[offsets[-2] :].tolist()  # the last record's

    alone = [word_hashes([w])[0] for w in words]
    assert word_hashes([text]) == alone
    assert word_hashes(["ü", text]) == alone  # after a non-ASCII record
    assert near_dup.signatures(["ü", text], NearDupConfig()).tolist()[1] == near_dup.signatures([text], NearDupConfig()).tolist()[0]


@pytest.mark.parametrize(
    "a, b",
    [
        ("abcdefgXijklmnopq", "abcdefgYijklmnopq"),  # 17 characters: three 8-byte blocks, differing in the first
        ("abcdefghijklmnopqrstuvwX", "abcdefghijklmnopqrstuvwY"),  # in the last block
        ("übergrößenträgerX", "übergrößenträgerY"),  # code points: nine 2-character blocks
        ("prêtes", "pvêtes"),  # three 2-character blocks, differing in the first
        ("ab", "ab "),  # spacing is not part of a word
    ],
)
def test_long_words_hash_by_every_character(a, b):
    """A word longer than two blocks is a polynomial of all its blocks: a change anywhere changes it
    (its base once lost precision through a float: ASCII words differing in their 8th byte collided,
    and non-ASCII words of five characters or more in their second)."""
    ha, hb = near_dup.shingle_hashes([a], 1)[0], near_dup.shingle_hashes([b], 1)[0]
    assert (ha == hb).all() == (a.strip() == b.strip())


@pytest.mark.parametrize(
    "a, b",
    [
        ("Die Straße ist groß und der Fluß fließt", "DIE STRASSE IST GROSS UND DER FLUSS FLIESST"),  # ß upper-cases to SS
        ("ο σοφός λόγος του Σωκράτη", "Ο ΣΟΦΌΣ ΛΌΓΟΣ ΤΟΥ ΣΩΚΡΆΤΗ"),  # final ς and Σ
        ("a ﬁne ﬂow of clay", "A FINE FLOW OF CLAY"),  # ligatures
        ("Übergrößenträger in der Töpferei", "übergrößenträger IN DER TÖPFEREI"),
    ],
)
def test_case_does_not_change_shingles_in_any_script(a, b):
    """Upper case of a German, Greek or ligatured text has the shingles of the text: records are
    case-folded, not lowercased character by character."""
    assert near_dup.shingle_hashes([a], 2)[0].tolist() == near_dup.shingle_hashes([b], 2)[0].tolist()
    assert (near_dup.signatures([a], NearDupConfig()) == near_dup.signatures([b], NearDupConfig())).all()


def test_a_failed_batch_leaves_no_signature_file(tmp_path):
    nd = near_dup.NearDuplicates(NearDupConfig(), "text", tmp_path)
    records = [Record(str(i), "text", f"b1/text/a.jsonl:{i}", text=document(i)) for i in range(3)]
    with pytest.raises(RuntimeError, match="disk full"), nd.writing("b1"):
        nd(records)
        raise RuntimeError("disk full")
    assert list(tmp_path.rglob("*")) in ([], [tmp_path / "b1"])


@pytest.mark.slow
def test_signatures_are_the_same_in_every_process():
    """Persisted signatures are compared with new ones in later runs: they must not depend on the
    process (no Python hash()), nor change unnoticed. If this fails after an intended change to the
    words, shingles or signatures, bump near_dup.SIGNATURE_VERSION and update the digest."""
    import os
    import subprocess
    import sys

    code = (
        "import hashlib; from training.data import near_dup; from training.config import NearDupConfig; "
        "texts = ['The kiln fires clay at cone 10.', 'Café au lait, s’il vous plaît — 数据清洗', '', 'x_y_z ' * 50]; "
        "print(hashlib.sha256(near_dup.signatures(texts, NearDupConfig()).tobytes()).hexdigest())"
    )
    digests = {
        subprocess.run(
            [sys.executable, "-c", code], check=True, capture_output=True, text=True,
            env={**os.environ, "PYTHONHASHSEED": seed}, cwd=Path(__file__).resolve().parents[2],
        ).stdout.strip()
        for seed in ("1", "2")
    }
    assert digests == {"37801e0cc589f58cbf91e0bfa40ca578927b5aefb1fffc20ddf6f120309080de"}
    assert near_dup.SIGNATURE_VERSION == 3


def test_signatures_do_not_depend_on_how_records_are_grouped_into_passes(monkeypatch):
    """Records are hashed in passes of about _SPAN_CHARS characters (memory stays bounded whatever
    their size); a record's signature is the same whichever pass it falls in, ASCII or not."""
    texts = [document(i) for i in range(6)] + ["Café au lait, s’il vous plaît — 数据清洗", "", "x"] + [document(9) * 3]
    whole = near_dup.signatures(texts, NearDupConfig())
    monkeypatch.setattr(near_dup, "_SPAN_CHARS", 40)  # about one record a pass
    assert (near_dup.signatures(texts, NearDupConfig()) == whole).all()
    assert (near_dup.signatures(texts[::-1], NearDupConfig()) == whole[::-1]).all()


def test_a_kernel_compiles_where_no_cache_can_be_written(monkeypatch):
    """A read-only install without a writable home: numba has no cache location, and the kernels
    compile in the process instead of failing the import."""
    from numba.core.caching import CacheImpl

    assert type(near_dup._scan._cache).__name__ == "FunctionCache"  # where a cache can be written, one is
    monkeypatch.setattr(CacheImpl, "_locator_classes", [])
    add = near_dup._compiled(lambda x: x + 1)
    assert add(41) == 42 and type(add._cache).__name__ == "NullCache"

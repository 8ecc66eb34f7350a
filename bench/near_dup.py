"""Near-duplicate detection (`training/data/near_dup.py`): how well it finds them, how its signatures
compare with the libraries', and what it costs the whole text cleaning.

- quality: a landing zone of three batches: base documents (6-14 sentences of the benchmark
  corpus's sentence pool, about 1 KB), light edits of them in the later batches (a changed word, an
  appended sentence, upper case, other spacing and line breaks) and distinct documents on the same
  topic (the same pool: half of a base document's sentences with others, and fresh draws), cleaned
  by `clean_landing`. Precision and recall of the `near_duplicate` verdicts against the known edits,
  and the exact Jaccard of both kinds of pair to their base.
- engines: kiln's one-permutation MinHash (numpy) against rensa's R-MinHash and datasketch's MinHash,
  128 values each, on the same shingle hashes: documents/s and the RMS error of the Jaccard estimate
  against the exact Jaccard of the shingle sets. A library that is not installed is left out.
- cost: the whole text cleaning of the benchmark corpus with near-duplicate detection on and off
  (`kiln` and `kiln-exact`), one child process each: records/s (wall and CPU) and peak RSS.
"""

from __future__ import annotations

import json
import random
import re
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from bench.cleaning import whole_cleaning
from bench.corpus import sentences
from training.config import CleaningConfig, NearDupConfig
from training.data import near_dup
from training.data.clean import clean_landing
from training.data.landing import READY_MARKER
from training.fsutil import atomic_path, remove

EDITS = {
    "changed word": lambda t, rng: _change_word(t, rng),
    "appended sentence": lambda t, rng: f"{t} {rng.choice(_POOL)}",
    "upper case": lambda t, rng: t.upper(),
    "spacing": lambda t, rng: "  ".join(t.split()).replace(". ", ".\n\n"),
}
NEGATIVES = ("half the sentences", "fresh draw")
_POOL: list[str] = []
_DETAIL = re.compile(r"first kept at (\S+), estimated Jaccard (\d\.\d\d)")


def _change_word(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = "zq" + words[i]
    return " ".join(words)


def _document(rng: random.Random) -> list[str]:
    """About 1 KB: sentences of the pool until 900 characters or more (6 at least)."""
    out: list[str] = []
    while len(out) < 6 or sum(map(len, out)) < 900:
        out.append(rng.choice(_POOL))
    return out


def quality_set(docs: int, seed: int = 0) -> tuple[dict[str, list[dict]], dict[str, tuple[str, str]]]:
    """Batches of records and the truth: record id -> (kind, id of the base document it comes from)."""
    if not _POOL:
        _POOL.extend(s for s in sentences() if len(s) >= 40)
    rng = random.Random(seed)
    batches: dict[str, list[dict]] = {"batch-0001": [], "batch-0002": [], "batch-0003": []}
    truth: dict[str, tuple[str, str]] = {}
    for i in range(docs):
        base = _document(rng)
        text = " ".join(base)
        batches["batch-0001"].append({"id": f"base-{i}", "text": text})
        truth[f"base-{i}"] = ("base", f"base-{i}")
        for kind, edit in EDITS.items():
            rid = f"edit-{kind.replace(' ', '-')}-{i}"
            batches[rng.choice(["batch-0002", "batch-0003"])].append({"id": rid, "text": edit(text, rng)})
            truth[rid] = (kind, f"base-{i}")
        half = list(base)
        for j in rng.sample(range(len(half)), len(half) // 2):
            half[j] = rng.choice(_POOL)
        batches[rng.choice(list(batches))].append({"id": f"half-{i}", "text": " ".join(half)})
        batches[rng.choice(list(batches))].append({"id": f"fresh-{i}", "text": " ".join(_document(rng))})
        truth[f"half-{i}"], truth[f"fresh-{i}"] = ("half the sentences", f"base-{i}"), ("fresh draw", f"base-{i}")
    for records in batches.values():
        rng.shuffle(records)
    return batches, truth


def _write_landing(landing: Path, batches: dict[str, list[dict]]) -> None:
    remove(landing)
    for name, records in batches.items():
        with atomic_path(landing / name) as tmp:
            (tmp / "text").mkdir(parents=True)
            (tmp / "text" / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
            (tmp / READY_MARKER).touch()


def _exact_jaccard(a: list[str], b: list[str], cfg: NearDupConfig) -> np.ndarray:
    hashes, offsets = near_dup.shingle_hashes(a + b, cfg.shingle_words, cfg.seed)
    sets = [set(hashes[offsets[i] : offsets[i + 1]].tolist()) for i in range(len(a) + len(b))]
    return np.array([len(sets[i] & sets[len(a) + i]) / max(len(sets[i] | sets[len(a) + i]), 1) for i in range(len(a))])


def quality(work: Path, docs: int) -> dict:
    """Precision and recall of the verdicts on the quality set, by kind of edit."""
    cfg = CleaningConfig()
    batches, truth = quality_set(docs)
    landing, out = work / "near_dup" / "landing", work / "near_dup" / "out"
    _write_landing(landing, batches)
    remove(out)
    start = time.perf_counter()
    clean_landing(landing, out / "cleaned", out / "rejected", cfg, batches_dir=out / "batches")
    seconds = time.perf_counter() - start
    source_id = {}
    for part in (out / "batches").glob("*/text.parquet"):
        source_id.update(zip(*pq.read_table(part, columns=["source", "id"]).to_pydict().values()))
    verdicts = {}
    for part in (out / "rejected").glob("*/text*.parquet"):
        for row in pq.read_table(part, columns=["id", "reason", "detail"]).to_pylist():
            verdicts[row["id"]] = (row["reason"], row["detail"])
    near = {rid: _DETAIL.fullmatch(d) for rid, (reason, d) in verdicts.items() if reason == "near_duplicate"}
    # Right: an edit rejected as a near-duplicate of its own base (or of another edit of it kept first).
    right = [rid for rid, m in near.items() if truth[rid][0] in EDITS and truth[source_id[m.group(1)]][1] == truth[rid][1]]
    text = {r["id"]: r["text"] for records in batches.values() for r in records}
    by_kind, above = {}, []
    for kind in [*EDITS, *NEGATIVES]:
        ids = [rid for rid, (k, _) in truth.items() if k == kind]
        exact = _exact_jaccard([text[i] for i in ids], [text[truth[i][1]] for i in ids], cfg.near_dup)
        if kind in EDITS:
            above += [rid for rid, j in zip(ids, exact) if j >= cfg.near_dup.threshold]
        by_kind[kind] = {
            "records": len(ids),
            "near_duplicate": sum(rid in near for rid in ids),
            "exact_jaccard_min": round(float(exact.min()), 3),
            "exact_jaccard_median": round(float(np.median(exact)), 3),
            "exact_jaccard_max": round(float(exact.max()), 3),
        }
    edits = sum(v["records"] for k, v in by_kind.items() if k in EDITS)
    return {
        "documents": len(truth),
        "base_documents": docs,
        "edits": edits,
        "near_duplicate_verdicts": len(near),
        "precision": round(len(right) / max(len(near), 1), 4),
        "recall": round(len(right) / max(edits, 1), 4),
        # Of the edits whose exact Jaccard with their base reaches the threshold: the others are not
        # near-duplicates by the definition, however light the edit.
        "recall_at_threshold": round(len(set(right) & set(above)) / max(len(above), 1), 4),
        "other_rejections": dict(sorted({r: sum(1 for v in verdicts.values() if v[0] == r) for r, _ in verdicts.values() if r != "near_duplicate"}.items())),
        "by_kind": by_kind,
        "seconds": round(seconds, 2),
    }


def _kiln(texts: list[str], hashes: np.ndarray, offsets: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    return near_dup.signatures(texts, cfg)  # from the text: words and shingles included


def _rensa(texts: list[str], hashes: np.ndarray, offsets: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    from rensa import RMinHash

    return np.array(RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, cfg.permutations, cfg.seed).to_rows(), np.uint32)


def _rensa_digest(texts: list[str], hashes: np.ndarray, offsets: np.ndarray, cfg: NearDupConfig) -> None:
    from rensa import RMinHash

    RMinHash.digest_matrix_from_flat_token_hashes(hashes, offsets, cfg.permutations, cfg.seed)  # left in rensa: no numbers out


def _datasketch(texts: list[str], hashes: np.ndarray, offsets: np.ndarray, cfg: NearDupConfig) -> np.ndarray:
    from datasketch import MinHash

    sigs = []
    for i in range(len(offsets) - 1):
        m = MinHash(num_perm=cfg.permutations, seed=cfg.seed)
        m.update_batch([h.tobytes() for h in hashes[offsets[i] : offsets[i + 1]]])
        sigs.append(m.hashvalues)
    return np.array(sigs)


def _equal_share(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a == b).mean(axis=1)


# name: (signatures, estimator, pairs measured at most; None: all), the library it needs
ENGINES = {
    "kiln one-permutation, from the text (words and shingles included)": (_kiln, near_dup.estimate, None, None),
    "rensa R-MinHash from kiln's shingle hashes, signatures to numpy": (_rensa, _equal_share, None, "rensa"),
    "rensa R-MinHash from kiln's shingle hashes, digest only": (_rensa_digest, None, None, "rensa"),
    "datasketch MinHash from kiln's shingle hashes": (_datasketch, _equal_share, 200, "datasketch"),
}


def _pairs(docs: int, seed: int) -> tuple[list[str], list[str]]:
    """Documents and edits of every strength: a share of their words replaced by another's."""
    if not _POOL:
        _POOL.extend(s for s in sentences() if len(s) >= 40)
    rng = random.Random(seed)
    a, b = [], []
    for _ in range(docs):
        words = " ".join(_document(rng)).split()
        cut = rng.randint(len(words) // 3, len(words))
        a.append(" ".join(words))
        b.append(" ".join(words[:cut] + " ".join(_document(rng)).split()[: len(words) - cut]))
    return a, b


def engines(docs: int, seed: int = 1) -> list[dict]:
    """Signatures per second and the estimate's error of each engine, 128 values: kiln's from the
    text, the others from kiln's shingle hashes; then shingling alone, kiln's and the usual Python way."""
    import importlib.util

    cfg = NearDupConfig()
    a, b = _pairs(docs, seed)
    exact = _exact_jaccard(a, b, cfg)
    rows = []
    for name, (sign, estimate, most, library) in ENGINES.items():
        if library and importlib.util.find_spec(library) is None:
            continue
        n = min(docs, most or docs)
        texts = a[:n] + b[:n]
        hashes, offsets = near_dup.shingle_hashes(texts, cfg.shingle_words, cfg.seed)
        start = time.perf_counter()
        sigs = sign(texts, hashes, offsets, cfg)
        row = {"engine": name, "docs": 2 * n, "docs_per_s": round(2 * n / (time.perf_counter() - start))}
        if estimate is not None:
            error = estimate(sigs[:n], sigs[n:]) - exact[:n]
            row |= {"rms_error": round(float(np.sqrt((error**2).mean())), 4), "bias": round(float(error.mean()), 4)}
        rows.append(row)
    texts = a + b
    start = time.perf_counter()
    near_dup.shingle_hashes(texts, cfg.shingle_words, cfg.seed)
    rows.append({"engine": "kiln shingle hashes alone (what the others start from)", "docs": len(texts), "docs_per_s": round(len(texts) / (time.perf_counter() - start))})
    start = time.perf_counter()
    for t in texts:
        w = re.findall(r"\w+", t.lower())
        list(map(" ".join, zip(*(w[i:] for i in range(cfg.shingle_words)))))
    rows.append({"engine": "Python shingle strings (re.findall, join), for scale", "docs": len(texts), "docs_per_s": round(len(texts) / (time.perf_counter() - start))})
    return rows


def cost(landing: Path, work: Path) -> list[dict]:
    """The whole text cleaning with the filters and exact dedup alone, with language and personal data
    too, then with near-duplicate detection on as well (kiln's default): one child process each."""
    rows = []
    for pipeline in ("kiln-filters", "kiln-exact", "kiln"):
        row = whole_cleaning(landing, work, pipeline)
        row["cpu_records_per_s"] = round((row["kept"] + row["rejected"]) / row["cpu_seconds"])
        rows.append(row)
    return rows


def run(work: Path, landing: Path, docs: int) -> dict:
    return {"quality": quality(work, docs), "engines": engines(max(docs, 500)), "cost": cost(landing, work)}


LABELS = {
    "kiln-filters": "filters + exact dedup",
    "kiln-exact": "+ language + personal data",
    "kiln": "+ near-duplicates (default)",
}


def markdown(r: dict) -> str:
    q = r["quality"]
    out = [
        f"Quality: {q['documents']:,} documents in 3 batches ({q['base_documents']:,} bases, {q['edits']:,} light edits of them, "
        f"{2 * q['base_documents']:,} distinct documents on the same topic): precision {q['precision']}, recall {q['recall']} "
        f"({q['recall_at_threshold']} of the edits whose exact Jaccard reaches the threshold); {q['near_duplicate_verdicts']:,} near_duplicate verdicts.",
        "",
        "| kind | records | rejected as near_duplicate | exact Jaccard to its base: min | median | max |",
        "|---|---|---|---|---|---|",
    ]
    out += [f"| {k} | {v['records']} | {v['near_duplicate']} | {v['exact_jaccard_min']} | {v['exact_jaccard_median']} | {v['exact_jaccard_max']} |" for k, v in q["by_kind"].items()]
    out += ["", "| signatures (128 values) | docs/s | RMS error | bias |", "|---|---|---|---|"]
    out += [f"| {e['engine']} | {e['docs_per_s']:,} | {e.get('rms_error', '')} | {e.get('bias', '')} |" for e in r["engines"]]
    out += ["", "| whole text cleaning | records | seconds | records/s | CPU s | records/CPU-s | peak RSS MB | near_duplicate |", "|---|---|---|---|---|---|---|---|"]
    out += [
        f"| {LABELS[c['pipeline']]} | {c['kept'] + c['rejected']:,} | {c['seconds']} | {c['records_per_s']:,} | "
        f"{c['cpu_seconds']} | {c['cpu_records_per_s']:,} | {c['peak_rss_mb']} | {c['reasons'].get('near_duplicate', 0)} |"
        for c in r["cost"]
    ]
    return "\n".join(out)

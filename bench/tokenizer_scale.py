"""The tokenizer step at scale (`training/curriculum/tokenizer.py` fit_corpus_tokenizer): seconds and peak
resident set of fitting the tokenizer on a generated corpus, in a fresh child process, and what the held-out
n-gram index (`training/curriculum/contamination.py` HeldoutIndex) holds of it.

The corpus: `records` text records of about 1 KB in a cleaned_corpus/ layout of 10 batch folders (the
corpus's columns, `training.data.records.KEPT_SCHEMA`; row groups of 2,048 records as the corpus writer
makes them; manifests carrying kept_bytes), written once per size under `work` and reused. A record is
Zipf-distributed words (s = 1.3): the sentence pool's words (`bench.corpus.sentences`) by frequency, then
a tail of made-up words, so distinct words keep growing with the corpus as they do in crawled text (what
the BPE trainer's memory follows), and no two records share 13 words by chance (the generated landing
batches repeat whole sentences, which would make most records overlap a held-out one).

The step runs with the default `TokenizerConfig` (vocabulary 65,536, the default sample_bytes) unless
`sample_bytes` is given. Called from `make bench`'s scale section; by hand:
    python -m bench.tokenizer_scale <work dir> [--records 100000 1000000] [--sample-bytes N]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.difficulty import status_kb

BATCHES = 10
ROW_GROUP = 2048
ZIPF_S = 1.3
WORDS = (160, 300)
"""Words per record: about 1 KB of text."""


def _made_up(rank: int) -> str:
    """A word for a rank past the pool's words: letters from the rank, a distinct word per rank."""
    letters = []
    while rank:
        rank, r = divmod(rank, 26)
        letters.append(chr(97 + r))
    return "".join(letters)


def write_corpus(work: Path, records: int, seed: int = 0) -> Path:
    """The generated cleaned_corpus/ of `records` records under `work` (reused when already written)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpus import sentences
    from training.data.records import KEPT_SCHEMA
    from training.fsutil import atomic_path
    from training.layout import BATCH_MANIFEST

    root = work / f"tokenizer-{records}"
    card = {"records": records, "seed": seed, "batches": BATCHES, "zipf": ZIPF_S, "words": WORDS}
    card_path = root / "corpus.json"
    if card_path.is_file() and json.loads(card_path.read_text()) == card:
        return root / "cleaned_corpus"
    counts: dict[str, int] = {}
    for s in sentences():
        for w in s.split():
            counts[w] = counts.get(w, 0) + 1
    pool = sorted(counts, key=lambda w: (-counts[w], w))
    rng = np.random.default_rng(seed)
    with atomic_path(root) as tmp:
        per_batch = -(-records // BATCHES)
        for b in range(BATCHES):
            name = f"batch-{b:04d}"
            (tmp / "cleaned_corpus" / name).mkdir(parents=True)
            first, last = b * per_batch, min(records, (b + 1) * per_batch)
            kept_bytes = 0
            with pq.ParquetWriter(tmp / "cleaned_corpus" / name / "text.parquet", KEPT_SCHEMA, compression="zstd") as writer:
                for start in range(first, last, ROW_GROUP):
                    n = min(ROW_GROUP, last - start)
                    lengths = rng.integers(*WORDS, size=n)
                    ranks = rng.zipf(ZIPF_S, size=int(lengths.sum())) - 1
                    words = [pool[r] if r < len(pool) else _made_up(r) for r in ranks.tolist()]
                    ends = np.cumsum(lengths).tolist()
                    texts = [" ".join(words[e - k : e]) for e, k in zip(ends, lengths.tolist())]
                    ids = [f"doc-{i}" for i in range(start, start + n)]
                    table = pa.table(
                        {
                            "id": ids, "batch": [name] * n, "modality": ["text"] * n,
                            "source": [f"{name}/text/part-00000.jsonl:{i - first + 1}" for i in range(start, start + n)],
                            "text": pa.array(texts, pa.large_string()), "language": ["en"] * n,
                            "entropy": pa.nulls(n, pa.float32()), "clip_score": pa.nulls(n, pa.float32()),
                            "redactions": pa.nulls(n, KEPT_SCHEMA.field("redactions").type),
                            "metadata": pa.nulls(n, pa.large_string()),
                        },
                        schema=KEPT_SCHEMA,
                    )
                    writer.write_table(table)
                    kept_bytes += sum(len(t.encode()) for t in texts)
            manifest = {"modalities": {"text": {"kept": last - first, "kept_bytes": kept_bytes, "duplicates": 0}}}
            (tmp / "cleaned_corpus" / name / BATCH_MANIFEST).write_text(json.dumps(manifest))
        (tmp / "corpus.json").write_text(json.dumps(card))
    return root / "cleaned_corpus"


# --- inside a child ----------------------------------------------------------------------------------


def child_fit(corpus: str, sample_bytes: str) -> dict:
    from training.config import CurriculumConfig, DifficultyConfig, TokenizerConfig
    from training.curriculum.tokenizer import fit_corpus_tokenizer

    cfg = TokenizerConfig() if sample_bytes == "default" else TokenizerConfig(sample_bytes=int(sample_bytes))
    base_kb = status_kb("VmRSS")
    start = time.perf_counter()
    tok, result = fit_corpus_tokenizer(Path(corpus), cfg, DifficultyConfig().heldout_share, CurriculumConfig().ngram)
    seconds = time.perf_counter() - start
    return {
        "seconds": round(seconds, 1), "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1), "rss_before_mb": round(base_kb / 1024, 1),
        "vocab_size": len(tok), "sample": result["sample"], "left_out_overlapping_heldout": result["left_out_overlapping_heldout"],
        "sampled_mb_per_s": round(result["sample"]["bytes"] / 1e6 / seconds, 2),
    }


def child_index(corpus: str) -> dict:
    """What the held-out index holds: the held-out texts (kept to confirm matches) and its arrays, and the
    resident set it adds, built as fit_corpus_tokenizer builds it."""
    import gc

    from training.config import CurriculumConfig, DifficultyConfig
    from training.curriculum.contamination import HeldoutIndex
    from training.curriculum.tokenizer import heldout_records

    texts = [t for chunk in heldout_records(Path(corpus), DifficultyConfig().heldout_share) for _, _, t in chunk]
    gc.collect()
    before_kb = status_kb("VmRSS")
    index = HeldoutIndex(texts, CurriculumConfig().ngram)
    after_kb = status_kb("VmRSS")
    arrays = index.low.nbytes + index.rows.nbytes + index.offsets.nbytes + index._present.nbytes
    return {
        "heldout_records": len(texts),
        "text_mb": round(sum(sys.getsizeof(t) for t in texts) / 2**20, 1),
        "arrays_mb": round(arrays / 2**20, 1),
        "hashes": len(index),
        "rss_growth_mb": round((after_kb - before_kb) / 1024, 1),
        "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1),
    }


# --- the parent -------------------------------------------------------------------------------------------


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.tokenizer_scale", "child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(work: Path, records: int, sample_bytes: int | None = None) -> dict:
    """Fit the tokenizer on a generated corpus of `records` records of about 1 KB, in a fresh child process:
    seconds, peak RSS, the sample; and, in another child, the held-out index's share of memory."""
    corpus = write_corpus(work, records)
    fit = _child("fit", str(corpus), "default" if sample_bytes is None else str(sample_bytes))
    index = _child("index", str(corpus))
    index["of_fit_peak"] = round((index["text_mb"] + index["arrays_mb"]) / fit["peak_rss_mb"], 3)
    return {"records": records, **fit, "heldout_index": index}


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, *args = sys.argv[2:]
        print(json.dumps({"fit": child_fit, "index": child_index}[kind](*args)))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--sample-bytes", type=int, default=None)
    args = parser.parse_args()
    for n in args.records:
        print(json.dumps(measure(args.work, n, args.sample_bytes)), flush=True)

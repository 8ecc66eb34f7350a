"""Difficulty scoring at scale (`training/curriculum/difficulty.py`, `training/curriculum/bertscore.py`):
what BERTScore costs, and whether a batch's memory is set by the chunk.

- pairs: 1,000 distinct pairs of 24 + 24 words (windows spread across the benchmark corpus's sentence
  pool: a beginning and its continuation, as persistence pairs them), MiniLM at layer 6, batches of 64
  sentences, one child process each: the encoder alone (both sides embedded under `inference_mode`,
  nothing matched: the floor), `bert_score.BERTScorer.score` (the reference implementation) and kiln's
  `BertScore`. Pairs/s and the growth of the peak resident set over the loaded model (the peak is
  reset after a warm-up on 32 pairs, so the model's loading peak does not count).
- batches: `score_batch` of one generated batch of about 1 KB records (`bench.corpus.write_text_batch`,
  its JSON lines written as a cleaned-records Parquet file as they are, defects included; cleaning is
  not what is measured) at each size, in a child process: records/s and peak RSS, which must not grow
  with the batch. Spans of 24 words, the tiny preset's. Beside the smallest batch, the encoder alone on
  that batch's own pairs (each record's beginning and continuation, as persistence pairs them): the
  whole step (read, split, predict, BERTScore, write) against the floor, on the same pairs.

`make bench` runs it (section `difficulty`); by hand:
    python -m bench.difficulty <work dir> [--records 2000 20000] [--pairs 1000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

PAIRS_WORDS = 24
SPAN_WORDS = 24
BATCH = 64
"""Sentences per encoder pass, for all three (bert-score's default batch size, kiln's DifficultyConfig default)."""
KINDS = ("encoder", "bert_score", "kiln")
LABELS = {
    "encoder": "encoder alone (both sides, inference_mode)",
    "bert_score": "bert_score.BERTScorer.score",
    "kiln": "kiln BertScore",
}


# --- inside a child ----------------------------------------------------------------------------------


def status_kb(field: str) -> int:
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(field + ":"))
    return int(line.split()[1])


def _reset_peak() -> bool:
    """Reset VmHWM (the peak resident set) to the current resident set; False where the kernel says no."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _pairs(n: int) -> tuple[list[str], list[str]]:
    from bench.corpus import sentences

    words = " ".join(sentences()).split()
    width = 2 * PAIRS_WORDS
    # n distinct windows spread across the pool (bert-score embeds each distinct sentence once: repeated
    # pairs would measure its cache, not its work).
    stride = max(1, (len(words) - width) // n)
    windows = [words[i : i + width] for i in range(0, len(words) - width, stride)][:n]
    if len(windows) < n:
        raise ValueError(f"the sentence pool holds {len(windows)} distinct windows of {width} words, not {n}")
    return [" ".join(w[:PAIRS_WORDS]) for w in windows], [" ".join(w[PAIRS_WORDS:]) for w in windows]


def _scorer(kind: str):
    """A function (candidates, references) -> anything, with its model loaded."""
    import torch

    from training.config import DifficultyConfig
    from training.curriculum.bertscore import BertScore, default_encoder

    if kind == "kiln":
        return BertScore(DifficultyConfig(batch_size=BATCH))
    if kind == "bert_score":
        from bert_score import BERTScorer

        scorer = BERTScorer(model_type=default_encoder(), num_layers=6, batch_size=BATCH, lang="en")
        return lambda c, r: scorer.score(c, r, batch_size=BATCH)
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_encoder())
    model = AutoModel.from_pretrained(default_encoder()).eval()

    def encode(c: list[str], r: list[str]) -> None:
        # Sorted by tokens, not characters (a line of Chinese is short in characters, long in tokens):
        # passes of one width, the least padding: the floor.
        ids = sorted(tok(c + r, truncation=True)["input_ids"], key=len, reverse=True)
        with torch.inference_mode():
            for i in range(0, len(ids), BATCH):
                enc = tok.pad({"input_ids": ids[i : i + BATCH]}, return_tensors="pt")
                model(**enc)

    return encode


def child_pairs(kind: str, n: int) -> dict:
    cands, refs = _pairs(n)
    score = _scorer(kind)
    score(cands[:32], refs[:32])  # warm-up: lazy allocations, kernels chosen
    base_kb = status_kb("VmRSS")
    reset = _reset_peak()
    start, cpu = time.perf_counter(), time.process_time()
    score(cands, refs)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    peak_kb = status_kb("VmHWM")
    return {
        "kind": kind, "pairs": n, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2),
        "pairs_per_s": round(n / seconds, 1), "rss_before_mb": round(base_kb / 1024, 1),
        "peak_growth_mb": round((peak_kb - base_kb) / 1024, 1) if reset else None,
        "peak_growth_kb_per_pair": round((peak_kb - base_kb) / n, 1) if reset else None,
    }


def _batch_pairs(records_file: str) -> tuple[list[str], list[str]]:
    """The (beginning, continuation) pairs `score_batch` scores in a batch: records with a continuation."""
    import pyarrow.parquet as pq

    from training.curriculum.difficulty import split_record

    halves = [split_record(t or "", SPAN_WORDS) for t in pq.read_table(records_file, columns=["text"])["text"].to_pylist()]
    kept = [(b, c) for b, c in halves if c.strip()]
    return [b for b, _ in kept], [c for _, c in kept]


def child_batch_encoder(records_file: str) -> dict:
    """The encoder alone on a batch's own pairs (the model loaded and warmed up first)."""
    beginnings, continuations = _batch_pairs(records_file)
    encode = _scorer("encoder")
    encode(beginnings[:32], continuations[:32])
    start = time.perf_counter()
    encode(beginnings, continuations)
    seconds = time.perf_counter() - start
    return {"pairs": len(beginnings), "seconds": round(seconds, 2), "pairs_per_s": round(len(beginnings) / seconds, 1)}


def child_batch(records_file: str, out_file: str) -> dict:
    import resource

    from training.config import DifficultyConfig
    from training.curriculum.difficulty import Persistence, score_batch

    from training.curriculum.bertscore import BertScore

    cfg = DifficultyConfig(span_words=SPAN_WORDS, batch_size=BATCH)
    start = time.perf_counter()
    bert = BertScore(cfg)  # loaded once per run, whatever the batch: timed apart, as the encoder's own loading
    bert(["a warm-up pass"] * 8, ["of the loaded encoder"] * 8)
    loaded = time.perf_counter()
    stats = score_batch([Path(records_file)], Path(out_file), cfg, Persistence(), scorer=bert)
    seconds = time.perf_counter() - loaded
    return {
        "records": stats["records"], "scored": stats["scored"], "seconds": round(seconds, 1), "load_seconds": round(loaded - start, 1),
        "records_per_s": stats["records_per_second"], "pairs_per_s": round(stats["scored"] / seconds, 1),
        "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1),
        # getrusage as the brief of this benchmark asked; it survives exec, so it can report the parent's peak.
        "ru_maxrss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


# --- the parent -------------------------------------------------------------------------------------------


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.difficulty", "child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def records_file(work: Path, n: int) -> Path:
    """A generated batch of `n` text records as a cleaned-records Parquet file (id, modality, batch,
    source, text), streamed from the JSON lines; malformed lines skipped, the rest kept as they are."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.corpus import write_text_batch
    from training.fsutil import atomic_path

    batch = work / "landing" / f"batch-{n}"
    write_text_batch(batch, n)
    path = work / "records" / f"batch-{n}" / "text.parquet"
    if path.is_file() and pq.read_metadata(path).num_rows:
        return path
    schema = pa.schema([("id", pa.string()), ("modality", pa.string()), ("batch", pa.string()), ("source", pa.string()), ("text", pa.large_string())])
    with atomic_path(path) as tmp, pq.ParquetWriter(tmp, schema, compression="zstd") as w:
        rows: list[dict] = []
        for shard in sorted((batch / "text").glob("*.jsonl")):
            for line_no, line in enumerate(shard.open("rb"), 1):
                try:
                    rec = json.loads(line)
                except ValueError:
                    continue
                rows.append({"id": rec["id"], "modality": "text", "batch": batch.name, "source": f"{batch.name}/text/{shard.name}:{line_no}", "text": rec["text"]})
                if len(rows) == 4096:
                    w.write_table(pa.Table.from_pylist(rows, schema))
                    rows = []
        if rows:
            w.write_table(pa.Table.from_pylist(rows, schema))
    return path


def _median_row(rows: list[dict], rate: str) -> dict:
    """The run with the median `rate` (an odd number of runs), with every run's rate beside it."""
    ranked = sorted(rows, key=lambda r: r[rate])
    return {**ranked[len(ranked) // 2], f"{rate}_runs": [r[rate] for r in rows]}


def run(work: Path, records: list[int], pairs: int = 1000, repeats: int = 3) -> dict:
    """The comparisons with the encoder alone are medians of `repeats` runs, taken in turn (the machine's
    drift falls on both); bert-score (several times slower) and the larger batches run once."""
    work.mkdir(parents=True, exist_ok=True)
    runs: dict[str, list[dict]] = {"encoder": [], "kiln": []}
    for _ in range(repeats):
        for kind in runs:
            runs[kind].append(_child("pairs", kind, str(pairs)))
    rows = [_median_row(runs["encoder"], "pairs_per_s"), _child("pairs", "bert_score", str(pairs)), _median_row(runs["kiln"], "pairs_per_s")]
    sizes = sorted(records)
    smallest = records_file(work, sizes[0])
    steps, floors = [], []
    for _ in range(repeats):  # the smallest batch, scored from nothing each time, against the encoder on its pairs
        out = work / "scores" / f"batch-{sizes[0]}.parquet"
        out.unlink(missing_ok=True)
        steps.append({"generated": sizes[0], **_child("batch", str(smallest), str(out))})
        floors.append(_child("batch_encoder", str(smallest)))
    batches = [_median_row(steps, "pairs_per_s")]
    for n in sizes[1:]:
        out = work / "scores" / f"batch-{n}.parquet"
        out.unlink(missing_ok=True)  # scored from nothing: no earlier scores to reuse
        batches.append({"generated": n, **_child("batch", str(records_file(work, n)), str(out))})
    encoder = rows[0]["pairs_per_s"]
    for r in rows:
        r["of_encoder"] = round(r["pairs_per_s"] / encoder, 2)
    floor, step = _median_row(floors, "pairs_per_s"), batches[0]
    same_pairs = {**floor, "records": step["records"], "step_pairs_per_s": step["pairs_per_s"],
                  "step_pairs_per_s_runs": step["pairs_per_s_runs"], "of_encoder": round(step["pairs_per_s"] / floor["pairs_per_s"], 2)}
    peak = max(s["peak_rss_mb"] for s in steps)
    return {"pairs": rows, "batches": batches, "same_pairs": same_pairs, "peak_rss_growth": round(batches[-1]["peak_rss_mb"] / peak, 2), "repeats": repeats}


def markdown(row: dict) -> str:
    out = [
        f"BERTScore of {row['pairs'][0]['pairs']:,} pairs of {PAIRS_WORDS} + {PAIRS_WORDS} words, MiniLM layer 6, "
        f"{BATCH} sentences a pass, one child process each; the encoder alone and kiln: medians of {row['repeats']} runs in turn:",
        "",
        "| implementation | pairs/s | of the encoder alone | CPU s | peak RSS growth MB | KB per pair |",
        "|---|---|---|---|---|---|",
    ]
    out += [
        f"| {LABELS[r['kind']]} | {r['pairs_per_s']} | {r['of_encoder']} | {r['cpu_seconds']} | {r['peak_growth_mb']} | {r['peak_growth_kb_per_pair']} |"
        for r in row["pairs"]
    ]
    out += ["", f"`score_batch` of one generated batch (about 1 KB records, spans of {SPAN_WORDS} words, persistence; "
            "the encoder loaded and warmed up first, its loading timed apart):", "",
            "| records | scored | seconds | records/s | loading s | peak RSS MB |", "|---|---|---|---|---|---|"]
    out += [f"| {b['records']:,} | {b['scored']:,} | {b['seconds']} | {b['records_per_s']} | {b['load_seconds']} | {b['peak_rss_mb']} |" for b in row["batches"]]
    same = row["same_pairs"]
    out += ["", f"Peak RSS of the largest batch: {row['peak_rss_growth']}× the highest of the smallest's. On the {same['records']:,}-record "
            f"batch's own {same['pairs']:,} pairs, medians of {row['repeats']} runs in turn: the whole step {same['step_pairs_per_s']} pairs/s "
            f"({same['step_pairs_per_s_runs']}), the encoder alone {same['pairs_per_s']} pairs/s ({same['pairs_per_s_runs']}): "
            f"{same['of_encoder']}× of the encoder."]
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        kind, *args = sys.argv[2:]
        children = {"pairs": lambda k, n: child_pairs(k, int(n)), "batch": child_batch, "batch_encoder": child_batch_encoder}
        result = children[kind](*args)
        print(json.dumps(result))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--records", type=int, nargs="+", default=[2000, 20000])
    parser.add_argument("--pairs", type=int, default=1000)
    args = parser.parse_args()
    result = run(args.work, args.records, args.pairs)
    print(json.dumps(result, indent=2))
    print(markdown(result))

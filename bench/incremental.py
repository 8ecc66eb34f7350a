"""One new batch landing in a landing zone of many: what kiln recomputes, how long it takes, and
whether the corpus step's memory grows with the corpus.

Two landing zones of 20 generated text batches (`bench.corpus.write_text_batch`): 20 x 5,000
(100K records) and 20 x 50,000 (1M), each cleaned and deduplicated from scratch in this process. Then
a 21st batch of 5,000 records lands in each: its partition (`clean_batch`) runs here, and the corpus
step (`build_corpus`, which deduplicates only the new batch, against the earlier batches' key files)
runs in a fresh child process, timed there and measured for its peak RSS (VmHWM) - the figure that
must not grow with the corpus. The yardstick for its time: cleaning that batch alone (`clean_batch`
+ `build_corpus` on a landing zone holding only it), in a fresh child too. Medians of `repeats` runs;
a run of the corpus step first removes the new batch's corpus outputs, so each deduplicates it again.
Dagster's own run start-up (about 10 s per run on 2 cores) comes on top and is not counted.

    python -m bench.incremental <work dir> [--records 5000 50000] [--new 5000]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

BATCHES = 20


# --- inside a child ----------------------------------------------------------------------------------


def child(step: str, landing: str, out: str) -> dict:
    from bench.difficulty import status_kb
    from training.config import CleaningConfig
    from training.data.clean import build_corpus, clean_batch
    from training.data.landing import ready_batches
    from training.layout import Layout

    cfg, layout, batches = CleaningConfig(), Layout(Path(out)), ready_batches(Path(landing))
    base_kb = status_kb("VmRSS")
    start = time.perf_counter()
    if step == "alone":
        for batch in batches:
            clean_batch(batch, layout.cleaned_batch, layout.rejected, cfg)
    report = build_corpus(layout.cleaned_batch, [b.name for b in batches], layout.cleaned_corpus, layout.rejected, cfg.chunk_size, near_dup=cfg.near_dup)
    seconds = time.perf_counter() - start
    text = report.reads.get("text")
    return {
        "seconds": round(seconds, 3), "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1), "rss_before_mb": round(base_kb / 1024, 1),
        "deduplicated": [f"{r.batch}/{r.modality}" for r in report.results if not r.cached],
        "key_files_read": text.key_files if text else 0, "key_mb_read": round(text.key_bytes / 2**20, 1) if text else 0,
        "earlier_text_records_read": sum(r.text_records for r in report.reads.values()),
    }


def _child(*args: str) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.incremental", "child", *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --- the parent -------------------------------------------------------------------------------------------


def _median(runs: list[dict]) -> dict:
    """The run of median time, with every run's time and the highest peak RSS."""
    ranked = sorted(runs, key=lambda r: r["seconds"])
    return {**ranked[len(ranked) // 2], "seconds_runs": [r["seconds"] for r in runs], "peak_rss_mb": max(r["peak_rss_mb"] for r in runs)}


def zone(work: Path, records: int, new: int, repeats: int) -> dict:
    """A zone of BATCHES batches of `records` cleaned from scratch; then a batch of `new` lands."""
    from bench.corpus import write_text_batch
    from training.config import CleaningConfig
    from training.data.clean import build_corpus, clean_batch
    from training.data.landing import ready_batch, ready_batches
    from training.fsutil import remove
    from training.layout import Layout, duplicates_file

    root = work / "incremental" / f"{records}"
    landing, out = root / "landing", root / "out"
    name = f"batch-{BATCHES + 1:04d}"
    for i in range(1, BATCHES + 1):
        write_text_batch(landing / f"batch-{i:04d}", records, seed=i)
    write_text_batch(work / "incremental" / f"new-{new}" / name, new, seed=BATCHES + 1)
    remove(landing / name)
    remove(out)
    cfg, layout = CleaningConfig(), Layout(out)
    dirs = layout.cleaned_batch, layout.cleaned_corpus, layout.rejected

    start = time.perf_counter()
    for batch in ready_batches(landing):
        clean_batch(batch, dirs[0], dirs[2], cfg)
    corpus_start = time.perf_counter()
    build_corpus(dirs[0], [b.name for b in ready_batches(landing)], dirs[1], dirs[2], cfg.chunk_size)
    scratch_corpus_s, scratch_s = time.perf_counter() - corpus_start, time.perf_counter() - start

    shutil.copytree(work / "incremental" / f"new-{new}" / name, landing / name)  # lands with its _SUCCESS
    start = time.perf_counter()
    cleaned = clean_batch(ready_batch(landing, name), dirs[0], dirs[2], cfg)
    batch_s = time.perf_counter() - start
    runs = []
    for _ in range(repeats):
        remove(dirs[1] / name)
        for m in ("text", "code", "image_text"):
            (dirs[2] / name / duplicates_file(m)).unlink(missing_ok=True)
        runs.append(_child("corpus", str(landing), str(out)))
    return {
        "records": BATCHES * records, "records_per_batch": records, "new_records": new,
        "scratch_s": round(scratch_s, 2), "scratch_corpus_s": round(scratch_corpus_s, 2), "new_batch_s": round(batch_s, 2),
        "cleaned": [f"{r.batch}/{r.modality}" for r in cleaned if not r.cached],
        "corpus": _median(runs),
    }


def alone(work: Path, new: int, repeats: int) -> dict:
    """The new batch cleaned and deduplicated in a landing zone of its own, in a fresh process."""
    from training.fsutil import remove

    name = f"batch-{BATCHES + 1:04d}"
    landing, out = work / "incremental" / "alone" / "landing", work / "incremental" / "alone" / "out"
    remove(landing)
    shutil.copytree(work / "incremental" / f"new-{new}" / name, landing / name)
    runs = []
    for _ in range(repeats):
        remove(out)
        runs.append(_child("alone", str(landing), str(out)))
    return _median(runs)


def incremental(work: Path, records: tuple[int, ...], new: int, repeats: int = 3) -> dict:
    zones = [zone(work, n, new, repeats) for n in records]
    yardstick = alone(work, new, repeats)
    small, large = zones[0]["corpus"], zones[-1]["corpus"]
    return {
        "batches": BATCHES, "zones": zones, "alone": yardstick, "repeats": repeats,
        "cleaned": zones[-1]["cleaned"], "deduplicated": large["deduplicated"],
        "new_vs_alone": round(large["seconds"] / yardstick["seconds"], 2),
        "peak_rss_growth": round(large["peak_rss_mb"] / small["peak_rss_mb"], 2),
    }


def markdown(r: dict) -> str:
    out = [
        f"Landing zones of {r['batches']} text batches, cleaned and deduplicated from scratch; then one more batch of "
        f"{r['zones'][0]['new_records']:,} records lands: its partition cleans it, and the corpus step (a fresh process: "
        f"time and peak RSS) deduplicates only it, against the earlier batches' key files. Medians of {r['repeats']}.",
        "",
        "| records | from scratch s (dedup s) | new batch: clean s | new batch: corpus s | its peak RSS MB | key files read (text) | key MB read | earlier text read |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for z in r["zones"]:
        c = z["corpus"]
        out.append(f"| {z['records']:,} | {z['scratch_s']} ({z['scratch_corpus_s']}) | {z['new_batch_s']} | {c['seconds']} | {c['peak_rss_mb']} | "
                   f"{c['key_files_read']} | {c['key_mb_read']} | {c['earlier_text_records_read']} records |")
    a = r["alone"]
    out += ["", f"The same batch cleaned alone (clean_batch + build_corpus in a zone holding only it, a fresh process): {a['seconds']} s, "
            f"peak RSS {a['peak_rss_mb']} MB. The corpus step for the new batch over {r['zones'][-1]['records']:,} records: "
            f"{r['new_vs_alone']}× that; its peak RSS {r['peak_rss_growth']}× the one over {r['zones'][0]['records']:,}. "
            f"Recomputed: {', '.join(r['cleaned'] + [d + ' (dedup)' for d in r['deduplicated']])}."]
    return "\n".join(out)


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(child(*sys.argv[2:])))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--records", type=int, nargs="+", default=[5_000, 50_000])
    parser.add_argument("--new", type=int, default=5_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    row = incremental(args.work, tuple(args.records), args.new, args.repeats)
    print(json.dumps(row, indent=2))
    print(markdown(row))


if __name__ == "__main__":
    main()

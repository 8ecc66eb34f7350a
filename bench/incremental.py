"""One new batch landing in a landing zone of many: what kiln recomputes, and how long it takes.

The per-batch cleaning (`clean_batch`, the `cleaned_batch` partition) runs on the new batch alone; the
corpus (`build_corpus`) deduplicates only the new batch, against the kept keys of the earlier ones.
Both are timed against cleaning the whole landing zone from scratch, in this one run. Dagster's own
run start-up (about 10 s per run on 2 cores) comes on top and is not counted here.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from bench.corpus import write_text_batch
from training.config import CleaningConfig
from training.data.clean import build_corpus, clean_batch
from training.data.landing import ready_batch, ready_batches
from training.fsutil import remove
from training.layout import Layout


def incremental(work: Path, batches: int, records: int) -> dict:
    landing, staging, out = work / "incremental" / "landing", work / "incremental" / "staging", work / "incremental" / "out"
    new = f"batch-{batches + 1:04d}"
    for i in range(1, batches + 1):
        write_text_batch(landing / f"batch-{i:04d}", records, seed=i)
    write_text_batch(staging / new, records, seed=batches + 1)
    remove(landing / new)
    remove(out)
    cfg = CleaningConfig()
    layout = Layout(out)
    dirs = layout.cleaned_batch, layout.cleaned_corpus, layout.rejected

    def corpus() -> tuple[float, list]:
        start = time.perf_counter()
        report = build_corpus(dirs[0], [b.name for b in ready_batches(landing)], dirs[1], dirs[2], cfg.chunk_size)
        return time.perf_counter() - start, [f"{r.batch}/{r.modality}" for r in report.results if not r.cached]

    start = time.perf_counter()
    for batch in ready_batches(landing):
        clean_batch(batch, dirs[0], dirs[2], cfg)
    scratch_corpus_s, _ = corpus()
    scratch_s = time.perf_counter() - start

    shutil.copytree(staging / new, landing / new)  # lands with its _SUCCESS
    start = time.perf_counter()
    cleaned = clean_batch(ready_batch(landing, new), dirs[0], dirs[2], cfg)
    batch_s = time.perf_counter() - start
    corpus_s, deduplicated = corpus()
    return {
        "batches": batches,
        "records_per_batch": records,
        "scratch_s": round(scratch_s, 2),
        "scratch_corpus_s": round(scratch_corpus_s, 2),
        "new_batch_s": round(batch_s, 2),
        "new_corpus_s": round(corpus_s, 2),
        "new_total_s": round(batch_s + corpus_s, 2),
        "cleaned": [f"{r.batch}/{r.modality}" for r in cleaned if not r.cached],
        "deduplicated": deduplicated,
    }


def markdown(r: dict) -> str:
    return (
        f"A landing zone of {r['batches']} text batches of {r['records_per_batch']:,} records each, cleaned from scratch: "
        f"{r['scratch_s']} s ({r['scratch_corpus_s']} s of it deduplication). One more batch landing: its partition "
        f"cleans in {r['new_batch_s']} s and the corpus follows in {r['new_corpus_s']} s ({r['new_total_s']} s in all), "
        f"recomputing only {', '.join(r['cleaned'] + [d + ' (dedup)' for d in r['deduplicated']])}."
    )

"""Cleaning benchmarks: each text filter as kiln's runner calls it (a chunk at a time) against a
per-record Python loop of the same filter (`Filter.check`, the way datatrove-style pipelines apply
filters); the whole text cleaning of the corpus, streamed, with its peak RSS, against the same
pipeline with the per-record loop; Tree-sitter on one core and across all cores.

The whole-corpus runs happen in child processes (`python -m bench.cleaning run ...`) so that each
reports its own peak RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from training.config import CleaningConfig, CodeFilterConfig, LanguageConfig, NearDupConfig, PersonalDataConfig, TextFilterConfig
from training.data.clean import chunks, clean_landing
from training.data.filters.base import dedup_filters
from training.data.filters.code import TreeSitterParse
from training.data.filters.text import text_filters
from training.data.landing import ready_batches
from training.data.readers import read_code, read_text
from training.data.records import Record, RecordWriter
from training.fsutil import remove


def median_seconds(fn: Callable[[], object], repeats: int) -> tuple[float, list[float]]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def _mb(records: list[Record]) -> float:
    return sum(len((r.text or "").encode("utf-8")) for r in records) / 1e6


def _readable(records: list[Record]) -> list[Record]:
    return [r for r in records if r.reject is None]


def text_filter_table(landing: Path, sample: int, repeats: int, chunk_size: int) -> list[dict]:
    """Each text filter on the same `sample` records: chunked (kiln's runner) against per record.
    Every filter sees every readable record, not only the survivors of the one before it."""
    [batch] = ready_batches(landing)
    records = _readable([r for r, _ in zip(read_text(batch, TextFilterConfig()), range(sample))])
    mb = _mb(records)
    # A factory per filter: the Unique filters carry state, so every repeat starts a fresh one.
    factories = {f.name: (lambda f=f: f) for f in text_filters(TextFilterConfig())}
    factories |= {f.name: (lambda i=i: dedup_filters()[i]) for i, f in enumerate(dedup_filters())}
    rows = []
    for name, fresh in factories.items():
        fresh()(records[:chunk_size])  # warm up: the entropy filter builds its code-point tables once

        def chunked() -> None:
            f = fresh()
            for chunk in chunks(records, chunk_size):
                f(chunk)

        def loop() -> None:
            f = fresh()
            for r in records:
                f.check(r)

        loop_s, loop_all = median_seconds(loop, repeats)
        fast_s, fast_all = median_seconds(chunked, repeats)
        rows.append(
            {
                "filter": name,
                "records": len(records),
                "mb": round(mb, 2),
                "chunked_records_per_s": round(len(records) / fast_s),
                "chunked_mb_per_s": round(mb / fast_s, 2),
                "loop_records_per_s": round(len(records) / loop_s),
                "loop_mb_per_s": round(mb / loop_s, 2),
                "speedup": round(loop_s / fast_s, 2),
                "seconds": {"chunked": [round(t, 3) for t in fast_all], "loop": [round(t, 3) for t in loop_all]},
            }
        )
    return rows


def _loop_clean(landing: Path, out: Path, cfg: CleaningConfig) -> tuple[int, Counter]:
    """The reference pipeline: the same readers, filters and writers, each filter applied record by
    record through `check`."""
    [batch] = ready_batches(landing)
    filters = text_filters(cfg.text) + dedup_filters()
    reasons: Counter = Counter()
    out.mkdir(parents=True, exist_ok=True)
    kept, rejected = RecordWriter(out / "kept.parquet", rejected=False), RecordWriter(out / "rejected.parquet", rejected=True)
    for chunk in chunks(read_text(batch, cfg.text), cfg.chunk_size):
        for rec in chunk:
            for f in filters:
                if rec.reject is not None:
                    break
                rec.reject = f.check(rec)
        kept.write([r for r in chunk if r.reject is None])
        bad = [r for r in chunk if r.reject is not None]
        rejected.write(bad)
        reasons.update(r.reject.reason for r in bad)  # type: ignore[union-attr]
    kept.close()
    rejected.close()
    return kept.rows, reasons


def _peak_rss_mb() -> float:
    """This process's peak resident set. Not getrusage's ru_maxrss: that survives exec, so a child
    would report its parent's peak when the parent was larger."""
    status = Path("/proc/self/status")
    if status.is_file():
        hwm = next(line for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
        return round(int(hwm.split()[1]) / 1024, 1)
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 1)  # macOS: bytes


PIPELINES = {
    "kiln": CleaningConfig(),
    "kiln-exact": CleaningConfig(near_dup=NearDupConfig(enabled=False)),
    "kiln-filters": CleaningConfig(
        near_dup=NearDupConfig(enabled=False),
        language=LanguageConfig(identify=False),
        personal_data=PersonalDataConfig(**{t: "keep" for t in PersonalDataConfig().actions()}),
    ),
}
"""kiln's default; without near-duplicates (exact ones only); and without near-duplicates, language
or personal data either (the filters and exact dedup alone). "loop" is those filters and exact dedup applied
one record at a time; the side-by-side compares it with "kiln-filters"."""


def _child_run(pipeline: str, landing: Path, out: Path) -> dict:
    """One whole-corpus cleaning in this process: wall time, CPU time, records, bytes, peak RSS."""
    cfg = PIPELINES.get(pipeline, CleaningConfig())
    remove(out)
    start, cpu = time.perf_counter(), time.process_time()
    if pipeline.startswith("kiln"):
        report = clean_landing(landing, out / "cleaned", out / "rejected", cfg)
        kept = sum(r.kept for r in report.results)
        rejected = sum(r.rejected for r in report.results)
        reasons: Counter = Counter()
        for r in report.results:
            reasons.update(r.reasons)
    else:
        kept, reasons = _loop_clean(landing, out, cfg)
        rejected = sum(reasons.values())
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    input_bytes = sum(p.stat().st_size for p in landing.rglob("*") if p.is_file() and p.name != "_SUCCESS")
    peak = _peak_rss_mb()
    remove(out)
    return {
        "pipeline": pipeline,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu, 2),
        "kept": kept,
        "rejected": rejected,
        "reasons": dict(sorted(reasons.items())),
        "input_mb": round(input_bytes / 1e6, 1),
        "peak_rss_mb": peak,
    }


def whole_cleaning(landing: Path, work: Path, pipeline: str) -> dict:
    """A whole landing zone cleaned in a child process: kiln's `clean_landing`, or (text only) the
    same pipeline with the per-record loop."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.cleaning", "run", pipeline, str(landing), str(work / f"run-{pipeline}")],
        check=True, capture_output=True, text=True,
    )
    row = json.loads(result.stdout.strip().splitlines()[-1])
    row["records_per_s"] = round((row["kept"] + row["rejected"]) / row["seconds"])
    row["mb_per_s"] = round(row["input_mb"] / row["seconds"], 2)
    return row


def tree_sitter_table(landing: Path, sample: int, repeats: int, chunk_size: int) -> list[dict]:
    """MB/s of parsing on one process and on every core."""
    [batch] = ready_batches(landing)
    records = _readable([r for r, _ in zip(read_code(batch, CodeFilterConfig()), range(sample))])
    mb = _mb(records)
    rows = []
    for workers in sorted({1, os.cpu_count() or 1}):
        f = TreeSitterParse(workers)
        f(records[: 4 * workers])  # start the pool and load every grammar outside the timing

        def parse() -> None:
            for chunk in chunks(records, chunk_size):
                f(chunk)

        seconds, all_s = median_seconds(parse, repeats)
        rows.append({"workers": workers, "files": len(records), "mb": round(mb, 2), "mb_per_s": round(mb / seconds, 2),
                     "files_per_s": round(len(records) / seconds), "seconds": [round(t, 3) for t in all_s]})
    base = rows[0]["mb_per_s"]
    for row in rows:
        row["scaling"] = round(row["mb_per_s"] / base, 2)
    return rows


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=["run"])
    parser.add_argument("pipeline", choices=[*PIPELINES, "loop"])
    parser.add_argument("landing", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    print(json.dumps(_child_run(args.pipeline, args.landing, args.out)))

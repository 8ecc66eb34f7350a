"""`make bench`: every benchmark in one run, written to bench/results/<machine>.json and .md.

    python -m bench.run                      # the full scale: 1M text records, 50K code files
    python -m bench.run --scale smoke        # seconds a section: proves the benchmarks run (the test suite), numbers not quotable
    python -m bench.run --only cleaning,clip   # rerun sections; the file keeps the others

Each comparison is measured side by side in this one run; figures are medians of `--repeats` runs
(the whole-corpus cleanings run once each: they are the streaming and memory measurement).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from bench import cleaning, models
from bench.corpus import write_code_batch, write_text_batch
from training.markdown import markdown_table

ROOT = Path(__file__).resolve().parent
SECTIONS = ("cleaning", "incremental", "near_dup", "tree_sitter", "code_check", "object_storage", "clip", "difficulty", "tokenizer",
            "data_path", "release", "e2e", "training")


@dataclass(frozen=True)
class Scale:
    text_records: int
    code_files: int
    filter_sample: int
    """Records each text filter is timed on, chunked and per record."""
    side_by_side: int
    """Records of the whole text cleaning run both ways (the per-record loop is the slow one)."""
    code_sample: int
    clip_pairs: int
    clip_model_pairs: int
    """Pairs scored with the model on a CPU (ViT-B/32 runs at tens of pairs/s there); a GPU scores all."""
    difficulty_records: tuple[int, ...]
    """Records of the two generated batches `score_batch` scores (peak RSS must not grow with them)."""
    bert_pairs: int
    """Pairs of the BERTScore comparison (the encoder alone, bert-score, kiln)."""
    tokenizer_mb: float
    training_steps: int
    clip_vit_b32: bool
    """CLIP at ViT-B/32 size (the issue's yardstick), or kiln's own small CLIP's size."""
    incremental_records: tuple[int, ...] = (5_000, 50_000)
    """Text records in each of the 20 batches of the incremental landing zones (100K and 1M records)."""
    incremental_new: int = 5_000
    """Text records of the batch that lands in each incremental zone."""
    near_dup_docs: int = 2_000
    """Base documents of the near-duplicate quality set (each with 4 light edits and 2 distinct
    documents on its topic); the cost is measured on the whole text corpus."""
    data_path_records: tuple[int, ...] = (100_000, 1_000_000)
    """Corpus sizes of the data path's steps (tokenizer, tokenized_corpus, curriculum and its check, packing)."""
    code_check_files: int = 300
    """Installed packages' source files sampled per language to measure the code check (bench/code_check.py)."""


SCALES = {
    "full": Scale(1_000_000, 50_000, 20_000, 100_000, 5_000, 1_024, 128, (2_000, 20_000), 1_000, 50, 20, True),
    "smoke": Scale(300, 20, 100, 100, 20, 8, 8, (40, 80), 16, 0.1, 1, False, (10, 20), 10, near_dup_docs=20, data_path_records=(300,), code_check_files=5),
}
GPU_SCALE = {"clip_pairs": 8_192}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


def run(sections: list[str], scale: Scale, repeats: int, work: Path) -> dict:
    cuda = torch.cuda.is_available()
    results: dict = {"machine": machine(), "scale": scale.__dict__, "repeats": repeats}
    text, code = work / "text", work / "code"
    if {"cleaning", "near_dup", "tokenizer"} & set(sections):
        results["corpus"] = write_text_batch(text / "batch-0001", scale.text_records)
    if "cleaning" in sections:
        # The side-by-side corpus is the first shard of the full one (the same seed writes the same records).
        side = work / "text-side" / "batch-0001"
        if not (side / "_SUCCESS").is_file():
            (side / "text").mkdir(parents=True, exist_ok=True)
            first = text / "batch-0001" / "text" / "part-00000.jsonl"
            with open(first, "rb") as src, open(side / "text" / "part-00000.jsonl", "wb") as dst:
                for i, line in enumerate(src):
                    if i == scale.side_by_side:
                        break
                    dst.write(line)
            (side / "_SUCCESS").touch()
        results["text_filters"] = cleaning.text_filter_table(text, scale.filter_sample, repeats, 2048)
        results["text_cleaning"] = [cleaning.whole_cleaning(side.parent, work, p) for p in ("kiln-filters", "loop")]
        results["text_cleaning"].append({**cleaning.whole_cleaning(text, work, "kiln"), "pipeline": "kiln, whole corpus"})
    if "incremental" in sections:
        from bench import incremental

        row = incremental.incremental(work, scale.incremental_records, scale.incremental_new, repeats)
        results["incremental"] = {**row, "markdown": incremental.markdown(row)}
    if "near_dup" in sections:
        from bench import near_dup

        row = near_dup.run(work, text, scale.near_dup_docs)
        results["near_dup"] = {**row, "markdown": near_dup.markdown(row)}
    if "tree_sitter" in sections:
        results["corpus_code"] = write_code_batch(code / "batch-0001", scale.code_files)
        results["tree_sitter"] = cleaning.tree_sitter_table(code, scale.code_sample, repeats, 2048)
        results["code_cleaning"] = cleaning.whole_cleaning(code, work, "kiln")
    if "code_check" in sections:
        from bench import code_check

        row = code_check.run(scale.code_check_files)
        results["code_check"] = {**row, "markdown": code_check.markdown(row)}
    if "object_storage" in sections:
        from bench import object_storage

        row = object_storage.run(work / "object_storage", repeats)
        results["object_storage"] = {**row, "markdown": object_storage.markdown(row)}
    if "clip" in sections:
        pairs = GPU_SCALE["clip_pairs"] if cuda else scale.clip_pairs
        images = models.write_image_batch(work / "images" / "batch-0001", pairs)
        model = models.clip_model(work / ("clip-vit-b32" if scale.clip_vit_b32 else "clip-small"), scale.clip_vit_b32)
        results["clip"] = models.clip_table(images.parent, model, pairs, pairs if cuda else scale.clip_model_pairs, 1024 if cuda else 64, repeats, os.cpu_count() or 1)
    if "difficulty" in sections:
        from bench import difficulty

        row = difficulty.run(work / "difficulty", list(scale.difficulty_records), scale.bert_pairs, repeats)
        results["difficulty"] = {**row, "markdown": difficulty.markdown(row)}
    if "tokenizer" in sections:
        results["tokenizer"] = models.tokenizer_row(text, work, scale.tokenizer_mb, repeats)
    if "data_path" in sections:
        from bench import scale as data_path

        row = data_path.run(work / "data_path", scale.data_path_records)
        results["data_path"] = {**row, "markdown": data_path.markdown(row)}
    if "release" in sections:
        from bench import release

        results["release"] = release.measure(release.prepare(work / "release"), work / "release")
    if "e2e" in sections:
        from bench import e2e

        results["e2e"] = e2e.demo(work / "demo")
    if "training" in sections:  # last: it makes this process a one-rank process group
        from bench import training

        results["training"] = []
        for preset in ["gpu-124m", "gpu-350m"] if cuda else ["tiny"]:
            row = training.run(preset, scale.training_steps, 3)
            results["training"].append({**row, "markdown": training.markdown(row)})
    return results


def markdown(results: dict) -> str:
    m = results["machine"]
    out = [f"# kiln benchmarks: {m['host']}", "",
           f"{m['cpu']}, {m['cores']} cores, {m['memory_gb']} GiB, GPU: {m['gpu'] or 'none'}; Python {m['python']}, torch {m['torch']}; {m['date']}.",
           f"Medians of {results['repeats']} runs unless stated.", ""]

    def table(title: str, header: list[str], rows: list[list], note: str = "") -> None:
        out.extend([f"## {title}", "", markdown_table(header, rows)])
        out.extend(["", note, ""] if note else [""])

    if "text_filters" in results:
        rows = results["text_filters"]
        table("Text filters: chunked (kiln) against a per-record loop", ["filter", "records", "MB", "kiln records/s", "kiln MB/s", "loop records/s", "loop MB/s", "speedup"],
              [[r["filter"], r["records"], r["mb"], r["chunked_records_per_s"], r["chunked_mb_per_s"], r["loop_records_per_s"], r["loop_mb_per_s"], f"{r['speedup']}×"] for r in rows])
        table("Whole text cleaning (read, filter, dedup, write), one run each", ["pipeline", "records", "input MB", "seconds", "records/s", "MB/s", "peak RSS MB"],
              [[r["pipeline"], r["kept"] + r["rejected"], r["input_mb"], r["seconds"], r["records_per_s"], r["mb_per_s"], r["peak_rss_mb"]] for r in results["text_cleaning"]])
    if "incremental" in results:
        out.extend(["## One new batch in a landing zone of 20", "", results["incremental"]["markdown"], ""])
    if "near_dup" in results:
        out.extend(["## Near-duplicate detection (text)", "", results["near_dup"]["markdown"], ""])
    if "tree_sitter" in results:
        table("Tree-sitter parse", ["processes", "files", "MB", "MB/s", "files/s", "scaling"],
              [[r["workers"], r["files"], r["mb"], r["mb_per_s"], r["files_per_s"], f"{r['scaling']}×"] for r in results["tree_sitter"]])
        r = results["code_cleaning"]
        out.extend([f"Whole code cleaning of {r['kept'] + r['rejected']} files ({r['input_mb']} MB, one run): {r['seconds']} s, "
                    f"{r['records_per_s']} files/s, {r['mb_per_s']} MB/s, peak RSS {r['peak_rss_mb']} MB.", ""])
    if "code_check" in results:
        out.extend(["## Code check on installed packages' files and on copies cut inside a bracket", "", results["code_check"]["markdown"], ""])
    if "object_storage" in results:
        out.extend(["## Cleaning from an S3-compatible bucket against local disk", "", results["object_storage"]["markdown"], ""])
    if "clip" in results:
        table("CLIP scoring end to end (ViT-B/32 size, JPEG files to CLIPScores)", ["path", "model", "pairs", "pairs/s", "device", "batch"],
              [[r["path"], "yes" if r["model"] else "no (decode + preprocess)", r["pairs"], r["pairs_per_s"], r["device"], r["batch_size"]] for r in results["clip"]])
    if "difficulty" in results:
        out.extend(["## Difficulty (BERTScore, persistence)", "", results["difficulty"]["markdown"], ""])
    if "tokenizer" in results:
        r = results["tokenizer"]
        table("Tokenizer training (byte-level BPE)", ["MB", "MB/s", "vocabulary", "threads"], [[r["mb"], r["mb_per_s"], r["vocab_size"], r["threads"]]])
    if "data_path" in results:
        out.extend(["## The data path at scale: cleaned corpus to packed tokens", "", results["data_path"]["markdown"], ""])
    if "release" in results:
        r = results["release"]
        table("Packaging a gpu-124m-sized release (random weights, int8, two GGUF files)", ["archive", "GB", "seconds", "peak RSS MB"],
              [[r["archive"], round(r["archive_bytes"] / 1e9, 2), r["seconds"], r["peak_rss_mb"]]])
    if "e2e" in results:
        out.extend(["## End to end: `make demo` (tiny preset)", "", results["e2e"]["markdown"], ""])
    for t in results.get("training", []):
        out.extend([f"## Training: {t['preset']}", "", t["markdown"], ""])
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="full")
    parser.add_argument("--repeats", type=int, default=None, help="default: 3 at full scale (after a warm-up run), 1 at smoke")
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--work", type=Path, default=ROOT / ".work", help="generated corpora and scratch (reused across runs)")
    parser.add_argument("--out", type=Path, default=ROOT / "results")
    parser.add_argument("--name", default=None, help="result file name; default: the host name")
    args = parser.parse_args()
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    repeats = args.repeats or (3 if args.scale == "full" else 1)
    results = run(sections, SCALES[args.scale], repeats, args.work)
    name = args.name or results["machine"]["host"]
    args.out.mkdir(parents=True, exist_ok=True)
    previous = args.out / f"{name}.json"
    if previous.is_file() and set(sections) != set(SECTIONS):  # a partial rerun keeps the other sections
        results = {**json.loads(previous.read_text()), **results}
    (args.out / f"{name}.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / f"{name}.md").write_text(markdown(results) + "\n")
    print(markdown(results))


if __name__ == "__main__":
    sys.exit(main())

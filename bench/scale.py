"""The data path from the cleaned corpus to packed training tokens at two corpus sizes: seconds and peak
resident set of each step, each in a fresh child process, side by side (`make bench`'s data_path section).

Steps, as the assets run them: `tokenizer` (fit on the bounded sample), `tokenized_corpus` (every
record encoded once), `curriculum` (stages as selections, decontamination streamed), its blocking check
`stages_disjoint_from_heldout` (the staged tokens decoded and checked), and packing every stage (what
each pretraining stage's rank 0 does before its first step). The corpus is `bench.tokenizer_scale`'s
generated one (about 1 KB records, 10 batches); difficulty is a stand-in (a level from a hash of the
id: BERTScore has its own section), written before the steps and not timed.

By hand:  python -m bench.scale <work dir> [--records 100000 1000000]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path

from bench.difficulty import status_kb
from bench.tokenizer_scale import write_corpus
from training.fsutil import remove
from training.markdown import markdown_table

STEPS = ("tokenizer", "tokenized_corpus", "curriculum", "stages_disjoint_from_heldout", "packing")
SEQ_LEN = 1024


def _stand_in_scores(corpus: Path, out: Path) -> list[Path]:
    """difficulty_scores/<batch>/scores.parquet for every batch: the held-out split by kiln's rule, a
    level from a hash of the id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from training.config import DifficultyConfig
    from training.curriculum.difficulty import is_heldout
    from training.curriculum.tokens import corpus_files
    from training.layout import batch_folders
    from training.layout import SCORES

    share, paths = DifficultyConfig().heldout_share, []
    for batch in batch_folders(corpus):
        path = out / batch / SCORES
        paths.append(path)
        if path.is_file():
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        with pq.ParquetWriter(path.with_suffix(".tmp"), pa.schema([("id", pa.string()), ("modality", pa.string()), ("batch", pa.string()),
                                                                 ("split", pa.string()), ("level", pa.int8())])) as w:
            for file in corpus_files(corpus / batch):
                for part in pq.ParquetFile(file).iter_batches(columns=["id", "modality"], batch_size=65_536):
                    ids, mods = part.column("id").to_pylist(), part.column("modality").to_pylist()
                    w.write_table(pa.table({
                        "id": ids, "modality": mods, "batch": [batch] * len(ids),
                        "split": ["heldout" if is_heldout(m, i, share) else "train" for m, i in zip(mods, ids)],
                        "level": pa.array([1 + hashlib.blake2b(i.encode(), digest_size=1).digest()[0] % 5 for i in ids], pa.int8()),
                    }))
        path.with_suffix(".tmp").rename(path)
    return paths


# --- inside a child ----------------------------------------------------------------------------------


def child(step: str, root: str) -> dict:
    """Run one step on the corpus under `root` (modules imported before the clock starts)."""
    from transformers import AutoTokenizer

    from training.config import CurriculumConfig, DifficultyConfig, TokenizerConfig
    from training.curriculum.schedule import build_curriculum, verify_stages
    from training.curriculum.tokenizer import fit_corpus_tokenizer, save_tokenizer
    from training.curriculum.tokens import current_shards, encode_corpus
    from training.layout import STAGE_FILES, Layout
    from training.pretrain.plan import pack_stage

    layout = Layout(Path(root))
    scores = sorted(layout.difficulty_scores.glob("*/scores.parquet"))
    start = time.perf_counter()
    if step == "tokenizer":
        tok, result = fit_corpus_tokenizer(layout.cleaned_corpus, TokenizerConfig(), DifficultyConfig().heldout_share, CurriculumConfig().ngram)
        save_tokenizer(tok, layout.tokenizer)
        detail = {"sampled_records": result["sample"]["records"], "sampled_mb": round(result["sample"]["bytes"] / 1e6, 1)}
    elif step == "tokenized_corpus":
        shards = encode_corpus(layout.cleaned_corpus, layout.tokenizer, layout.tokenized_corpus)
        detail = {"tokens": sum(s["tokens"] for s in shards.values()), "encoded_batches": sum(not s["reused"] for s in shards.values())}
    elif step == "curriculum":
        shards = current_shards(layout.cleaned_corpus, layout.tokenizer, layout.tokenized_corpus)
        summary = build_curriculum(scores, layout.cleaned_corpus, layout.tokenized_corpus, layout.curriculum, CurriculumConfig(), shards=shards)
        detail = {"staged_records": sum(s["records"] for s in summary["stages"]), "staged_tokens": sum(s["tokens"] for s in summary["stages"]),
                  "contaminated": summary["decontamination"]["removed"]}
    elif step == "stages_disjoint_from_heldout":
        result = verify_stages(layout.curriculum, layout.tokenized_corpus, AutoTokenizer.from_pretrained(layout.tokenizer), CurriculumConfig().ngram)
        detail = {"records_checked": result["records_checked"], "overlaps": result["overlaps"]}
    else:
        out = Path(root) / "packed"
        out.mkdir(exist_ok=True)
        rows = [pack_stage(p, layout.tokenized_corpus, SEQ_LEN, out / f"{p.stem}.npy") for p in sorted(layout.curriculum.glob(STAGE_FILES))]
        detail = {"stages": len(rows), "rows": sum(rows), "packed_gb": round(sum(p.stat().st_size for p in out.iterdir()) / 1e9, 2)}
    return {"seconds": round(time.perf_counter() - start, 1), "peak_rss_mb": round(status_kb("VmHWM") / 1024, 1), **detail}


# --- the parent -------------------------------------------------------------------------------------------


def _child(step: str, root: Path) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.scale", "child", step, str(root)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(work: Path, records: int) -> dict:
    """Every step of the data path on a generated corpus of `records` records, each in a fresh child."""
    corpus = write_corpus(work, records)
    root = corpus.parent
    _stand_in_scores(corpus, root / "difficulty_scores")
    for done in ("tokenizer", "tokenized_corpus", "curriculum", "packed"):  # every step does its work
        remove(root / done)
    return {"records": records, "corpus_mb": round(sum(p.stat().st_size for p in corpus.rglob("*.parquet")) / 1e6, 1),
            "steps": {step: _child(step, root) for step in STEPS}}


def run(work: Path, sizes: tuple[int, ...]) -> dict:
    """`measure` at each size; with two or more, each step's peak RSS and time per record at the largest
    against the smallest."""
    runs = [measure(work, n) for n in sizes]
    small, large = runs[0], runs[-1]

    def ratio(step: str) -> dict:
        a, b = small["steps"][step], large["steps"][step]
        per_record = (b["seconds"] / large["records"]) / max(a["seconds"] / small["records"], 1e-9)
        return {"rss": round(b["peak_rss_mb"] / a["peak_rss_mb"], 2), "seconds_per_record": round(per_record, 2)}

    return {"runs": runs, "ratios": {s: ratio(s) for s in STEPS} if len(runs) > 1 else {}}


def markdown(r: dict) -> str:
    head = ["step"] + [f"{run['records']:,} records: {c}" for run in r["runs"] for c in ("s", "peak RSS MB")]
    if r["ratios"]:
        head += ["peak RSS, largest / smallest", "s per record, largest / smallest"]
    rows = []
    for step in STEPS:
        row = [step] + [v for run in r["runs"] for v in (run["steps"][step]["seconds"], run["steps"][step]["peak_rss_mb"])]
        if r["ratios"]:
            row += [f"{r['ratios'][step]['rss']}×", f"{r['ratios'][step]['seconds_per_record']}×"]
        rows.append(row)
    corpus = ", ".join(f"{run['records']:,} records ({run['corpus_mb']} MB of Parquet)" for run in r["runs"])
    return f"Each step in a fresh process on generated corpora of {corpus}.\n\n" + markdown_table(head, rows)


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "child":
        print(json.dumps(child(sys.argv[2], sys.argv[3])))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("work", type=Path)
    parser.add_argument("--records", type=int, nargs="+", default=[100_000, 1_000_000])
    args = parser.parse_args()
    result = run(args.work, tuple(args.records))
    print(json.dumps(result, indent=2))
    print(markdown(result))

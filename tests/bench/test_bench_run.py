"""`make bench` at the smoke scale: every data-stage benchmark runs, reports what it measured, and the
comparisons inside it agree on what they decided. Speeds are not asserted (they are measured in
benchmarks, not tests); the near-duplicate quality and the filters' verdicts are tested in tests/training/."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_the_smoke_bench_measures_every_section_and_its_comparisons_agree(tmp_path):
    sections = "cleaning,incremental,near_dup,tree_sitter,clip,difficulty,tokenizer"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--scale", "smoke", "--only", sections, "--work", str(tmp_path / "work"),
         "--out", str(tmp_path / "out"), "--name", "ci"],
        cwd=REPO, check=True, capture_output=True, text=True, timeout=600,
    )
    results = json.loads((tmp_path / "out" / "ci.json").read_text())
    report = (tmp_path / "out" / "ci.md").read_text()
    assert results["machine"]["cores"] >= 1 and report.startswith("# kiln benchmarks")
    for title in ("Text filters", "Whole text cleaning", "One new batch", "Near-duplicate", "Tree-sitter", "CLIP", "Difficulty", "Tokenizer"):
        assert f"## {title}" in report, title

    filters = {r["filter"]: r for r in results["text_filters"]}
    assert set(filters) == {"not_empty", "min_words", "entropy", "dedup", "unique_id"}
    assert all(r["records"] > 0 and r["chunked_mb_per_s"] > 0 and r["loop_mb_per_s"] > 0 for r in filters.values())

    # kiln's chunked pipeline and the per-record loop decide every record the same way.
    kiln, loop, whole = results["text_cleaning"]
    assert (kiln["kept"], kiln["reasons"]) == (loop["kept"], loop["reasons"])
    assert kiln["kept"] + kiln["rejected"] == 100 and whole["kept"] + whole["rejected"] == 300
    assert whole["peak_rss_mb"] > 0

    # Near-duplicates: the three pipelines differ only by what near-duplicate detection removes.
    filters_only, exact, default = results["near_dup"]["cost"]
    assert [r["pipeline"] for r in results["near_dup"]["cost"]] == ["kiln-filters", "kiln-exact", "kiln"]
    assert filters_only["kept"] == exact["kept"] == default["kept"] + default["reasons"].get("near_duplicate", 0)
    assert 0 <= results["near_dup"]["quality"]["precision"] <= 1

    # One batch landing among 20: only it is cleaned, and only it is deduplicated.
    incremental = results["incremental"]
    assert incremental["cleaned"] == ["batch-0021/text", "batch-0021/code", "batch-0021/image_text"]
    assert incremental["deduplicated"] == ["batch-0021/text", "batch-0021/code", "batch-0021/image_text"]

    assert [r["workers"] for r in results["tree_sitter"]][0] == 1
    code = results["code_cleaning"]
    assert code["kept"] + code["rejected"] == 20

    clip = results["clip"]
    assert len(clip) == 6 and all(r["pairs"] == 8 and r["pairs_per_s"] > 0 for r in clip)
    difficulty = results["difficulty"]
    assert [b["records"] for b in difficulty["batches"]] == [b["generated"] for b in difficulty["batches"]] == [40, 80]
    assert [r["kind"] for r in difficulty["pairs"]] == ["encoder", "bert_score", "kiln"]
    assert difficulty["same_pairs"]["pairs"] == difficulty["batches"][0]["scored"] > 0
    assert results["tokenizer"]["mb"] > 0 and results["tokenizer"]["vocab_size"] == 65_536

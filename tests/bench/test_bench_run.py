"""`make bench` at the quick scale: every data-stage benchmark runs and reports what it measured.
Speeds are not asserted (they are measured in benchmarks, not tests); what the runs decide is."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_quick_bench_measures_and_agrees(tmp_path):
    sections = "cleaning,incremental,near_dup,tree_sitter,clip,bertscore,tokenizer"
    subprocess.run(
        [sys.executable, "-m", "bench.run", "--scale", "quick", "--only", sections, "--work", str(tmp_path / "work"),
         "--out", str(tmp_path / "out"), "--name", "ci"],
        cwd=REPO, check=True, capture_output=True, text=True,
    )
    results = json.loads((tmp_path / "out" / "ci.json").read_text())
    assert results["machine"]["cores"] >= 1 and (tmp_path / "out" / "ci.md").read_text().startswith("# kiln benchmarks")

    filters = {r["filter"]: r for r in results["text_filters"]}
    assert set(filters) == {"not_empty", "min_words", "entropy", "dedup", "unique_id"}
    assert all(r["records"] > 400 and r["chunked_mb_per_s"] > 0 and r["loop_mb_per_s"] > 0 for r in filters.values())

    # kiln's chunked pipeline and the per-record loop decide every record the same way.
    kiln, loop, whole = results["text_cleaning"]
    assert (kiln["kept"], kiln["reasons"]) == (loop["kept"], loop["reasons"])
    assert kiln["kept"] + kiln["rejected"] == 1_000 and whole["kept"] + whole["rejected"] == 3_000
    assert {"entropy_low", "duplicate", "too_few_words", "text_empty", "json_malformed"} <= set(whole["reasons"])
    assert whole["peak_rss_mb"] > 0

    # Near-duplicates: the generated set's edits are found, its distinct documents on one topic kept;
    # language and redaction reject nothing by default, near-duplicate detection only removes.
    near = results["near_dup"]
    assert near["quality"]["precision"] >= 0.99 and near["quality"]["recall"] >= 0.95
    filters_only, exact, default = near["cost"]
    assert [r["pipeline"] for r in near["cost"]] == ["kiln-filters", "kiln-exact", "kiln"]
    assert filters_only["kept"] == exact["kept"] == default["kept"] + default["reasons"].get("near_duplicate", 0)

    # One batch landing among 20: only it is cleaned, and only it is deduplicated.
    incremental = results["incremental"]
    assert incremental["cleaned"] == ["batch-0021/text", "batch-0021/code", "batch-0021/image_text"]
    assert incremental["deduplicated"] == ["batch-0021/text", "batch-0021/code", "batch-0021/image_text"]

    assert [r["workers"] for r in results["tree_sitter"]][0] == 1
    code = results["code_cleaning"]
    assert code["kept"] + code["rejected"] == 200 and code["reasons"].get("tree_sitter_error", 0) > 0

    clip = results["clip"]
    assert len(clip) == 6 and all(r["pairs"] == 32 and r["pairs_per_s"] > 0 for r in clip)
    assert results["bertscore"]["records"] == 20 and results["bertscore"]["records_per_s"] > 0
    assert results["tokenizer"]["mb"] >= 1 and results["tokenizer"]["vocab_size"] == 65_536

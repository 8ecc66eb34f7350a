"""The training benchmark end to end on the tiny preset and the CPU: the reference loop and kiln's
DeepSpeed step time, agree on their first loss, and report what the GPU run will report."""

from __future__ import annotations

import json
import math

import pytest

from bench.training import VARIANTS, markdown, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def results():
    return run("tiny", steps=2, warmup=1, variants=["reference", "kiln", "kiln-no-prefetch"])


def test_reference_and_kiln_report_finite_throughput_for_the_same_tokens(results):
    assert results["tokens_per_step"] == 4 * 256  # the tiny preset's micro-batch x sequence length
    assert results["device"] == "cpu" and results["compile"] is False
    for name in ("reference", "kiln", "kiln-no-prefetch"):
        r = results["variants"][name]
        assert math.isfinite(r["tokens_per_s"]) and r["tokens_per_s"] > 0
        assert len(r["step_seconds"]) == 2 and r["mfu"] is None  # no peak to divide by on a CPU
    assert results["variants"]["reference"]["vs_reference"] == 1.0


def test_every_variant_starts_from_the_reference_loss(results):
    """The same seed, weights and first batch: fp32 on a CPU agrees to 1e-4."""
    assert results["check"]["ok"], results["check"]
    first = {name: r["first_loss"] for name, r in results["variants"].items()}
    assert first["kiln"] == pytest.approx(first["reference"], rel=1e-4)
    # Random tokens over a 4,096 vocabulary: a fresh model starts near ln(4096) = 8.3.
    assert first["reference"] == pytest.approx(math.log(4096), abs=0.5)


def test_results_serialize_and_print_as_a_table(results):
    assert json.loads(json.dumps(results)) == results
    table = markdown(results)
    assert "| kiln |" in table and "| reference |" in table and "check: every first loss agrees" in table


def test_unknown_variants_are_refused():
    with pytest.raises(ValueError, match="unknown variants"):
        run("tiny", steps=1, warmup=1, variants=["kiln", "fastest"])
    assert "reference" in VARIANTS and "kiln" in VARIANTS

"""bench/code_check.py's own parts: where a cut lies inside a bracket, the sample, and the table on a
tiny tree of files (the measurement itself runs in `make bench`)."""

import random
from pathlib import Path

import pytest

from bench.code_check import cut_inside_bracket, inside_bracket, markdown, run
from training.data.filters.code import parser_for

SOURCE = "def f(a, b):\n    return [a, {b: 1}]\n\nx = f(1, 2)\n"


@pytest.mark.parametrize(
    "marker, inside",
    [
        ("def", False),  # top level
        ("a, b", True),  # in the parameters' parentheses
        ("return", False),  # a block is not a bracket in Python
        ("{b", True),  # in the list, before the dict opens
        ("b: 1", True),  # in the dict inside the list
        ("x =", False),
        ("1, 2", True),
    ],
)
def test_inside_bracket(marker, inside):
    root = parser_for("python").parse(SOURCE.encode()).root_node
    assert inside_bracket(root, SOURCE.index(marker)) == inside


def test_a_cut_copy_ends_inside_an_open_bracket_and_does_not_parse():
    rng = random.Random(0)
    for _ in range(20):
        cut = cut_inside_bracket("python", SOURCE, rng)
        assert cut is not None and SOURCE.startswith(cut) and len(cut) < len(SOURCE)
        assert cut.count("(") + cut.count("[") + cut.count("{") > cut.count(")") + cut.count("]") + cut.count("}")
        assert parser_for("python").parse(cut.encode()).root_node.has_error
    assert cut_inside_bracket("python", "x = 1\n", rng) is None  # no bracket to cut inside


def test_the_table_on_a_small_tree(tmp_path: Path):
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text(SOURCE)
    (tmp_path / "pkg" / "b.py").write_text("def g(x):\n    return (x +\n")  # broken: stays in the sample, is rejected
    (tmp_path / "pkg" / "c.h").write_text("namespace n {\ntemplate <typename T> T id(T x) { return x; }\n}\n")
    (tmp_path / "pkg" / "d.py").write_bytes(b"\xff\xfe not UTF-8")  # the reader would reject it: not sampled
    result = run(10, 0, tmp_path)
    rows = {r["language"]: r for r in result["rows"]}
    assert rows["python"]["files"] == 3 and rows["python"]["sampled"] == 2 and rows["python"]["valid_kept_pct"] == 50.0
    assert rows["c_or_cpp"]["grammars"] == {"cpp": 1} and rows["c_or_cpp"]["valid_kept_pct"] == 100.0
    assert rows["c_or_cpp"]["cut_copies"] == 1 and rows["c_or_cpp"]["cut_rejected_pct"] == 100.0
    assert rows["c_or_cpp"]["other_language_rejected_pct"] == 100.0  # the two Python files given as .h
    assert "| .h (C or C++) (cpp 1) | 1 | 1 | 100.0 |" in markdown(result)

"""The one Markdown table writer: text from the data never splits a cell or ends the table."""

import pytest

from training.markdown import markdown_table


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("plain", "plain"),
        (None, ""),
        (0.25, "0.25"),
        ("a|b", "a\\|b"),  # a file name or a rejection's detail with a pipe
        ("line one\nline two", "line one line two"),
        ("crlf\r\nend", "crlf end"),
        ("", ""),
    ],
)
def test_a_cell_stays_one_cell_of_one_row(cell, written):
    header, rule, row = markdown_table(["value", "n"], [(cell, 1)]).split("\n")
    assert (header, rule) == ("| value | n |", "|---|---|")
    assert row == f"| {written} | 1 |"

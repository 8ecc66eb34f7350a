"""Code filter: a file is kept when Tree-sitter parses it with its language's grammar, the closest a
parser gets to "compiles" for eight languages at once.

What an ERROR or MISSING node means depends on the language:

- Python, JavaScript, TypeScript, Java, Go, Rust: the grammar sees the code the compiler sees, so any
  ERROR or MISSING node rejects the file.
- C and C++ (`PREPROCESSED`): the compiler sees the code after the preprocessor, the grammar sees it
  before. Macros the grammar cannot expand (`PYBIND11_NAMESPACE_BEGIN(detail)` with no semicolon, an
  `#ifdef` inside an initializer, `FMT_CONSTEXPR auto f() ...`) leave ERROR nodes in valid files: a third
  of installed packages' .c files, half of their C++ files and 60% of their .h files have one. There an error is forgiven
  unless the file is cut off (more opening bracket tokens than closing ones: a cut inside an open
  bracket leaves one open, a macro the grammar cannot follow does not) or is mostly not C at all
  (errors on more than `max_error_lines` of its lines, or more than `max_skipped_bytes` of its bytes
  in tokens the parser had to skip).

`.h` is C or C++ (`EITHER`): the C grammar is tried first, then C++; the first that parses the file
without an error wins, else the one that skipped the fewest bytes, then had errors on the fewest
lines (C parsing a C++ header skips its templates and namespaces; an export macro before each
declaration costs both grammars an error a line). The record's `language` becomes the grammar
used, kept or rejected. `bench/code_check.py` measures all this on installed packages' files and on
copies of them cut inside an open bracket.
"""

from __future__ import annotations

import functools
import importlib
import multiprocessing
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

from tree_sitter import Language, Node, Parser, Query, QueryCursor, Tree

from training.config import CodeFilterConfig
from training.data.filters.base import Filter, Verdict
from training.data.records import Record, Reject

# Grammar -> (module, function returning the language pointer).
GRAMMARS = {
    "python": ("tree_sitter_python", "language"),
    "javascript": ("tree_sitter_javascript", "language"),
    "typescript": ("tree_sitter_typescript", "language_typescript"),
    "tsx": ("tree_sitter_typescript", "language_tsx"),
    "java": ("tree_sitter_java", "language"),
    "c": ("tree_sitter_c", "language"),
    "cpp": ("tree_sitter_cpp", "language"),
    "go": ("tree_sitter_go", "language"),
    "rust": ("tree_sitter_rust", "language"),
}

EITHER = {"c_or_cpp": ("c", "cpp")}
"""Languages an extension does not decide, and the grammars tried in order: `.h` holds C or C++.
A record keeps this language only when it is rejected before it is parsed."""

PREPROCESSED = frozenset({"c", "cpp"})
"""Grammars whose files pass through a preprocessor the grammar cannot run (see the module's docstring)."""

_BRACKETS = '["(" "[" "{"] @open [")" "]" "}"] @close'
_ERRORS = "(ERROR) @error (MISSING) @missing"


def grammars(language: str) -> tuple[str, ...]:
    """The grammars a record of `language` is parsed with, in the order they are tried."""
    return EITHER.get(language, (language,))


@functools.cache
def parser_for(language: str) -> Parser:
    """The Tree-sitter parser of `language`'s grammar, one per process."""
    module, attr = GRAMMARS[language]
    return Parser(Language(getattr(importlib.import_module(module), attr)()))


def first_error(node: Node) -> Node | None:
    """The first ERROR or MISSING node in document order, descending only into subtrees with errors."""
    current: Node | None = node
    while current is not None and not (current.is_error or current.is_missing):
        current = next((c for c in current.children if c.has_error or c.is_missing), None)
    return current


@functools.cache
def _query(grammar: str, source: str) -> Query:
    return Query(parser_for(grammar).language, source)


@dataclass(frozen=True)
class Errors:
    """What the ERROR and MISSING nodes of one parse amount to."""

    grammar: str
    first: str
    """The first error, for people: `ERROR at line 3, column 5`."""
    error_lines: float
    """Share of the file's lines on which an ERROR or MISSING node starts."""
    skipped_bytes: float
    """Share of the file's bytes in tokens the parser skipped (leaves directly under an ERROR node)."""
    unclosed: int
    """Opening bracket tokens minus closing ones (MISSING tokens the parser invented not counted)."""


def _described(bad: Node | None) -> str:
    if bad is None:
        return "an error"
    return f"{f'MISSING {bad.type}' if bad.is_missing else 'ERROR'} at line {bad.start_point.row + 1}, column {bad.start_point.column + 1}"


def errors_of(grammar: str, tree: Tree, size: int, lines: int) -> Errors:
    root = tree.root_node
    first = _described(first_error(root))
    found = QueryCursor(_query(grammar, _ERRORS)).captures(root)
    rows = {n.start_point.row for n in found.get("error", []) + found.get("missing", [])}
    skipped = 0
    for node in found.get("error", []):
        leaves = [node] if node.child_count == 0 else [c for c in node.children if c.child_count == 0 and not c.is_missing]
        skipped += sum(leaf.end_byte - leaf.start_byte for leaf in leaves)
    brackets = QueryCursor(_query(grammar, _BRACKETS)).captures(root)
    unclosed = sum(not n.is_missing for n in brackets.get("open", [])) - sum(not n.is_missing for n in brackets.get("close", []))
    return Errors(grammar, first, len(rows) / max(lines, 1), skipped / max(size, 1), unclosed)


def judge(errors: Errors, cfg: CodeFilterConfig) -> Verdict:
    """The verdict on a parse with errors in a `PREPROCESSED` grammar."""
    g = errors.grammar
    if errors.unclosed > 0:
        return Reject("tree_sitter_error", f"{g}: {errors.unclosed} bracket(s) never closed, cut off? (first error: {errors.first})")
    if errors.error_lines > cfg.max_error_lines:
        return Reject("tree_sitter_error", f"{g}: errors on {errors.error_lines:.0%} of lines > {cfg.max_error_lines:.0%} (first: {errors.first})")
    if errors.skipped_bytes > cfg.max_skipped_bytes:
        return Reject("tree_sitter_error", f"{g}: {errors.skipped_bytes:.0%} of bytes skipped > {cfg.max_skipped_bytes:.0%} (first: {errors.first})")
    return None


def check_code(language: str, text: str, cfg: CodeFilterConfig = CodeFilterConfig()) -> tuple[Verdict, str]:
    """The verdict on `text` and the grammar that decided it (for `.h`, the one that fitted best)."""
    data = text.encode("utf-8")
    size, lines = len(data), data.count(b"\n") + (not data.endswith(b"\n"))
    best: Errors | None = None
    for grammar in grammars(language):
        tree = parser_for(grammar).parse(data)
        if not tree.root_node.has_error:
            return None, grammar
        if grammar not in PREPROCESSED:  # strict: its first error decides, nothing else is measured
            return Reject("tree_sitter_error", f"{grammar}: {_described(first_error(tree.root_node))}"), grammar
        errors = errors_of(grammar, tree, size, lines)
        if best is None or (errors.skipped_bytes, errors.error_lines) < (best.skipped_bytes, best.error_lines):
            best = errors
    assert best is not None
    return judge(best, cfg), best.grammar


def _verdicts(cfg: CodeFilterConfig, items: list[tuple[str, str]]) -> list[tuple[Verdict, str]]:
    return [check_code(language, text, cfg) for language, text in items]


class TreeSitterParse(Filter):
    """Parses on `workers` processes: py-tree-sitter holds the GIL while it parses, so threads
    would not add a core. The pool starts on the first chunk and lives as long as the filter.
    Sets each record's `language` to the grammar that decided it."""

    name = "tree_sitter"

    def __init__(self, workers: int = 1, cfg: CodeFilterConfig = CodeFilterConfig()) -> None:
        self.workers, self.cfg = workers, cfg
        self._pool: ProcessPoolExecutor | None = None

    def check(self, record: Record) -> Verdict:
        verdict, record.language = check_code(record.language or "", record.text or "", self.cfg)
        return verdict

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        if self.workers <= 1 or len(records) < 2 * self.workers:
            return super().__call__(records)
        if self._pool is None:
            # spawn, not fork: the cleaning runs inside Dagster and torch processes with threads.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
        items = [(r.language or "", r.text or "") for r in records]
        # Interleaved slices balance the work when large files cluster in one part of a chunk.
        work = functools.partial(_verdicts, self.cfg)
        parts = list(self._pool.map(work, [items[i :: self.workers] for i in range(self.workers)]))
        results: list[tuple[Verdict, str]] = [(None, "")] * len(items)
        for i, part in enumerate(parts):
            results[i :: self.workers] = part
        for record, (_, grammar) in zip(records, results):
            record.language = grammar
        return [verdict for verdict, _ in results]

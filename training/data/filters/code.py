"""Code filter: a file is kept only if Tree-sitter parses it with its language's grammar without
ERROR or MISSING nodes, the closest a parser gets to "compiles" for eight languages at once."""

from __future__ import annotations

import importlib
import multiprocessing
import weakref
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor

from tree_sitter import Language, Node, Parser

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


def parser_for(language: str) -> Parser:
    module, attr = GRAMMARS[language]
    return Parser(Language(getattr(importlib.import_module(module), attr)()))


def first_error(node: Node) -> Node | None:
    """The first ERROR or MISSING node in document order, descending only into subtrees with errors."""
    current: Node | None = node
    while current is not None and not (current.is_error or current.is_missing):
        current = next((c for c in current.children if c.has_error or c.is_missing), None)
    return current


_PARSERS: dict[str, Parser] = {}


def parse_verdict(language: str, text: str) -> Verdict:
    if language not in _PARSERS:
        _PARSERS[language] = parser_for(language)
    tree = _PARSERS[language].parse(text.encode("utf-8"))
    if not tree.root_node.has_error:
        return None
    bad = first_error(tree.root_node)
    if bad is None:
        where = "an error"
    else:
        kind = f"MISSING {bad.type}" if bad.is_missing else "ERROR"
        where = f"{kind} at line {bad.start_point.row + 1}, column {bad.start_point.column + 1}"
    return Reject("tree_sitter_error", f"{language}: {where}")


def _verdicts(items: list[tuple[str, str]]) -> list[Verdict]:
    return [parse_verdict(language, text) for language, text in items]


class TreeSitterParse(Filter):
    """Parses on `workers` processes: py-tree-sitter holds the GIL while it parses, so threads
    would not add a core. The pool starts on the first chunk and lives as long as the filter."""

    name = "tree_sitter"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers
        self._pool: ProcessPoolExecutor | None = None

    def check(self, record: Record) -> Verdict:
        return parse_verdict(record.language or "", record.text or "")

    def __call__(self, records: Sequence[Record]) -> list[Verdict]:
        if self.workers <= 1 or len(records) < 2 * self.workers:
            return super().__call__(records)
        if self._pool is None:
            # spawn, not fork: the cleaning runs inside Dagster and torch processes with threads.
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"))
            weakref.finalize(self, self._pool.shutdown, cancel_futures=True)
        items = [(r.language or "", r.text or "") for r in records]
        # Interleaved slices balance the work when large files cluster in one part of a chunk.
        parts = list(self._pool.map(_verdicts, [items[i :: self.workers] for i in range(self.workers)]))
        verdicts: list[Verdict] = [None] * len(items)
        for i, part in enumerate(parts):
            verdicts[i :: self.workers] = part
        return verdicts

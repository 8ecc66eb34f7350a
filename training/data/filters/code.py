"""Code filter: a file is kept only if Tree-sitter parses it with its language's grammar without
ERROR or MISSING nodes, the closest a parser gets to "compiles" for eight languages at once."""

from __future__ import annotations

import importlib

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


class TreeSitterParse(Filter):
    name = "tree_sitter"

    def __init__(self) -> None:
        self._parsers: dict[str, Parser] = {}

    def check(self, record: Record) -> Verdict:
        lang = record.language or ""
        if lang not in self._parsers:
            self._parsers[lang] = parser_for(lang)
        tree = self._parsers[lang].parse((record.text or "").encode("utf-8"))
        if not tree.root_node.has_error:
            return None
        bad = first_error(tree.root_node)
        if bad is None:
            where = "an error"
        else:
            kind = f"MISSING {bad.type}" if bad.is_missing else "ERROR"
            where = f"{kind} at line {bad.start_point.row + 1}, column {bad.start_point.column + 1}"
        return Reject("tree_sitter_error", f"{lang}: {where}")

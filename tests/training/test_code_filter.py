from pathlib import Path

import pytest

from training.config import CodeFilterConfig
from training.data.filters.code import GRAMMARS, TreeSitterParse
from training.data.landing import Batch
from training.data.readers import CODE_LANGUAGES, read_code
from training.demo.snippets import SNIPPETS

VALID = {
    "python": "def area(r):\n    return 3.14159 * r * r\n",
    "javascript": "const add = (a, b) => a + b;\nconsole.log(add(1, 2));\n",
    "typescript": "function id<T>(x: T): T { return x; }\nexport const n: number = id(3);\n",
    "tsx": "export const Hello = ({ name }: { name: string }) => <p>Hello {name}</p>;\n",
    "java": "class A { int twice(int x) { return 2 * x; } }\n",
    "c": "int twice(int x) { return 2 * x; }\n",
    "cpp": "#include <vector>\nstd::vector<int> v{1, 2};\nint main() { return v[0]; }\n",
    "go": "package main\n\nfunc main() { println(\"hi\") }\n",
    "rust": "fn main() { let v: Vec<i32> = vec![1, 2]; println!(\"{:?}\", v); }\n",
}
BROKEN = {
    "python": "def area(r:\n    return 3.14 * r\n",
    "javascript": "function f( {\n  return 1;\n",
    "typescript": "let x: number = ;\n",
    "tsx": "export const A = () => <p>unclosed;\n",
    "java": "class A { int twice(int x) { return 2 * x; }\n",
    "c": "int main(void) { return 0\n",
    "cpp": "int main() { std::vector<int> v{1, 2; }\n",
    "go": "package main\nfunc main() { println(\"hi\"\n",
    "rust": "fn main() { let x = ; }\n",
}


def parse(language: str, text: str):
    from training.data.records import Record

    return TreeSitterParse()([Record("x", "code", "b/code/x", text=text, language=language)])[0]


@pytest.mark.parametrize("language", sorted(GRAMMARS))
def test_valid_code_parses(language):
    assert parse(language, VALID[language]) is None


@pytest.mark.parametrize("language", sorted(GRAMMARS))
def test_broken_code_is_rejected_with_location(language):
    verdict = parse(language, BROKEN[language])
    assert verdict is not None and verdict.reason == "tree_sitter_error"
    assert verdict.detail.startswith(f"{language}: ") and "line" in verdict.detail


@pytest.mark.parametrize("name", sorted(SNIPPETS))
def test_shipped_snippets_parse(name):
    assert parse(CODE_LANGUAGES["." + name.rsplit(".", 1)[1]], SNIPPETS[name]) is None


def test_every_extension_has_a_grammar():
    assert set(CODE_LANGUAGES.values()) <= set(GRAMMARS)


@pytest.mark.parametrize(
    "name, data, expected",
    [
        ("ok.py", b"x = 1\n", None),
        ("bom.py", b"\xef\xbb\xbfx = 1\n", None),
        ("empty.go", b"", "file_empty"),
        ("blank.rs", b"  \n\t\n", "file_empty"),
        ("blob.c", b"\x7fELF\x00\x01\x02int main", "binary_file"),
        ("latin1.c", "/* r\xe9sum\xe9 */ int x;".encode("latin-1"), "undecodable"),
        ("script.rb", b"puts 1\n", "unsupported_extension"),
        ("Makefile", b"all:\n\ttrue\n", "unsupported_extension"),
        ("big.js", b"var a = 1;\n" * 200, "file_too_large"),
    ],
)
def test_code_reader_reasons(tmp_path: Path, name, data, expected):
    code = tmp_path / "b" / "code"
    code.mkdir(parents=True)
    (code / name).write_bytes(data)
    [rec] = list(read_code(Batch("b", tmp_path / "b"), CodeFilterConfig(max_file_bytes=1024)))
    assert (rec.reject.reason if rec.reject else None) == expected
    assert rec.source == f"b/code/{name}" and rec.modality == "code"


@pytest.mark.slow
def test_worker_processes_give_the_same_verdicts_in_order():
    from training.data.records import Record

    records = [
        Record(f"{lang}-{kind}", "code", f"b/code/{lang}-{kind}", text=table[lang], language=lang)
        for lang in sorted(GRAMMARS)
        for kind, table in (("ok", VALID), ("broken", BROKEN))
    ]
    serial = TreeSitterParse(workers=1)(records)
    parallel = TreeSitterParse(workers=2)
    assert parallel(records) == serial
    assert parallel._pool is not None  # the chunk really went to the pool
    assert [v is None for v in serial] == [r.id.endswith("-ok") for r in records]

from pathlib import Path

import pytest

from training.config import CodeFilterConfig
from training.data.filters.code import EITHER, GRAMMARS, TreeSitterParse, check_code, parser_for
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
    assert set(CODE_LANGUAGES.values()) <= set(GRAMMARS) | set(EITHER)
    assert all(set(tried) <= set(GRAMMARS) for tried in EITHER.values())


# Excerpts of headers and sources that ship in installed packages (pybind11, sklearn's MurmurHash3,
# torch's generated operator headers, tree-sitter's Python bindings), as kiln meets them in code/.
CPP_HEADER = """#pragma once
#include <type_traits>

namespace pybind11 {
namespace detail {
template <typename H>
using is_smart_holder = std::is_same<H, smart_holder>;

class loader_life_support {
public:
    loader_life_support() = default;
    ~loader_life_support() { keep_alive.clear(); }
private:
    std::vector<PyObject *> keep_alive;
};
} // namespace detail
} // namespace pybind11
"""
C_HEADER = """#ifndef _MURMURHASH3_H_
#define _MURMURHASH3_H_
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

void MurmurHash3_x86_32(const void *key, int len, uint32_t seed, void *out);
void MurmurHash3_x64_128(const void *key, int len, uint32_t seed, void *out);

#ifdef __cplusplus
}
#endif
#endif
"""
# Macros the grammar cannot expand: a statement-like macro without a semicolon, an export macro
# before each declaration (one ERROR a line), an #ifdef inside an initializer.
MACRO_HEADER = """#pragma once
#include "common.h"

PYBIND11_NAMESPACE_BEGIN(PYBIND11_NAMESPACE)
PYBIND11_NAMESPACE_BEGIN(detail)

template <typename H>
using is_smart_holder = std::is_same<H, smart_holder>;

// Helpers the bindings share.
inline int twice(int x) { return 2 * x; }
inline int thrice(int x) { return 3 * x; }
inline int square(int x) {
    return x * x;
}
struct holder {
    int value = 0;
};
TORCH_API at::Tensor fill(const at::Tensor & self, const at::Scalar & value);

PYBIND11_NAMESPACE_END(detail)
PYBIND11_NAMESPACE_END(PYBIND11_NAMESPACE)
"""
MACRO_C = """#include <Python.h>

typedef struct TSLanguage TSLanguage;

TSLanguage *tree_sitter_c(void);

static PyObject* _binding_language(PyObject *Py_UNUSED(self), PyObject *Py_UNUSED(args)) {
    return PyCapsule_New(tree_sitter_c(), "tree_sitter.Language", NULL);
}

static struct PyModuleDef_Slot slots[] = {
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL}
};

static PyMethodDef methods[] = {
    {"language", _binding_language, METH_NOARGS,
     "Get the tree-sitter language for this grammar."},
    {NULL, NULL, 0, NULL}
};

static struct PyModuleDef module = {
    .m_base = PyModuleDef_HEAD_INIT,
    .m_name = "_binding",
    .m_methods = methods,
    .m_slots = slots,
};

PyMODINIT_FUNC PyInit__binding(void) {
    return PyModuleDef_Init(&module);
}
"""
PYTHON = """import os


def walk(root):
    for name in sorted(os.listdir(root)):
        path = os.path.join(root, name)
        if os.path.isdir(path):
            yield from walk(path)
        else:
            yield path
"""


def cut_inside(text: str, marker: str) -> str:
    """`text` cut right after the first `marker`, which opens a bracket the rest closes."""
    return text[: text.index(marker) + len(marker)]


@pytest.mark.parametrize(
    "language, text, grammar, has_error, kept",
    [
        ("c_or_cpp", CPP_HEADER, "cpp", False, True),
        ("c_or_cpp", C_HEADER, "c", True, True),  # `extern "C" {` and its `}` in two #ifdefs
        ("c_or_cpp", MACRO_HEADER, "cpp", True, True),
        ("c", MACRO_C, "c", True, True),
        ("cpp", MACRO_HEADER, "cpp", True, True),
        # Cut inside an open bracket: the macros' errors are forgiven, a bracket left open is not.
        ("c_or_cpp", cut_inside(CPP_HEADER, "~loader_life_support() {"), "cpp", True, False),
        ("c_or_cpp", cut_inside(C_HEADER, "MurmurHash3_x86_32(const void *key,"), "c", True, False),
        ("c_or_cpp", cut_inside(MACRO_HEADER, "inline int thrice(int x) {"), "cpp", True, False),
        ("c", cut_inside(MACRO_C, "PyInit__binding(void) {"), "c", True, False),
        ("python", cut_inside(PYTHON, "os.path.join("), "python", True, False),
        # Not C at all: a Python module given a C extension.
        ("c", PYTHON, "c", True, False),
        ("c_or_cpp", PYTHON, "c", True, False),
        # No preprocessor, no forgiveness: one ERROR rejects a Python file.
        ("python", PYTHON.replace("def walk(root):", "def walk(root)"), "python", True, False),
    ],
)
def test_code_check_on_headers_macros_and_cut_copies(language, text, grammar, has_error, kept):
    verdict, used = check_code(language, text)
    assert used == grammar
    assert parser_for(grammar).parse(text.encode()).root_node.has_error == has_error
    assert (verdict is None) == kept, verdict
    if not kept:
        assert verdict.reason == "tree_sitter_error" and verdict.detail.startswith(f"{grammar}: ")


def test_a_cut_c_file_is_rejected_as_cut_off():
    verdict, _ = check_code("c_or_cpp", cut_inside(MACRO_HEADER, "inline int thrice(int x) {"))
    assert "1 bracket(s) never closed" in verdict.detail


@pytest.mark.parametrize(
    "language, text, cfg, kept",
    [
        ("c_or_cpp", MACRO_HEADER, CodeFilterConfig(), True),
        ("c_or_cpp", MACRO_HEADER, CodeFilterConfig(max_error_lines=0.1), False),  # the macros: 5 lines of 23
        ("c", MACRO_C, CodeFilterConfig(), True),
        ("c", MACRO_C, CodeFilterConfig(max_skipped_bytes=0.0), False),  # the #ifdef's tokens are skipped
    ],
)
def test_the_macro_limits_come_from_the_config(language, text, cfg, kept):
    assert (check_code(language, text, cfg)[0] is None) == kept


def test_the_grammar_that_decided_a_header_is_recorded(tmp_path: Path):
    code = tmp_path / "b" / "code"
    code.mkdir(parents=True)
    for name, text in {"a.h": C_HEADER, "b.h": CPP_HEADER, "c.h": cut_inside(CPP_HEADER, "~loader_life_support() {"), "d.hpp": CPP_HEADER}.items():
        (code / name).write_text(text)
    records = list(read_code(Batch("b", tmp_path / "b"), CodeFilterConfig()))
    assert [r.language for r in records] == ["c_or_cpp", "c_or_cpp", "c_or_cpp", "cpp"]
    verdicts = TreeSitterParse()(records)
    assert [r.language for r in records] == ["c", "cpp", "cpp", "cpp"]
    assert [v is None for v in verdicts] == [True, True, False, True]


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

    def records():
        return [
            Record(f"{lang}-{kind}", "code", f"b/code/{lang}-{kind}", text=table[lang], language=lang)
            for lang in sorted(GRAMMARS)
            for kind, table in (("ok", VALID), ("broken", BROKEN))
        ] + [Record(f"h-{kind}", "code", f"b/code/{kind}.h", text=text, language="c_or_cpp") for kind, text in (("ok", CPP_HEADER), ("broken", cut_inside(CPP_HEADER, "public:")))]

    serial_records, parallel_records = records(), records()
    serial = TreeSitterParse(workers=1)(serial_records)
    parallel = TreeSitterParse(workers=2)
    assert parallel(parallel_records) == serial
    assert parallel._pool is not None  # the chunk really went to the pool
    assert [v is None for v in serial] == [r.id.endswith("-ok") for r in serial_records]
    # The grammar each header was parsed with comes back from the workers.
    assert [r.language for r in parallel_records] == [r.language for r in serial_records]
    assert [r.language for r in parallel_records][-2:] == ["cpp", "cpp"]

"""The house's layers: arrows only go down (pipelines/ -> assets/ -> training/, and inside training/
from the top-level modules through release/ down to data/ and the core), no import cycle, no private
name used from another package. Read from the source with `ast`, function-level imports included."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("training", "assets", "pipelines", "bench")

# training/'s layers, lowest first: a module may import from its own layer or a lower one, and from
# another folder of its own layer only where that folder is listed beside it.
LAYERS = [
    {"training.cache", "training.config", "training.fsutil", "training.device", "training.generate", "training.layout", "training.locks", "training.markdown", "training.presets"},
    {"training.data"},
    {"training.demo", "training.clip", "training.curriculum"},
    {"training.pretrain"},
    {"training.release"},
    {"training.retraining", "training.__main__"},
]


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if ".work" in path.parts:
                continue
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            found[name.removesuffix(".__init__")] = path
    return found


def imports(path: Path, known: set[str]) -> set[tuple[str, str | None]]:
    """(module, name) pairs `path` imports, for modules in `known` (name None for `import x`)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                out.add((sub, None) if sub in known else (node.module, alias.name))
        elif isinstance(node, ast.Import):
            out |= {(alias.name, None) for alias in node.names}
    return {(m, n) for m, n in out if m in known or m.split(".")[0] in ("dagster",)}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m, _ in imports(path, set(known))} - {name} for name, path in known.items()}


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `edges` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


@pytest.mark.parametrize(
    "edges, cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"a"}}, ["a", "b", "a"]),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a"}}, ["a", "a"]),
    ],
    ids=["chain", "two", "three", "self"],
)
def test_find_cycle(edges, cycle):
    assert find_cycle(edges) == cycle


def test_no_import_cycle():
    assert find_cycle(graph()) is None


def layer(module: str) -> int | None:
    for i, members in enumerate(LAYERS):
        if any(module == m or module.startswith(m + ".") for m in members):
            return i
    return None


def folder(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_arrows_only_go_down():
    edges = graph()
    wrong = []
    for module, deps in sorted(edges.items()):
        top = module.split(".")[0]
        for dep in sorted(deps):
            if dep.startswith("dagster") and top in ("training",):
                wrong.append(f"{module} imports dagster: the library never does")
            elif top == "training" and dep.split(".")[0] in ("assets", "pipelines", "bench"):
                wrong.append(f"{module} imports {dep}: the library imports nothing above it")
            elif top == "assets" and dep.split(".")[0] in ("pipelines", "bench"):
                wrong.append(f"{module} imports {dep}: assets import only assets and training")
            elif top == "training" and dep.startswith("training."):
                mine, theirs = layer(module), layer(dep)
                if mine is None or theirs is None:
                    wrong.append(f"{module} or {dep} is in no layer of LAYERS: place it")
                elif theirs > mine or (theirs == mine and mine > 1 and folder(dep) != folder(module)):
                    wrong.append(f"{module} (layer {mine}) imports {dep} (layer {theirs})")
    assert wrong == []


def test_no_private_name_from_another_package():
    known = modules()
    wrong = []
    for module, path in sorted(known.items()):
        for dep, name in sorted(imports(path, set(known)), key=str):
            if name and name.startswith("_") and folder(dep) != folder(module):
                wrong.append(f"{module} imports {dep}.{name}")
    assert wrong == []


def test_layers_name_every_library_module():
    assert [m for m in modules() if m.startswith("training.") and layer(m) is None] == []

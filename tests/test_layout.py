"""The house plan, read from the source (ast): cli -> wings -> core, and nothing the other way.

The core is the flat package `textgen/*.py`; `serve`, `export` and `viz` are wings (subpackages
the CLI calls). Every import counts, those inside functions too, since a lazy import is still an
arrow between modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "textgen"
WINGS = ("serve", "export", "viz")
ENTRY = ("cli", "__main__")
DATA_MODULES = ("corpus", "corpus_cache", "data", "vocab")  # text in, ids out: no run directories
RUN_MODULES = ("runs", "runlock", "checkpoint", "launch", "train", "inference", "runformat")


def module_name(path: Path) -> str:
    """`textgen/serve/app.py` -> "serve.app"; `textgen/model.py` -> "model"."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, ast.Module]:
    return {module_name(p): ast.parse(p.read_text(encoding="utf-8")) for p in sorted(PACKAGE.rglob("*.py"))}


def imports(tree: ast.Module, name: str) -> list[tuple[str, list[str]]]:
    """(imported textgen module, names taken from it) for every import in a module's tree."""
    found = []
    package = name.split(".")[:-1] if name else []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name.removeprefix("textgen.").removeprefix("textgen"), [])
                      for a in node.names if a.name == "textgen" or a.name.startswith("textgen.")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing module's package
                base = package[:len(package) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            elif node.module and (node.module == "textgen" or node.module.startswith("textgen.")):
                target = node.module.removeprefix("textgen").removeprefix(".")
            else:
                continue
            names = [a.name for a in node.names]
            if target == "":  # `from textgen import x`: x may be a module
                found += [(n, []) for n in names if n != "__version__"]
            else:
                found.append((target, names))
    return found


def kind(name: str) -> str:
    top = name.split(".")[0]
    if top in WINGS:
        return top
    return "entry" if top in ENTRY else "core"


GRAPH = {name: imports(tree, name) for name, tree in modules().items()}


def test_the_package_has_the_planned_parts():
    assert {kind(n) for n in GRAPH} == {"core", "entry", *WINGS}
    for wing in WINGS:
        assert f"{wing}.command" in GRAPH, f"the {wing} wing has its command entry"
    assert "model" in GRAPH  # `import textgen.model`: every Keras export's README relies on it


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_arrows_point_from_cli_to_wings_to_core(name):
    for target, _ in GRAPH[name]:
        if kind(name) == "core":
            assert kind(target) == "core", f"core module {name} imports {target}"
        elif kind(name) in WINGS:
            assert kind(target) in ("core", kind(name)), f"wing module {name} imports {target}"


def test_config_imports_nothing_from_the_training_side():
    assert {t for t, _ in GRAPH["config"]} <= {"errors"}


@pytest.mark.parametrize("name", DATA_MODULES)
def test_data_modules_know_no_run_directory(name):
    assert not {t for t, _ in GRAPH[name]} & set(RUN_MODULES)


@pytest.mark.parametrize("name", sorted(GRAPH))
def test_no_private_name_is_imported_across_modules(name):
    for target, names in GRAPH[name]:
        private = [n for n in names if n.startswith("_") and n != "__version__"]
        assert not private, f"{name} imports private {private} from {target}"


def test_no_import_cycles():
    edges = {n: {t for t, _ in GRAPH[n] if t in GRAPH and t != n} for n in GRAPH}
    # a package's __init__ and its modules are one unit for import order: skip package -> child
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_every_module_says_what_it_is_for():
    missing = [n for n, tree in modules().items() if not ast.get_docstring(tree)]
    assert not missing, f"modules without a docstring: {missing}"


def test_the_checker_sees_a_violation():
    """The rules above would catch a core module importing a wing (the test can fail)."""
    tree = ast.parse("def f():\n    from textgen.serve.app import create_app\n")
    assert [t for t, _ in imports(tree, "model")] == ["serve.app"]
    assert kind("serve.app") == "serve" and kind("model") == "core"

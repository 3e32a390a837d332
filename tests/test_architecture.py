"""The package's import graph is the one docs/architecture.md draws, and its rules hold."""

import ast
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "charrnn_jax"
CLI_MODULES = {"main", "sample", "evaluate", "classify", "compare", "fit_tutorial"}
IO_MODULES = {"os", "pathlib", "io", "json", "shutil", "etils", "orbax", "urllib", "socket"}


def _modules() -> dict[str, ast.Module]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.with_suffix("").relative_to(PACKAGE).parts)
        if not name.endswith("__init__"):
            out[name] = (path, ast.parse(path.read_text()))
    return out


def _package_imports(tree: ast.Module) -> set[str]:
    deps = set()
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.ImportFrom)
            and node.module
            and node.module.startswith("charrnn_jax")
        ):
            sub = node.module[len("charrnn_jax") :].lstrip(".")
            deps.update([sub] if sub else [alias.name for alias in node.names])
        elif isinstance(node, ast.Import):
            deps.update(
                a.name[len("charrnn_jax.") :]
                for a in node.names
                if a.name.startswith("charrnn_jax.")
            )
    return deps


def _all_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[0] for a in node.names)
    return names


def _documented_graph() -> dict[str, set[str]]:
    text = (REPO / "docs" / "architecture.md").read_text()
    block = text.split("## The import graph", 1)[1].split("```")[1]
    graph = {}
    for line in block.strip().splitlines():
        module, deps = (part.strip() for part in line.split("->"))
        graph[module] = set() if deps == "(nothing)" else {d.strip() for d in deps.split(",")}
    return graph


def test_import_graph_is_the_documented_one():
    actual = {name: _package_imports(tree) for name, (_, tree) in _modules().items()}
    assert actual == _documented_graph()


@pytest.mark.parametrize("module", ["linear_recurrences", "input_pipeline"])
def test_leaf_modules_import_nothing_of_the_package(module):
    assert _package_imports(_modules()[module][1]) == set()


def test_models_import_only_the_recurrences():
    assert _package_imports(_modules()["models"][1]) == {"linear_recurrences"}


def test_sampling_does_no_io():
    path, tree = _modules()["sampling"]
    assert not _all_imports(tree) & IO_MODULES
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "open" not in calls and "print" not in calls


def test_nothing_imports_a_cli_and_keras_stays_in_baselines():
    for name, (_, tree) in _modules().items():
        assert not _package_imports(tree) & CLI_MODULES, name
        if not name.startswith("baselines."):
            assert "keras" not in _all_imports(tree), name


def _explained(lines: list[str], index: int) -> bool:
    """A comment on the import's line, or above the block of imports it belongs to."""
    if "#" in lines[index]:
        return True
    index -= 1
    while index >= 0 and re.match(r"\s*(import |from \S+ import |$)", lines[index]):
        if "#" in lines[index]:
            return True
        index -= 1
    return index >= 0 and re.match(r"\s*#", lines[index]) is not None


def test_imports_inside_functions_say_why():
    unexplained = []
    for name, (path, tree) in _modules().items():
        lines = path.read_text().splitlines()
        for func in ast.walk(tree):
            if not isinstance(func, ast.FunctionDef):
                continue
            for node in ast.walk(func):
                imports = isinstance(node, ast.Import | ast.ImportFrom)
                if imports and not _explained(lines, node.lineno - 1):
                    unexplained.append(f"{name}:{node.lineno}: {lines[node.lineno - 1]}")
    assert not unexplained, unexplained

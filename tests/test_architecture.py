"""The package's layering: folders by role, imports one way, one registry per plug-in, and
docs/architecture.md naming every module that exists (and none that does not)."""

import ast
import importlib
import pathlib
import re

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = REPO / "charrnn_jax"
COMMANDS = {"main", "sample", "evaluate", "classify", "compare", "compare_nanogpt", "fit_tutorial"}
ROOT_LIBRARY = {"config_lib", "errors"}
FOLDERS = {"models", "data", "training", "store", "inference", "baselines", "runtime"}
IO_MODULES = {"os", "pathlib", "io", "json", "shutil", "etils", "orbax", "urllib", "socket"}
# What each folder may import of the package (besides itself). Commands may import anything.
ALLOWED = {
    "models": set(),
    "data": set(),
    "runtime": {"errors"},
    "store": {"errors"},
    "inference": {"config_lib", "errors", "models", "data", "runtime", "store"},
    "training": {"config_lib", "errors", "models", "data", "runtime", "store", "inference"},
    "baselines": {
        "config_lib",
        "errors",
        "models",
        "data",
        "runtime",
        "store",
        "training",
        "inference",
    },
    "config_lib": {"errors", "models", "data"},
    "errors": set(),
}


def _modules() -> dict[str, tuple[pathlib.Path, ast.Module]]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.with_suffix("").relative_to(PACKAGE).parts)
        out[name] = (path, ast.parse(path.read_text()))
    return out


def _package_imports(tree: ast.Module) -> set[str]:
    """Dotted modules of the package imported anywhere in the file (functions included)."""
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


def _top(name: str) -> str:
    return name.split(".")[0]


def test_the_root_holds_only_commands_the_config_and_the_errors():
    root = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__"}
    assert root == COMMANDS | ROOT_LIBRARY
    folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"}
    assert folders == FOLDERS


@pytest.mark.parametrize("folder", sorted(FOLDERS))
def test_each_folder_states_its_job(folder):
    init = PACKAGE / folder / "__init__.py"
    assert ast.get_docstring(ast.parse(init.read_text())), f"{folder}/__init__.py needs a docstring"


def test_imports_run_one_way():
    wrong = []
    for name, (_, tree) in _modules().items():
        layer = _top(name)
        if layer in COMMANDS or layer == "__init__":
            continue
        for dep in _package_imports(tree):
            target = _top(dep)
            if target != layer and target not in ALLOWED[layer]:
                wrong.append(f"{name} -> {dep}")
    assert not wrong, wrong


def test_nothing_imports_a_command_and_the_peers_stay_in_baselines():
    """Keras and PyTorch (nanoGPT's side) are optional: only baselines/ imports them."""
    for name, (_, tree) in _modules().items():
        assert not {_top(d) for d in _package_imports(tree)} & COMMANDS, name
        if not name.startswith("baselines."):
            assert not {"keras", "torch"} & _all_imports(tree), name


def test_the_sampler_does_no_io():
    path, tree = _modules()["inference.sampler"]
    assert not _all_imports(tree) & IO_MODULES
    calls = {
        node.func.id
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
    }
    assert "open" not in calls and "print" not in calls


def _compared_strings(tree: ast.Module) -> set[str]:
    """String constants that appear in a comparison (==, !=, in, not in)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            for part in [node.left, *node.comparators]:
                for const in ast.walk(part):
                    if isinstance(const, ast.Constant) and isinstance(const.value, str):
                        found.add(const.value)
    return found


@pytest.mark.parametrize(
    "registry_module, registry_name",
    [("models.registry", "CELLS"), ("data.pipeline", "MODES"), ("data.corpora", "REGISTRY")],
    ids=["cells", "data_modes", "corpora"],
)
def test_only_the_registry_compares_a_plugin_name(registry_module, registry_name):
    """A cell or data mode is one file plus one registry line: nobody else branches on it.

    (The baselines may insist on their own model: the Keras one on 'gru', which it
    converts to and from the Keras GRU; nanoGPT's on 'transformer' and random windows.)
    """
    names = set(getattr(importlib.import_module(f"charrnn_jax.{registry_module}"), registry_name))
    offenders = []
    for name, (_, tree) in _modules().items():
        if name in (registry_module, "baselines.keras_tutorial", "baselines.nanogpt"):
            continue
        if hits := _compared_strings(tree) & names:
            offenders.append(f"{name}: {sorted(hits)}")
    assert not offenders, offenders


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


def _documented_modules() -> set[str]:
    """Every `folder/module.py` or `module.py` the architecture page names in its tables."""
    text = (REPO / "docs" / "architecture.md").read_text()
    named = re.findall(r"`((?:\w+/)?\w+)\.py`", text)
    return {m.replace("/", ".") for m in named if not m.startswith("tests/")}


def test_the_architecture_page_names_every_module_and_no_ghosts():
    actual = {name for name in _modules() if not name.endswith("__init__")}
    documented = _documented_modules()
    assert actual - documented == set(), "modules missing from docs/architecture.md"
    assert documented - actual == set(), "docs/architecture.md names modules that do not exist"


def test_no_function_is_longer_than_sixty_lines():
    long = [
        f"{name}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for name, (_, tree) in _modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > 60
    ]
    assert not long, long


def _project_modules() -> dict[str, ast.Module]:
    """{dotted name: tree} of every module of the package, launch/ and benchmarks/."""
    out = {}
    for top in ("charrnn_jax", "launch", "benchmarks"):
        for path in sorted((REPO / top).rglob("*.py")):
            parts = path.with_suffix("").relative_to(REPO).parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = ast.parse(
                path.read_text()
            )
    return out


def _imported(tree: ast.Module, known: set[str]) -> set[str]:
    """The project modules a file imports anywhere (`from a import b` may name module a.b)."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in known)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update({node.module} & known)
            found.update({f"{node.module}.{a.name}" for a in node.names} & known)
    return found


def _flags_defined_on_import(tree: ast.Module) -> set[str]:
    """Flag names a module defines at its top level (not in a function or a main guard)."""
    names = set()
    for node in tree.body:
        if not isinstance(node, (ast.Assign, ast.AnnAssign, ast.Expr)):
            continue
        for call in ast.walk(node):
            if (
                isinstance(call, ast.Call)
                and isinstance(call.func, ast.Attribute)
                and call.func.attr.startswith("DEFINE")
                and call.args
                and isinstance(call.args[0], ast.Constant)
            ):
                names.add(call.args[0].value)
    return names


def test_no_two_modules_the_tests_import_define_the_same_flag():
    """A test worker imports many test files into one process: two modules there that
    define one absl flag at import fail the second import (DuplicateFlagError), as
    fit_tutorial's did beside launch.curves'. Helpers a test needs live in library modules."""
    modules = _project_modules()
    known = set(modules)
    reached = set()
    for path in sorted((REPO / "tests").rglob("*.py")):
        reached |= _imported(ast.parse(path.read_text()), known)
    frontier = set(reached)
    while frontier:  # What those modules import, in turn.
        frontier = set().union(*(_imported(modules[m], known) for m in frontier)) - reached
        reached |= frontier
    owners: dict[str, list[str]] = {}
    for name in sorted(reached):
        for flag in _flags_defined_on_import(modules[name]):
            owners.setdefault(flag, []).append(name)
    assert {f: o for f, o in owners.items() if len(o) > 1} == {}
    assert owners["workdir"] == ["charrnn_jax.evaluate"]  # The scan sees module-level flags.

"""The structure the design card asks for, checked on the code: imports run one way.

    cli  ->  views, experiments  ->  app  ->  bench, search/, deploy/, remote/  ->  core (tuning/*.py)  ->  schedules/

Every import is read, those inside functions included, so that no cycle hides behind a
function-local import; deploy/ never imports remote/ (the CLI wires a remote library to a Kernel).
"""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("schedules", "tuning")
TOP = {"tuning.cli", "tuning.views", "tuning.bench", "tuning.experiments", "tuning.app"}  # the application, its consumers
ROOMS = ("tuning.search", "tuning.deploy", "tuning.remote")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _resolve(module: str, path: Path, node: ast.ImportFrom | ast.Import) -> list[str]:
    """The project modules an import statement names (a package's names that are modules count)."""
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    else:
        if node.level:
            package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1])
            base = f"{base}.{node.module}" if node.module else base
        else:
            base = node.module or ""
        names = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
    out = []
    for name in names:
        while name and name not in MODULES:  # `import tuning.search.tune as x` names the module itself
            name = name.rpartition(".")[0]
        if name:
            out.append(name)
    return out


def import_graph() -> dict[str, set[str]]:
    graph = {}
    for module, path in MODULES.items():
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                edges.update(m for m in _resolve(module, path, node) if m != module)
        graph[module] = edges
    return graph


GRAPH = import_graph()


def _room(module: str) -> str:
    for top in TOP:
        if module == top or module.startswith(top + "."):
            return top
    for room in ROOMS:
        if module == room or module.startswith(room + "."):
            return room
    return "schedules" if module.startswith("schedules") else "core"


def test_no_import_cycle():
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                cycle = path[path.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


ALLOWED = {  # room -> rooms it may import
    "schedules": {"schedules"},
    "core": {"core", "schedules"},
    "tuning.deploy": {"tuning.deploy", "core", "schedules"},
    "tuning.remote": {"tuning.remote", "core", "schedules"},
    "tuning.search": {"tuning.search", "tuning.deploy", "tuning.remote", "core", "schedules"},
    "tuning.bench": {"tuning.deploy", "core", "schedules"},
    "tuning.app": {"tuning.bench", *ROOMS, "core", "schedules"},
    "tuning.experiments": {"tuning.experiments", "tuning.app", "tuning.bench", *ROOMS, "core", "schedules"},
    "tuning.views": {"tuning.app", "tuning.bench", *ROOMS, "core", "schedules"},
    "tuning.cli": {"tuning.views", "tuning.app", "tuning.experiments", "tuning.bench", *ROOMS, "core", "schedules"},
}


def test_imports_run_one_way():
    wrong = sorted(f"{a} -> {b}" for a, edges in GRAPH.items() for b in edges
                   if _room(b) not in ALLOWED[_room(a)])
    assert not wrong, "imports against the flow:\n" + "\n".join(wrong)


def test_the_walker_sees_function_local_imports():
    """The graph is only as good as its reader: bench imports the model's deploy inside a function."""
    assert "tuning.deploy.model" in GRAPH["tuning.bench"]
    assert "tuning.search.tune" in GRAPH["tuning.cli"] and "tuning.remote.session" in GRAPH["tuning.app"]
    assert _room("tuning.deploy.kernel") == "tuning.deploy" and _room("tuning.target") == "core"
    # and a deploy -> remote edge, were one written, would be reported
    assert "tuning.remote" not in ALLOWED["tuning.deploy"]


def test_the_command_line_imports_at_the_top():
    """cli.py parses and prints; what a command does is one call to tuning.app, imported up front."""
    tree = ast.parse(MODULES["tuning.cli"].read_text())
    local = [f"line {node.lineno}" for fn in ast.walk(tree) if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef))
             for node in ast.walk(fn) if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert not local, "function-local imports in tuning/cli.py: " + ", ".join(local)


def test_no_argparse_namespace_below_the_command_line():
    """Below the CLI, settings travel as values (a DeviceAddress, SearchOptions), never as `args`."""
    for name in ("tuning.app", "tuning.search.measure", "tuning.remote.session"):
        tree = ast.parse(MODULES[name].read_text())
        params = {a.arg for fn in ast.walk(tree) if isinstance(fn, ast.FunctionDef) for a in fn.args.args}
        assert "args" not in params, f"{name} takes an argparse namespace"


def test_packages_import_from_this_repository():
    """`schedules` and `tuning` are generic names; a distribution of the same name installed
    elsewhere must not shadow this checkout's."""
    import schedules
    import tuning

    for package in (schedules, tuning):
        assert Path(package.__file__).resolve().parent.parent == ROOT, package.__file__
    assert os.path.isfile(ROOT / "pyproject.toml")


def test_every_documented_file_exists():
    """Every file the README, pyproject.toml and the docs name exists (pyproject.toml once pointed at
    a docs/records.md that did not exist)."""
    for source in ("README.md", "pyproject.toml", "docs/architecture.md", "docs/formats.md"):
        text = (ROOT / source).read_text()
        for path in set(re.findall(r"\b((?:docs|scripts|tests|schedules|tuning)/[\w./-]+\.(?:md|py|sh|json))\b", text)):
            assert (ROOT / path).exists(), f"{source} names {path}, which does not exist"

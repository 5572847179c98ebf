"""The package's layers hold: a module imports only its own package and the layers below it.

Every import statement counts, read with ``ast`` from the source: at the top of a module, inside a
function (the lazy imports of the CLI) and under ``TYPE_CHECKING``, since a type-only import still ties
the two modules together for a reader. The table below is the one the package docstrings state.
"""

from __future__ import annotations

import ast
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

import linewatch

ROOT = Path(linewatch.__file__).resolve().parent
SHARED = "shared"  # the value modules at the top: config, types, clock, images, backoff, feedback
BELOW_DAEMON = {SHARED, "anople", "model", "pipeline", "eval", "sinks", "migrations", "retrain", "web", "plant"}
ALLOWED: dict[str, set[str]] = {  # unit -> the other units it may import
    "anople": set(),
    SHARED: set(),
    "model": {SHARED, "anople"},
    "eval": {SHARED, "anople", "model"},
    "pipeline": {SHARED, "anople", "model"},
    "sinks": {SHARED, "pipeline"},
    "migrations": {"sinks"},
    "retrain": {SHARED, "anople", "model", "sinks"},
    "web": {SHARED, "pipeline", "sinks"},
    "plant": {SHARED, "pipeline", "sinks"},
    "serve": {"anople", "model"},  # runs in .venv-serve, which has none of the daemon's dependencies
    "daemon": BELOW_DAEMON,
    "cli": BELOW_DAEMON | {"daemon"},
}


def unit_of(parts: list[str], root: Path) -> str:
    """The layer of ``linewatch.<parts...>``: its subpackage, or ``shared`` for a top-level module.

    ``__main__`` (``python -m linewatch``) is the command line's entry point and counts as ``cli``."""
    if not parts or parts[0] == "__init__":
        return SHARED
    if parts[0] == "__main__":
        return "cli"
    return parts[0] if (root / parts[0]).is_dir() else SHARED


def imported_modules(path: Path, root: Path, top_level_only: bool = False) -> Iterator[tuple[int, list[str]]]:
    """(line, dotted parts below ``linewatch``) for every import of linewatch in one source file; with
    ``top_level_only``, those that run when the module is imported (not inside a function or class)."""
    package = list(path.relative_to(root.parent).with_suffix("").parts)[:-1]  # relative imports resolve here
    tree = ast.parse(path.read_text(), str(path))
    for node in _top_level_imports(tree) if top_level_only else ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                names = alias.name.split(".")
                if names[0] == "linewatch":
                    yield node.lineno, names[1:]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            module = base + (node.module.split(".") if node.module else [])
            if not module or module[0] != "linewatch":
                continue
            if len(module) == 1:  # from linewatch import x: x may be a module or a subpackage
                for alias in node.names:
                    yield node.lineno, [alias.name]
            else:
                yield node.lineno, module[1:]


def _top_level_imports(tree: ast.Module) -> Iterator[ast.AST]:
    for node in tree.body:
        if isinstance(node, ast.If | ast.Try):  # if TYPE_CHECKING: ..., try: import ... except ...
            yield from ast.walk(node)
        else:
            yield node


def layer_violations(root: Path) -> list[str]:
    """One line per import that points to a unit its own unit may not import."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        unit = unit_of(parts, root)
        for line, target in imported_modules(path, root):
            other = unit_of(target, root)
            if other != unit and other not in ALLOWED[unit]:
                module = ".".join(["linewatch", *target])
                problems.append(f"{path.relative_to(root.parent)}:{line}: {unit} imports {other} ({module})")
    return problems


def module_cycles(root: Path) -> list[list[str]]:
    """Cycles in the graph of imports that run at import time (a function-level import breaks a cycle at
    run time; a top-level circle, type-only or not, means two modules that cannot be read apart)."""
    graph: dict[str, set[str]] = {}
    for path in root.rglob("*.py"):
        name = ".".join(["linewatch", *path.relative_to(root).with_suffix("").parts]).removesuffix(".__init__")
        graph[name] = {".".join(["linewatch", *target]) for _line, target in imported_modules(path, root, True)}
    cycles: list[list[str]] = []
    state: dict[str, str] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "on the stack"
        for target in sorted(graph[node] & graph.keys()):  # names imported from a package are no modules
            if state.get(target) == "on the stack":
                cycles.append([*stack[stack.index(target) :], target])
            elif target not in state:
                visit(target, [*stack, target])
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    return cycles


def test_every_import_respects_the_layers() -> None:
    assert layer_violations(ROOT) == []


def test_no_import_circle() -> None:
    assert module_cycles(ROOT) == []


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """A copy of the package's sources to plant wrong imports in."""
    copy = tmp_path / "linewatch"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__", "static", "templates", "*.json"))
    return copy


PLANTED = [  # (module, import to plant, the violation it must produce)
    ("anople/model.py", "from linewatch.config import Config", "anople imports shared"),
    ("anople/prompts.py", "import linewatch.images", "anople imports shared"),
    ("pipeline/batcher.py", "from linewatch.sinks.mqtt import MqttLink", "pipeline imports sinks"),
    ("pipeline/journal/outbox.py", "from linewatch.web.live import LiveFrames", "pipeline imports web"),
    ("pipeline/scorer.py", "from linewatch.daemon.metrics import Health", "pipeline imports daemon"),
    ("pipeline/camera/reader.py", "from linewatch.cli.console import progress_bar", "pipeline imports cli"),
    ("model/training.py", "from linewatch.pipeline.scorer import Scorer", "model imports pipeline"),
    ("sinks/db.py", "from linewatch.retrain.store import list_runs", "sinks imports retrain"),
    ("web/site.py", "from linewatch import daemon", "web imports daemon"),
    ("daemon/app.py", "from linewatch.cli.main import main", "daemon imports cli"),
    ("config.py", "from .pipeline.events import step", "shared imports pipeline"),
    ("pipeline/events.py", "from ..sinks import mqtt", "pipeline imports sinks"),
]


@pytest.mark.parametrize(("module", "planted", "expected"), PLANTED, ids=[row[0] for row in PLANTED])
def test_a_planted_wrong_import_is_found(tree_copy: Path, module: str, planted: str, expected: str) -> None:
    """Planted inside a function, where a lazy import would hide it from a check that only imports modules."""
    path = tree_copy / module
    path.write_text(path.read_text() + f"\n\ndef _planted() -> None:\n    {planted}  # noqa\n")
    found = layer_violations(tree_copy)
    assert len(found) == 1 and expected in found[0] and found[0].startswith(f"linewatch/{module}:"), found


def test_a_planted_circle_is_found(tree_copy: Path) -> None:
    """A type-only import back into the App from the routes (the circle this layout broke) is a cycle again."""
    path = tree_copy / "daemon" / "control.py"
    source = path.read_text().replace(
        "from __future__ import annotations\n",
        "from __future__ import annotations\n\nfrom typing import TYPE_CHECKING\n\n"
        "if TYPE_CHECKING:\n    from linewatch.daemon.app import App\n",
    )
    path.write_text(source)
    assert ["linewatch.daemon.app", "linewatch.daemon.control", "linewatch.daemon.app"] in module_cycles(tree_copy)


def test_no_module_imports_cli_or_app_except_the_entry_points() -> None:
    """Nothing imports cli; the App is built by the lifecycle only (routes and page get a protocol)."""
    importers = {"cli": set(), "app": set()}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        for _line, target in imported_modules(path, ROOT):
            if target[:1] == ["cli"] and parts[0] != "cli":
                importers["cli"].add("/".join(parts))
            if target[:2] == ["daemon", "app"] and parts != ["daemon", "app"]:
                importers["app"].add("/".join(parts))
    assert importers == {"cli": {"__main__"}, "app": {"daemon/lifecycle"}}

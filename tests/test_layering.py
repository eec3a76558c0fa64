"""The layout keeps its promises: one-way arrows, no import circles, argparse only in the CLI, a light import.

The import graph is read from the code itself with ``ast`` — every import, lazy ones inside
functions included (``if TYPE_CHECKING:`` blocks excepted: they never run). The order, lowest
first (a module may import its own room and any room below it, never a sibling of the same rank):

    core → data → analysis → evaluation → (modelfiles, plugins) → backends → converters
         → (training, executors, review, bench) → demo → serve → cli

``mentalglm/__init__.py`` (the public API) sits just above ``analysis``: it re-exports the
Analyzer. ``mentalglm/__main__.py`` runs the CLI.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "mentalglm"

#: room → rank; rooms of equal rank may not import each other.
RANKS = {"core": 0, "data": 1, "analysis": 2, "": 2.5, "evaluation": 3, "modelfiles": 4, "plugins": 4,
         "backends": 5, "converters": 6, "training": 7, "executors": 7, "review": 7, "bench": 7, "demo": 8,
         "serve": 9, "cli": 10, "__main__": 11}

HEAVY = {"numpy", "scipy", "sklearn", "torch", "transformers", "peft", "llama_cpp", "gguf"}


def _module_name(path: Path) -> str:
    parts = ("mentalglm",) + path.relative_to(PACKAGE).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The names ``path`` imports (``mentalglm`` modules resolved to the module, others to the top package)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from pkg import submodule` imports the submodule; `from module import name` the module
            submodules = {f"{module}.{alias.name}" for alias in node.names} & modules.keys()
            found.update(submodules or {module})
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    """mentalglm module → every module or outside package it imports."""
    modules = _modules()
    return {name: _imports(path, name, modules) for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _internal(targets: set[str]) -> set[str]:
    return {t for t in targets if t == "mentalglm" or t.startswith("mentalglm.")}


def test_every_room_has_a_rank(graph):
    unranked = sorted({_room(m) for m in graph} - RANKS.keys())
    assert not unranked, f"rooms without a place in the order: {unranked}; add them to RANKS and design.md"


def test_arrows_point_down(graph):
    against = []
    for module, targets in graph.items():
        for target in _internal(targets):
            source_room, target_room = _room(module), _room(target)
            if source_room == target_room:
                continue
            if RANKS[target_room] >= RANKS[source_room]:
                against.append(f"{module} → {target}")
    assert not against, "imports against the order:\n" + "\n".join(sorted(against))


def test_core_imports_nothing_of_mentalglm_outside_core(graph):
    outside = [f"{m} → {t}" for m, targets in graph.items() if _room(m) == "core"
               for t in _internal(targets) if _room(t) != "core"]
    assert not outside, "\n".join(outside)


def test_only_the_cli_imports_argparse_and_nothing_imports_the_cli(graph):
    argparse_users = sorted(m for m, targets in graph.items() if "argparse" in targets and _room(m) != "cli")
    assert not argparse_users, f"argparse outside mentalglm/cli: {argparse_users}"
    cli_users = sorted(m for m, targets in graph.items() if _room(m) not in ("cli", "__main__")
                       and any(_room(t) == "cli" for t in _internal(targets)))
    assert not cli_users, f"the library imports the CLI: {cli_users}"


def test_no_import_circles(graph):
    edges = {m: {t for t in _internal(targets) if t in graph and t != m} for m, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    circles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                circles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target, path + [target])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert not circles, "import circles:\n" + "\n".join(" → ".join(c) for c in circles)


def test_the_checker_sees_lazy_imports_and_skips_type_checking(tmp_path):
    """The rules above rest on the graph: a lazy import counts, a TYPE_CHECKING one does not."""
    source = tmp_path / "example.py"
    source.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import numpy\n"
                      "def f():\n    from mentalglm.core import errors\n    import argparse\n", encoding="utf-8")
    found = _imports(source, "mentalglm.example", {"mentalglm.core.errors": source})
    assert found == {"typing", "mentalglm.core.errors", "argparse"}


@pytest.mark.parametrize("command", [
    ["-c", "import mentalglm"],
    ["-m", "mentalglm", "--help"],
], ids=["import mentalglm", "mentalglm --help"])
def test_light_entry_points_load_no_heavy_library(command):
    result = subprocess.run([sys.executable, "-X", "importtime", *command], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    assert "mentalglm" in imported  # the import-time report was read
    assert not imported & HEAVY, sorted(imported & HEAVY)

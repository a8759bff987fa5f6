"""The shape of the code: no import cycles, small modules, the planner apart from the server.

Imports are read from the source (``ast``), not executed: every import that runs, at
module level or inside a function, counts; imports under ``if TYPE_CHECKING:`` do not.
"""

from __future__ import annotations

import ast
import sys
from functools import cache
from pathlib import Path

import pytest

from tests.support import ROOT

SERVER = ROOT / "server"
MAX_LINES = 400
"""A module a reader can hold in their head (STYLE.md)."""
PLANNER_REGISTERED_BY = {"batchserve.cli"}
"""The CLI registers the planning subcommands when it builds its parser; nothing else in the
server imports the planner."""


@cache
def modules() -> dict[str, Path]:
    """Every module under server/ by its dotted name (a package by its ``__init__``)."""
    found = {}
    for path in sorted(SERVER.rglob("*.py")):
        parts = list(path.relative_to(SERVER).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    return "TYPE_CHECKING" in ast.unparse(node.test)


@cache
def imports_of(name: str) -> frozenset[str]:
    """Our modules that ``name`` imports when it runs (``from pkg import module`` names the module)."""
    known = modules()
    path = known[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for branch in node.orelse:
                visit(branch)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[:len(package) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8")))
    return frozenset(m for m in found if m in known and m != name)


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each a cycle or several."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def connect(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for target in sorted(imports_of(module)):
            if target not in index:
                connect(target)
                low[module] = min(low[module], low[target])
            elif target in on_stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == module:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in modules():
        if module not in index:
            connect(module)
    return cycles


def test_our_modules_import_each_other_without_cycles() -> None:
    assert _cycles() == []


def test_the_cycle_check_finds_a_cycle(monkeypatch: pytest.MonkeyPatch) -> None:
    """The check itself: a lazy import back from worker to generator (the loadgen <-> worker cycle
    issue 10 broke) is reported."""
    real = imports_of

    def with_cycle(name: str) -> frozenset[str]:
        extra = {"batchserve_planning.load.generator"} if name == "batchserve_planning.load.worker" else set()
        return real(name) | extra

    monkeypatch.setattr(sys.modules[__name__], "imports_of", with_cycle)
    assert ["batchserve_planning.load.generator", "batchserve_planning.load.worker"] in _cycles()


def test_modules_are_small() -> None:
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in modules().items()}
    assert {name: n for name, n in sizes.items() if n > MAX_LINES} == {}


def test_the_server_does_not_import_the_planner() -> None:
    offenders = {name: sorted(m for m in imports_of(name) if m.startswith("batchserve_planning"))
                 for name in modules() if name.split(".")[0] == "batchserve"}
    assert {name: found for name, found in offenders.items()
            if found and name not in PLANNER_REGISTERED_BY} == {}


def test_the_load_client_imports_nothing_from_the_server() -> None:
    client = [name for name in modules()
              if name == "batchserve_planning.load" or name.startswith("batchserve_planning.load.")]
    assert client, "the HTTP client half lives in batchserve_planning.load"
    assert {name: sorted(m for m in imports_of(name) if m.split(".")[0] == "batchserve")
            for name in client} == {name: [] for name in client}


def test_no_module_shadows_the_standard_library() -> None:
    assert sorted(name for name in modules()
                  if name.rpartition(".")[2] in sys.stdlib_module_names) == []

"""The package uses other packages' public APIs only: a scan of its source (AST) finds no
underscore attribute of an object it does not own, no private import, no patched class or module,
no ``__class__`` assignment and no class built with ``type()``."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import moengage_personalize

PACKAGE = Path(moengage_personalize.__file__).resolve().parent
SOURCES = sorted(PACKAGE.rglob("*.py"))


def _private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _own_names(trees: dict[Path, ast.Module]) -> set[str]:
    """Every underscore name the package defines itself: functions, classes, module globals,
    attributes it assigns (``x._name = ...``), ``__slots__`` entries and parameters."""
    names: set[str] = set()
    for tree in trees.values():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                names.add(node.id)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
                names.add(node.attr)
            elif isinstance(node, ast.arg):
                names.add(node.arg)
            elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                names.add(node.target.id)
            elif (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__slots__" for t in node.targets)
                and isinstance(node.value, (ast.Tuple, ast.List))
            ):
                names.update(
                    e.value
                    for e in node.value.elts
                    if isinstance(e, ast.Constant) and isinstance(e.value, str)
                )
    return {n for n in names if _private(n)}


def _foreign_modules(tree: ast.Module) -> set[str]:
    """Local names bound to modules that are not the package's own."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if not alias.name.startswith("moengage_personalize"):
                    names.add(alias.asname or alias.name.split(".")[0])
    return names


def _root(node: ast.expr) -> str | None:
    while isinstance(node, ast.Attribute):
        node = node.value
    return node.id if isinstance(node, ast.Name) else None


def _violations(path: Path, tree: ast.Module, own: set[str]) -> Iterator[str]:
    foreign = _foreign_modules(tree)
    where = path.relative_to(PACKAGE.parent)
    for node in ast.walk(tree):
        line = f"{where}:{getattr(node, 'lineno', '?')}"
        if isinstance(node, ast.ImportFrom) and node.level == 0:
            module = node.module or ""
            if not module.startswith("moengage_personalize"):
                for alias in node.names:
                    if _private(alias.name):
                        yield f"{line}: private import {module}.{alias.name}"
        elif isinstance(node, ast.Attribute):
            root = _root(node)
            if _private(node.attr) and (root in foreign or node.attr not in own):
                yield f"{line}: private attribute .{node.attr}"
            if node.attr == "__class__" and isinstance(node.ctx, ast.Store):
                yield f"{line}: __class__ assigned"
            if isinstance(node.ctx, ast.Store) and root in foreign:
                yield f"{line}: assignment into module {root}"
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id == "type" and len(node.args) == 3:
                yield f"{line}: class built with type()"
            if node.func.id in ("setattr", "delattr") and node.args:
                target = _root(node.args[0])
                if target in foreign or not isinstance(node.args[0], ast.Name):
                    yield f"{line}: {node.func.id}() on an object not the package's own"


def test_the_scan_sees_every_module() -> None:
    """The scan covers the client, the local server and the integrations."""
    names = {p.name for p in SOURCES}
    assert {"_http.py", "_client.py", "_calls.py", "_app.py", "django.py"} <= names


def test_the_scan_catches_what_it_looks_for() -> None:
    """Each kind of violation is found in a sample (so an empty result means something)."""
    sample = ast.parse(
        "import http.client, socket\n"
        "from urllib3.util import _private_helper\n"
        "def f(resp, sock, pool):\n"
        "    resp._method\n"
        "    http.client._MAXLINE\n"
        "    sock.__class__ = object\n"
        "    socket.create_connection = None\n"
        "    type('X', (object,), {})\n"
        "    setattr(pool.pool, 'x', 1)\n"
    )
    found = list(_violations(PACKAGE / "sample.py", sample, own=set()))
    kinds = {v.split(": ", 1)[1].split(" ")[0] for v in found}
    assert kinds >= {"private", "__class__", "assignment", "class", "setattr()"}, found


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_private_api_of_others(path: Path) -> None:
    trees = {p: ast.parse(p.read_text(encoding="utf-8")) for p in SOURCES}
    own = _own_names(trees)
    assert list(_violations(path, trees[path], own)) == []

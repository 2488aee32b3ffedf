"""Fixtures for every tier: a state database per backend and a deterministic manager factory.

`db_url` runs a test on SQLite, DuckDB (mark `duckdb`) and the local PostgreSQL
(mark `postgres`; skipped with the reason when it is unreachable). Each test gets
its own table name (`t_<uuid8>`); PostgreSQL's tables are dropped afterwards.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import support

from pipestate.manager import PipelineStateManager

PG_URL = support.PG_URL  # $PIPESTATE_TEST_PG_URL, else the local default
_pg_problem: list[str | None] = []


def _postgres_problem() -> str | None:
    if not _pg_problem:
        _pg_problem.append(support.pg_reachable(PG_URL))
    return _pg_problem[0]


@pytest.fixture
def table_name() -> str:
    return support.unique_table()


@pytest.fixture(
    params=[
        pytest.param("sqlite"),
        pytest.param("duckdb", marks=pytest.mark.duckdb),
        pytest.param("postgresql", marks=pytest.mark.postgres),
    ]
)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, table_name: str) -> Iterator[str]:
    """A SQLAlchemy URL of an empty state database on each backend."""
    backend = request.param
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
    elif backend == "duckdb":
        pytest.importorskip("duckdb_engine", reason="duckdb-engine is not installed")
        yield f"duckdb:///{tmp_path / 'state.duckdb'}"
    else:
        problem = _postgres_problem()
        if problem:
            pytest.skip(problem)
        yield PG_URL
        support.drop_pg_tables(PG_URL, table_name)


@pytest.fixture
def backend(db_url: str) -> str:
    return db_url.split(":", 1)[0].split("+", 1)[0]


@pytest.fixture
def manager_factory(db_url: str, table_name: str) -> Iterator[Callable[..., PipelineStateManager]]:
    """`factory(**pipeline_keys, now=...)` -> a manager on a fixed clock; closed after the test."""
    made: list[PipelineStateManager] = []

    def factory(**pipeline: Any) -> PipelineStateManager:
        manager = support.make_manager(db_url, table_name, **pipeline)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        manager.close()


@pytest.fixture
def manager(manager_factory: Callable[..., PipelineStateManager]) -> PipelineStateManager:
    """Pipeline `orders`, UTC, 1h, [2026-01-01, 2026-01-02), clock 2026-03-01 12:00 UTC."""
    return manager_factory()

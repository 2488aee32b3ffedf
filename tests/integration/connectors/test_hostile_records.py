"""The hostile records corpus (tests/hostile_records.py) staged and loaded into every target:
each case loads every record, or fails with one line naming the field (issue 20)."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
import support

sys.path.insert(0, str(Path(__file__).parents[2]))
from hostile_records import HOSTILE_RECORDS, HostileRecords  # noqa: E402

from pipestate.connectors import BatchContext, build_stage, build_target  # noqa: E402
from pipestate.errors import ConnectorError  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"
)
TARGETS = [
    "sqlite",
    pytest.param("duckdb", marks=pytest.mark.duckdb),
    pytest.param("postgresql", marks=pytest.mark.postgres),
    "snowflake",
]


@pytest.fixture
def target_options(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, Any]]:
    kind, table = request.param, f"t_{uuid.uuid4().hex[:8]}"
    if kind == "snowflake":
        fakesnow = pytest.importorskip("fakesnow")
        snowflake = pytest.importorskip("snowflake.connector")
        with fakesnow.patch():
            with snowflake.connect(database="analytics", schema="raw") as conn:
                conn.cursor().execute("CREATE DATABASE IF NOT EXISTS analytics")
                conn.cursor().execute("CREATE SCHEMA IF NOT EXISTS analytics.raw")
                conn.cursor().execute("CREATE STAGE IF NOT EXISTS analytics.raw.pipestate_load")
            yield {
                "type": "snowflake",
                "account": "a",
                "user": "u",
                "password": "p",
                "database": "analytics",
                "schema": "raw",
                "table": table,
                "internal_stage": "@analytics.raw.pipestate_load",
            }
        return
    if kind == "postgresql":
        if problem := support.pg_reachable(support.PG_URL):
            pytest.skip(problem)
        url = support.PG_URL
    else:
        url = f"sqlite:///{tmp_path / 't.db'}" if kind == "sqlite" else f"duckdb:///{tmp_path / 't.duckdb'}"
    yield {"type": "sql", "url": url, "table": table}
    if kind == "postgresql":
        engine = sa.create_engine(url)
        with engine.begin() as conn:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{table}"')
        engine.dispose()


@pytest.mark.parametrize("target_options", TARGETS, indirect=True)
@pytest.mark.parametrize("case", HOSTILE_RECORDS, ids=lambda case: case.name)
def test_hostile_records_reach_every_target(
    target_options: dict[str, Any], case: HostileRecords, tmp_path: Path, batch: BatchContext
) -> None:
    stage = build_stage({"url": str(tmp_path / "stage")})
    if target_options["type"] == "snowflake" and case.name == "unicode and odd names":
        # fakesnow's COPY ... MATCH_BY_COLUMN_NAME upper-cases quoted non-plain names and then
        # misses the column; not verified against real Snowflake.
        pytest.xfail("fakesnow stand-in: COPY upper-cases quoted names with spaces")
    target = build_target(target_options)
    try:
        check(target, stage, case, batch, folds="postgresql" not in str(target_options.get("url")))
    finally:
        close = getattr(target, "close", None)
        if callable(close):
            close()


def check(target: Any, stage: Any, case: HostileRecords, batch: BatchContext, folds: bool) -> None:
    staged = stage.write(batch, case.records)
    assert staged.record_count == len(case.records)
    assert sum(chunk.num_rows for chunk in stage.read(staged)) == len(case.records)  # reads back
    if case.fails and (folds or not case.folding_only):
        with pytest.raises(ConnectorError, match=case.fails) as failure:
            target.load(batch, staged, stage)
        assert "\n" not in str(failure.value)
        return
    result = target.load(batch, staged, stage)
    assert result.record_count == len(case.records)
    assert target.count(batch) == len(case.records)

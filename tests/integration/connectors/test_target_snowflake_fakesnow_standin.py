"""Target `snowflake` against a STAND-IN: fakesnow (Snowflake's SQL on DuckDB, in-process).

What fakesnow proves here: the `insert` load method end to end (VARIANT via PARSE_JSON,
TIMESTAMP_TZ, BEGIN/DELETE/INSERT/COMMIT, counts, a reload replacing rows). fakesnow 0.12
cannot run a COPY transformation (`COPY INTO t FROM (SELECT ... FROM @stage)`), so the `copy`
method is checked with a recording fake connection (the statements, their order, FORCE,
ROLLBACK on a count mismatch) and really runs only in `test_real_snowflake_*`, which needs
SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_PASSWORD, SNOWFLAKE_DATABASE, SNOWFLAKE_SCHEMA
(and SNOWFLAKE_WAREHOUSE / SNOWFLAKE_ROLE as your account needs) in the environment.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipestate.connectors import BatchContext, build_stage, build_target
from pipestate.connectors.base import ConnectorError
from pipestate.errors import ConfigError

# fakesnow builds DB-API results through DuckDB's Arrow export, which warns about the extra
# copy; that is fakesnow's internals, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"
)

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
BASE = {"type": "snowflake", "account": "acme", "user": "u", "password": "p"}


@pytest.fixture
def fakesnow_db():
    fakesnow = pytest.importorskip("fakesnow")
    pytest.importorskip("snowflake.connector")
    with fakesnow.patch():
        yield {"database": "analytics", "schema": "raw"}


def records(n: int, first: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "timestamp": (START + timedelta(seconds=i)).isoformat(), "tags": {"k": i}}
        for i in range(first, first + n)
    ]


def test_insert_load_replaces_and_counts(fakesnow_db, tmp_path, batch: BatchContext) -> None:
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({**BASE, **fakesnow_db, "load_method": "insert", "table": "events"})
    assert target.count(batch) == 0  # no table yet

    first = target.load(batch, stage.write(batch, records(5)), stage)
    assert (first.record_count, first.rows_deleted) == (5, 0)
    assert first.location == "snowflake://acme/analytics.raw.events"
    other = BatchContext.for_window("orders", START + timedelta(hours=1), START + timedelta(hours=2))
    target.load(other, stage.write(other, records(2, first=100)), stage)

    second = target.load(batch, stage.write(batch, records(3)), stage)  # a rerun
    assert (second.record_count, second.rows_deleted) == (3, 5)
    assert (target.count(batch), target.count(other)) == (3, 2)

    import snowflake.connector

    with snowflake.connector.connect(**fakesnow_db) as conn:
        cursor = conn.cursor()
        cursor.execute(
            "SELECT record:id::INT, timestamp, record FROM analytics.raw.events "
            "WHERE pipestate_batch_id = %s ORDER BY 1",
            (batch.batch_id,),
        )
        rows = cursor.fetchall()
    assert [row[0] for row in rows] == [0, 1, 2]
    assert rows[1][1] == START + timedelta(seconds=1)
    assert json.loads(rows[2][2]) == records(3)[2]


def test_insert_load_failure_rolls_back(fakesnow_db, tmp_path, batch: BatchContext) -> None:
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({**BASE, **fakesnow_db, "load_method": "insert"})
    staged = stage.write(batch, records(4))
    target.load(batch, staged, stage)

    class HalfStage:
        def read(self, staged):
            yield from records(2)
            raise ConnectorError("stage read failed")

    with pytest.raises(ConnectorError, match="stage read failed"):
        target.load(batch, staged, HalfStage())  # type: ignore[arg-type]
    assert target.count(batch) == 4


class RecordingCursor:
    """Stands in for a Snowflake cursor: records statements, answers COUNT(*) from a script."""

    def __init__(self, counts: list[int]) -> None:
        self.statements: list[str] = []
        self.counts = counts

    def execute(self, sql: str, params: Any = None) -> None:
        self.statements.append(" ".join(sql.split()))

    def fetchone(self) -> tuple[int]:
        return (self.counts.pop(0),)


class RecordingConnection:
    def __init__(self, cursor: RecordingCursor) -> None:
        self._cursor = cursor

    def cursor(self) -> RecordingCursor:
        return self._cursor

    def close(self) -> None:
        pass


def copy_target(monkeypatch, counts: list[int], **options):
    pytest.importorskip("snowflake.connector")
    target = build_target({**BASE, "database": "db", "schema": "s", **options})
    cursor = RecordingCursor(counts)
    monkeypatch.setattr(target._connector, "connect", lambda **kw: RecordingConnection(cursor))
    return target, cursor


def test_copy_puts_then_copies_in_one_transaction(monkeypatch, tmp_path, batch) -> None:
    stage = build_stage({"url": str(tmp_path)})
    staged = stage.write(batch, records(3))
    target, cursor = copy_target(monkeypatch, counts=[2, 3])  # 2 rows before, 3 after
    result = target.load(batch, staged, stage)
    assert (result.record_count, result.rows_deleted) == (3, 2)
    create, put, begin, count, delete, copy, count2, commit, remove = cursor.statements
    assert create.startswith("CREATE TABLE IF NOT EXISTS db.s.pipestate_records (")
    path = staged.location.removeprefix("file://")
    assert put.startswith(f"PUT 'file://{path}' @~/pipestate/{batch.batch_id}/")
    assert (begin, commit) == ("BEGIN", "COMMIT")
    assert delete == "DELETE FROM db.s.pipestate_records WHERE pipestate_batch_id = %s"
    folder = put.split(" ")[2]
    assert copy == (
        "COPY INTO db.s.pipestate_records (pipestate_batch_id, pipestate_loaded_at, timestamp, "
        f"record) FROM (SELECT '{batch.batch_id}', CURRENT_TIMESTAMP(), "
        f'TRY_TO_TIMESTAMP_TZ($1:"timestamp"::VARCHAR), $1 FROM {folder}{path.rsplit("/")[-1]}) '
        "FILE_FORMAT = (TYPE = JSON COMPRESSION = GZIP) ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
    )
    assert remove == f"REMOVE {folder}{path.rsplit('/')[-1]}"


def test_copy_from_external_stage_and_count_mismatch(monkeypatch, batch) -> None:
    from pipestate.connectors import StagedData

    staged = StagedData(f"s3://bkt/raw/orders/{batch.batch_id}.parquet", 10, 999, "parquet")
    target, cursor = copy_target(
        monkeypatch,
        counts=[0, 9],  # COPY left 9 rows of 10 staged
        external_stage="@db.s.raw_stage",
        external_stage_url="s3://bkt/raw",
    )
    with pytest.raises(ConnectorError, match="9 rows for batch .* 10 staged; rolled back"):
        target.load(batch, staged, stage=None)  # type: ignore[arg-type]
    assert not any(s.startswith(("PUT", "REMOVE", "COMMIT")) for s in cursor.statements)
    assert cursor.statements[-1] == "ROLLBACK"
    copy = next(s for s in cursor.statements if s.startswith("COPY"))
    assert f"FROM @db.s.raw_stage/orders/{batch.batch_id}.parquet)" in copy
    assert "FILE_FORMAT = (TYPE = PARQUET)" in copy


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"database": "d"}, r"^\[target\] schema: required key is missing$"),
        ({"database": "d", "schema": "s", "load_method": "merge"}, r"load_method: must be"),
        ({"database": "d", "schema": "s", "table": "x;drop"}, r"table: must be a plain SQL"),
        ({"database": "d", "schema": "s", "external_stage": "@x"}, r"external_stage_url: "),
        ({"database": "d", "schema": "s", "insert_batch_size": 0}, r"insert_batch_size: must be > 0"),
        ({"database": "d", "schema": "s", "bogus": 1}, r"^\[target\] bogus: unknown key$"),
    ],
)
def test_bad_config(cfg: dict, message: str) -> None:
    pytest.importorskip("snowflake.connector")
    with pytest.raises(ConfigError, match=message):
        build_target({**BASE, **cfg})


def real_snowflake() -> dict[str, str]:
    keys = ["account", "user", "password", "database", "schema", "warehouse", "role"]
    found = {key: os.environ.get(f"SNOWFLAKE_{key.upper()}") for key in keys}
    return {key: value for key, value in found.items() if value}


@pytest.mark.skipif(
    not {"account", "user", "password", "database", "schema"} <= set(real_snowflake()),
    reason="no SNOWFLAKE_ACCOUNT/USER/PASSWORD/DATABASE/SCHEMA",
)
@pytest.mark.parametrize("method", ["copy", "insert"])
def test_real_snowflake_load_twice(tmp_path, batch: BatchContext, method: str) -> None:
    """REAL Snowflake: loads a batch twice into a throwaway table through the user stage."""
    pytest.importorskip("snowflake.connector")
    table = f"pipestate_test_{uuid.uuid4().hex[:8]}"
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({"type": "snowflake", **real_snowflake(), "table": table, "load_method": method})
    try:
        target.load(batch, stage.write(batch, records(5)), stage)
        result = target.load(batch, stage.write(batch, records(3)), stage)
        assert (result.record_count, result.rows_deleted, target.count(batch)) == (3, 5, 3)
    finally:
        with target.connect() as conn:  # type: ignore[attr-defined]
            conn.cursor().execute(f"DROP TABLE IF EXISTS {target.table}")  # type: ignore[attr-defined]

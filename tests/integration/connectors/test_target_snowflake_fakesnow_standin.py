"""Target `snowflake` against a STAND-IN: fakesnow 0.12.1 (Snowflake's SQL on DuckDB, in-process).

What fakesnow runs here for real: PUT to a named internal stage, `COPY INTO ... FILE_FORMAT =
(TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE FORCE = TRUE PURGE = TRUE`, COPY from
an external stage (a `file://` URL standing in for S3), the typed table with VARIANT, ALTER
TABLE for a new field, BEGIN/DELETE/COMMIT/ROLLBACK and counts, and the `insert` method.
What it does not prove: real Snowflake's Parquet type mapping, privileges and stage
integrations; `test_real_snowflake_*` runs against a real account when SNOWFLAKE_ACCOUNT,
SNOWFLAKE_USER, SNOWFLAKE_PASSWORD, SNOWFLAKE_DATABASE, SNOWFLAKE_SCHEMA (and
SNOWFLAKE_WAREHOUSE / SNOWFLAKE_ROLE as your account needs) are in the environment.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from pipestate.connectors import BatchContext, build_stage, build_target
from pipestate.errors import ConfigError, ConnectorError

# fakesnow builds DB-API results through DuckDB's Arrow export, which warns about the extra
# copy; that is fakesnow's internals, not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Arrow output on a DB-API result makes an extra copy:UserWarning"
)

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
BASE = {"type": "snowflake", "account": "acme", "user": "u", "password": "p"}
INTERNAL = "@analytics.raw.pipestate_load"


@pytest.fixture
def fakesnow_db():
    fakesnow = pytest.importorskip("fakesnow")
    snowflake = pytest.importorskip("snowflake.connector")
    with fakesnow.patch():
        with snowflake.connect(database="analytics", schema="raw") as conn:
            conn.cursor().execute("CREATE DATABASE IF NOT EXISTS analytics")
            conn.cursor().execute("CREATE SCHEMA IF NOT EXISTS analytics.raw")
            conn.cursor().execute(f"CREATE STAGE IF NOT EXISTS {INTERNAL[1:]}")
        yield {"database": "analytics", "schema": "raw"}


def records(n: int, first: int = 0) -> list[dict[str, Any]]:
    return [
        {"id": i, "timestamp": (START + timedelta(seconds=i)).isoformat(), "tags": {"k": i}}
        for i in range(first, first + n)
    ]


def query(sql: str, *params: Any) -> list[tuple]:
    import snowflake.connector

    with snowflake.connector.connect(database="analytics", schema="raw") as conn:
        cursor = conn.cursor()
        cursor.execute(sql, params or None)
        return cursor.fetchall()


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_load_replaces_and_counts(fakesnow_db, tmp_path, batch: BatchContext, method: str) -> None:
    stage = build_stage({"url": str(tmp_path)})
    options = {**BASE, **fakesnow_db, "load_method": method, "table": "events", "internal_stage": INTERNAL}
    target = build_target(options)
    assert target.count(batch) == 0  # no table yet

    first = target.load(batch, stage.write(batch, records(5)), stage)
    assert (first.record_count, first.rows_deleted) == (5, 0)
    assert first.location == "snowflake://acme/analytics.raw.events"
    other = BatchContext.for_window("orders", START + timedelta(hours=1), START + timedelta(hours=2))
    target.load(other, stage.write(other, records(2, first=100)), stage)

    second = target.load(batch, stage.write(batch, records(3)), stage)  # a rerun
    assert (second.record_count, second.rows_deleted) == (3, 5)
    assert (target.count(batch), target.count(other)) == (3, 2)

    rows = query(
        "SELECT id, timestamp, tags:k::INT, pipestate_loaded_at FROM analytics.raw.events "
        "WHERE pipestate_batch_id = %s ORDER BY 1",
        batch.batch_id,
    )
    assert [row[0] for row in rows] == [0, 1, 2]
    assert rows[1][1] == START + timedelta(seconds=1)
    assert [row[2] for row in rows] == [0, 1, 2]
    assert rows[0][3] is not None
    if method == "copy":  # PURGE and REMOVE leave nothing in the internal stage
        assert query(f"LIST {INTERNAL}") == []


@pytest.mark.parametrize("method", ["copy", "insert"])
def test_a_run_of_batches_is_one_load(fakesnow_db, tmp_path, batch: BatchContext, method: str) -> None:
    stage = build_stage({"url": str(tmp_path)})
    options = {**BASE, **fakesnow_db, "load_method": method, "table": "events", "internal_stage": INTERNAL}
    target = build_target(options)
    other = BatchContext.for_window("orders", START + timedelta(hours=1), START + timedelta(hours=2))
    empty = BatchContext.for_window("orders", START + timedelta(hours=2), START + timedelta(hours=3))
    run = [
        (batch, stage.write(batch, records(5))),
        (other, stage.write(other, records(2, first=100))),
        (empty, stage.write(empty, [])),
    ]
    first = target.load_run(run, stage)
    assert [(r.record_count, r.rows_deleted) for r in first] == [(5, 0), (2, 0), (0, 0)]
    assert len({r.load_id for r in first}) == 1  # one load
    again = target.load_run(run[:2], stage)  # a rerun replaces each batch's rows
    assert [(r.record_count, r.rows_deleted) for r in again] == [(5, 5), (2, 2)]
    rows = query("SELECT pipestate_batch_id, COUNT(*) FROM analytics.raw.events GROUP BY 1 ORDER BY 1")
    assert rows == sorted([(batch.batch_id, 5), (other.batch_id, 2)])
    if method == "copy":
        assert query(f"LIST {INTERNAL}") == []


def test_copy_adds_a_new_field_and_refuses_a_type_conflict(fakesnow_db, tmp_path, batch) -> None:
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({**BASE, **fakesnow_db, "table": "evolving", "internal_stage": INTERNAL})
    target.load(batch, stage.write(batch, records(2)), stage)
    later = [{**record, "country": "FR"} for record in records(2, first=10)]
    other = BatchContext.for_window("orders", START + timedelta(hours=1), START + timedelta(hours=2))
    target.load(other, stage.write(other, later), stage)
    assert query("SELECT id, country FROM analytics.raw.evolving ORDER BY id") == [
        (0, None),
        (1, None),
        (10, "FR"),
        (11, "FR"),
    ]
    bad = [{"id": "ten", "timestamp": START.isoformat()}]
    with pytest.raises(
        ConnectorError, match=r"field 'id': column id of .* is NUMBER\(38,0\), this batch has string"
    ):
        target.load(other, stage.write(other, bad), stage)
    assert target.count(other) == 2


def test_copy_from_an_external_stage(fakesnow_db, tmp_path, batch) -> None:
    root = tmp_path / "bucket"
    root.mkdir()
    query(f"CREATE STAGE analytics.raw.ext URL = '{root.as_uri()}/'")
    stage = build_stage({"type": "fsspec", "url": root.as_uri()})
    target = build_target(
        {
            **BASE,
            **fakesnow_db,
            "table": "external",
            "external_stage": "@analytics.raw.ext",
            "external_stage_url": root.as_uri(),
        }
    )
    result = target.load(batch, stage.write(batch, records(4)), stage)
    assert (result.record_count, target.count(batch)) == (4, 4)
    assert not (root / "_pipestate_loads").exists() or not any((root / "_pipestate_loads").rglob("*.parquet"))


def test_load_failure_rolls_back(fakesnow_db, tmp_path, batch: BatchContext) -> None:
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({**BASE, **fakesnow_db, "internal_stage": INTERNAL})
    staged = stage.write(batch, records(4))
    target.load(batch, staged, stage)

    class HalfStage:
        def read(self, staged):
            yield from stage.read(staged)
            raise ConnectorError("stage read failed")

    with pytest.raises(ConnectorError, match="stage read failed"):
        target.load(batch, staged, HalfStage())  # type: ignore[arg-type]
    assert target.count(batch) == 4


def test_raw_mode_keeps_the_record_as_variant(fakesnow_db, tmp_path, batch) -> None:
    stage = build_stage({"url": str(tmp_path)})
    target = build_target({**BASE, **fakesnow_db, "table": "rawish", "raw": True, "internal_stage": INTERNAL})
    target.load(batch, stage.write(batch, records(2)), stage)
    rows = query("SELECT id, record FROM analytics.raw.rawish ORDER BY id")
    assert json.loads(rows[1][1])["tags"] == {"k": 1}


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

"""Tables pipestate did not make, or a newer pipestate did: refused before anything
is written (or migrated on request), and one-line errors for what the drivers raise."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import support
from sqlalchemy import text, update

from pipestate.errors import SchemaError, StateStoreError, UsageError
from pipestate.manager import PipelineStateManager
from pipestate.store import populate_sql
from pipestate.store.schema import SCHEMA_VERSION

PIPESTATE = str(Path(sys.executable).with_name("pipestate"))


def _set_version(manager: PipelineStateManager, version: str) -> None:
    meta = manager.store.tables.meta
    with manager.store.engine.begin() as conn:
        conn.execute(update(meta).where(meta.c.name == "schema_version").values(value=version))


def test_a_newer_schema_version_is_refused_by_every_writing_command(manager_factory):
    manager = manager_factory()
    manager.populate_pipeline_batches()
    _set_version(manager, str(SCHEMA_VERSION + 1))
    before = support.all_rows(manager)
    fresh = manager_factory()  # a new process: nothing checked yet
    batch = manager.claim("w1")  # this one checked before the version changed? no: fresh below
    for call in (
        fresh.init_db,
        fresh.populate_pipeline_batches,
        lambda: fresh.claim("w1"),
        lambda: fresh.requeue(statuses=("PENDING",), force=True),
    ):
        with pytest.raises(SchemaError, match="newer than this pipestate"):
            call()
    assert batch is not None  # the first manager had checked the version before it changed
    after = [row for row in support.all_rows(fresh) if row["batch_id"] != batch.batch_id]
    assert after == [row for row in before if row["batch_id"] != batch.batch_id]
    assert fresh.validate().plan.gaps == []  # reading is still allowed


def test_record_step_writes_only_step_columns(manager):
    manager.populate_pipeline_batches()
    batch = manager.claim("w1")
    assert batch is not None
    for values in (
        {"pipeline_status": "COMPLETED"},
        {"lease_expires_at": None},
        {"source_query_window_end_time": None},
    ):
        with pytest.raises(UsageError, match="not a step column"):
            manager.record_step(batch.batch_id, "w1", values, batch.claim_token, step="source")
        with pytest.raises(UsageError):
            manager.complete(batch.batch_id, "w1", batch.claim_token, values=values)
    manager.record_step(batch.batch_id, "w1", {"source_record_count": 3}, batch.claim_token, step="source")
    row = next(r for r in support.all_rows(manager) if r["batch_id"] == batch.batch_id)
    assert row["pipeline_status"] == "IN_PROGRESS" and row["source_record_count"] == 3


# -- PostgreSQL: zone-less timestamp columns -------------------------------------


@pytest.fixture
def pg_table(table_name: str):  # type: ignore[no-untyped-def]
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    yield table_name
    support.drop_pg_tables(support.PG_URL, table_name)


def _zone_less_table(manager: PipelineStateManager) -> None:
    """A table another tool made with `timestamp` (zone-less) instants, holding one
    COMPLETED window [00:00, 01:00) UTC written as naive UTC."""
    name = manager.store.tables.state.name
    with manager.store.engine.begin() as conn:
        conn.execute(
            text(
                f'CREATE TABLE "{name}" (batch_id VARCHAR(255) PRIMARY KEY, '
                "pipeline_name VARCHAR(128) NOT NULL, "
                "source_query_window_start_time TIMESTAMP NOT NULL, "
                "source_query_window_end_time TIMESTAMP NOT NULL, "
                "source_query_window_duration_minutes INTEGER NOT NULL, "
                "pipeline_status VARCHAR(32) NOT NULL, "
                "created_at TIMESTAMP NOT NULL, updated_at TIMESTAMP NOT NULL)"
            )
        )
        conn.execute(
            text(
                f"INSERT INTO \"{name}\" VALUES ('done', 'orders', '2026-01-01 00:00:00', "
                "'2026-01-01 01:00:00', 60, 'COMPLETED', '2025-12-31 00:00:00', '2025-12-31 00:00:00')"
            )
        )


@pytest.mark.postgres
def test_init_db_refuses_zone_less_instants_and_migrates_them_on_request(pg_table):
    manager = support.make_manager(support.PG_URL, pg_table, end="2026-01-01T03:00")
    _zone_less_table(manager)
    with pytest.raises(SchemaError, match="timestamp without time zone") as caught:
        manager.init_db()
    assert "--migrate-timestamps" in str(caught.value) and "\n" not in str(caught.value)
    with manager.store.engine.connect() as conn:  # refused: nothing added
        columns = conn.execute(
            text("SELECT count(*) FROM information_schema.columns WHERE table_name = :t"), {"t": pg_table}
        ).scalar()
    assert columns == 8
    actions = manager.init_db(migrate_timestamps=True)
    assert "converted source_query_window_start_time to timestamptz (values read as UTC)" in actions
    report = manager.populate_pipeline_batches()
    assert [(e["start"], e["end"]) for e in report.created][0] == (
        "2026-01-01T01:00:00+00:00",
        "2026-01-01T02:00:00+00:00",
    )
    manager.close()


@pytest.mark.postgres
def test_populate_on_another_tools_zone_less_table_refuses_before_writing(pg_table):
    manager = support.make_manager(support.PG_URL, pg_table, end="2026-01-01T03:00")
    _zone_less_table(manager)
    with pytest.raises(SchemaError, match="timestamp without time zone"):
        manager.populate_pipeline_batches()
    with manager.store.engine.connect() as conn:
        assert conn.execute(text(f'SELECT batch_id FROM "{pg_table}"')).scalars().all() == ["done"]
    manager.close()


@pytest.mark.postgres
def test_the_session_zone_is_utc_whatever_pgtz_says(pg_table, monkeypatch):
    """PGTZ=America/New_York read a zone-less table's instants five hours off, and
    populate created windows overlapping COMPLETED ones."""
    monkeypatch.setenv("PGTZ", "America/New_York")
    manager = support.make_manager(support.PG_URL, pg_table, end="2026-01-01T03:00")
    with manager.store.engine.connect() as conn:
        assert conn.execute(text("SHOW timezone")).scalar() == "UTC"
        naive = conn.execute(text("SELECT CAST(TIMESTAMP '2026-01-01 00:00:00' AS timestamptz)")).scalar()
    assert naive == support.utc(2026, 1, 1)
    manager.close()


@pytest.mark.postgres
def test_a_copy_error_is_one_line(pg_table, monkeypatch):
    manager = support.make_manager(support.PG_URL, pg_table, end="2026-01-01T03:00")
    manager.init_db()
    # a window id that exists already, found only by COPY (the lookup is skipped here)
    monkeypatch.setattr(populate_sql, "existing_ids", lambda store, conn, ids: set())
    monkeypatch.setattr(populate_sql, "has_rows", lambda store, conn: False)
    support.insert_external(
        manager,
        [
            support.external_row(
                "orders-20260101T010000Z-20260101T020000Z",
                support.utc(2026, 1, 1, 5),
                support.utc(2026, 1, 1, 6),
                pipeline="other",
            )
        ],
    )
    with pytest.raises(StateStoreError) as caught:
        manager.populate_pipeline_batches()
    assert "\n" not in str(caught.value) and "duplicate key" in str(caught.value)
    manager.close()


@pytest.mark.duckdb
def test_a_full_disk_under_duckdb_is_one_line(tmp_path, monkeypatch):
    """DuckDB's errors from its Arrow path reach us around SQLAlchemy: a full disk was a 57-line traceback."""
    duckdb = pytest.importorskip("duckdb")
    pytest.importorskip("duckdb_engine")
    manager = support.make_manager(f"duckdb:///{tmp_path / 'state.duckdb'}", "pipeline_state")

    def disk_full(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise duckdb.IOException('Could not write file "state.duckdb.wal": No space left on device\n(detail)')

    monkeypatch.setattr(populate_sql, "insert_windows", disk_full)
    with pytest.raises(StateStoreError) as caught:
        manager.populate_pipeline_batches()
    assert "No space left on device" in str(caught.value) and "\n" not in str(caught.value)
    assert manager.counts() == {}
    manager.close()

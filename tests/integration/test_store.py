"""The state table on real databases: init-db, stored formats, events, concurrency (contract 4, 5.6)."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from pathlib import Path

import pytest
import support
from sqlalchemy import bindparam, select, text
from support import active, all_rows, assert_tiles, events, external_row, hours, insert_external, utc

from pipestate.errors import StoreBusyError
from pipestate.store.schema import CORE_COLUMNS, SCHEMA_VERSION

D1, D2 = utc(2026, 1, 1), utc(2026, 1, 2)


def test_init_db_is_idempotent_and_records_the_schema_version(manager):
    first = manager.init_db()
    assert any("created table" in action for action in first)
    assert f"recorded schema version {SCHEMA_VERSION}" in first
    assert manager.init_db() == []
    meta = manager.store.tables.meta
    with manager.store.engine.connect() as conn:
        versions = conn.execute(select(meta.c.value).where(meta.c.name == "schema_version")).scalars().all()
    assert versions == [str(SCHEMA_VERSION)]


def test_core_columns_are_exactly_the_not_null_ones(manager):
    assert set(CORE_COLUMNS) == {
        "batch_id",
        "pipeline_name",
        "source_query_window_start_time",
        "source_query_window_end_time",
        "source_query_window_duration_minutes",
        "pipeline_status",
        "created_at",
        "updated_at",
    }
    assert len(manager.store.tables.state.columns) >= 65
    manager.init_db()
    insert_external(manager, [external_row("ext", D1, D1 + hours(1))])  # only core columns: accepted


def test_populate_creates_the_tables_when_missing(manager):
    assert not manager.store.exists()
    manager.populate_pipeline_batches()
    assert manager.store.exists()
    assert manager.init_db() == []


def test_events_of_populate(manager):
    insert_external(
        manager,
        [external_row("a", D1, D1 + hours(2)), external_row("b", D1 + hours(1), D1 + hours(2), "PENDING")],
    )
    report = manager.populate_pipeline_batches()
    found = events(manager)
    superseded = [e for e in found if e["event_type"] == "SUPERSEDED"]
    assert [(e["batch_id"], e["old_status"], e["new_status"]) for e in superseded] == [
        ("b", "PENDING", "SUPERSEDED")
    ]
    assert '"superseded_by": "a"' in superseded[0]["details"]
    created = [e for e in found if e["event_type"] == "CREATED"]
    assert len(created) == len(report.created) == 22
    assert all(e["event_time"] == support.NOW and e["pipeline_name"] == "orders" for e in found)
    assert all(e["worker_id"] for e in found)
    row = {r["batch_id"]: r for r in all_rows(manager)}["b"]
    assert row["superseded_by"] == "a" and "COMPLETED" in row["supersede_reason"]
    assert row["superseded_at"] == support.NOW


# -- SQLite's stored text -----------------------------------------------------------------------


def _sqlite_path(url: str) -> str:
    return url.removeprefix("sqlite:///")


@pytest.fixture
def sqlite_manager(tmp_path: Path, table_name: str):
    manager = support.make_manager(f"sqlite:///{tmp_path / 'state.db'}", table_name)
    yield manager
    manager.close()


def test_sqlite_stores_naive_utc_text(sqlite_manager, table_name):
    sqlite_manager.populate_pipeline_batches()
    path = _sqlite_path(str(sqlite_manager.store.engine.url))
    with sqlite3.connect(path) as raw:
        values = raw.execute(
            "SELECT source_query_window_start_time, source_query_window_end_time, created_at "
            f"FROM {table_name} ORDER BY source_query_window_start_time LIMIT 2"
        ).fetchall()
    assert values[0][0] == "2026-01-01 00:00:00.000000"
    assert values[0][1] == "2026-01-01 01:00:00.000000"
    assert values[1][0] == "2026-01-01 01:00:00.000000"
    assert values[0][2] == "2026-03-01 12:00:00.000000"


def test_sqlite_new_file_gets_16k_pages_and_an_old_file_keeps_its_own(tmp_path, table_name):
    fresh = support.make_manager(f"sqlite:///{tmp_path / 'new.db'}", table_name)
    try:
        fresh.populate_pipeline_batches()
    finally:
        fresh.close()
    with sqlite3.connect(tmp_path / "new.db") as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 16384
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"

    old_path = tmp_path / "old.db"
    with sqlite3.connect(old_path) as raw:  # a file another tool made with SQLite's default pages
        raw.execute("CREATE TABLE other_tool (x INTEGER)")
        raw.execute("INSERT INTO other_tool VALUES (1)")
    old = support.make_manager(f"sqlite:///{old_path}", table_name)
    try:
        report = old.populate_pipeline_batches()
        assert report.summary()["created"] > 0
        assert old.validate().summary()["gaps"] == 0
    finally:
        old.close()
    with sqlite3.connect(old_path) as raw:
        assert raw.execute("PRAGMA page_size").fetchone()[0] == 4096
        assert raw.execute("SELECT x FROM other_tool").fetchall() == [(1,)]


def test_sqlite_external_text_without_fraction_is_read(sqlite_manager, table_name):
    sqlite_manager.init_db()
    path = _sqlite_path(str(sqlite_manager.store.engine.url))
    with sqlite3.connect(path) as raw:
        for hour in range(24):
            if hour == 7:
                continue
            raw.execute(
                f"INSERT INTO {table_name} (batch_id, pipeline_name, source_query_window_start_time, "
                "source_query_window_end_time, source_query_window_duration_minutes, pipeline_status, "
                "created_at, updated_at) VALUES (?, 'orders', ?, ?, 60, 'COMPLETED', ?, ?)",
                (
                    f"ext-{hour}",
                    f"2026-01-01 {hour:02d}:00:00",
                    f"2026-01-01 {hour + 1:02d}:00:00" if hour < 23 else "2026-01-02 00:00:00",
                    "2025-12-31 00:00:00",
                    "2025-12-31 00:00:00",
                ),
            )
        # one unreadable row: reported, left alone
        raw.execute(
            f"INSERT INTO {table_name} (batch_id, pipeline_name, source_query_window_start_time, "
            "source_query_window_end_time, source_query_window_duration_minutes, pipeline_status, "
            "created_at, updated_at) VALUES ('junk', 'orders', 'yesterday', 'today', 60, 'PENDING', "
            "'2025-12-31 00:00:00', '2025-12-31 00:00:00')"
        )
    report = sqlite_manager.populate_pipeline_batches()
    assert [(g.start, g.end, g.kind) for g in report.plan.gaps] == [
        (D1 + hours(7), D1 + hours(8), "between_windows")
    ]
    assert [c["start"] for c in report.created] == ["2026-01-01T07:00:00+00:00"]
    assert [i.batch_id for i in report.plan.invalid] == ["junk"]
    rows = {r["batch_id"]: r for r in all_rows(sqlite_manager)}
    assert rows["ext-3"]["source_query_window_start_time"] == D1 + hours(3)
    with sqlite3.connect(path) as raw:
        assert raw.execute(
            f"SELECT source_query_window_start_time FROM {table_name} WHERE batch_id='junk'"
        ).fetchone() == ("yesterday",)
    again = sqlite_manager.populate_pipeline_batches()
    assert len(again.created) == 0


# -- concurrency --------------------------------------------------------------------------------


def _populate_in_child(url: str, table: str, barrier_path: str, result_queue) -> None:
    import time as time_

    deadline = time_.time() + 20
    while not Path(barrier_path).exists() and time_.time() < deadline:
        time_.sleep(0.01)
    try:
        manager = support.make_manager(url, table, end="2026-01-03", granularity="15m")
        report = manager.populate_pipeline_batches()
        manager.close()
        result_queue.put(("ok", len(report.created)))
    except Exception as err:  # noqa: BLE001 - the parent reports what the child saw
        result_queue.put(("error", f"{type(err).__name__}: {err}"))


def _run_concurrently(url: str, table: str, tmp_path: Path, count: int) -> list[tuple[str, object]]:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    barrier = tmp_path / "go"
    processes = [
        context.Process(target=_populate_in_child, args=(url, table, str(barrier), queue))
        for _ in range(count)
    ]
    for process in processes:
        process.start()
    time.sleep(1.5)  # let every child import pipestate before they all start together
    barrier.touch()
    results = [queue.get(timeout=60) for _ in processes]
    for process in processes:
        process.join(timeout=30)
    return results


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_concurrent_populates_make_no_duplicates(backend, tmp_path, table_name):
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'state.db'}"
    else:
        problem = support.pg_reachable()
        if problem:
            pytest.skip(problem)
        url = support.PG_URL
    try:
        results = _run_concurrently(url, table_name, tmp_path, 3)
        assert all(status == "ok" for status, _ in results), results
        assert sorted(count for _, count in results) == [0, 0, 2 * 96]
        manager = support.make_manager(url, table_name, end="2026-01-03", granularity="15m")
        rows = all_rows(manager)
        assert len(rows) == 2 * 96 and len({r["batch_id"] for r in rows}) == len(rows)
        assert_tiles(active(rows), D1, utc(2026, 1, 3))
        assert len([e for e in events(manager) if e["event_type"] == "CREATED"]) == 2 * 96
        manager.close()
    finally:
        if backend == "postgresql":
            support.drop_pg_tables(url, table_name)


def _hold_duckdb(url: str, ready_path: str, release_path: str) -> None:
    from sqlalchemy import create_engine

    engine = create_engine(url)
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))
        Path(ready_path).touch()
        deadline = time.time() + 30
        while not Path(release_path).exists() and time.time() < deadline:
            time.sleep(0.02)
    engine.dispose()


@pytest.mark.duckdb
def test_duckdb_second_process_gets_a_clear_busy_error(tmp_path, table_name):
    pytest.importorskip("duckdb_engine")
    url = f"duckdb:///{tmp_path / 'state.duckdb'}"
    first = support.make_manager(url, table_name)
    first.populate_pipeline_batches()
    first.close()
    ready, release = tmp_path / "ready", tmp_path / "release"
    holder = multiprocessing.get_context("spawn").Process(
        target=_hold_duckdb, args=(url, str(ready), str(release))
    )
    holder.start()
    try:
        deadline = time.time() + 30
        while not ready.exists() and time.time() < deadline:
            time.sleep(0.02)
        assert ready.exists(), "the holding process never opened the file"
        second = support.make_manager(url, table_name)
        started = time.time()
        with pytest.raises(StoreBusyError) as caught:
            second.populate_pipeline_batches()
        assert time.time() - started < 10, "a busy DuckDB file must fail fast, not hang"
        message = str(caught.value)
        assert "DuckDB" in message and "one writing process" in message and "\n" not in message
        second.close()
    finally:
        release.touch()
        holder.join(timeout=30)


@pytest.mark.postgres
def test_postgres_instants_python_cannot_hold_are_invalid_rows(table_name):
    # PostgreSQL stores BC years, years past 9999 and +-infinity; Python cannot.
    # Rows another tool wrote with them are reported as invalid and left alone,
    # and the rest of the range is still filled.
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    manager = support.make_manager(support.PG_URL, table_name)
    try:
        manager.init_db()
        odd = {
            "bc": ("0044-03-15 00:00+00 BC", "2026-01-01 03:00+00"),
            "infinite": ("2026-01-01 05:00+00", "infinity"),
            "before-time": ("-infinity", "2026-01-01 01:00+00"),
            "far": ("2026-01-01 07:00+00", "12026-01-01 00:00+00"),
        }
        with manager.store.engine.begin() as conn:
            for batch_id, (start, end) in odd.items():
                conn.execute(
                    text(
                        f"INSERT INTO {table_name} (batch_id, pipeline_name, "
                        "source_query_window_start_time, source_query_window_end_time, "
                        "source_query_window_duration_minutes, pipeline_status, created_at, updated_at) "
                        "VALUES (:id, 'orders', CAST(:start AS TIMESTAMPTZ), CAST(:end AS TIMESTAMPTZ), "
                        "60, 'PENDING', now(), now())"
                    ),
                    {"id": batch_id, "start": start, "end": end},
                )
        checked = manager.validate()
        assert sorted(row.batch_id for row in checked.plan.invalid) == sorted(odd)
        report = manager.populate_pipeline_batches()
        assert sorted(row.batch_id for row in report.plan.invalid) == sorted(odd)
        assert len(report.created) == 24
        with manager.store.engine.connect() as conn:
            kept = conn.execute(
                text(f"SELECT batch_id, pipeline_status FROM {table_name} WHERE batch_id IN :ids").bindparams(
                    bindparam("ids", expanding=True)
                ),
                {"ids": list(odd)},
            ).all()
        assert sorted(kept) == sorted((batch_id, "PENDING") for batch_id in odd)
        assert manager.status()["pipeline"] == "orders"
    finally:
        manager.close()
        support.drop_pg_tables(support.PG_URL, table_name)

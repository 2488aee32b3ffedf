"""Helpers shared by the integration and command-line tests (importable by spawned processes)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, insert, select, text

from pipestate.config import Config
from pipestate.manager import PipelineStateManager

# The fixed clock of every test: long after the default range, so nothing waits on `lag`.
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
# The local PostgreSQL of every test that needs one: $PIPESTATE_TEST_PG_URL, else the default.
PG_URL = os.environ.get("PIPESTATE_TEST_PG_URL", "postgresql+psycopg://root@127.0.0.1:5432/test")


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def config_dict(
    url: str, table: str, concurrency: dict[str, Any] | None = None, **pipeline: Any
) -> dict[str, Any]:
    """A config mapping: pipeline `orders`, UTC, 1h, 2026-01-01 .. 2026-01-02, unless overridden;
    with `concurrency`, that [concurrency] section too."""
    values: dict[str, Any] = {
        "name": "orders",
        "timezone": "UTC",
        "granularity": "1h",
        "start": "2026-01-01",
        "end": "2026-01-02",
    }
    values.update(pipeline)
    values = {key: value for key, value in values.items() if value is not None}
    config: dict[str, Any] = {"pipeline": values, "state": {"url": url, "table": table}}
    if concurrency is not None:
        config["concurrency"] = concurrency
    return config


def make_config(url: str, table: str, **pipeline: Any) -> Config:
    return Config.from_dict(config_dict(url, table, **pipeline))


def make_manager(url: str, table: str, now: datetime = NOW, **pipeline: Any) -> PipelineStateManager:
    """A manager on a fixed clock, so populate is deterministic."""
    return PipelineStateManager(make_config(url, table, **pipeline), clock=lambda: now)


def external_row(
    batch_id: str,
    start: datetime,
    end: datetime,
    status: str = "COMPLETED",
    pipeline: str = "orders",
    updated_at: datetime | None = None,
    created_at: datetime | None = None,
    minutes: int | None = None,
) -> dict[str, Any]:
    """A row as another tool writes it: the contract's core columns only."""
    created_at = created_at or utc(2025, 12, 31)
    return {
        "batch_id": batch_id,
        "pipeline_name": pipeline,
        "source_query_window_start_time": start,
        "source_query_window_end_time": end,
        "source_query_window_duration_minutes": (
            minutes if minutes is not None else int((end - start).total_seconds() // 60)
        ),
        "pipeline_status": status,
        "created_at": created_at,
        "updated_at": updated_at or created_at,
    }


def insert_external(manager: PipelineStateManager, rows: Iterable[dict[str, Any]]) -> None:
    """Insert rows with SQLAlchemy Core, creating the tables first if needed."""
    manager.init_db()
    with manager.store.engine.begin() as conn:
        conn.execute(insert(manager.store.tables.state), list(rows))


def all_rows(manager: PipelineStateManager, pipeline: str | None = None) -> list[dict[str, Any]]:
    """Every row of the state table (of one pipeline if given), ordered by window then id."""
    state = manager.store.tables.state
    stmt = select(state).order_by(
        state.c.pipeline_name,
        state.c.source_query_window_start_time,
        state.c.source_query_window_end_time,
        state.c.batch_id,
    )
    if pipeline is not None:
        stmt = stmt.where(state.c.pipeline_name == pipeline)
    with manager.store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def active(rows: list[dict[str, Any]]) -> list[tuple[datetime, datetime]]:
    """The (start, end) of active rows, sorted."""
    return sorted(
        (row["source_query_window_start_time"], row["source_query_window_end_time"])
        for row in rows
        if row["pipeline_status"] != "SUPERSEDED"
        and row["source_query_window_start_time"] is not None
        and row["source_query_window_end_time"] is not None
        and row["source_query_window_end_time"] > row["source_query_window_start_time"]
    )


def events(manager: PipelineStateManager, batch_id: str | None = None) -> list[dict[str, Any]]:
    """The audit table's rows (of one batch, with `batch_id`), oldest first."""
    table = manager.store.tables.events
    stmt = select(table).order_by(table.c.event_id)
    if batch_id is not None:
        stmt = stmt.where(table.c.batch_id == batch_id)
    with manager.store.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(stmt)]


def assert_tiles(windows: list[tuple[datetime, datetime]], start: datetime, stop: datetime) -> None:
    """The windows cover [start, stop) with no gap and no overlap (edges may stick out)."""
    windows = sorted(windows)
    for (_, end_a), (start_b, _) in zip(windows, windows[1:], strict=False):
        assert end_a <= start_b, f"overlap at {start_b}"
    inside = [(max(s, start), min(e, stop)) for s, e in windows if e > start and s < stop]
    assert inside, "nothing covers the range"
    assert inside[0][0] == start, f"range starts uncovered: first window at {inside[0][0]}"
    assert inside[-1][1] == stop, f"range ends uncovered: last window ends {inside[-1][1]}"
    for (_, end_a), (start_b, _) in zip(inside, inside[1:], strict=False):
        assert end_a == start_b, f"gap [{end_a}, {start_b})"


def awkward_id(window: Any) -> str:
    """An id/category function whose text holds tab, newline, backslash, quotes,
    a NUL-free control character and non-ASCII: what bulk loads must escape."""
    return f"x\t'y'\\N\n\"z\"\r\x07é😀-{window.start:%H%M}"


def hours(n: float) -> timedelta:
    return timedelta(hours=n)


def unique_table() -> str:
    return f"t_{uuid.uuid4().hex[:8]}"


def drop_pg_tables(url: str, table: str) -> None:
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            for name in (table, f"{table}_events", f"{table}_meta"):
                conn.execute(text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
            conn.execute(text(f'DROP SEQUENCE IF EXISTS "{table}_events_seq"'))
    finally:
        engine.dispose()


def pg_reachable(url: str = PG_URL) -> str | None:
    """None if PostgreSQL answers, else why not."""
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed (pip install 'pipestate[postgres]')"
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return None
    except Exception as err:  # noqa: BLE001 - any failure means: skip, and say why
        return f"PostgreSQL at {url} is unreachable: {str(err).splitlines()[0]}"
    finally:
        engine.dispose()

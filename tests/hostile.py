"""Rows another tool (or an attacker) writes into a state table, each with what
populate must make of it: every text form of an instant, unreadable values,
duplicated and colliding ids. Tests insert them raw, bypassing pipestate's own
column types, and check that claims, populate and validate agree on each row.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import text

from pipestate.manager import PipelineStateManager

DAY = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class HostileRow:
    """One row as stored: `start`/`end` are the raw values written (text, or an
    integer where the column takes one); `window` is the instants populate
    reads from them, or None where it must call the row invalid."""

    batch_id: str
    start: Any
    end: Any
    window: tuple[datetime, datetime] | None
    status: str = "PENDING"
    pipeline: str = "orders"


def _slot(hour: int) -> tuple[datetime, datetime]:
    """The `hour`-th one-hour window from 2026-01-01 00:00 UTC."""
    return DAY + timedelta(hours=hour), DAY + timedelta(hours=hour + 1)


def _sqlite_text_forms() -> list[HostileRow]:
    """SQLite: instants are text, so every form other tools write. Each valid row
    sits on its own hour, so populate keeps them all and fills the rest."""
    rows = []
    forms = [
        ("canonical", "{:%Y-%m-%d %H:%M:%S}.000000"),
        ("no-fraction", "{:%Y-%m-%d %H:%M:%S}"),
        ("t", "{:%Y-%m-%dT%H:%M:%S}"),
        ("t-z", "{:%Y-%m-%dT%H:%M:%S}Z"),
        ("space-z", "{:%Y-%m-%d %H:%M:%S}Z"),
        ("offset-zero", "{:%Y-%m-%d %H:%M:%S}+00:00"),
        ("t-millis-z", "{:%Y-%m-%dT%H:%M:%S}.000Z"),
        ("minutes-only", "{:%Y-%m-%d %H:%M}"),
    ]
    for hour, (name, pattern) in enumerate(forms):
        start, end = _slot(hour)
        rows.append(HostileRow(f"h-{name}", pattern.format(start), pattern.format(end), (start, end)))
    # An offset: the wall time is not UTC; 10:00+02:00 is 08:00 UTC.
    start, end = _slot(8)
    rows.append(
        HostileRow("h-offset", "2026-01-01T10:00:00+02:00", "2026-01-01 11:00:00+02:00", (start, end))
    )
    # A COMPLETED window rewritten with a T and set PENDING (the 1,544 lost events).
    start, end = _slot(9)
    rows.append(HostileRow("h-rewritten", "2026-01-01T09:00:00", "2026-01-01T10:00:00", (start, end)))
    invalid = [
        # end before start once the offset is applied: 11:00 - 02:00 = 09:00 < 10:00
        ("h-offset-reversed", "2026-01-01 10:00:00", "2026-01-01 11:00:00+02:00"),
        ("h-year-0000", "0000-01-01 11:00:00", "2026-01-01 12:00:00"),
        ("h-year-10000", "2026-01-01 12:00:00", "10000-01-01 00:00:00"),
        ("h-epoch", 1767236400, 1767240000),  # integers: 13:00 and 14:00 UTC as epoch seconds
        ("h-words", "yesterday", "today"),
        ("h-empty", "", ""),
        ("h-feb-30", "2026-02-30 00:00:00", "2026-02-30 01:00:00"),
        ("h-reversed", "2026-01-01 15:00:00", "2026-01-01 14:00:00"),
        ("h-equal", "2026-01-01 16:00:00", "2026-01-01 16:00:00"),
    ]
    rows += [HostileRow(batch_id, start, end, None) for batch_id, start, end in invalid]
    return rows


def _postgres_values() -> list[HostileRow]:
    """PostgreSQL: timestamptz parses every text form itself; what breaks are the
    values it holds and Python cannot (infinity, BC, year 10000)."""
    rows = []
    start, end = _slot(0)
    rows.append(HostileRow("h-t-z", "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z", (start, end)))
    start, end = _slot(1)
    rows.append(
        HostileRow("h-offset", "2026-01-01 03:00:00+02:00", "2026-01-01 04:00:00+02:00", (start, end))
    )
    start, end = _slot(2)
    rows.append(HostileRow("h-first-year", "2026-01-01 02:00:00+00", "2026-01-01 03:00:00+00", (start, end)))
    invalid = [
        ("h-minus-infinity", "-infinity", "2026-01-01 04:00:00+00"),
        ("h-infinity", "2026-01-01 05:00:00+00", "infinity"),
        ("h-bc", "0044-03-15 00:00:00+00 BC", "2026-01-01 06:00:00+00"),
        ("h-year-10000", "2026-01-01 06:00:00+00", "10000-01-01 00:00:00+00"),
        ("h-reversed", "2026-01-01 08:00:00+00", "2026-01-01 07:00:00+00"),
        ("h-offset-reversed", "2026-01-01 09:00:00+00", "2026-01-01 11:00:00+03"),
    ]
    rows += [HostileRow(batch_id, start, end, None) for batch_id, start, end in invalid]
    return rows


def instant_rows(dialect: str) -> list[HostileRow]:
    """Rows whose instants are in every form the database can hold."""
    return _sqlite_text_forms() if dialect == "sqlite" else _postgres_values()


def insert_raw(manager: PipelineStateManager, rows: list[HostileRow]) -> None:
    """Insert `rows` with the core columns only, the instants as given (no column type)."""
    store = manager.store
    table = store.engine.dialect.identifier_preparer.format_table(store.tables.state)
    cast = "CAST(:{} AS timestamptz)" if store.dialect == "postgresql" else ":{}"
    sql = text(
        f"INSERT INTO {table} (batch_id, pipeline_name, source_query_window_start_time, "
        "source_query_window_end_time, source_query_window_duration_minutes, pipeline_status, "
        f"created_at, updated_at) VALUES (:batch_id, :pipeline, {cast.format('start')}, "
        f"{cast.format('end')}, 60, :status, {cast.format('stamp')}, {cast.format('stamp')})"
    )
    stamp = "2025-12-31 00:00:00+00" if store.dialect == "postgresql" else "2025-12-31 00:00:00.000000"
    with store.engine.begin() as conn:
        for row in rows:
            conn.execute(
                sql,
                {
                    "batch_id": row.batch_id,
                    "pipeline": row.pipeline,
                    "start": row.start,
                    "end": row.end,
                    "status": row.status,
                    "stamp": stamp,
                },
            )


def create_foreign_table(manager: PipelineStateManager) -> None:
    """The state table as another tool makes it: the core columns, no primary key."""
    store = manager.store
    table = store.engine.dialect.identifier_preparer.format_table(store.tables.state)
    instant = "TIMESTAMPTZ" if store.dialect == "postgresql" else "TEXT"
    with store.engine.begin() as conn:
        conn.execute(
            text(
                f"CREATE TABLE {table} (batch_id VARCHAR(255) NOT NULL, pipeline_name VARCHAR(128) NOT NULL, "
                f"source_query_window_start_time {instant} NOT NULL, "
                f"source_query_window_end_time {instant} NOT NULL, "
                "source_query_window_duration_minutes INTEGER NOT NULL, "
                f"pipeline_status VARCHAR(32) NOT NULL, created_at {instant} NOT NULL, "
                f"updated_at {instant} NOT NULL)"
            )
        )
    manager.init_db()


def form(dialect: str, instant: datetime) -> str:
    """`instant` as canonical text for a raw insert on `dialect`."""
    if dialect == "postgresql":
        return instant.isoformat()
    return instant.replace(tzinfo=None).isoformat(" ", "microseconds")


# -- random hostile tables, for property tests ----------------------------------

# How a row's instants are written: (name, formatter or None for an unreadable
# value, readable?). SQLite takes text (and integers); PostgreSQL timestamptz text.
SQLITE_FORMS: list[tuple[str, Any]] = [
    ("canonical", lambda t: t.replace(tzinfo=None).isoformat(" ", "microseconds")),
    ("seconds", lambda t: t.strftime("%Y-%m-%d %H:%M:%S")),
    ("t", lambda t: t.strftime("%Y-%m-%dT%H:%M:%S")),
    ("z", lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    ("plus-two", lambda t: (t + timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%S+02:00")),
    ("minus-five", lambda t: (t - timedelta(hours=5)).strftime("%Y-%m-%d %H:%M:%S-05:00")),
    ("year-0000", None),
    ("year-10000", None),
    ("epoch", None),
    ("words", None),
]
POSTGRES_FORMS: list[tuple[str, Any]] = [
    ("canonical", lambda t: t.isoformat()),
    ("plus-two", lambda t: (t + timedelta(hours=2)).strftime("%Y-%m-%d %H:%M:%S+02")),
    ("t-z", lambda t: t.strftime("%Y-%m-%dT%H:%M:%SZ")),
    ("minus-infinity", None),
    ("infinity", None),
    ("bc", None),
    ("year-10000", None),
]
_UNREADABLE = {
    "year-0000": "0000-01-01 00:00:00",
    "year-10000": "10000-01-01 00:00:00+00",
    "epoch": 1767225600,
    "words": "noon",
    "minus-infinity": "-infinity",
    "infinity": "infinity",
    "bc": "0044-03-15 00:00:00+00 BC",
}


def written(forms: list[tuple[str, Any]], form_index: int, instant: datetime) -> tuple[Any, bool]:
    """`instant` written in form `form_index`, and whether populate can read it."""
    name, formatter = forms[form_index]
    if formatter is None:
        return _UNREADABLE[name], False
    return formatter(instant), True

"""Column types that behave the same on every database: UTC instants above all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..windows import parse_instant


class _SQLiteInstant(sqlite.DATETIME):
    """SQLite text `YYYY-MM-DD HH:MM:SS.ffffff`, read without SQLAlchemy's strict regex."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return parse_instant


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python; TIMESTAMPTZ on PostgreSQL, naive UTC elsewhere.

    Naive datetimes are refused on the way in: a guess about their zone is how
    windows end up an hour off.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(DateTime(timezone=True))
        if dialect.name == "sqlite":
            return dialect.type_descriptor(_SQLiteInstant())
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given for a UTC column")
        value = value.astimezone(UTC)
        return value if dialect.name == "postgresql" else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return parse_instant(value)

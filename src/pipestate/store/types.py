"""Column types that behave the same on every database: UTC instants above all."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import DateTime, String, and_, case, or_
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Dialect
from sqlalchemy.sql import operators
from sqlalchemy.types import TypeDecorator, TypeEngine

from ..windows import read_stored_instant
from .backends import backend_of


class _SQLiteInstant(sqlite.DATETIME):
    """SQLite text `YYYY-MM-DD HH:MM:SS.ffffff`, read without SQLAlchemy's strict regex."""

    def result_processor(self, dialect: Dialect, coltype: object) -> Any:
        return read_stored_instant


class UTCDateTime(TypeDecorator[datetime]):
    """An aware UTC datetime in Python; TIMESTAMPTZ on PostgreSQL, naive UTC elsewhere.

    Naive datetimes are refused on the way in: a guess about their zone is how
    windows end up an hour off.
    """

    impl = DateTime
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        backend = backend_of(dialect)
        if backend.timezone_type:
            return dialect.type_descriptor(DateTime(timezone=True))
        if backend.instants_as_text:
            return dialect.type_descriptor(_SQLiteInstant())
        return dialect.type_descriptor(DateTime())

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(f"naive datetime {value.isoformat()} given for a UTC column")
        value = value.astimezone(UTC)
        return value if backend_of(dialect).timezone_type else value.replace(tzinfo=None)

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        return read_stored_instant(value)


class StatusType(TypeDecorator[str]):
    """`pipeline_status`, read through `[state] status_map`: the one place statuses are mapped.

    `aliases` pairs a status another tool writes with the one it means
    (`("SUCCESS", "COMPLETED")`). Every SELECT of the column reads the meant
    status (a CASE), and every comparison with a status also matches its
    aliases (`= 'COMPLETED'` becomes `= 'COMPLETED' OR = 'SUCCESS'`, which the
    status index still serves). pipestate itself writes only its own names.
    Without aliases the column is a plain string.
    """

    impl = String(32)
    cache_ok = True

    def __init__(self, aliases: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__()
        self.aliases = tuple(aliases)

    def process_bind_param(self, value: Any, dialect: Dialect) -> Any:
        # A Status member as its plain text: some drivers (Snowflake's) bind only exact str.
        return None if value is None else str(value)

    def column_expression(self, column: Any) -> Any:
        if not self.aliases:
            return column
        return case(dict(self.aliases), value=column, else_=column)

    def variants(self, status: str) -> list[str]:
        """`status` and every alias that means it."""
        return [status, *(alias for alias, meant in self.aliases if meant == status)]

    class comparator_factory(TypeDecorator.Comparator[str]):  # noqa: N801 - SQLAlchemy's name
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            status_type, compare = self.type, super().operate
            if not isinstance(status_type, StatusType) or not status_type.aliases or not other:
                return super().operate(op, *other, **kwargs)
            # OR of equalities, not IN: plain bound values, which SQL compiled by hand
            # (the SQLite scan in StateStore) can take like any other.
            if op in (operators.eq, operators.in_op) and isinstance(other[0], str | list | tuple):
                statuses = [other[0]] if isinstance(other[0], str) else other[0]
                values = [variant for status in statuses for variant in status_type.variants(status)]
                return or_(*(compare(operators.eq, value) for value in values))
            if op in (operators.ne, operators.not_in_op) and isinstance(other[0], str | list | tuple):
                statuses = [other[0]] if isinstance(other[0], str) else other[0]
                values = [variant for status in statuses for variant in status_type.variants(status)]
                return and_(*(compare(operators.ne, value) for value in values))
            return super().operate(op, *other, **kwargs)

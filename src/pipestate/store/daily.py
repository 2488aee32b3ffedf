"""Per-local-day and per-local-hour aggregates of the state table, computed in SQL.

Local days are not UTC days, and DST makes some 23 or 25 hours long, so no
database's `date()` can group by them. The caller passes the day bounds, worked
out with windows.py; here they become one SQL expression that maps a window's
start (as integer epoch seconds) to its day number: runs of plain 24-hour days
are one arithmetic branch each, other days a branch of their own, and the
branches are nested as a binary search so each row costs a few comparisons.
A million windows come back as one row per (day, status), or per (hour, status).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import BigInteger, Integer, and_, case, func, literal, select
from sqlalchemy.engine import Connection
from sqlalchemy.sql import Select
from sqlalchemy.sql.elements import ColumnElement

from ..errors import ConfigError
from ..statuses import Status
from .backends import backend_named
from .schema import END_TIME, START_TIME, StateTables

__all__ = ["DayBucket", "HOURS_PER_DAY_SLOT", "bucket_rows", "day_index", "epoch_seconds", "span_query"]

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_PLAIN_DAY = 86_400
# Hour cells per day in the hour aggregate: room for the longest local days
# (25 h on DST days; a few zones' historic changes made longer ones).
HOURS_PER_DAY_SLOT = 48


_NO_LIMIT = 2**62
_MARGIN = timedelta(days=1)
_STEPS = ("source_extract", "stage_write", "target_load")


def _seconds(instant: datetime) -> int:
    return int((instant - _EPOCH).total_seconds())


def epoch_seconds(column: Any, dialect: str) -> ColumnElement[Any]:
    """`column` (a UTC instant as stored) as whole epoch seconds, in SQL; NULL when unreadable."""
    backend = backend_named(dialect)
    if backend.epoch_seconds is None:
        raise ConfigError(f"[state] url: per-day views are not supported on {dialect}")
    return backend.epoch_seconds(column)


def _int_div(value: ColumnElement[Any], divisor: int, dialect: str) -> ColumnElement[Any]:
    # Only ever applied to values >= 0.
    how = backend_named(dialect).integer_division
    if how == "//":
        return value.self_group().op("//")(literal(divisor))
    if how == "floor":
        return func.floor(value / divisor)
    return value.self_group().op("/")(literal(divisor, BigInteger()))  # integers: integral division


@dataclass(frozen=True)
class _Segment:
    first_day: int  # index of its first day
    start: int  # epoch seconds of its first day's start
    days: int  # how many days it holds
    plain: bool  # all of them 24 hours long (else it is one day of another length)


def _segments(bounds: Sequence[tuple[datetime, datetime]]) -> list[_Segment]:
    segments: list[_Segment] = []
    for index, (day_start, day_end) in enumerate(bounds):
        start, length = _seconds(day_start), _seconds(day_end) - _seconds(day_start)
        if length <= 0:
            continue  # a day a DST change skipped (Apia 2011-12-30): no instant is in it
        last = segments[-1] if segments else None
        if (
            length == _PLAIN_DAY
            and last is not None
            and last.plain
            and last.start + last.days * _PLAIN_DAY == start
            and last.first_day + last.days == index
        ):
            segments[-1] = _Segment(last.first_day, last.start, last.days + 1, True)
        else:
            segments.append(_Segment(index, start, 1, length == _PLAIN_DAY))
    return segments


def _bucket_expression(
    seconds: ColumnElement[Any],
    segments: list[_Segment],
    branch: Callable[[ColumnElement[Any], _Segment], ColumnElement[Any]],
) -> ColumnElement[Any]:
    """A nested CASE choosing the segment of `seconds` by binary search."""
    if len(segments) == 1:
        return branch(seconds, segments[0])
    middle = len(segments) // 2
    return case(
        (
            seconds < literal(segments[middle].start, BigInteger()),
            _bucket_expression(seconds, segments[:middle], branch),
        ),
        else_=_bucket_expression(seconds, segments[middle:], branch),
    )


def day_index(
    seconds: ColumnElement[Any], bounds: Sequence[tuple[datetime, datetime]], dialect: str
) -> ColumnElement[Any] | None:
    """The index in `bounds` (consecutive local days) of the day holding `seconds`
    (epoch seconds in SQL), valid for values inside the days; None without days."""
    segments = _segments(bounds)
    if not segments:
        return None

    def branch(value: ColumnElement[Any], segment: _Segment) -> ColumnElement[Any]:
        first = literal(segment.first_day, BigInteger())
        if not segment.plain:
            return first
        return first + _int_div(value - literal(segment.start, BigInteger()), _PLAIN_DAY, dialect)

    return _bucket_expression(seconds, segments, branch)


@dataclass(frozen=True)
class DayBucket:
    """One row of the aggregate: windows of one status starting in one day (or hour)."""

    bucket: int  # day index; with hours=True: day index * HOURS_PER_DAY_SLOT + hour of the day
    status: str
    windows: int
    exhausted: int  # FAILED windows without retries left
    retries: int  # sum of retry_count
    records: int  # sum of source_record_count
    processing_seconds: float  # sum of processing_seconds
    step_seconds: tuple[float, float, float]  # sums of the extract, stage and load steps' durations


def bucket_rows(
    conn: Connection,
    tables: StateTables,
    pipeline: str,
    bounds: Sequence[tuple[datetime, datetime]],
    *,
    max_retries: int,
    hours: bool = False,
    steps: bool = False,
) -> list[DayBucket]:
    """The pipeline's windows starting in the local days `bounds` (consecutive
    `(day_start, day_end)` pairs in UTC), aggregated per day and status, or per
    hour of the day and status with `hours`. Windows whose start cannot be read
    are left out (populate reports them as invalid rows). The step durations
    are summed only with `steps` (they cost six more instants read per row)."""
    segments = _segments(bounds)
    if not segments:
        return []
    dialect = conn.dialect.name
    c = tables.state.c
    begin = epoch_seconds(c.source_query_window_start_time, dialect)
    if hours:

        def branch(seconds: ColumnElement[Any], segment: _Segment) -> ColumnElement[Any]:
            offset = seconds - literal(segment.start, BigInteger())
            first_slot = literal(segment.first_day * HOURS_PER_DAY_SLOT, BigInteger())
            if not segment.plain:
                hour = _int_div(offset, 3600, dialect)
                return first_slot + case((hour >= HOURS_PER_DAY_SLOT, HOURS_PER_DAY_SLOT - 1), else_=hour)
            day = _int_div(offset, _PLAIN_DAY, dialect)
            hour = _int_div(offset - day * _PLAIN_DAY, 3600, dialect)
            return first_slot + day * HOURS_PER_DAY_SLOT + hour

    else:

        def branch(seconds: ColumnElement[Any], segment: _Segment) -> ColumnElement[Any]:
            first = literal(segment.first_day, BigInteger())
            if not segment.plain:
                return first
            return first + _int_div(seconds - literal(segment.start, BigInteger()), _PLAIN_DAY, dialect)

    low = segments[0].start
    high = _seconds(bounds[-1][1])
    step_columns = [
        (
            _duration(c[f"{step}_started_at"], c[f"{step}_completed_at"], dialect)
            if steps
            else literal(0, Integer())
        ).label(step)
        for step in _STEPS
    ]
    inner = (
        select(
            c.pipeline_status.label("status"),
            begin.label("begin"),
            func.coalesce(c.retry_count, 0).label("retries"),
            func.coalesce(c.source_record_count, 0).label("records"),
            func.coalesce(c.processing_seconds, 0).label("processing"),
            *step_columns,
        )
        .where(
            c.pipeline_name == pipeline,
            # loose bounds on the stored column, so the window index narrows the scan
            # (a day either side: stored text may lack the fraction the bound has)
            c.source_query_window_start_time >= bounds[0][0] - _MARGIN,
            c.source_query_window_start_time < bounds[-1][1] + _MARGIN,
        )
        # A LIMIT keeps SQLite from flattening the subquery into the aggregate,
        # which would read each instant again in every expression that uses it.
        .limit(_NO_LIMIT)
        .subquery("windows")
    )
    w = inner.c
    bucket = _bucket_expression(w.begin, segments, branch).label("bucket")
    stmt = (
        select(
            bucket,
            w.status,
            func.count(),
            func.sum(case((and_(w.status == Status.FAILED.value, w.retries >= max_retries), 1), else_=0)),
            func.sum(w.retries),
            func.sum(w.records),
            func.sum(w.processing),
            *(func.sum(column) for column in (w.source_extract, w.stage_write, w.target_load)),
        )
        .where(w.begin >= low, w.begin < high)
        .group_by(bucket, w.status)
    )
    return [
        DayBucket(
            int(row[0]),
            str(row[1]),
            int(row[2]),
            int(row[3] or 0),
            int(row[4] or 0),
            int(row[5] or 0),
            float(row[6] or 0),
            (float(row[7] or 0), float(row[8] or 0), float(row[9] or 0)),
        )
        for row in conn.execute(stmt)
    ]


def _duration(started: Any, completed: Any, dialect: str) -> ColumnElement[Any]:
    """Seconds (with their fraction: steps often take less than one) between two
    stored instants; 0 where either is missing or they are the wrong way round."""
    between = backend_named(dialect).seconds_between
    if between is not None:
        seconds = between(started, completed)
    else:
        seconds = epoch_seconds(completed, dialect) - epoch_seconds(started, dialect)
    return case((and_(started.is_not(None), completed.is_not(None), seconds >= 0), seconds), else_=0)


def span_query(
    tables: StateTables,
    raw: Callable[[str], Any],
    pipeline: str,
    *,
    active_only: bool,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Select[Any]:
    """`(start, end)` of the pipeline's windows as stored (`raw` is the store's
    `raw_column`), sorted, optionally only active ones starting in `[start, end)`.
    With all statuses and no range, the window index alone answers it."""
    c = tables.state.c
    begin, finish = c.source_query_window_start_time, c.source_query_window_end_time
    stmt = select(raw(START_TIME), raw(END_TIME)).where(c.pipeline_name == pipeline)
    if active_only:
        stmt = stmt.where(c.pipeline_status != Status.SUPERSEDED.value, finish > begin)
    if start is not None:
        stmt = stmt.where(begin >= start)
    if end is not None:
        stmt = stmt.where(begin < end)
    return stmt.order_by(begin, finish)

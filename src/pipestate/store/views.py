"""Read-only views of one pipeline's rows for people and alerts: the windows of a
time range, and the few figures the metrics are made of. Every query here is
served by the state table's two indexes or reads a bounded number of rows."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from ..statuses import Status
from ..windows import read_stored_instant
from .schema import DURATION_MINUTES, END_TIME, START_TIME, StateTables

__all__ = ["WINDOW_COLUMNS", "alert_figures", "window_rows"]

# What `pipestate windows` shows of each window, in this order.
WINDOW_COLUMNS = (
    "batch_id",
    START_TIME,
    END_TIME,
    DURATION_MINUTES,
    "pipeline_status",
    "current_step",
    "retry_count",
    "worker_id",
    "lease_expires_at",
    "last_error",
    "last_error_step",
    "last_error_at",
    "record_origin",
    "source_record_count",
    "processing_seconds",
    "superseded_by",
    "supersede_reason",
)
_INSTANTS = {
    START_TIME,
    END_TIME,
    "lease_expires_at",
    "last_error_at",
}
_NOT_DONE = (Status.PENDING.value, Status.IN_PROGRESS.value, Status.FAILED.value)


def window_rows(
    conn: Connection,
    tables: StateTables,
    raw: Callable[[str], Any],
    pipeline: str,
    start: datetime,
    end: datetime,
    statuses: Sequence[str] = (),
    limit: int = 1000,
) -> tuple[list[dict[str, Any]], int]:
    """The windows starting in `[start, end)`, oldest first, at most `limit` of them,
    and how many there are in all. `raw` is the store's `raw_column`: instants are
    read as stored and parsed here, so one Python cannot hold shows as None."""
    c = tables.state.c
    where = [
        c.pipeline_name == pipeline,
        c.source_query_window_start_time >= start,
        c.source_query_window_start_time < end,
    ]
    if statuses:
        where.append(c.pipeline_status.in_(list(statuses)))
    total = int(conn.execute(select(func.count()).where(*where)).scalar_one())
    columns = [raw(name) if name in _INSTANTS else c[name] for name in WINDOW_COLUMNS]
    stmt = (
        select(*columns)
        .where(*where)
        .order_by(c.source_query_window_start_time, c.source_query_window_end_time, c.batch_id)
        .limit(limit)
    )
    rows = [
        {
            name: read_stored_instant(value) if name in _INSTANTS else value
            for name, value in zip(WINDOW_COLUMNS, row, strict=True)
        }
        for row in conn.execute(stmt)
    ]
    return rows, total


def alert_figures(
    conn: Connection,
    tables: StateTables,
    raw: Callable[[str], Any],
    pipeline: str,
    now: datetime,
    max_retries: int,
) -> dict[str, Any]:
    """The figures `pipestate metrics` exports, each from one indexed query:

    counts by status; FAILED without retries left; IN_PROGRESS under an
    expired lease; the window start and end of the oldest PENDING window;
    and `complete_until`, the end of the last COMPLETED window before the first
    window that is not (all data before it is done), None if none is done."""
    c = tables.state.c
    mine = c.pipeline_name == pipeline
    counts = {
        str(status): int(count)
        for status, count in conn.execute(
            select(c.pipeline_status, func.count()).where(mine).group_by(c.pipeline_status)
        )
    }
    exhausted = conn.execute(
        select(func.count()).where(
            mine, c.pipeline_status == Status.FAILED.value, c.retry_count >= max_retries
        )
    ).scalar_one()
    stuck = conn.execute(
        select(func.count()).where(
            mine,
            c.pipeline_status == Status.IN_PROGRESS.value,
            or_(c.lease_expires_at.is_(None), c.lease_expires_at <= now),
        )
    ).scalar_one()
    start, end = c.source_query_window_start_time, c.source_query_window_end_time
    oldest = conn.execute(
        select(raw(START_TIME), raw(END_TIME))
        .where(mine, c.pipeline_status == Status.PENDING.value)
        .order_by(start)
        .limit(1)
    ).first()
    # The first window not done, by the status index (one probe per status).
    firsts = [
        read_stored_instant(
            conn.execute(
                select(raw(START_TIME))
                .where(mine, c.pipeline_status == status, end > start)
                .order_by(start)
                .limit(1)
            ).scalar()
        )
        for status in _NOT_DONE
    ]
    first_not_done = min((first for first in firsts if first is not None), default=None)
    done = and_(mine, c.pipeline_status == Status.COMPLETED.value, end > start)
    if first_not_done is not None:
        done = and_(done, start < first_not_done)
    last_done = conn.execute(select(raw(END_TIME)).where(done).order_by(start.desc()).limit(1)).scalar()
    return {
        "counts": counts,
        "failed_permanently": int(exhausted),
        "stuck_leases": int(stuck),
        "oldest_pending": None
        if oldest is None
        else {"start": read_stored_instant(oldest[0]), "end": read_stored_instant(oldest[1])},
        "first_not_done": first_not_done,
        "complete_until": read_stored_instant(last_done),
    }


def latest_populate(
    conn: Connection, tables: StateTables, raw: Callable[[str], Any], pipeline: str, limit: int = 200
) -> dict[str, Any] | None:
    """What the latest populate that wrote something decided, from the rows it
    wrote (`populate_run_id`): windows created per record_origin (count, first
    start, last end) and the windows it superseded with their reasons (at most
    `limit`). None when no populate has written a row."""
    c = tables.state.c
    mine = c.pipeline_name == pipeline
    newest = [
        conn.execute(
            select(c.populate_run_id, raw(column))
            .where(mine, c.populate_run_id.is_not(None), *extra)
            .order_by(c[column].desc())
            .limit(1)
        ).first()
        for column, extra in (
            ("created_at", ()),
            ("superseded_at", (c.pipeline_status == Status.SUPERSEDED.value,)),
        )
    ]
    runs = [(read_stored_instant(row[1]), row[0]) for row in newest if row is not None and row[1] is not None]
    if not runs:
        return None
    when, run_id = max(runs, key=lambda pair: (pair[0] is not None, pair[0]))
    of_run = and_(mine, c.populate_run_id == run_id)
    created = [
        {
            "record_origin": origin,
            "windows": int(count),
            "first_start": read_stored_instant(first),
            "last_end": read_stored_instant(last),
        }
        for origin, count, first, last in conn.execute(
            select(
                c.record_origin,
                func.count(),
                func.min(raw(START_TIME)),
                func.max(raw(END_TIME)),
            )
            .where(of_run, c.pipeline_status != Status.SUPERSEDED.value, c.superseded_at.is_(None))
            .group_by(c.record_origin)
        )
    ]
    superseded_where = and_(of_run, c.pipeline_status == Status.SUPERSEDED.value)
    superseded_total = int(conn.execute(select(func.count()).where(superseded_where)).scalar_one())
    superseded = [
        {
            "batch_id": row[0],
            "start": read_stored_instant(row[1]),
            "end": read_stored_instant(row[2]),
            "superseded_by": row[3],
            "reason": row[4],
        }
        for row in conn.execute(
            select(
                c.batch_id,
                raw(START_TIME),
                raw(END_TIME),
                c.superseded_by,
                c.supersede_reason,
            )
            .where(superseded_where)
            .order_by(c.source_query_window_start_time)
            .limit(limit)
        )
    ]
    return {
        "run_id": run_id,
        "at": when,
        "created": created,
        "superseded_total": superseded_total,
        "superseded": superseded,
    }


def day_windows(conn: Connection, tables: Any, raw: Any, pipeline: str, low: datetime, high: datetime) -> Any:
    """`(batch_id, raw start, raw end, status)` of the pipeline's active windows that share an
    instant with `[low, high)`, by start."""
    c = tables.state.c
    stmt = (
        select(c.batch_id, raw("source_query_window_start_time"), raw("source_query_window_end_time"))
        .add_columns(c.pipeline_status)
        .where(
            c.pipeline_name == pipeline,
            c.pipeline_status != Status.SUPERSEDED.value,
            c.source_query_window_start_time < high,
            c.source_query_window_end_time > low,
        )
        .order_by(c.source_query_window_start_time, c.batch_id)
    )
    return conn.execute(stmt)

"""The named reads of status, requeue, history and the claim fence: every statement here, none above.

Each takes the store and an open connection and returns rows; instants that
status shows are read raw (`StateStore.raw_column`), so a value another tool
wrote that Python cannot hold shows as null instead of failing the read.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Interval, String, and_, bindparam, func, or_, select, type_coerce
from sqlalchemy.engine import Connection

from ..statuses import Status
from .schema import START_TIME
from .store import StateStore
from .types import UTCDateTime

__all__ = [
    "claim_holder",
    "claims_of",
    "failed_for_good",
    "failures",
    "history",
    "in_progress",
    "lease_expiry",
    "now_expression",
    "oldest_pending",
    "regrid_candidates",
    "requeue_candidates",
    "requeued_count",
    "statuses_of",
]


def statuses_of(store: StateStore, conn: Connection, pipeline: str, batch_ids: list[str]) -> dict[str, str]:
    """The current status of each of these batches of the pipeline that exists."""
    c = store.tables.state.c
    found: dict[str, str] = {}
    for low in range(0, len(batch_ids), 500):
        stmt = select(c.batch_id, c.pipeline_status).where(
            c.pipeline_name == pipeline, c.batch_id.in_(batch_ids[low : low + 500])
        )
        found.update((str(batch_id), str(status)) for batch_id, status in conn.execute(stmt))
    return found


def claims_of(store: StateStore, conn: Connection, pipeline: str, batch_ids: Sequence[str]) -> dict[str, Any]:
    """(batch_id, status, lease_expires_at, claim_token) of these batches of the pipeline, by id."""
    c = store.tables.state.c
    stmt = select(c.batch_id, c.pipeline_status, c.lease_expires_at, c.claim_token).where(
        c.pipeline_name == pipeline, c.batch_id.in_(batch_ids)
    )
    return {row.batch_id: row for row in conn.execute(stmt)}


def oldest_pending(store: StateStore, conn: Connection, pipeline: str) -> Any:
    """(batch_id, start, created_at) of the earliest PENDING window, instants raw."""
    c, raw = store.tables.state.c, store.raw_column
    return conn.execute(
        select(c.batch_id, raw(START_TIME), raw("created_at"))
        .where(c.pipeline_name == pipeline, c.pipeline_status == Status.PENDING)
        .order_by(c[START_TIME])
        .limit(1)
    ).first()


def failures(store: StateStore, conn: Connection, pipeline: str, limit: int = 50) -> Sequence[Any]:
    """(batch_id, start, retry_count, last_error, last_error_at) of FAILED windows, oldest first."""
    c, raw = store.tables.state.c, store.raw_column
    return conn.execute(
        select(c.batch_id, raw(START_TIME), c.retry_count, c.last_error, raw("last_error_at"))
        .where(c.pipeline_name == pipeline, c.pipeline_status == Status.FAILED)
        .order_by(c[START_TIME])
        .limit(limit)
    ).all()


def in_progress(store: StateStore, conn: Connection, pipeline: str) -> Sequence[Any]:
    """The claims of IN_PROGRESS batches, oldest claim first, instants raw."""
    c, raw = store.tables.state.c, store.raw_column
    return conn.execute(
        select(
            c.batch_id,
            c.worker_id,
            raw("claimed_at"),
            raw("lease_expires_at"),
            raw("heartbeat_at"),
            c.current_step,
        )
        .where(c.pipeline_name == pipeline, c.pipeline_status == Status.IN_PROGRESS)
        .order_by(c.claimed_at)
    ).all()


def failed_for_good(
    store: StateStore, conn: Connection, pipeline: str, max_retries: int, limit: int = 100
) -> Sequence[Any]:
    """FAILED batches no claim takes again: out of retries, or failed by an error no retry can fix."""
    c, raw = store.tables.state.c, store.raw_column
    return conn.execute(
        select(c.batch_id, c.retry_count, c.last_error, raw("last_error_at"))
        .where(
            c.pipeline_name == pipeline,
            and_(
                c.pipeline_status == Status.FAILED,
                or_(func.coalesce(c.retry_count, 0) >= max_retries, c.last_error_kind == "terminal"),
            ),
        )
        .order_by(c[START_TIME])
        .limit(limit)
    ).all()


def requeue_candidates(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_ids: Sequence[str] | None,
    statuses: Sequence[str],
    start: datetime | None,
    end: datetime | None,
) -> Sequence[Any]:
    """(batch_id, status, lease_expires_at, claim_token) of the non-SUPERSEDED rows
    `requeue` would take: those ids, or else those statuses within [start, end)."""
    c = store.tables.state.c
    stmt = select(c.batch_id, c.pipeline_status, c.lease_expires_at, c.claim_token).where(
        c.pipeline_name == pipeline, c.pipeline_status != Status.SUPERSEDED
    )
    if batch_ids:
        stmt = stmt.where(c.batch_id.in_(batch_ids))
    else:
        stmt = stmt.where(c.pipeline_status.in_(statuses))
        if start is not None:
            stmt = stmt.where(c[START_TIME] >= start)
        if end is not None:
            stmt = stmt.where(c.source_query_window_end_time <= end)
    return conn.execute(stmt.order_by(c[START_TIME])).all()


def regrid_candidates(
    store: StateStore, conn: Connection, pipeline: str, start: datetime, end: datetime | None
) -> Sequence[Any]:
    """(batch_id, start, end, status, updated_at, loaded) of the active windows sharing an
    instant with [start, end), instants raw, by start; `loaded` is set when the window's
    data reached the target once (a load or a completion recorded)."""
    c = store.tables.state.c
    raw = store.raw_column
    stmt = select(
        c.batch_id,
        raw(START_TIME),
        raw("source_query_window_end_time"),
        c.pipeline_status,
        raw("updated_at"),
        raw("target_load_completed_at"),
        raw("completed_at"),
    ).where(
        c.pipeline_name == pipeline,
        c.pipeline_status != Status.SUPERSEDED,
        c.source_query_window_end_time > c[START_TIME],
        c.source_query_window_end_time > start,
    )
    if end is not None:
        stmt = stmt.where(c[START_TIME] < end)
    return conn.execute(stmt.order_by(c[START_TIME], c.source_query_window_end_time)).all()


def requeued_count(store: StateStore) -> Any:
    """The value of `requeue_count` after one more requeue (NULL counts as 0)."""
    return func.coalesce(store.tables.state.c.requeue_count, 0) + 1


def history(store: StateStore, conn: Connection, pipeline: str, batch_id: str) -> Sequence[Any]:
    """The batch's audit events, in the order they were written."""
    events = store.tables.events
    return conn.execute(
        select(events)
        .where(events.c.batch_id == batch_id, events.c.pipeline_name == pipeline)
        .order_by(events.c.event_id)
    ).all()


def claim_holder(store: StateStore, conn: Connection, pipeline: str, batch_id: str) -> tuple[str, str] | None:
    """(status, worker_id) of the batch, or None if the pipeline has no such batch."""
    c = store.tables.state.c
    row = conn.execute(
        select(c.pipeline_status, c.worker_id).where(c.batch_id == batch_id, c.pipeline_name == pipeline)
    ).first()
    return None if row is None else (row[0], row[1])


def now_expression(fixed_now: datetime | None) -> Any:
    """Now as a SQL expression: an injected clock's value, else the database's
    statement_timestamp() (PostgreSQL; one value for the whole statement)."""
    if fixed_now is not None:
        return bindparam("now", fixed_now, UTCDateTime())
    return func.statement_timestamp(type_=UTCDateTime())


def lease_expiry(now: Any, lease: timedelta) -> Any:
    """`now + lease` as a SQL expression."""
    return now + bindparam("lease", lease, Interval())


def status_counts(store: StateStore, conn: Connection, pipeline: str) -> dict[str, int]:
    """The pipeline's rows by status (statuses read through the status map)."""
    state = store.tables.state
    stmt = (
        select(state.c.pipeline_status, func.count())
        .where(state.c.pipeline_name == pipeline)
        .group_by(type_coerce(state.c.pipeline_status, String()))
    )
    counts: dict[str, int] = {}
    for status, count in conn.execute(stmt):
        # Two statuses another tool wrote may mean the same one: add them up.
        counts[str(status)] = counts.get(str(status), 0) + int(count)
    return counts

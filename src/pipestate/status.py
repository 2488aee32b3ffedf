"""Where a pipeline stands: counts by status, coverage of the range, oldest pending,
failures, and the leases (in flight, expired, failed for good)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import and_, func, or_, select

from .context import Context
from .statuses import STATUS_ORDER, Status
from .windows import iso, read_stored_instant

__all__ = ["counts", "leases", "status", "statuses"]


def counts(ctx: Context) -> dict[str, int]:
    """Rows of the pipeline by status (cheap: one grouped count)."""
    with ctx.store.transaction(write=False) as conn:
        return ctx.store.status_counts(conn, ctx.pipeline)


def statuses(ctx: Context, batch_ids: Iterable[str]) -> dict[str, str]:
    """The current status of each of these batches of the pipeline that exists."""
    state = ctx.store.tables.state
    ids = list(batch_ids)
    found: dict[str, str] = {}
    with ctx.store.transaction(write=False) as conn:
        for low in range(0, len(ids), 500):
            stmt = select(state.c.batch_id, state.c.pipeline_status).where(
                state.c.pipeline_name == ctx.pipeline, state.c.batch_id.in_(ids[low : low + 500])
            )
            found.update((str(batch_id), str(status)) for batch_id, status in conn.execute(stmt))
    return found


def status(ctx: Context) -> dict[str, Any]:
    """Counts by status, coverage of the range, first/last window, oldest pending, failures."""
    ctx.store.check_ready()
    state = ctx.store.tables.state
    with ctx.store.transaction(write=False) as conn:
        now = ctx.now(conn)
        settings = ctx.plan_settings(now)
        counts = ctx.store.status_counts(conn, ctx.pipeline)
        covered, first, last, active = _coverage(
            ctx.store.iter_candidates(conn, ctx.pipeline), settings.start, settings.covered_stop
        )
        # Instants read raw and parsed here: a value another tool wrote that
        # Python cannot hold shows as null instead of failing status.
        raw = ctx.store.raw_column
        oldest_pending = conn.execute(
            select(state.c.batch_id, raw("source_query_window_start_time"), raw("created_at"))
            .where(state.c.pipeline_name == ctx.pipeline, state.c.pipeline_status == Status.PENDING)
            .order_by(state.c.source_query_window_start_time)
            .limit(1)
        ).first()
        failures = conn.execute(
            select(
                state.c.batch_id,
                raw("source_query_window_start_time"),
                state.c.retry_count,
                state.c.last_error,
                raw("last_error_at"),
            )
            .where(state.c.pipeline_name == ctx.pipeline, state.c.pipeline_status == Status.FAILED)
            .order_by(state.c.source_query_window_start_time)
            .limit(50)
        ).all()
        lease_view = leases(ctx, conn, now)
    total = max((settings.covered_stop - settings.start).total_seconds(), 0.0)
    return {
        "pipeline": ctx.pipeline,
        "now": iso(now),
        "range": {"start": iso(settings.start), "end": iso(settings.covered_stop)},
        "counts": {status.value: int(counts.get(status, 0)) for status in STATUS_ORDER}
        | {str(k): int(v) for k, v in counts.items() if k not in STATUS_ORDER},
        "total_rows": int(sum(counts.values())),
        "active_windows": active,
        "coverage": {
            "covered_minutes": round(covered / 60, 3),
            "range_minutes": round(total / 60, 3),
            "percent": round(100 * covered / total, 3) if total else 100.0,
        },
        "first_window_start": iso(first),
        "last_window_end": iso(last),
        "oldest_pending": None
        if oldest_pending is None
        else {
            "batch_id": oldest_pending[0],
            "start": iso(read_stored_instant(oldest_pending[1])),
            "created_at": iso(read_stored_instant(oldest_pending[2])),
        },
        "failures": [
            {
                "batch_id": row[0],
                "start": iso(read_stored_instant(row[1])),
                "retry_count": row[2],
                "last_error": row[3],
                "last_error_at": iso(read_stored_instant(row[4])),
            }
            for row in failures
        ],
        **lease_view,
    }


def leases(ctx: Context, conn: Any, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """For status: batches in flight, stuck under expired leases, and failed for good."""
    c = ctx.store.tables.state.c
    raw = ctx.store.raw_column  # instants parsed here: unreadable ones show as null
    max_retries = ctx.concurrency.max_retries
    in_progress = conn.execute(
        select(
            c.batch_id,
            c.worker_id,
            raw("claimed_at"),
            raw("lease_expires_at"),
            raw("heartbeat_at"),
            c.current_step,
        )
        .where(c.pipeline_name == ctx.pipeline, c.pipeline_status == Status.IN_PROGRESS)
        .order_by(c.claimed_at)
    ).all()
    in_flight: list[dict[str, Any]] = []
    expired: list[dict[str, Any]] = []
    for row in in_progress:
        claimed, expires = read_stored_instant(row.claimed_at), read_stored_instant(row.lease_expires_at)
        entry = {
            "batch_id": row.batch_id,
            "worker_id": row.worker_id,
            "lease_age_seconds": round((now - claimed).total_seconds(), 3) if claimed else None,
            "lease_expires_at": iso(expires),
            "last_heartbeat": iso(read_stored_instant(row.heartbeat_at)),
            "current_step": row.current_step,
        }
        live = expires is not None and expires > now
        (in_flight if live else expired).append(entry)
    permanent = conn.execute(
        select(c.batch_id, c.retry_count, c.last_error, raw("last_error_at"))
        .where(
            c.pipeline_name == ctx.pipeline,
            and_(
                c.pipeline_status == Status.FAILED,
                or_(func.coalesce(c.retry_count, 0) >= max_retries, c.last_error_kind == "terminal"),
            ),
        )
        .order_by(c.source_query_window_start_time)
        .limit(100)
    ).all()
    return {
        "in_flight": in_flight,
        "expired_leases": expired,
        "failed_permanently": [
            {
                "batch_id": row.batch_id,
                "retry_count": row.retry_count,
                "last_error": row.last_error,
                "last_error_at": iso(read_stored_instant(row.last_error_at)),
            }
            for row in permanent
        ],
    }


def _coverage(
    rows: Iterable[tuple[Any, ...]] | Iterator[tuple[Any, ...]], low: datetime, high: datetime
) -> tuple[float, datetime | None, datetime | None, int]:
    """Seconds of [low, high) covered by the rows' windows, plus first start, last end, count."""
    covered = 0.0
    cursor = low
    first = last = None
    count = 0
    for row in rows:
        start, end = row[1], row[2]
        if start is None or end is None or end <= start:
            continue
        count += 1
        first = start if first is None or start < first else first
        last = end if last is None or end > last else last
        start, end = max(start, cursor), min(end, high)
        if end > start:
            covered += (end - start).total_seconds()
            cursor = end
    return covered, first, last, count

"""Where a pipeline stands: counts by status, coverage of the range, oldest pending,
failures, and the leases (in flight, expired, failed for good)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..plans import GAP_KINDS, contract_gaps
from ..statuses import STATUS_ORDER
from ..store import queries, spans
from ..windows import iso, read_stored_instant
from .context import Context

__all__ = ["counts", "leases", "status", "statuses"]


def counts(ctx: Context) -> dict[str, int]:
    """Rows of the pipeline by status (cheap: one grouped count)."""
    with ctx.store.transaction(write=False) as conn:
        return queries.status_counts(ctx.store, conn, ctx.pipeline)


def statuses(ctx: Context, batch_ids: Iterable[str]) -> dict[str, str]:
    """The current status of each of these batches of the pipeline that exists."""
    with ctx.store.transaction(write=False) as conn:
        return queries.statuses_of(ctx.store, conn, ctx.pipeline, list(batch_ids))


def status(ctx: Context, conn: Connection | None = None, swept: spans.Sweep | None = None) -> dict[str, Any]:
    """Counts by status, coverage of the range, first/last window, oldest pending, failures.

    `swept`: the windows' sweep if the caller has made it in `conn` (the
    calendar shares it: one pass over the windows, not two)."""
    store = ctx.store
    store.check_ready()
    if conn is None:
        with store.transaction(write=False) as conn:
            return status(ctx, conn, swept)
    now = ctx.now(conn)
    settings = ctx.plan_settings(now)
    counts = queries.status_counts(store, conn, ctx.pipeline)
    if swept is None:
        swept = spans.sweep(store, conn, ctx.pipeline)
    oldest_pending = queries.oldest_pending(store, conn, ctx.pipeline)
    failures = queries.failures(store, conn, ctx.pipeline)
    lease_view = leases(ctx, conn, now)
    total = max((settings.covered_stop - settings.start).total_seconds(), 0.0)
    covered = swept.covered_seconds(settings.start, settings.covered_stop)
    gaps = contract_gaps(swept.gaps(), settings)
    gap_seconds = sum((gap.end - gap.start).total_seconds() for gap in gaps)
    return {
        "pipeline": ctx.pipeline,
        "now": iso(now),
        "range": {"start": iso(settings.start), "end": iso(settings.covered_stop)},
        "counts": {status.value: int(counts.get(status, 0)) for status in STATUS_ORDER}
        | {str(k): int(v) for k, v in counts.items() if k not in STATUS_ORDER},
        "total_rows": int(sum(counts.values())),
        "active_windows": swept.windows,
        "coverage": {
            "covered_minutes": round(covered / 60, 3),
            "range_minutes": round(total / 60, 3),
            "percent": round(100 * covered / total, 3) if total else 100.0,
            # the contract's gaps (populate's), and time past the windows' ends: new work
            "gap_minutes": round(gap_seconds / 60, 3),
            "new_work_minutes": round(max(total - covered - gap_seconds, 0.0) / 60, 3),
        },
        "gaps": {kind: sum(1 for g in gaps if g.kind == kind) for kind in GAP_KINDS},
        "overlaps": len(swept.overlaps()),
        "first_window_start": iso(swept.first_start),
        "last_window_end": iso(swept.last_end),
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
                "retry_count": row[2] or 0,  # NULL (a row another tool wrote): no retry yet
                "last_error": row[3],
                "last_error_at": iso(read_stored_instant(row[4])),
            }
            for row in failures
        ],
        **lease_view,
    }


def leases(ctx: Context, conn: Any, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """For status: batches in flight, stuck under expired leases, and failed for good."""
    in_progress = queries.in_progress(ctx.store, conn, ctx.pipeline)
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
    permanent = queries.failed_for_good(ctx.store, conn, ctx.pipeline, ctx.concurrency.max_retries)
    return {
        "in_flight": in_flight,
        "expired_leases": expired,
        "failed_permanently": [
            {
                "batch_id": row.batch_id,
                "retry_count": row.retry_count or 0,
                "last_error": row.last_error,
                "last_error_at": iso(read_stored_instant(row.last_error_at)),
            }
            for row in permanent
        ],
    }

"""What an operator does with batches outside a worker: requeue them, read a
batch's audit trail. The workers' own calls are in claims.py, `status` in status.py.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from ..errors import UsageError
from ..statuses import Status, Step
from ..store import queries
from ..store.claims import guarded_update
from ..store.events import insert_events
from ..store.populate_sql import RowChanged
from ..windows import iso
from .context import Context, aware

__all__ = ["history", "quarantine", "requeue", "REQUEUE_STEPS"]

# The step a requeued batch starts from, and the step columns that makes unfinished again.
REQUEUE_STEPS: dict[str, tuple[str, ...]] = {
    Step.SOURCE: ("source_extract_status", "stage_write_status", "target_load_status"),
    Step.TARGET: ("target_load_status",),
}


def requeue(
    ctx: Context,
    batch_ids: list[str] | None = None,
    *,
    start: datetime | None = None,
    end: datetime | None = None,
    statuses: tuple[str, ...] = (Status.FAILED,),
    force: bool = False,
    by: str | None = None,
    from_step: str = Step.SOURCE,
) -> list[str]:
    """Make batches PENDING again with a fresh retry budget; returns their ids.

    Select by id, or by window within [start, end), among `statuses` (FAILED by
    default; COMPLETED to reprocess). A batch under a live claim is refused
    unless `force` (its holder then gets LeaseLost on its next call).
    `from_step` "source" (default) makes the next run read the source again, so
    late data reaches the target; "target" reloads the staged files as they are.
    """
    allowed = {Status.FAILED, Status.COMPLETED, Status.PENDING, Status.IN_PROGRESS}
    if bad := [s for s in statuses if s not in allowed]:
        raise UsageError(f"statuses: cannot requeue {', '.join(bad)} batches")
    if from_step not in REQUEUE_STEPS:
        raise UsageError(f"from_step: must be one of {', '.join(REQUEUE_STEPS)}, got {from_step!r}")
    start, end = aware(start, "start"), aware(end, "end")
    store = ctx.store
    who = by or ctx.actor
    with store.transaction(write=True) as conn:
        now = ctx.now(conn)
        rows = queries.requeue_candidates(store, conn, ctx.pipeline, batch_ids, statuses, start, end)
        if batch_ids:
            missing = set(batch_ids) - {row[0] for row in rows}
            if missing:
                known = queries.statuses_of(store, conn, ctx.pipeline, sorted(missing))
                if superseded := sorted(b for b, status in known.items() if status == Status.SUPERSEDED):
                    raise UsageError(
                        f"batch {', '.join(superseded)} is SUPERSEDED: another window covers its time "
                        "now (`pipestate history` names it); requeue that one instead"
                    )
                raise UsageError(f"no such batch in pipeline {ctx.pipeline}: {', '.join(sorted(missing))}")
        done: list[str] = []
        events = []
        for batch_id, status, lease, token in rows:
            live = status == Status.IN_PROGRESS and lease is not None and lease > now
            if live and not force:
                raise UsageError(
                    f"batch {batch_id} is IN_PROGRESS under a live lease; use --force to requeue"
                )
            changed = guarded_update(
                store,
                conn,
                ctx.pipeline,
                batch_id,
                status,
                token,
                {
                    "pipeline_status": Status.PENDING,
                    "retry_count": 0,
                    "next_attempt_at": None,
                    "last_error_kind": None,
                    "lease_expires_at": None,
                    "claim_token": None,
                    "requeue_count": queries.requeued_count(store),
                    "last_requeued_at": now,
                    "updated_at": now,
                    "updated_by": who,
                    **dict.fromkeys(REQUEUE_STEPS[from_step], Status.PENDING.value),
                },
            )
            if not changed:
                raise _changed_meanwhile(batch_id, "requeue")
            events.append(
                ctx.event(
                    batch_id,
                    "REQUEUED",
                    now,
                    status,
                    Status.PENDING,
                    {"from_step": from_step},
                    worker_id=who,
                    claim_token=token,
                )
            )
            done.append(batch_id)
        insert_events(store, conn, events)
    return done


def quarantine(
    ctx: Context,
    batch_ids: list[str],
    reason: str,
    *,
    force: bool = False,
    by: str | None = None,
) -> list[dict[str, Any]]:
    """Take rows out of the active set the documented way: SUPERSEDED, by nobody, with the reason.

    For an invalid row (no times, end before start, an unknown status) or one
    that should not be processed. It stays in the table (rows are never
    deleted); populate then treats its time as uncovered. Each gets a
    QUARANTINED event. A batch under a live claim is refused unless `force`.
    Returns `{"batch_id", "previous_status"}` per row, in the order given.
    """
    if not batch_ids:
        raise UsageError("batch_ids: name at least one batch")
    if not reason.strip():
        raise UsageError("reason: say why the rows are quarantined")
    store = ctx.store
    who = by or ctx.actor
    with store.transaction(write=True) as conn:
        now = ctx.now(conn)
        rows = queries.claims_of(store, conn, ctx.pipeline, batch_ids)
        if missing := [batch_id for batch_id in batch_ids if batch_id not in rows]:
            raise UsageError(f"no such batch in pipeline {ctx.pipeline}: {', '.join(missing)}")
        done, events = [], []
        for batch_id in dict.fromkeys(batch_ids):
            row = rows[batch_id]
            if row.pipeline_status == Status.SUPERSEDED:
                raise UsageError(f"batch {batch_id} is already SUPERSEDED (not active); nothing changed")
            lease = row.lease_expires_at
            live = row.pipeline_status == Status.IN_PROGRESS and lease is not None and lease > now
            if live and not force:
                raise UsageError(
                    f"batch {batch_id} is IN_PROGRESS under a live lease; use --force to quarantine it"
                )
            changed = guarded_update(
                store,
                conn,
                ctx.pipeline,
                batch_id,
                row.pipeline_status,
                row.claim_token,
                {
                    "pipeline_status": Status.SUPERSEDED,
                    "superseded_by": None,
                    "superseded_at": now,
                    "supersede_reason": f"quarantined: {reason}"[:4000],
                    "lease_expires_at": None,
                    "claim_token": None,
                    "updated_at": now,
                    "updated_by": who,
                },
            )
            if not changed:
                raise _changed_meanwhile(batch_id, "quarantine")
            events.append(
                ctx.event(
                    batch_id,
                    "QUARANTINED",
                    now,
                    row.pipeline_status,
                    Status.SUPERSEDED,
                    {"reason": reason},
                    worker_id=who,
                    claim_token=row.claim_token,
                )
            )
            done.append({"batch_id": batch_id, "previous_status": row.pipeline_status})
        insert_events(store, conn, events)
    return done


def _changed_meanwhile(batch_id: str, verb: str) -> RowChanged:
    # A worker claimed or finished the row between our read and our guarded write
    # (possible where the read takes no row lock): nothing is written, the caller retries.
    return RowChanged(f"batch {batch_id} changed while {verb} ran; nothing changed, try again")


def history(ctx: Context, batch_id: str) -> list[dict[str, Any]]:
    """The batch's audit events, oldest first. UsageError when the table has no audit
    table yet (another tool's table before init-db): nothing to read, nothing to retry."""
    store = ctx.store
    if store.exists() and not store.is_set_up():
        raise UsageError(
            f"no audit trail: table {store.tables.events.name} does not exist yet; "
            "'pipestate init-db' creates it, and history is recorded from then on"
        )
    with ctx.store.transaction(write=False) as conn:
        rows = queries.history(ctx.store, conn, ctx.pipeline, batch_id)
    return [
        {
            "event_id": row.event_id,
            "event_type": row.event_type,
            "event_time": iso(row.event_time),
            "worker_id": row.worker_id,
            "claim_token": row.claim_token,
            "old_status": row.old_status,
            "new_status": row.new_status,
            "details": row.details,
        }
        for row in rows
    ]

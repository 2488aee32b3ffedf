"""Worker operations on one batch: claim, heartbeat, record a step, complete, fail, release.

Each is one short write transaction and appends its audit event in the same
transaction. heartbeat, complete, fail and release are fenced: they change the
row only while the caller's claim is the batch's current one, and raise
LeaseLost (exit 4) otherwise, having changed nothing. Each takes the
pipeline's Context first; PipelineStateManager's methods of the same names
call these.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ..config import MAX_CLAIM_BATCH
from ..errors import LeaseLost, SchemaError, UsageError
from ..statuses import Status, Step
from ..store import locks, pg_claims, queries, stamp_claims
from ..store.claims import (
    backoff_delay,
    can_fence_in_update,
    count_in_flight,
    current_claim,
    fenced_update,
    fenced_update_many,
    find_candidate,
    guarded_update,
)
from ..store.events import insert_events
from ..store.schema import COLUMNS, START_TIME
from ..windows import iso
from .batch import Batch
from .context import Context, aware

__all__ = [
    "claim",
    "claim_many",
    "complete",
    "complete_many",
    "fail",
    "heartbeat",
    "record_step",
    "record_steps",
    "release",
]


# What a worker may write beside its claim (record_step, and the values of
# complete and fail): the columns of the three steps, and its own notes. Never
# the status, the lease or the window: those change only through the claim protocol.
STEP_VALUE_COLUMNS = frozenset(
    name for group, name, *_ in COLUMNS if group in (Step.SOURCE, Step.STAGE, Step.TARGET)
) | {"source_type", "stage_type", "target_type", "batch_metadata"}


MAX_WORKER_ID = 255


def _check_values(values: dict[str, Any] | None) -> None:
    others = sorted(set(values or ()) - STEP_VALUE_COLUMNS)
    if others:
        raise UsageError(
            f"{', '.join(others)}: not a step column; a worker writes only the source, stage "
            "and target columns (and batch_metadata)"
        )


def _claim_event(
    ctx: Context,
    batch_id: str,
    kind: str,
    now: datetime,
    old: str | None,
    new: str | None,
    worker: str | None,
    token: str | None,
    details: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return ctx.event(batch_id, kind, now, old, new, details, worker_id=worker, claim_token=token)


def claim(ctx: Context, worker: str, within: tuple[datetime, datetime] | None = None) -> Batch | None:
    """Take the next claimable batch, or None (nothing claimable, or max_in_flight reached).

    `within` (UTC `[low, high)`) takes only a window that starts in it.
    """
    taken = claim_many(ctx, worker, 1, within)
    return taken[0] if taken else None


def claim_many(
    ctx: Context, worker: str, count: int | None = None, within: tuple[datetime, datetime] | None = None
) -> list[Batch]:
    """Take up to `count` claimable batches (default `[concurrency] claim_batch`), in
    claim order; an empty list when none is claimable or max_in_flight is reached.

    Each batch has its own row, lease, fencing token and heartbeat, and each counts
    against max_in_flight. `within` (UTC `[low, high)`) takes only windows that start in it.
    """
    _check_worker(worker)
    within = _check_within(within)
    wanted = ctx.concurrency.claim_batch if count is None else count
    if not 1 <= wanted <= MAX_CLAIM_BATCH:
        raise UsageError(f"count: 1 to {MAX_CLAIM_BATCH}, got {wanted}")
    store, settings = ctx.store, ctx.concurrency
    if store.backend.stamp_claims:
        return _claim_by_stamp(ctx, worker, wanted, within)
    # PostgreSQL locks the rows it claims; SQLite and DuckDB serialize writers
    # anyway. Elsewhere, and for a max_in_flight count that must not race,
    # claims queue on the pipeline's lock row.
    pipeline_lock = store.backend.claims_need_pipeline_lock(settings.max_in_flight)
    if pipeline_lock:
        locks.ensure_lock_row(store, ctx.pipeline)
    # The one-statement PostgreSQL claim takes any window and reads statuses in its own
    # SQL; a range or a [state] status_map goes the general way.
    if (
        store.backend.one_statement_claims
        and not pipeline_lock
        and within is None
        and not store.status_aliases
    ):
        fast = _claim_in_one_statement(ctx, worker, settings.lease, wanted)
        if fast:
            return fast
        # Nothing the fast path may take: the general path below also retires
        # expired leases that have run out of retries.
    with store.transaction(write=True) as conn:
        now = ctx.now(conn)
        if pipeline_lock:
            locks.lock_pipeline(store, conn, ctx.pipeline, holder=f"claim {worker}")
        room = _room(ctx, conn, now, wanted)
        taken: list[Batch] = []
        events: list[dict[str, Any]] = []
        while len(taken) < room:
            newest_first = settings.claim_order == "newest_first"
            row = find_candidate(store, conn, ctx.pipeline, now, settings.max_retries, newest_first, within)
            if row is None:
                break
            expired = row["pipeline_status"] == Status.IN_PROGRESS
            if expired and _retire_if_spent(ctx, conn, row, now, worker, events):
                continue
            batch = _stamp(ctx, conn, row, now, worker, events)
            if batch is not None:
                taken.append(batch)
        # Only writes that changed their row are logged, in the same transaction.
        if events:
            insert_events(store, conn, events)
        return taken


def _claim_by_stamp(
    ctx: Context, worker: str, wanted: int, within: tuple[datetime, datetime] | None
) -> list[Batch]:
    """Snowflake: read (no lock), take over expired leases one by one (rare), stamp
    the rest in ONE autocommitted UPDATE, read back by token; see store/stamp_claims."""
    store, settings = ctx.store, ctx.concurrency
    newest_first = settings.claim_order == "newest_first"
    token = uuid.uuid4().hex
    events: list[dict[str, Any]] = []
    _refuse_a_mixed_fleet(ctx)
    with store.autocommit() as conn:
        now = stamp_claims.now_sql(conn, ctx.fixed_now())
        found = stamp_claims.candidates(
            store, conn, ctx.pipeline, now, wanted, settings.max_retries, newest_first, within
        )
        if not found:
            return []  # an idle poll: one read, no lock
        before = {row["batch_id"]: row["pipeline_status"] for row in found}
        expired: dict[str, dict[str, Any]] = {}
        for row in found:
            if row["pipeline_status"] != Status.IN_PROGRESS:
                continue
            outcome = stamp_claims.take_over(
                store, conn, ctx.pipeline, row, worker, token, now, settings.lease, settings.max_retries
            )
            if outcome == "claimed":
                expired[row["batch_id"]] = row
            elif outcome == "retired":  # rare: one clock read for its event
                retries = int(row["retry_count"] or 0) + 1
                events.append(_lease_expired(ctx, row, ctx.now(conn), Status.FAILED, retries))
        rest = wanted - len(expired)
        if rest > 0 and len(found) > len(expired):
            stamp_claims.stamp(
                store,
                conn,
                ctx.pipeline,
                worker,
                token,
                now,
                settings.lease,
                rest,
                settings.max_retries,
                newest_first,
                within,
                settings.max_in_flight,
            )
        rows = stamp_claims.held(store, conn, ctx.pipeline, worker, token)
        rows.sort(key=lambda row: (row[START_TIME], row["batch_id"]), reverse=newest_first)
        for row in rows:
            claimed_at = row["claimed_at"]
            old = expired.get(row["batch_id"])
            was = before.get(row["batch_id"]) or (Status.FAILED if row["last_error_at"] else Status.PENDING)
            if old is not None:
                events.append(
                    _lease_expired(ctx, old, claimed_at, Status.IN_PROGRESS, int(row["retry_count"]))
                )
            events.append(
                _claim_event(
                    ctx,
                    row["batch_id"],
                    "CLAIMED",
                    claimed_at,
                    was,
                    Status.IN_PROGRESS,
                    worker,
                    row["claim_token"],
                    {
                        "attempt": int(row["attempt_count"]),
                        "retry_count": int(row["retry_count"]),
                        "lease_expires_at": iso(row["lease_expires_at"]),
                    },
                )
            )
        # Written after the stamp: only for rows this claim holds (or retired).
        if events:
            stamp_claims.log(store, conn, events)
    return [Batch.from_row(ctx.pipeline, row) for row in rows]


# The stores whose fleet was checked for claimers of the older protocol.
_PROTOCOL_CHECKED: weakref.WeakSet[Any] = weakref.WeakSet()


def _refuse_a_mixed_fleet(ctx: Context) -> None:
    """Once per store: an earlier pipestate that claims under the pipeline lock row
    (within the last lease) would not be kept apart from these lock-free claims."""
    store = ctx.store
    if store in _PROTOCOL_CHECKED:
        return
    with store.autocommit() as conn:
        now = ctx.now(conn)
        seen = stamp_claims.older_claimers(store, conn, ctx.pipeline, now, ctx.concurrency.lease)
    if seen is not None:
        raise SchemaError(
            f"pipeline {ctx.pipeline}: an older pipestate claimed from {store.tables.state.name} "
            f"with the pipeline lock at {iso(seen)}; stop or upgrade every worker of the "
            f"pipeline first (claim protocol {stamp_claims.CLAIM_PROTOCOL} does not mix with 1)"
        )
    _PROTOCOL_CHECKED.add(store)


def _check_worker(worker: str) -> None:
    if not isinstance(worker, str):
        raise UsageError(f"worker: must be text, got {type(worker).__name__} {worker!r:.60}")
    if not worker:
        raise UsageError("worker: a worker id is required")
    if len(worker) > MAX_WORKER_ID:  # worker_id is String(255): refused before anything is written
        raise UsageError(f"worker: at most {MAX_WORKER_ID} characters, got {len(worker)}")


def _check_within(within: Any) -> tuple[datetime, datetime] | None:
    """`within` as a pair of aware instants; UsageError naming it otherwise."""
    if within is None:
        return None
    if not isinstance(within, tuple | list) or len(within) != 2:
        raise UsageError("within: must be a (low, high) pair of aware datetimes")
    low, high = aware(within[0], "within"), aware(within[1], "within")
    assert low is not None and high is not None
    return (low, high)


def _room(ctx: Context, conn: Any, now: datetime, wanted: int) -> int:
    """How many windows this claim may take: `wanted`, less what max_in_flight leaves."""
    limit = ctx.concurrency.max_in_flight
    if not limit:
        return wanted
    return max(0, min(wanted, limit - count_in_flight(ctx.store, conn, ctx.pipeline, now)))


def _retire_if_spent(
    ctx: Context, conn: Any, row: dict[str, Any], now: datetime, worker: str, events: list[dict[str, Any]]
) -> bool:
    """An expired lease is a failed attempt of its holder: True when that was its
    last retry and the row is now FAILED for good (or was changed meanwhile), so
    the caller looks for another window."""
    retries = int(row["retry_count"] or 0) + 1
    if retries < ctx.concurrency.max_retries:
        return False
    changed = guarded_update(
        ctx.store,
        conn,
        ctx.pipeline,
        row["batch_id"],
        Status.IN_PROGRESS,
        row["claim_token"],
        {
            "pipeline_status": Status.FAILED,
            "retry_count": retries,
            "last_error": "lease expired (worker stopped heartbeating)",
            "last_error_step": row["current_step"],
            "last_error_at": now,
            "lease_expires_at": None,
            "updated_at": now,
            "updated_by": worker,
        },
    )
    if changed:
        events.append(_lease_expired(ctx, row, now, Status.FAILED, retries))
    return True


def _lease_expired(
    ctx: Context, row: dict[str, Any], now: datetime, new: str, retries: int
) -> dict[str, Any]:
    return _claim_event(
        ctx,
        row["batch_id"],
        "LEASE_EXPIRED",
        now,
        Status.IN_PROGRESS,
        new,
        row["worker_id"],
        row["claim_token"],
        {"retry_count": retries, "lease_expired_at": iso(row["lease_expires_at"])},
    )


def _stamp(
    ctx: Context, conn: Any, row: dict[str, Any], now: datetime, worker: str, events: list[dict[str, Any]]
) -> Batch | None:
    """Stamp the candidate IN_PROGRESS with a fresh token and lease; None when it
    changed since it was read (possible only without row locks)."""
    status, retries = row["pipeline_status"], int(row["retry_count"] or 0)
    expired = status == Status.IN_PROGRESS
    if expired:
        retries += 1
    token = uuid.uuid4().hex
    expires = now + ctx.concurrency.lease
    attempts = int(row["attempt_count"] or 0) + 1
    values = {
        "pipeline_status": Status.IN_PROGRESS,
        "worker_id": worker,
        "claim_token": token,
        "claimed_at": now,
        "lease_expires_at": expires,
        "heartbeat_at": now,
        "retry_count": retries,
        "attempt_count": attempts,
        "first_started_at": row["first_started_at"] or now,
        "next_attempt_at": None,
        "updated_at": now,
        "updated_by": worker,
    }
    if not guarded_update(ctx.store, conn, ctx.pipeline, row["batch_id"], status, row["claim_token"], values):
        return None
    if expired:
        events.append(_lease_expired(ctx, row, now, Status.IN_PROGRESS, retries))
    events.append(
        _claim_event(
            ctx,
            row["batch_id"],
            "CLAIMED",
            now,
            status,
            Status.IN_PROGRESS,
            worker,
            token,
            {"attempt": attempts, "retry_count": retries, "lease_expires_at": iso(expires)},
        )
    )
    row.update(values)
    return Batch.from_row(ctx.pipeline, row)


def _claim_in_one_statement(ctx: Context, worker: str, lease: Any, count: int) -> list[Batch]:
    """PostgreSQL: claim up to `count` windows and log them in one autocommitted statement (see pg_claims)."""
    settings = ctx.concurrency
    token = uuid.uuid4().hex
    with ctx.store.autocommit() as conn:
        rows = pg_claims.claim(
            ctx.store,
            conn,
            ctx.pipeline,
            worker,
            token,
            lease,
            settings.max_retries,
            settings.claim_order == "newest_first",
            ctx.fixed_now(),
            count,
        )
    newest_first = settings.claim_order == "newest_first"
    rows.sort(key=lambda row: (row[START_TIME], row["batch_id"]), reverse=newest_first)
    for row in rows:
        for extra in ("old_status", "old_worker", "old_token", "old_lease"):
            row.pop(extra)
    return [Batch.from_row(ctx.pipeline, row) for row in rows]


def _write_claimed(ctx: Context, conn: Any, row: dict[str, Any], values: dict[str, Any]) -> None:
    """Write `values` to the row read by `_fenced`, still guarded by its claim token.

    Where the read took no row lock (Snowflake, any database without FOR UPDATE),
    another worker may have taken the expired lease over between the read and this
    write: the guard then matches no row, and that is LeaseLost, not a success.
    """
    changed = guarded_update(
        ctx.store, conn, ctx.pipeline, row["batch_id"], Status.IN_PROGRESS, row["claim_token"], values
    )
    if not changed:
        raise LeaseLost(_why_not(ctx, conn, row["batch_id"], row["worker_id"]))


# (old, new) status of an event written while the claim is held.
_HELD = (Status.IN_PROGRESS, Status.IN_PROGRESS)


def _step(step: str | None) -> dict[str, Any]:
    return {} if step is None else {"current_step": step}


def _fenced_alone(
    ctx: Context, conn: Any, batch_id: str, worker: str, token: str | None, values: dict[str, Any]
) -> None:
    """Tables locked whole (Snowflake): ONE autocommitted UPDATE where the caller holds
    the claim; LeaseLost when it changed nothing. Its event comes after, if any."""
    if not stamp_claims.fenced_write(ctx.store, conn, ctx.pipeline, batch_id, worker, token, values):
        raise LeaseLost(_why_not(ctx, conn, batch_id, worker))


def _fenced(ctx: Context, conn: Any, batch_id: str, worker: str, token: str | None) -> dict[str, Any]:
    row = current_claim(ctx.store, conn, ctx.pipeline, batch_id, worker, token)
    if row is None:
        raise LeaseLost(_why_not(ctx, conn, batch_id, worker))
    return row


def _why_not(ctx: Context, conn: Any, batch_id: str, worker: str) -> str:
    row = queries.claim_holder(ctx.store, conn, ctx.pipeline, batch_id)
    if row is None:
        return f"no batch {batch_id} in pipeline {ctx.pipeline}"
    status, holder = row
    if status == Status.IN_PROGRESS and holder != worker:
        return f"batch {batch_id} is claimed by {holder}, not {worker}; nothing changed"
    if status == Status.IN_PROGRESS:
        return f"batch {batch_id}: {worker} no longer holds the current claim; nothing changed"
    return f"batch {batch_id} is {status}; {worker} does not hold its claim; nothing changed"


def heartbeat(ctx: Context, batch_id: str, worker: str, token: str | None = None) -> datetime:
    """Extend the lease; returns the new expiry."""
    store = ctx.store
    lease = ctx.concurrency.lease
    if store.backend.stamp_claims:
        with store.autocommit() as conn:
            at = stamp_claims.now_sql(conn, ctx.fixed_now())
            beat = {
                "lease_expires_at": stamp_claims.plus(conn, at, lease),
                "heartbeat_at": at,
                "updated_at": at,
            }
            _fenced_alone(ctx, conn, batch_id, worker, token, beat)
            return stamp_claims.lease_of(store, conn, ctx.pipeline, batch_id, worker, token)
    with store.transaction(write=True) as conn:
        if can_fence_in_update(conn):
            now = queries.now_expression(ctx.fixed_now())
            expiry = queries.lease_expiry(now, lease)
            values = {"lease_expires_at": expiry, "heartbeat_at": now, "updated_at": now}
            row = fenced_update(
                store, conn, ctx.pipeline, batch_id, worker, token, values, ("lease_expires_at",)
            )
            if row is None:
                raise LeaseLost(_why_not(ctx, conn, batch_id, worker))
            expires: datetime = row["lease_expires_at"]
            return expires
        row = _fenced(ctx, conn, batch_id, worker, token)
        now = ctx.now(conn)
        expires = now + lease
        _write_claimed(
            ctx,
            conn,
            row,
            {"lease_expires_at": expires, "heartbeat_at": now, "updated_at": now},
        )
    return expires


def record_step(
    ctx: Context,
    batch_id: str,
    worker: str,
    values: dict[str, Any],
    token: str | None = None,
    step: str | None = None,
) -> None:
    """Write step columns (counts, locations, timestamps) while holding the claim."""
    _check_values(values)
    store = ctx.store
    if store.backend.stamp_claims:
        with store.autocommit() as conn:
            now_sql = stamp_claims.now_sql(conn, ctx.fixed_now())
            _fenced_alone(ctx, conn, batch_id, worker, token, {**values, "updated_at": now_sql} | _step(step))
            if step is not None:
                details = {"step": step, **values}
                stamp_claims.log(
                    store,
                    conn,
                    [_claim_event(ctx, batch_id, "STEP", now_sql, *_HELD, worker, token, details)],  # type: ignore[arg-type]
                )
        return
    with store.transaction(write=True) as conn:
        row = _fenced(ctx, conn, batch_id, worker, token)
        now = ctx.now(conn)
        update = {**values, "updated_at": now}
        if step is not None:
            update["current_step"] = step
        _write_claimed(ctx, conn, row, update)
        if step is not None:
            insert_events(
                store,
                conn,
                [
                    _claim_event(
                        ctx,
                        batch_id,
                        "STEP",
                        now,
                        Status.IN_PROGRESS,
                        Status.IN_PROGRESS,
                        worker,
                        row["claim_token"],
                        {"step": step, **{k: v for k, v in values.items()}},
                    )
                ],
            )


def complete(
    ctx: Context,
    batch_id: str,
    worker: str,
    token: str | None = None,
    values: dict[str, Any] | None = None,
) -> None:
    """Mark the batch COMPLETED (fenced)."""
    _check_values(values)
    store = ctx.store
    if store.backend.stamp_claims:
        # One UPDATE with the step values written with the completion, then the
        # event read from the row it wrote.
        with store.autocommit() as conn:
            now_sql = stamp_claims.now_sql(conn, ctx.fixed_now())
            c = store.tables.state.c
            done = {
                **(values or {}),
                "pipeline_status": Status.COMPLETED.value,
                "current_step": Step.DONE.value,
                "completed_at": now_sql,
                "processing_seconds": stamp_claims.seconds_since(conn, c.claimed_at, now_sql),
                "lease_expires_at": None,
                "updated_at": now_sql,
                "updated_by": worker,
            }
            _fenced_alone(ctx, conn, batch_id, worker, token, done)
            stamp_claims.log_completed(store, conn, ctx.pipeline, batch_id, worker, token)
        return
    if store.backend.one_statement_claims and not values:
        with store.autocommit() as conn:
            clock = ctx.fixed_now()
            if pg_claims.complete(store, conn, ctx.pipeline, batch_id, worker, token, clock) is None:
                raise LeaseLost(_why_not(ctx, conn, batch_id, worker))
        return
    with store.transaction(write=True) as conn:
        row = _fenced(ctx, conn, batch_id, worker, token)
        now = ctx.now(conn)
        claimed = row["claimed_at"]
        seconds = (now - claimed).total_seconds() if claimed else None
        _write_claimed(
            ctx,
            conn,
            row,
            {
                **(values or {}),
                "pipeline_status": Status.COMPLETED,
                "current_step": Step.DONE.value,
                "completed_at": now,
                "processing_seconds": seconds,
                "lease_expires_at": None,
                "updated_at": now,
                "updated_by": worker,
            },
        )
        insert_events(
            store,
            conn,
            [
                _claim_event(
                    ctx,
                    batch_id,
                    Status.COMPLETED,
                    now,
                    Status.IN_PROGRESS,
                    Status.COMPLETED,
                    worker,
                    row["claim_token"],
                    {"processing_seconds": seconds},
                )
            ],
        )


def fail(
    ctx: Context,
    batch_id: str,
    worker: str,
    error: str,
    token: str | None = None,
    step: str | None = None,
    values: dict[str, Any] | None = None,
    retryable: bool | None = None,
) -> dict[str, Any]:
    """Record the error, add one to retry_count, set FAILED (fenced).

    With `retryable=False` (an error no retry can fix) the batch is FAILED for
    good at once and its retry_count is left as it was; `last_error_kind` says
    which it was. Returns `{"retry_count", "permanent", "next_attempt_at"}`.
    """
    _check_values(values)
    if not isinstance(error, str):
        error = str(error)
    # Text any database takes: a lone surrogate (from a file name or a decoded error) is
    # kept as its escape instead of failing the write and leaving the batch IN_PROGRESS.
    error = error.encode("utf-8", "backslashreplace").decode("utf-8")
    store, settings = ctx.store, ctx.concurrency
    with store.transaction(write=True) as conn:
        row = _fenced(ctx, conn, batch_id, worker, token)
        now = ctx.now(conn)
        terminal = retryable is False
        retries = int(row["retry_count"] or 0) + (0 if terminal else 1)
        permanent = terminal or retries >= settings.max_retries
        next_attempt = None if permanent else now + backoff_delay(settings.retry_backoff, retries)
        kind = None if retryable is None else ("transient" if retryable else "terminal")
        failed_step = step or row["current_step"]
        _write_claimed(
            ctx,
            conn,
            row,
            {
                **(values or {}),
                "pipeline_status": Status.FAILED,
                "retry_count": retries,
                "last_error": error,
                "last_error_step": failed_step,
                "last_error_at": now,
                "last_error_kind": kind,
                "next_attempt_at": next_attempt,
                "lease_expires_at": None,
                "updated_at": now,
                "updated_by": worker,
            },
        )
        outcome = {"retry_count": retries, "permanent": permanent, "next_attempt_at": iso(next_attempt)}
        insert_events(
            store,
            conn,
            [
                _claim_event(
                    ctx,
                    batch_id,
                    Status.FAILED,
                    now,
                    Status.IN_PROGRESS,
                    Status.FAILED,
                    worker,
                    row["claim_token"],
                    {"error": error, "step": failed_step, **outcome} | ({"kind": kind} if kind else {}),
                )
            ],
        )
    return outcome


def release(ctx: Context, batch_id: str, worker: str, token: str | None = None) -> None:
    """Give the batch back unfinished (a clean stop): PENDING again, no retry counted."""
    store = ctx.store
    with store.transaction(write=True) as conn:
        row = _fenced(ctx, conn, batch_id, worker, token)
        now = ctx.now(conn)
        _write_claimed(
            ctx,
            conn,
            row,
            {
                "pipeline_status": Status.PENDING,
                "lease_expires_at": None,
                "updated_at": now,
                "updated_by": worker,
            },
        )
        insert_events(
            store,
            conn,
            [
                _claim_event(
                    ctx,
                    batch_id,
                    "RELEASED",
                    now,
                    Status.IN_PROGRESS,
                    Status.PENDING,
                    worker,
                    row["claim_token"],
                )
            ],
        )


# -- runs of windows: one transaction for the step records or completions of several ---------


def record_steps(
    ctx: Context,
    worker: str,
    items: Sequence[tuple[str, str, dict[str, Any]]],
    step: str | None = None,
) -> set[str]:
    """`record_step` for several claimed batches (`(batch_id, token, values)`) in one
    transaction, one UPDATE for all of them. A batch whose claim is no longer the caller's is
    left as it is and its id returned (the others are written): one lost lease does not stop
    a run."""
    for _, _, values in items:
        _check_values(values)
    store = ctx.store
    with store.transaction(write=True) as conn:
        now = ctx.now(conn)
        rows = [
            (batch_id, token, {**values, "updated_at": now} | ({"current_step": step} if step else {}))
            for batch_id, token, values in items
        ]
        lost = fenced_update_many(store, conn, ctx.pipeline, worker, rows)
        if step is not None:
            events = [
                _claim_event(
                    ctx,
                    batch_id,
                    "STEP",
                    now,
                    Status.IN_PROGRESS,
                    Status.IN_PROGRESS,
                    worker,
                    token,
                    {"step": step, **values},
                )
                for batch_id, token, values in items
                if batch_id not in lost
            ]
            if events:
                insert_events(store, conn, events)
    return lost


def complete_many(
    ctx: Context,
    worker: str,
    items: Sequence[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]],
    claimed_at: dict[str, datetime | None] | None = None,
) -> set[str]:
    """`complete` for several claimed batches (`(batch_id, token, values, event details)`) in
    one transaction, one UPDATE for all of them; returns the ids whose claim was no longer the
    caller's (left as they are). `claimed_at` (each batch's claim time, as the caller got it)
    gives `processing_seconds`."""
    for _, _, values, _ in items:
        _check_values(values)
    store = ctx.store
    with store.transaction(write=True) as conn:
        now = ctx.now(conn)
        rows = []
        seconds: dict[str, float | None] = {}
        for batch_id, token, values, _ in items:
            claimed = (claimed_at or {}).get(batch_id)
            seconds[batch_id] = (now - claimed).total_seconds() if claimed else None
            done = {
                "pipeline_status": Status.COMPLETED,
                "current_step": Step.DONE.value,
                "completed_at": now,
                "processing_seconds": seconds[batch_id],
                "lease_expires_at": None,
                "updated_at": now,
                "updated_by": worker,
            }
            rows.append((batch_id, token, {**(values or {}), **done}))
        lost = fenced_update_many(store, conn, ctx.pipeline, worker, rows)
        events = [
            _claim_event(
                ctx,
                batch_id,
                Status.COMPLETED,
                now,
                Status.IN_PROGRESS,
                Status.COMPLETED,
                worker,
                token,
                {"processing_seconds": seconds[batch_id], **(details or {})},
            )
            for batch_id, token, _, details in items
            if batch_id not in lost
        ]
        if events:
            insert_events(store, conn, events)
    return lost

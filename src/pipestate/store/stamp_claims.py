"""Claims and fenced writes for databases that lock whole tables (Snowflake): no meta-table lock.

Snowflake's standard tables have no row locks: every UPDATE holds the whole
table's lock until its transaction ends, and at most 20 statements may wait for
one lock. So a claim here is ONE autocommitted UPDATE, and the reads around it
take no lock:

1. `candidates`: a read (no lock) of the next claimable rows. An idle poll ends
   here. An expired lease among them is taken over by `take_over`, an UPDATE
   guarded by the old claim token (rare: a worker died), so its LEASE_EXPIRED
   event can name the claim it ends.
2. `stamp`: one UPDATE that stamps a fresh token (md5 of the claim's token and
   the row's batch_id, one per window) on the next `n` rows that are *still*
   claimable, chosen inside the same statement.
3. `held`: a read by those tokens: the windows this claim holds.

Whether a statement that waited for the table lock sees rows committed while it
waited is not documented. If it does, the stamp never touches a row another
claim took. If it does not, two claims may stamp the same row; the later token
wins, the verifying read of the earlier claim no longer finds its token and
gives the window up, and any claim that read before the overwrite is refused at
its first fenced write (`fenced_write` checks the row count). The harness in
tests/snowsim.py runs both answers.

Fenced writes (heartbeat, complete, release, a step) are ONE autocommitted UPDATE
each, guarded by worker and token; the row count says whether the caller still
held the claim. Their audit event is written after, only when the row changed.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    String,
    and_,
    bindparam,
    cast,
    func,
    insert,
    literal,
    or_,
    select,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection

from ..statuses import Status
from .backends import backend_of
from .claims import holds_claim, not_terminal
from .events import insert_events
from .store import StateStore
from .types import UTCDateTime

__all__ = [
    "candidates",
    "fenced_write",
    "held",
    "lease_of",
    "log",
    "log_completed",
    "now_sql",
    "plus",
    "seconds_since",
    "stamp",
    "take_over",
]


def now_sql(conn: Connection, fixed_now: datetime | None) -> ColumnElement[Any]:
    """Now in SQL: an injected clock's value, else the database's (no extra round trip)."""
    if fixed_now is not None:
        return bindparam("now", fixed_now, UTCDateTime())
    now = backend_of(conn).now_function
    assert now is not None, "stamp claims need a now_function"
    return type_coerce(now(), UTCDateTime())


def plus(conn: Connection, instant: ColumnElement[Any], delta: timedelta) -> ColumnElement[Any]:
    """`instant + delta` in SQL."""
    return _plus(conn, instant, delta)


def _plus(conn: Connection, instant: ColumnElement[Any], delta: timedelta) -> ColumnElement[Any]:
    plus = backend_of(conn).plus_interval
    assert plus is not None, "stamp claims need plus_interval"
    return plus(instant, delta)


def _order(store: StateStore, newest_first: bool) -> tuple[Any, ...]:
    c = store.tables.state.c
    if newest_first:
        return (c.source_query_window_start_time.desc(), c.batch_id.desc())
    return (c.source_query_window_start_time.asc(), c.batch_id.asc())


def _window(store: StateStore, within: tuple[datetime, datetime] | None) -> list[Any]:
    c = store.tables.state.c
    if within is None:
        return []
    return [c.source_query_window_start_time >= within[0], c.source_query_window_start_time < within[1]]


def _takeable(store: StateStore, conn: Connection, now: Any, max_retries: int) -> ColumnElement[bool]:
    """PENDING, or FAILED with retries left past its backoff: what `stamp` takes."""
    c = store.tables.state.c
    next_attempt = store.instant(c.next_attempt_at)
    pending = store.claimable(conn, c.pipeline_status == Status.PENDING)
    failed = store.claimable(
        conn,
        c.pipeline_status == Status.FAILED,
        func.coalesce(c.retry_count, 0) < max_retries,
        not_terminal(store),
        or_(next_attempt.is_(None), next_attempt <= now),
    )
    return or_(and_(*pending), and_(*failed))


def _expired(store: StateStore, conn: Connection, now: Any) -> ColumnElement[bool]:
    c = store.tables.state.c
    lease = store.instant(c.lease_expires_at)
    return and_(
        *store.claimable(conn, c.pipeline_status == Status.IN_PROGRESS, or_(lease.is_(None), lease <= now))
    )


# The claim protocol this module speaks, recorded in <table>_meta as `claim_protocol`.
# 1 (earlier pipestate): claims queue on the pipeline's `lock:<pipeline>` row.
CLAIM_PROTOCOL = 2


def older_claimers(
    store: StateStore, conn: Connection, pipeline: str, now: Any, within: timedelta
) -> datetime | None:
    """When an earlier pipestate last claimed under the pipeline lock row (protocol 1),
    if that was less than `within` ago; else None. Records protocol 2 when absent."""
    meta = store.tables.meta
    c = meta.c
    recent = conn.execute(
        select(c.updated_at).where(
            c.name == f"lock:{pipeline}",
            c.value.like("claim %"),  # what a protocol-1 claim writes as the lock's holder
            c.updated_at.is_not(None),
            c.updated_at > now - within,
        )
    ).scalar()
    if recent is not None:
        return recent  # type: ignore[no-any-return]
    known = conn.execute(select(c.value).where(c.name == "claim_protocol")).scalar()
    if known is None:
        conn.execute(insert(meta).values(name="claim_protocol", value=str(CLAIM_PROTOCOL), updated_at=now))
    return None


def candidates(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    now: Any,
    count: int,
    max_retries: int,
    newest_first: bool,
    within: tuple[datetime, datetime] | None,
) -> list[dict[str, Any]]:
    """The next `count` claimable rows (status, holder and lease), read without a lock."""
    c = store.tables.state.c
    stmt = (
        select(
            c.batch_id,
            c.pipeline_status,
            c.worker_id,
            c.claim_token,
            c.lease_expires_at,
            c.retry_count,
            c.current_step,
        )
        .where(
            c.pipeline_name == pipeline,
            *_window(store, within),
            or_(_takeable(store, conn, now, max_retries), _expired(store, conn, now)),
        )
        .order_by(*_order(store, newest_first))
        .limit(count)
    )
    return [row._asdict() for row in conn.execute(stmt)]


def _stamp_values(conn: Connection, worker: str, token: Any, now: Any, lease: timedelta) -> dict[str, Any]:
    return {
        "pipeline_status": Status.IN_PROGRESS.value,
        "worker_id": worker,
        "claim_token": token,
        "claimed_at": now,
        "lease_expires_at": _plus(conn, now, lease),
        "heartbeat_at": now,
        "next_attempt_at": None,
        "updated_at": now,
        "updated_by": worker,
    }


def _token(store: StateStore, token: str) -> ColumnElement[Any]:
    """The window's own token: md5 of the claim's token and its batch_id."""
    return func.md5(bindparam("token", token) + store.tables.state.c.batch_id)


def stamp(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    worker: str,
    token: str,
    now: Any,
    lease: timedelta,
    count: int,
    max_retries: int,
    newest_first: bool,
    within: tuple[datetime, datetime] | None,
    max_in_flight: int = 0,
) -> int:
    """Stamp up to `count` still-claimable rows IN_PROGRESS for `worker`, in ONE
    UPDATE; returns how many rows it changed (what the database says).

    With `max_in_flight`, the statement counts the unexpired claims itself, so
    where waiting statements see what committed meanwhile, the count is exact
    (DML on the table runs one statement at a time)."""
    state = store.tables.state
    c = state.c
    takeable = _takeable(store, conn, now, max_retries)
    where = [c.pipeline_name == pipeline, *_window(store, within), takeable]
    if max_in_flight:
        lease_col = store.instant(c.lease_expires_at)
        in_flight = (
            select(func.count())
            .where(c.pipeline_name == pipeline, c.pipeline_status == Status.IN_PROGRESS, lease_col > now)
            .scalar_subquery()
        )
        ranked = (
            select(c.batch_id, func.row_number().over(order_by=_order(store, newest_first)).label("rn"))
            .where(*where)
            .subquery()
        )
        room: Any = bindparam("room", max_in_flight) - in_flight
        chosen = select(ranked.c.batch_id).where(ranked.c.rn <= count, ranked.c.rn <= room)
    else:
        chosen = select(c.batch_id).where(*where).order_by(*_order(store, newest_first)).limit(count)
    values = _stamp_values(conn, worker, _token(store, token), now, lease)
    values["attempt_count"] = func.coalesce(c.attempt_count, 0) + 1
    values["first_started_at"] = func.coalesce(c.first_started_at, now)
    values["retry_count"] = func.coalesce(c.retry_count, 0)
    stmt = update(state).where(c.pipeline_name == pipeline, c.batch_id.in_(chosen), takeable).values(**values)
    return int(conn.execute(stmt).rowcount or 0)


def take_over(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    row: dict[str, Any],
    worker: str,
    token: str,
    now: Any,
    lease: timedelta,
    max_retries: int,
) -> str | None:
    """An expired lease read by `candidates`: counts as a failed attempt of its
    holder. Stamps it for `worker` ("claimed"), or FAILED for good when that was
    its last retry ("retired"); None when the row changed since it was read."""
    state = store.tables.state
    c = state.c
    retries = int(row["retry_count"] or 0) + 1
    old_token = c.claim_token.is_(None) if row["claim_token"] is None else c.claim_token == row["claim_token"]
    guard = [
        c.pipeline_name == pipeline,
        c.batch_id == row["batch_id"],
        old_token,
        _expired(store, conn, now),
    ]
    if retries >= max_retries:
        values: dict[str, Any] = {
            "pipeline_status": Status.FAILED.value,
            "retry_count": retries,
            "last_error": "lease expired (worker stopped heartbeating)",
            "last_error_step": row["current_step"],
            "last_error_at": now,
            "lease_expires_at": None,
            "updated_at": now,
            "updated_by": worker,
        }
        outcome = "retired"
    else:
        values = _stamp_values(conn, worker, _token(store, token), now, lease)
        values["retry_count"] = retries
        values["attempt_count"] = func.coalesce(c.attempt_count, 0) + 1
        values["first_started_at"] = func.coalesce(c.first_started_at, now)
        outcome = "claimed"
    changed = conn.execute(update(state).where(*guard).values(**values)).rowcount
    return outcome if changed == 1 else None


def held(store: StateStore, conn: Connection, pipeline: str, worker: str, token: str) -> list[dict[str, Any]]:
    """The rows this claim's stamp holds now (the verifying read, no lock)."""
    c = store.tables.state.c
    stmt = select(store.tables.state).where(
        c.pipeline_name == pipeline,
        c.pipeline_status == Status.IN_PROGRESS,
        c.worker_id == worker,
        c.claim_token == _token(store, token),
    )
    return [row._asdict() for row in conn.execute(stmt)]


def fenced_write(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    worker: str,
    token: str | None,
    values: dict[str, Any],
) -> bool:
    """ONE autocommitted UPDATE where the caller holds the current claim; True if it
    changed the row (False: the claim is not current, nothing written).

    The claim's worker and token are written again with the values: where a statement
    that waited for the lock changes the rows it picked before the wait (one answer
    to the re-read question), a write that lands on a row another claim stamped
    meanwhile leaves the row consistently the caller's, so the other claim's next
    fenced write is refused and the window is finished once."""
    stmt = update(store.tables.state).where(*holds_claim(store, pipeline, batch_id, worker, token))
    mine: dict[str, Any] = {"worker_id": worker} | ({} if token is None else {"claim_token": token})
    return int(conn.execute(stmt.values(**values, **mine)).rowcount or 0) == 1


def lease_of(
    store: StateStore, conn: Connection, pipeline: str, batch_id: str, worker: str, token: str | None
) -> datetime:
    """The lease a heartbeat just wrote (a read, no lock)."""
    c = store.tables.state.c
    stmt = select(c.lease_expires_at).where(*holds_claim(store, pipeline, batch_id, worker, token))
    value: datetime = conn.execute(stmt).scalar_one()
    return value


def log_completed(
    store: StateStore, conn: Connection, pipeline: str, batch_id: str, worker: str, token: str | None
) -> None:
    """The COMPLETED event, read from the row the completion just wrote, in one
    INSERT ... SELECT: its time and processing_seconds are the row's own."""
    state, events = store.tables.state, store.tables.events
    c = state.c
    where = [
        c.batch_id == batch_id,
        c.pipeline_name == pipeline,
        c.pipeline_status == Status.COMPLETED,
        c.worker_id == worker,
    ]
    if token is not None:
        where.append(c.claim_token == token)
    seconds = func.coalesce(cast(c.processing_seconds, String()), literal("null"))
    details = literal('{"processing_seconds": ') + seconds + literal("}")
    columns = [
        "batch_id",
        "pipeline_name",
        "event_type",
        "worker_id",
        "claim_token",
        "event_time",
        "old_status",
        "new_status",
        "details",
    ]
    rows = select(
        c.batch_id,
        c.pipeline_name,
        literal(Status.COMPLETED.value),
        c.worker_id,
        c.claim_token,
        c.completed_at,
        literal(Status.IN_PROGRESS.value),
        literal(Status.COMPLETED.value),
        details,
    ).where(*where)
    conn.execute(insert(events).from_select(columns, rows))


def seconds_since(conn: Connection, started: Any, now: Any) -> ColumnElement[Any]:
    """Seconds from `started` to `now`, in SQL (processing_seconds)."""
    backend = backend_of(conn)
    if backend.seconds_between is not None:
        return backend.seconds_between(started, now)
    assert backend.epoch_seconds is not None
    return backend.epoch_seconds(now) - backend.epoch_seconds(started)


def log(store: StateStore, conn: Connection, events: Sequence[dict[str, Any]]) -> None:
    """Append audit events; an `event_time` may be a SQL expression (the database's now)."""
    rows = [
        {
            **event,
            "details": None if event.get("details") is None else json.dumps(event["details"], default=str),
        }
        for event in events
    ]
    if not rows:
        return
    if any(not isinstance(row["event_time"], datetime) for row in rows):
        for row in rows:
            conn.execute(insert(store.tables.events).values(**row))
        return
    insert_events(store, conn, rows)

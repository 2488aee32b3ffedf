"""The claim protocol: the state table as the lock, with leases and fencing tokens.

A claim is one short write transaction: pick the oldest (or newest) claimable
row, locking it, and stamp it IN_PROGRESS with the worker, a fresh claim token
and a lease judged by the database clock. PostgreSQL locks the row with
`FOR UPDATE SKIP LOCKED`, so workers never queue behind one another; SQLite
and DuckDB already serialize writers; `max_in_flight` adds the pipeline lock
row so the count and the claim cannot race.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Select, and_, bindparam, func, or_, select, update
from sqlalchemy.engine import Connection

from ..statuses import Status
from .backends import backend_of
from .schema import START_TIME
from .store import StateStore


def _lockable(stmt: Select[Any], conn: Connection) -> Select[Any]:
    if backend_of(conn).row_locks:
        return stmt.with_for_update(skip_locked=True)
    return stmt


def find_candidate(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    now: datetime,
    max_retries: int,
    newest_first: bool,
    within: tuple[datetime, datetime] | None = None,
) -> dict[str, Any] | None:
    """The next claimable row, locked where the database can lock one row.

    `within` (UTC `[low, high)`) takes only windows that start in it: one local
    day of a pipeline, for an orchestrator's daily partition.

    Two index-friendly queries (PENDING; then FAILED past its backoff or
    IN_PROGRESS past its lease) instead of one OR, so a table with a million
    COMPLETED rows is not scanned per claim.
    """
    state = store.tables.state
    c = state.c
    if newest_first:
        order = (c.source_query_window_start_time.desc(), c.batch_id.desc())
    else:
        order = (c.source_query_window_start_time.asc(), c.batch_id.asc())
    # `within`: only windows that start in the range (one local day).
    window = (
        []
        if within is None
        else [c.source_query_window_start_time >= within[0], c.source_query_window_start_time < within[1]]
    )
    lease, next_attempt = store.instant(c.lease_expires_at), store.instant(c.next_attempt_at)
    pending = (
        select(state)
        .where(
            c.pipeline_name == pipeline, *window, *store.claimable(conn, c.pipeline_status == Status.PENDING)
        )
        .order_by(*order)
        .limit(1)
    )
    retryable = (
        select(state)
        .where(
            c.pipeline_name == pipeline,
            *window,
            *store.claimable(
                conn,
                # The IN lets the (pipeline, status, start) index skip COMPLETED rows;
                # without it the OR below is checked on every row of the pipeline.
                c.pipeline_status.in_((Status.FAILED, Status.IN_PROGRESS)),
                or_(
                    and_(
                        c.pipeline_status == Status.FAILED,
                        func.coalesce(c.retry_count, 0) < max_retries,
                        not_terminal(store),
                        or_(next_attempt.is_(None), next_attempt <= now),
                    ),
                    and_(
                        c.pipeline_status == Status.IN_PROGRESS,
                        # (on SQLite an unreadable lease reads as NULL: expired, as populate ranks it)
                        or_(lease.is_(None), lease <= now),
                    ),
                ),
            ),
        )
        .order_by(*order)
        .limit(1)
    )
    found = [
        row._asdict()
        for stmt in (pending, retryable)
        if (row := conn.execute(_lockable(stmt, conn)).first()) is not None
    ]
    if not found:
        return None
    key = lambda row: row[START_TIME]  # noqa: E731
    return max(found, key=key) if newest_first else min(found, key=key)


def not_terminal(store: StateStore) -> ColumnElement[bool]:
    """The row's last error was not one that no retry can fix."""
    c = store.tables.state.c
    return or_(c.last_error_kind.is_(None), c.last_error_kind != "terminal")


def count_in_flight(store: StateStore, conn: Connection, pipeline: str, now: datetime) -> int:
    c = store.tables.state.c
    return int(
        conn.execute(
            select(func.count()).where(
                c.pipeline_name == pipeline,
                c.pipeline_status == Status.IN_PROGRESS,
                store.instant(c.lease_expires_at) > now,
            )
        ).scalar_one()
    )


def guarded_update(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    expect_status: str,
    expect_token: str | None,
    values: dict[str, Any],
) -> bool:
    """Update the row only if it is still in the state we read; True if it was."""
    c = store.tables.state.c
    token_matches = c.claim_token.is_(None) if expect_token is None else c.claim_token == expect_token
    result = conn.execute(
        update(store.tables.state)
        .where(
            c.batch_id == batch_id,
            c.pipeline_name == pipeline,
            c.pipeline_status == expect_status,
            token_matches,
        )
        .values(**values)
    )
    return result.rowcount == 1


def holds_claim(store: StateStore, pipeline: str, batch_id: str, worker: str, token: str | None) -> list[Any]:
    """The WHERE conditions of "`worker` (with `token`, when given) holds the batch's current claim"."""
    c = store.tables.state.c
    conditions = [
        c.batch_id == batch_id,
        c.pipeline_name == pipeline,
        c.pipeline_status == Status.IN_PROGRESS,
        c.worker_id == worker,
    ]
    if token is not None:
        conditions.append(c.claim_token == token)
    return conditions


def current_claim(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    worker: str,
    token: str | None,
) -> dict[str, Any] | None:
    """The row if `worker` (and `token`, when given) holds its current claim, locked."""
    stmt = select(store.tables.state).where(*holds_claim(store, pipeline, batch_id, worker, token))
    if backend_of(conn).row_locks:
        stmt = stmt.with_for_update()
    row = conn.execute(stmt).first()
    return None if row is None else row._asdict()


def fenced_update(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    worker: str,
    token: str | None,
    values: dict[str, Any],
    returning: tuple[str, ...],
) -> dict[str, Any] | None:
    """Check the claim and write in one statement: UPDATE ... WHERE <caller holds the
    current claim> RETURNING `returning`; None (nothing written) if it does not.

    Saves the locking SELECT of the whole row that `current_claim` costs; only for
    databases with UPDATE ... RETURNING (see `can_fence_in_update`).
    """
    c = store.tables.state.c
    stmt = update(store.tables.state).where(*holds_claim(store, pipeline, batch_id, worker, token))
    row = conn.execute(stmt.values(**values).returning(c.batch_id, *(c[name] for name in returning))).first()
    return None if row is None else row._asdict()


def can_fence_in_update(conn: Connection) -> bool:
    # PostgreSQL only: its UPDATE takes the row lock and re-checks the WHERE on the
    # newest version, which is the whole fence. SQLite and DuckDB keep the
    # SELECT-then-guarded-UPDATE path inside their serialized write transaction.
    return backend_of(conn).fence_in_update


# However often the backoff doubled, a retry waits at most this long.
MAX_BACKOFF_DELAY = timedelta(days=7)


def backoff_delay(retry_backoff: timedelta, retry_count: int) -> timedelta:
    """Wait before retry number `retry_count` (1-based): backoff, 2x, 4x, ...,
    at most MAX_BACKOFF_DELAY (and no overflow for a large retry count)."""
    doublings = min(max(retry_count - 1, 0), 20)  # 2**20 seconds is past the cap already
    return min(retry_backoff * (2**doublings), MAX_BACKOFF_DELAY)


def fenced_update_many(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    worker: str,
    rows: Sequence[tuple[str, str, dict[str, Any]]],
) -> set[str]:
    """Write each `(batch_id, token, values)` where `worker` still holds that claim, as one
    UPDATE run for many rows (executemany) per set of columns; returns the batch ids NOT
    written. For a run of windows: one statement where each window took two (the locking
    SELECT and the guarded UPDATE). Inside the caller's write transaction, the WHERE is the
    whole fence: SQLite and DuckDB serialize writers, PostgreSQL re-checks it on the newest
    row version."""
    c = store.tables.state.c
    groups: dict[tuple[str, ...], list[tuple[str, str, dict[str, Any]]]] = {}
    for row in rows:
        groups.setdefault(tuple(sorted(row[2])), []).append(row)
    lost: set[str] = set()
    for keys, members in groups.items():
        stmt = (
            update(store.tables.state)
            .where(
                c.batch_id == bindparam("w_batch"),
                c.pipeline_name == pipeline,
                c.pipeline_status == Status.IN_PROGRESS,
                c.worker_id == worker,
                c.claim_token == bindparam("w_token"),
            )
            .values({key: bindparam(f"v_{key}", type_=c[key].type) for key in keys})
        )
        params = [
            {"w_batch": batch_id, "w_token": token, **{f"v_{key}": values[key] for key in keys}}
            for batch_id, token, values in members
        ]
        if len(params) > 1 and conn.dialect.supports_sane_multi_rowcount:
            if conn.execute(stmt, params).rowcount == len(params):
                continue
            # Some claim was gone: the rows that hold our token in the state we wrote are ours.
            status = members[0][2].get("pipeline_status", Status.IN_PROGRESS)
            written = set(
                conn.execute(
                    select(c.batch_id).where(
                        c.batch_id.in_([m[0] for m in members]),
                        c.pipeline_name == pipeline,
                        c.pipeline_status == status,
                        c.worker_id == worker,
                        c.claim_token.in_([m[1] for m in members]),
                    )
                ).scalars()
            )
            lost |= {m[0] for m in members if m[0] not in written}
        else:
            for param in params:
                if conn.execute(stmt, param).rowcount != 1:
                    lost.add(param["w_batch"])
    return lost

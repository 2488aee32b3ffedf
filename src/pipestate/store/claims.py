"""The claim protocol: the state table as the lock, with leases and fencing tokens.

A claim is one short write transaction: pick the oldest (or newest) claimable
row, locking it, and stamp it IN_PROGRESS with the worker, a fresh claim token
and a lease judged by the database clock. PostgreSQL locks the row with
`FOR UPDATE SKIP LOCKED`, so workers never queue behind one another; SQLite
and DuckDB already serialize writers; `max_in_flight` adds the pipeline lock
row so the count and the claim cannot race.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Select, String, and_, bindparam, column, func, or_, select, text, update
from sqlalchemy.engine import Connection

from .store import StateStore
from .types import UTCDateTime

CLAIMABLE_NOW = ("PENDING", "FAILED", "IN_PROGRESS")


def _lockable(stmt: Select[Any], conn: Connection) -> Select[Any]:
    if conn.dialect.name == "postgresql":
        return stmt.with_for_update(skip_locked=True)
    return stmt


def find_candidate(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    now: datetime,
    max_retries: int,
    newest_first: bool,
) -> dict[str, Any] | None:
    """The next claimable row, locked where the database can lock one row.

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
    base = select(state).where(
        c.pipeline_name == pipeline,
        c.source_query_window_end_time > c.source_query_window_start_time,
    )
    pending = base.where(c.pipeline_status == "PENDING").order_by(*order).limit(1)
    retryable = (
        base.where(
            # The IN lets the (pipeline, status, start) index skip COMPLETED rows;
            # without it the OR below is checked on every row of the pipeline.
            c.pipeline_status.in_(("FAILED", "IN_PROGRESS")),
            or_(
                and_(
                    c.pipeline_status == "FAILED",
                    func.coalesce(c.retry_count, 0) < max_retries,
                    or_(c.next_attempt_at.is_(None), c.next_attempt_at <= now),
                ),
                and_(
                    c.pipeline_status == "IN_PROGRESS",
                    or_(c.lease_expires_at.is_(None), c.lease_expires_at <= now),
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
    key = lambda row: row["source_query_window_start_time"]  # noqa: E731
    return max(found, key=key) if newest_first else min(found, key=key)


_ONE_STATEMENT_CLAIM = """
WITH pending AS (
    SELECT batch_id, source_query_window_start_time AS start_time, pipeline_status AS old_status,
           worker_id AS old_worker, claim_token AS old_token, lease_expires_at AS old_lease
      FROM {table}
     WHERE pipeline_name = :pipeline AND pipeline_status = 'PENDING'
       AND source_query_window_end_time > source_query_window_start_time
     ORDER BY source_query_window_start_time {direction}, batch_id {direction}
     LIMIT 1 FOR UPDATE SKIP LOCKED
),
retryable AS (
    SELECT batch_id, source_query_window_start_time AS start_time, pipeline_status AS old_status,
           worker_id AS old_worker, claim_token AS old_token, lease_expires_at AS old_lease
      FROM {table}
     WHERE pipeline_name = :pipeline AND pipeline_status IN ('FAILED', 'IN_PROGRESS')
       AND source_query_window_end_time > source_query_window_start_time
       AND ((pipeline_status = 'FAILED' AND coalesce(retry_count, 0) < :max_retries
             AND (next_attempt_at IS NULL OR next_attempt_at <= {now}))
         OR (pipeline_status = 'IN_PROGRESS' AND coalesce(retry_count, 0) + 1 < :max_retries
             AND (lease_expires_at IS NULL OR lease_expires_at <= {now})))
     ORDER BY source_query_window_start_time {direction}, batch_id {direction}
     LIMIT 1 FOR UPDATE SKIP LOCKED
),
candidates AS (SELECT * FROM pending UNION ALL SELECT * FROM retryable),
chosen AS (
    SELECT * FROM candidates ORDER BY start_time {direction}, batch_id {direction} LIMIT 1
)
UPDATE {table} AS claimed SET
    pipeline_status = 'IN_PROGRESS', worker_id = :worker, claim_token = :token,
    claimed_at = {now}, lease_expires_at = {now} + :lease, heartbeat_at = {now},
    retry_count = coalesce(claimed.retry_count, 0)
        + CASE WHEN chosen.old_status = 'IN_PROGRESS' THEN 1 ELSE 0 END,
    attempt_count = coalesce(claimed.attempt_count, 0) + 1,
    first_started_at = coalesce(claimed.first_started_at, {now}),
    next_attempt_at = NULL, updated_at = {now}, updated_by = :worker
FROM chosen
WHERE claimed.batch_id = chosen.batch_id
RETURNING claimed.*, chosen.old_status, chosen.old_worker, chosen.old_token, chosen.old_lease
"""


def claim_in_one_statement(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    worker: str,
    token: str,
    lease: timedelta,
    max_retries: int,
    newest_first: bool,
    now: datetime | None,
) -> dict[str, Any] | None:
    """PostgreSQL: pick, lock and stamp the next claimable row in one statement.

    Returns the claimed row plus `old_status`, `old_worker`, `old_token` and
    `old_lease` (what it was before), or None. An expired lease whose expiry
    would exhaust the retries is left to `find_candidate`'s slower path, which
    marks it FAILED for good. `now` None means the database clock
    (statement_timestamp(), one value for the whole statement).
    """
    state = store.tables.state
    sql = _ONE_STATEMENT_CLAIM.format(
        table=conn.dialect.identifier_preparer.format_table(state),
        direction="DESC" if newest_first else "ASC",
        now="statement_timestamp()" if now is None else "CAST(:now AS TIMESTAMPTZ)",
    )
    extra = [
        column("old_status", String()),
        column("old_worker", String()),
        column("old_token", String()),
        column("old_lease", UTCDateTime()),
    ]
    stmt = text(sql).columns(*(column(c.name, c.type) for c in state.columns), *extra)
    params: dict[str, Any] = {
        "pipeline": pipeline,
        "max_retries": max_retries,
        "worker": worker,
        "token": token,
        "lease": lease,
    }
    if now is not None:
        stmt = stmt.bindparams(bindparam("now", type_=UTCDateTime()))
        params["now"] = now
    row = conn.execute(stmt, params).first()
    return None if row is None else row._asdict()


def count_in_flight(store: StateStore, conn: Connection, pipeline: str, now: datetime) -> int:
    c = store.tables.state.c
    return int(
        conn.execute(
            select(func.count()).where(
                c.pipeline_name == pipeline,
                c.pipeline_status == "IN_PROGRESS",
                c.lease_expires_at > now,
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


def current_claim(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    worker: str,
    token: str | None,
) -> dict[str, Any] | None:
    """The row if `worker` (and `token`, when given) holds its current claim, locked."""
    c = store.tables.state.c
    stmt = select(store.tables.state).where(
        c.batch_id == batch_id,
        c.pipeline_name == pipeline,
        c.pipeline_status == "IN_PROGRESS",
        c.worker_id == worker,
    )
    if token is not None:
        stmt = stmt.where(c.claim_token == token)
    if conn.dialect.name == "postgresql":
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
    stmt = update(store.tables.state).where(
        c.batch_id == batch_id,
        c.pipeline_name == pipeline,
        c.pipeline_status == "IN_PROGRESS",
        c.worker_id == worker,
    )
    if token is not None:
        stmt = stmt.where(c.claim_token == token)
    row = conn.execute(stmt.values(**values).returning(c.batch_id, *(c[name] for name in returning))).first()
    return None if row is None else row._asdict()


def can_fence_in_update(conn: Connection) -> bool:
    # PostgreSQL only: its UPDATE takes the row lock and re-checks the WHERE on the
    # newest version, which is the whole fence. SQLite and DuckDB keep the
    # SELECT-then-guarded-UPDATE path inside their serialized write transaction.
    return conn.dialect.name == "postgresql"


def backoff_delay(retry_backoff: timedelta, retry_count: int) -> timedelta:
    """Wait before retry number `retry_count` (1-based): backoff, 2x, 4x, ..."""
    return retry_backoff * (2 ** max(retry_count - 1, 0))

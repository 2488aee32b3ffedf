"""PostgreSQL's fast path for workers: claim and complete each in ONE autocommitted statement.

A single statement is its own transaction, so a claim costs one round trip and
one WAL flush: the UPDATE picks, locks (FOR UPDATE SKIP LOCKED) and stamps the
row, and a data-modifying CTE appends its audit events in the same atomic
statement. The general path in claims.py (SELECT, UPDATE, INSERT in an explicit
transaction) remains for every other database and for the rare cases this one
leaves to it (an expired lease that has run out of retries; max_in_flight).
Event details are written as the same JSON text the general path writes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any

from sqlalchemy import Float, String, Table, bindparam, column, text
from sqlalchemy.engine import Connection
from sqlalchemy.sql.selectable import TextualSelect

from .schema import DURATION_MINUTES, END_TIME, START_TIME
from .store import StateStore
from .types import UTCDateTime

# Python's datetime.isoformat() in UTC (JSON text, or null), as every JSON output writes instants.
_ISO = (
    "coalesce('\"' || to_char({x} AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS' || "
    "CASE WHEN date_trunc('second', {x}) = {x} THEN '' ELSE '.US' END) || '+00:00\"', 'null')"
)

# `ctid` names the one physical row chosen, so the UPDATE changes exactly that row
# even in a table another tool made without a primary key. The window must be
# readable (years 1 to 9999, as populate reads it: no infinity, BC or year 10000),
# or the claim would stamp a row it then fails to read back.
_CANDIDATE = """
    SELECT ctid AS row_id, batch_id AS id, source_query_window_start_time AS start_time,
           pipeline_status AS old_status, worker_id AS old_worker, claim_token AS old_token,
           lease_expires_at AS old_lease
      FROM {table}
     WHERE pipeline_name = :pipeline AND source_query_window_end_time > source_query_window_start_time
       AND source_query_window_start_time >= '0001-01-01Z' AND source_query_window_end_time < '10000-01-01Z'
       AND {condition}{unique}
     ORDER BY source_query_window_start_time {direction}, batch_id {direction}
     LIMIT :n FOR UPDATE SKIP LOCKED"""

# For a table without a unique batch_id: a duplicated id is never claimed.
_UNIQUE = " AND (SELECT count(*) FROM {table} AS d WHERE d.batch_id = {table}.batch_id) = 1"

# (coalesce(x, now) <= now is "x IS NULL OR x <= now", in fewer bytes: the claim
# must stay under psycopg's 4,096 with the longest names PostgreSQL allows)
_RETRYABLE = """pipeline_status IN ('FAILED', 'IN_PROGRESS')
       AND ((pipeline_status = 'FAILED' AND coalesce(retry_count, 0) < :tries
             AND coalesce(last_error_kind, '') <> 'terminal'
             AND coalesce(next_attempt_at, {now}) <= {now})
         OR (pipeline_status = 'IN_PROGRESS' AND coalesce(retry_count, 0) + 1 < :tries
             AND coalesce(lease_expires_at, {now}) <= {now}))"""

# Columns a claim returns: the window, the counters, and what a resumed run reads.
CLAIM_COLUMNS = (
    "batch_id",
    "pipeline_name",
    START_TIME,
    END_TIME,
    DURATION_MINUTES,
    "window_local_date",
    "window_timezone",
    "source_id",
    "stage_id",
    "target_id",
    "source_category",
    "stage_category",
    "target_category",
    "current_step",
    "source_extract_status",
    "stage_write_status",
    "target_load_status",
    "stage_location",
    "retry_count",
    "attempt_count",
    "first_started_at",
    "claimed_at",
    "lease_expires_at",
    "worker_id",
    "claim_token",
    "pipeline_status",
)

_CLAIM = """
WITH pending AS ({pending}),
retryable AS ({retryable}),
chosen AS (
    SELECT * FROM (SELECT * FROM pending UNION ALL SELECT * FROM retryable) AS candidates
     ORDER BY start_time {direction}, id {direction} LIMIT :n
),
claimed AS (
    UPDATE {table} AS c SET
        pipeline_status = 'IN_PROGRESS', worker_id = :worker, claim_token = md5(:token||c.batch_id),
        claimed_at = {now}, lease_expires_at = {now} + :lease, heartbeat_at = {now},
        retry_count = coalesce(c.retry_count, 0)
            + CASE WHEN chosen.old_status = 'IN_PROGRESS' THEN 1 ELSE 0 END,
        attempt_count = coalesce(c.attempt_count, 0) + 1,
        first_started_at = coalesce(c.first_started_at, {now}),
        next_attempt_at = NULL, updated_at = {now}, updated_by = :worker
      FROM chosen
     WHERE c.ctid = chosen.row_id
    RETURNING {returning}, old_status, old_worker, old_token, old_lease
),
logged AS (
    INSERT INTO {events}
        (batch_id, pipeline_name, event_type, worker_id, claim_token, event_time,
         old_status, new_status, details)
    SELECT batch_id, :pipeline, 'LEASE_EXPIRED', old_worker, old_token, claimed_at,
           'IN_PROGRESS', 'IN_PROGRESS',
           '{{"lease_expired_at": ' || {old_lease_iso} || ', "retry_count": ' || retry_count || '}}'
      FROM claimed WHERE old_status = 'IN_PROGRESS'
    UNION ALL
    SELECT batch_id, :pipeline, 'CLAIMED', :worker, claim_token, claimed_at, old_status, 'IN_PROGRESS',
           '{{"attempt": ' || attempt_count || ', "lease_expires_at": ' || {lease_iso}
           || ', "retry_count": ' || retry_count || '}}'
      FROM claimed
)
SELECT * FROM claimed
"""

_COMPLETE = """
WITH done AS (
    UPDATE {table} SET
        pipeline_status = 'COMPLETED', current_step = 'done', completed_at = {now},
        processing_seconds = extract(epoch FROM {now} - claimed_at),
        lease_expires_at = NULL, updated_at = {now}, updated_by = :worker
     WHERE batch_id = :batch_id AND pipeline_name = :pipeline
       AND pipeline_status = 'IN_PROGRESS' AND worker_id = :worker {token_condition}
    RETURNING batch_id, claim_token, completed_at, processing_seconds
),
logged AS (
    INSERT INTO {events}
        (batch_id, pipeline_name, event_type, worker_id, claim_token, event_time,
         old_status, new_status, details)
    SELECT batch_id, :pipeline, 'COMPLETED', :worker, claim_token, completed_at,
           'IN_PROGRESS', 'COMPLETED',
           '{{"processing_seconds": ' || coalesce(processing_seconds::float8::text, 'null') || '}}'
      FROM done
)
SELECT * FROM done
"""


def _squeeze(template: str, **names: str) -> str:
    """The statement on one line, with `names` (quoted identifiers) put in after.

    psycopg caches its conversion of a query of at most 4,096 bytes; the
    indented claim is longer, and was converted again for every claim. Only our
    own text is squeezed: a quoted identifier may hold runs of spaces, and
    `"a  b"` squeezed would name another table.
    """
    squeezed = " ".join(template.split()).replace("( ", "(").replace(" )", ")")
    for key, name in names.items():
        squeezed = squeezed.replace(_placeholder(key), name)
    return squeezed


def _placeholder(key: str) -> str:
    # No whitespace and nothing SQL or str.format would read: survives both.
    return f"\x00{key}\x00"


def _now(clock: bool) -> str:
    # :now is bound as UTCDateTime (a timestamptz parameter). These statements
    # run autocommitted, each its own transaction, so now() (the transaction's
    # start) is the statement's start, and shorter to write than statement_timestamp().
    return ":now" if clock else "now()"


@lru_cache(maxsize=64)
def _claim_statement(
    table: Table,
    events: Table,
    quoted: str,
    quoted_events: str,
    newest_first: bool,
    clock: bool,
    unique_ids: bool = True,
) -> TextualSelect:
    direction = "DESC" if newest_first else "ASC"
    now = _now(clock)
    table_name = _placeholder("table")
    unique = "" if unique_ids else _UNIQUE.format(table=table_name)
    template = _CLAIM.format(
        pending=_CANDIDATE.format(
            table=table_name, condition="pipeline_status = 'PENDING'", direction=direction, unique=unique
        ),
        retryable=_CANDIDATE.format(
            table=table_name, condition=_RETRYABLE.format(now=now), direction=direction, unique=unique
        ),
        table=table_name,
        events=_placeholder("events"),
        direction=direction,
        now=now,
        # unqualified: the candidates' own columns are named apart (id, row_id, old_*)
        returning=", ".join(CLAIM_COLUMNS),
        old_lease_iso=_ISO.format(x="old_lease"),
        lease_iso=_ISO.format(x="lease_expires_at"),
    )
    sql = _squeeze(template, table=quoted, events=quoted_events)
    typed: list[Any] = [column(name, table.c[name].type) for name in CLAIM_COLUMNS]
    extra: list[Any] = [
        column("old_status", String()),
        column("old_worker", String()),
        column("old_token", String()),
        column("old_lease", UTCDateTime()),
    ]
    stmt = text(sql).columns(*typed, *extra)
    if clock:
        stmt = stmt.bindparams(bindparam("now", type_=UTCDateTime()))
    return stmt


@lru_cache(maxsize=64)
def _complete_statement(quoted: str, quoted_events: str, with_token: bool, clock: bool) -> TextualSelect:
    template = _COMPLETE.format(
        table=_placeholder("table"),
        events=_placeholder("events"),
        now=_now(clock),
        token_condition="AND claim_token = :token" if with_token else "",
    )
    sql = _squeeze(template, table=quoted, events=quoted_events)
    stmt = text(sql).columns(
        column("batch_id", String()),
        column("claim_token", String()),
        column("completed_at", UTCDateTime()),
        column("processing_seconds", Float()),
    )
    if clock:
        stmt = stmt.bindparams(bindparam("now", type_=UTCDateTime()))
    return stmt


def _names(store: StateStore, conn: Connection) -> tuple[str, str]:
    preparer = conn.dialect.identifier_preparer
    return preparer.format_table(store.tables.state), preparer.format_table(store.tables.events)


def claim(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    worker: str,
    token: str,
    lease: timedelta,
    max_retries: int,
    newest_first: bool,
    now: datetime | None,
    count: int = 1,
) -> list[dict[str, Any]]:
    """Claim the next `count` rows (each its own token, md5 of `token` and its
    batch_id) and log
    CLAIMED (and LEASE_EXPIRED) in one statement.

    Returns, per row, the CLAIM_COLUMNS plus `old_status`, `old_worker`, `old_token`
    and `old_lease`; an empty list when this path finds nothing to take.
    """
    quoted, quoted_events = _names(store, conn)
    stmt = _claim_statement(
        store.tables.state,
        store.tables.events,
        quoted,
        quoted_events,
        newest_first,
        now is not None,
        store.unique_ids(conn),
    )
    params: dict[str, Any] = {
        "pipeline": pipeline,
        "tries": max_retries,
        "worker": worker,
        "token": token,
        "lease": lease,
        "n": count,
    }
    if now is not None:
        params["now"] = now
    return [row._asdict() for row in conn.execute(stmt, params)]


def complete(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    batch_id: str,
    worker: str,
    token: str | None,
    now: datetime | None,
) -> dict[str, Any] | None:
    """Mark the caller's batch COMPLETED and log it in one statement; None if the
    caller does not hold the current claim (nothing written)."""
    quoted, quoted_events = _names(store, conn)
    stmt = _complete_statement(quoted, quoted_events, token is not None, now is not None)
    params: dict[str, Any] = {"pipeline": pipeline, "batch_id": batch_id, "worker": worker}
    if token is not None:
        params["token"] = token
    if now is not None:
        params["now"] = now
    row = conn.execute(stmt, params).first()
    return None if row is None else row._asdict()

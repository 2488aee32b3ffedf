"""One profile per database: every question whose answer differs between databases, answered here.

The rest of pipestate asks the profile (`backend_of(engine)`, `StateStore.backend`)
and never compares a database's name. A database without a profile (any other
SQLAlchemy dialect) gets GENERIC: standard SQL, the pipeline lock row for
claims, nothing clever.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from functools import cache
from typing import Any

from sqlalchemy import BigInteger, ColumnElement, Integer, cast, func, literal_column
from sqlalchemy.engine import Connection, Dialect, Engine

__all__ = ["BACKENDS", "Backend", "GENERIC", "backend_named", "backend_of"]


@dataclass(frozen=True)
class Backend:
    """What pipestate needs to know about one database."""

    name: str
    """SQLAlchemy's dialect name."""
    extra: str | None = None
    """The pipestate extra that installs the driver (`pip install "pipestate[<extra>]"`)."""
    default_driver: str | None = None
    """The driver a URL without one means (`postgresql://` is psycopg 3, our driver)."""
    now_sql: str = "SELECT CURRENT_TIMESTAMP"
    """A SELECT giving the database's current UTC time (leases are judged by it)."""
    busy_message: str = "state database is locked by another process ({name}); try again"
    """The one-line error when another process holds the database ({name}, {database})."""

    embedded: bool = False
    """The database is a file this process opens (SQLite, DuckDB); connecting creates it."""

    # -- instants
    timezone_type: bool = False
    """Instants stored in a time-zone type (TIMESTAMPTZ); else naive UTC."""
    instants_as_text: bool = False
    """Instants are text `YYYY-MM-DD HH:MM:SS.ffffff` (SQLite), read by our own parser."""
    utc_text_reads: bool = False
    """Raw reads of instants convert them to UTC text in SQL (PostgreSQL: psycopg's
    timestamptz values cost ~2 us a row, and one Python cannot hold fails the read)."""

    # -- claims and locks
    serializes_writers: bool = False
    """The database runs one write transaction at a time (SQLite's BEGIN IMMEDIATE,
    DuckDB's single writer): a claim needs no pipeline lock to be safe."""
    row_locks: bool = False
    """SELECT ... FOR UPDATE [SKIP LOCKED] locks single rows, so claims need no pipeline lock."""
    one_statement_claims: bool = False
    """Claim and complete each in ONE autocommitted statement (store/pg_claims.py)."""
    fence_in_update: bool = False
    """UPDATE ... RETURNING re-checks its WHERE on the newest row version under the
    row lock, so a fenced write needs no locking SELECT first."""
    stamp_claims: bool = False
    """No row locks, and every UPDATE locks the whole table until its transaction
    ends (Snowflake): a claim is one autocommitted UPDATE stamping a token, read
    back by that token; fenced writes are one UPDATE each; no pipeline lock row
    (store/stamp_claims.py)."""
    now_function: Callable[[], ColumnElement[Any]] | None = None
    """The database's now as a SQL expression (UTC), so a statement needs no clock read first."""
    plus_interval: Callable[[Any, timedelta], ColumnElement[Any]] | None = None
    """A SQL instant plus a timedelta."""
    process_write_lock: bool = False
    """Threads of one process must share a lock to write (DuckDB)."""
    begin_immediate: bool = False
    """Writers take the write lock up front (SQLite's BEGIN IMMEDIATE), so two queue
    on the busy timeout instead of deadlocking."""
    advisory_schema_lock: bool = False
    """init-db serializes on an advisory lock: PostgreSQL's catalog otherwise makes
    two concurrent creators of one table collide (duplicate key in pg_type)."""
    commit_order_marks: bool = False
    """A row's last writing transaction and a snapshot's horizon are readable (PostgreSQL's
    xmin and pg_current_snapshot()), so `mirror` copies only what committed since its mark."""
    session_options: bool = False
    """Sessions are set up by libpq options (PostgreSQL): lock and statement timeouts,
    keepalives, the UTC zone, and a client-side watchdog for frozen networks."""
    instants_beyond_python: bool = False
    """Instants Python cannot hold (BC, year 10000 and later, +-infinity) can be stored
    (PostgreSQL); claims skip them, as populate calls such rows invalid."""
    reflects_unique_ids: bool = False
    """Whether batch_id's uniqueness can be learnt from the table's constraints
    (elsewhere duplicates are assumed possible: DuckDB is not asked, Snowflake does
    not enforce primary keys)."""

    # -- reads and writes in bulk
    scan_allows_queries: bool = False
    """A query may run while a scan is open on the same connection (on DuckDB it
    silently ends the scan): the planner reads the rank columns apart, on demand."""
    raw_driver_reads: bool = False
    """Long scans run on the driver's own cursor (sqlite3): SQLAlchemy's result rows
    cost more per row than the scan itself."""
    driver_executemany: bool = False
    """Many-row INSERTs go to the driver's executemany with precomputed parameters
    (sqlite3); elsewhere SQLAlchemy's multi-row INSERTs are faster."""
    bulk_path: str | None = None
    """How populate writes new windows: "executemany" (sqlite3's, the run's
    constants as literals), "copy" (COPY, with psycopg 3), "arrow" (an Arrow table,
    with pyarrow), or None (SQLAlchemy's multi-row INSERT)."""
    bulk_driver: str | None = None
    """The DBAPI driver `bulk_path` needs (None: any)."""
    bulk_module: str | None = None
    """The Python module `bulk_path` needs installed (None: none)."""
    instant_text: str | None = None
    """How `bulk_path` takes instants: None for datetimes, else UTC text
    `YYYY-MM-DD HH:MM:SS.ffffff` followed by this suffix."""
    defer_indexes: bool = False
    """A large first load drops the secondary indexes and builds them again after."""
    checkpoint_log: bool = False
    """After a large commit, empty the write-ahead log (SQLite's wal_checkpoint)."""

    # -- SQL arithmetic on stored instants (the per-day views of store/daily.py)
    epoch_seconds: Callable[[Any], ColumnElement[Any]] | None = None
    """A stored UTC instant as whole epoch seconds, in SQL (NULL when unreadable);
    None: the per-day views are not supported."""
    seconds_between: Callable[[Any, Any], ColumnElement[Any]] | None = None
    """Seconds, with their fraction, from the first stored instant to the second;
    None: the difference of their `epoch_seconds`."""
    sweeps_in_sql: bool = False
    """Where windows break (gaps, overlaps) is found by a window function over the
    sorted windows (store/spans.py); else by reading the window index in order and
    comparing the stored values in Python (SQLite, whose window functions cost
    seconds a million rows, more than that read)."""
    sub_second: Callable[[Any], ColumnElement[Any]] | None = None
    """True where a stored instant has a fraction of a second (None: never asked)."""
    integer_division: str = "/"
    """How SQL divides two non-negative integers integrally: the "/" operator, "//"
    (DuckDB's `/` is true division), or "floor" of the quotient."""

    # -- schema
    indexes: bool = True
    """The state table gets its two secondary indexes (Snowflake prunes by micro-partition)."""
    column_comments: bool = True
    """Tables and columns carry their comments (snowflake-sqlalchemy emits them as
    separate COMMENT ON COLUMN statements, which fakesnow, our stand-in, cannot run)."""
    identity_columns: bool = True
    """Event ids by identity/autoincrement; else from a sequence (DuckDB)."""
    small_integer_ids: bool = False
    """Event ids as INTEGER: SQLite autoincrements only an INTEGER PRIMARY KEY."""

    def claims_need_pipeline_lock(self, max_in_flight: int) -> bool:
        """Whether claims queue on the pipeline's lock row: where no row lock or
        serialized writer makes them safe, and for a max_in_flight count that
        must not race with the claim."""
        if self.stamp_claims:
            return False  # the claim's one UPDATE counts max_in_flight itself
        return bool(max_in_flight) or not (self.row_locks or self.serializes_writers)


def _sqlite_epoch(column: Any) -> ColumnElement[Any]:
    # text YYYY-MM-DD HH:MM:SS[.ffffff], naive UTC; unixepoch() is twice as fast as strftime
    if sqlite3.sqlite_version_info >= (3, 38):
        return func.unixepoch(column)
    return cast(func.strftime("%s", column), Integer())


def _sqlite_seconds(started: Any, completed: Any) -> ColumnElement[Any]:
    return (func.julianday(completed) - func.julianday(started)) * 86400.0


def _sqlite_sub_second(column: Any) -> ColumnElement[Any]:
    return func.substr(column, 21) != "000000"


def _truncated_sub_second(column: Any) -> ColumnElement[Any]:
    return func.date_trunc("second", column) != column


def _pg_epoch(column: Any) -> ColumnElement[Any]:  # timestamptz
    return cast(func.floor(func.extract("epoch", column)), BigInteger())


def _pg_seconds(started: Any, completed: Any) -> ColumnElement[Any]:
    return func.extract("epoch", completed - started)


def _duckdb_epoch(column: Any) -> ColumnElement[Any]:  # naive UTC TIMESTAMP; epoch() is a double
    return cast(func.floor(func.epoch(column)), BigInteger())


def _duckdb_seconds(started: Any, completed: Any) -> ColumnElement[Any]:
    return func.epoch(completed) - func.epoch(started)


def _snowflake_epoch(column: Any) -> ColumnElement[Any]:
    return cast(func.date_part(literal_column("epoch_second"), column), BigInteger())


def _snowflake_seconds(started: Any, completed: Any) -> ColumnElement[Any]:
    # (times 0.001, not / 1000: snowflake-sqlalchemy warns about its division operator)
    return func.datediff(literal_column("millisecond"), started, completed) * 0.001


def _snowflake_now() -> ColumnElement[Any]:
    return func.sysdate()  # TIMESTAMP_NTZ in UTC, as instants are stored


def _snowflake_plus(instant: Any, delta: timedelta) -> ColumnElement[Any]:
    milliseconds = int(delta.total_seconds() * 1000)
    return func.dateadd(literal_column("millisecond"), milliseconds, instant, type_=instant.type)


GENERIC = Backend(name="generic")

# Snowflake's answers that a later try can get past: more than 20 statements
# already waiting for the same table lock (000625), a lock wait past LOCK_TIMEOUT,
# a warehouse that is suspended or still resuming. Taken from Snowflake's
# documented messages; only 000625's wording is exercised (by the harness).
BACKENDS: dict[str, Backend] = {
    "sqlite": Backend(
        name="sqlite",
        embedded=True,
        now_sql="SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
        instants_as_text=True,
        serializes_writers=True,
        begin_immediate=True,
        scan_allows_queries=True,
        raw_driver_reads=True,
        driver_executemany=True,
        bulk_path="executemany",
        instant_text="",  # what SQLAlchemy's DateTime binds on SQLite: naive UTC
        defer_indexes=True,
        checkpoint_log=True,
        reflects_unique_ids=True,
        small_integer_ids=True,
        epoch_seconds=_sqlite_epoch,
        seconds_between=_sqlite_seconds,
        sub_second=_sqlite_sub_second,
    ),
    "postgresql": Backend(
        name="postgresql",
        extra="postgres",
        default_driver="psycopg",
        now_sql="SELECT clock_timestamp()",
        timezone_type=True,
        utc_text_reads=True,
        row_locks=True,
        one_statement_claims=True,
        fence_in_update=True,
        advisory_schema_lock=True,
        commit_order_marks=True,
        session_options=True,
        instants_beyond_python=True,
        reflects_unique_ids=True,
        scan_allows_queries=True,
        bulk_path="copy",
        bulk_driver="psycopg",
        instant_text="+00:00",  # COPY text: the offset makes the session time zone irrelevant
        epoch_seconds=_pg_epoch,
        seconds_between=_pg_seconds,
        sweeps_in_sql=True,
        sub_second=_truncated_sub_second,
    ),
    "duckdb": Backend(
        name="duckdb",
        embedded=True,
        extra="duckdb",
        now_sql="SELECT timezone('UTC', get_current_timestamp())",
        busy_message=(
            "DuckDB file {database} is open for writing in another process; "
            "DuckDB allows one writing process at a time (use PostgreSQL for many workers)"
        ),
        serializes_writers=True,
        process_write_lock=True,
        bulk_path="arrow",
        bulk_module="pyarrow",
        instant_text="",  # what DuckDB casts to its zone-less TIMESTAMP: naive UTC
        identity_columns=False,
        epoch_seconds=_duckdb_epoch,
        seconds_between=_duckdb_seconds,
        sweeps_in_sql=True,
        sub_second=_truncated_sub_second,
        integer_division="//",
    ),
    "snowflake": Backend(
        name="snowflake",
        extra="snowflake",
        now_sql="SELECT SYSDATE()",
        stamp_claims=True,
        now_function=_snowflake_now,
        plus_interval=_snowflake_plus,
        seconds_between=_snowflake_seconds,
        indexes=False,
        column_comments=False,
        epoch_seconds=_snowflake_epoch,
        integer_division="floor",
    ),
}


# URL schemes that name a profiled database by another name.
_ALIASES = {"postgres": "postgresql"}


@cache
def backend_named(name: str) -> Backend:
    """The profile of the database SQLAlchemy calls `name` (or a URL scheme names);
    for a database without one, GENERIC under that name."""
    found = BACKENDS.get(_ALIASES.get(name, name))
    return found if found is not None else replace(GENERIC, name=name)


def backend_of(bind: Engine | Connection | Dialect) -> Backend:
    """The profile of an engine's, a connection's or a dialect's database."""
    dialect = bind if isinstance(bind, Dialect) else bind.dialect
    # A dialect may carry the profile it behaves by (the Snowflake harness in tests/
    # is PostgreSQL that locks like Snowflake).
    own = getattr(dialect, "pipestate_backend", None)
    if isinstance(own, Backend):
        return own
    return backend_named(dialect.name)

"""Every per-database difference in one place: engines, transactions, locks, the clock.

SQLite takes its write lock up front (BEGIN IMMEDIATE) so two writers queue on
the busy timeout instead of deadlocking; PostgreSQL serializes on a row lock of
the meta table with a lock timeout; DuckDB allows one process to open a file
for writing, so a second one gets a clear error, and threads of one process
share a lock.
"""

from __future__ import annotations

import threading
import zlib
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..errors import ConfigError, StoreBusyError
from ..windows import read_instant

_DUCKDB_LOCKS: dict[str, threading.Lock] = {}
_DUCKDB_LOCKS_GUARD = threading.Lock()

_SQLITE_CACHE_KIB = -65536  # negative: KiB, not pages
_SQLITE_PAGE_SIZE = 16384  # bytes; applies to files created from now on
_EXTRAS = {"postgresql": "postgres", "duckdb": "duckdb", "snowflake": "snowflake"}


def normalize_url(url: str) -> URL:
    """The SQLAlchemy URL, with plain `postgresql://` meaning psycopg 3 (our driver)."""
    try:
        parsed = make_url(url)
    except ArgumentError as err:
        raise ConfigError(f"[state] url: not a database URL: {url!r}") from err
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def make_engine(url: str, lock_timeout: timedelta) -> Engine:
    """An engine set up for pipestate's transactions on that database."""
    parsed = normalize_url(url)
    backend = parsed.get_backend_name()
    connect_args: dict[str, Any] = {}
    if backend == "sqlite":
        connect_args = {"timeout": lock_timeout.total_seconds(), "check_same_thread": False}
    elif backend == "postgresql":
        # Bound every wait for a row lock (the pipeline lock row), per session:
        # a SET LOCAL in each transaction would cost a round trip per claim.
        millis = max(1, int(lock_timeout.total_seconds() * 1000))
        connect_args = {"options": f"-c lock_timeout={millis}"}
    try:
        engine = create_engine(parsed, connect_args=connect_args)
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        extra = _EXTRAS.get(backend)
        how = f'pip install "pipestate[{extra}]"' if extra else f"install a SQLAlchemy driver for {backend}"
        raise ConfigError(f"[state] url: no driver for {parsed.drivername!r}; {how}") from err
    if backend == "sqlite":
        _setup_sqlite(engine)
    return engine


# The SQL function through which SQLite claims read a stored instant: the reader
# populate uses, so a row populate calls active is claimable and one it calls
# invalid never is (text comparison failed both ways: `T`, `Z` and offsets were
# never claimable; year 0000 or an integer epoch was).
SQLITE_INSTANT_FUNCTION = "pipestate_instant"


def sqlite_instant(value: Any) -> str | None:
    """A stored instant as SQLite text `YYYY-MM-DD HH:MM:SS.ffffff` (naive UTC, the
    form SQLAlchemy binds), or None where populate would call the row invalid."""
    if type(value) is not str:  # an integer epoch, a float, a blob: not an instant
        return None
    parsed = read_instant(value)
    if parsed is None:
        return None
    return parsed.replace(tzinfo=None).isoformat(" ", "microseconds")


def _setup_sqlite(engine: Engine) -> None:
    # pysqlite's own transaction handling defers BEGIN; we emit it ourselves so
    # writers can take the lock up front (documented SQLAlchemy recipe).
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None
        dbapi_connection.create_function(SQLITE_INSTANT_FUNCTION, 1, sqlite_instant, deterministic=True)
        cursor = dbapi_connection.cursor()
        if engine.url.database not in (None, "", ":memory:"):
            # A state row is ~560 bytes: 4 KiB pages (SQLite's default) hold
            # seven, 16 KiB pages about thirty, and a first populate of a
            # million windows runs ~25% faster. SQLite applies this only to a
            # file with no tables yet (and only before WAL mode is set);
            # on an existing file it is a no-op.
            cursor.execute(f"PRAGMA page_size={_SQLITE_PAGE_SIZE}")
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        # 64 MB of page cache (the default is 2 MB): a populate writing a million
        # rows then spills far fewer pages to the log before it commits.
        cursor.execute(f"PRAGMA cache_size={_SQLITE_CACHE_KIB}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        write = conn.get_execution_options().get("pipestate_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def process_lock(engine: Engine) -> threading.Lock | None:
    """A lock threads of this process must hold to write (DuckDB only)."""
    if engine.dialect.name != "duckdb":
        return None
    key = str(engine.url)
    with _DUCKDB_LOCKS_GUARD:
        return _DUCKDB_LOCKS.setdefault(key, threading.Lock())


def now_sql(dialect_name: str) -> str:
    """A SELECT giving the database's current UTC time (leases are judged by it)."""
    return {
        "sqlite": "SELECT strftime('%Y-%m-%d %H:%M:%f', 'now')",
        "postgresql": "SELECT clock_timestamp()",
        "duckdb": "SELECT timezone('UTC', get_current_timestamp())",
        "snowflake": "SELECT SYSDATE()",
    }.get(dialect_name, "SELECT CURRENT_TIMESTAMP")


def db_now(conn: Connection) -> datetime:
    """The database clock as an aware UTC datetime."""
    from .types import parse_instant

    value = parse_instant(conn.exec_driver_sql(now_sql(conn.dialect.name)).scalar())
    if value is None:  # pragma: no cover - a database without a clock
        return datetime.now(UTC)
    return value


def serialize_schema_changes(conn: Connection, key: str) -> None:
    """Make concurrent init-db transactions on `key` run one after the other (PostgreSQL).

    Two processes creating the same missing table at once otherwise collide in
    PostgreSQL's catalog (duplicate key in pg_type) instead of one waiting.
    SQLite's BEGIN IMMEDIATE and DuckDB's single writer serialize already.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": zlib.crc32(key.encode())})


def is_lock_timeout(err: BaseException) -> bool:
    """Whether a driver error means 'someone else holds the lock'."""
    message = str(getattr(err, "orig", err)).lower()
    return any(
        needle in message
        for needle in (
            "database is locked",
            "lock timeout",
            "canceling statement due to lock timeout",
            "could not set lock on file",
            "conflicting lock",
            "database is busy",
        )
    )


def busy_error(engine: Engine, err: BaseException) -> StoreBusyError:
    """The one-line error for a database another process holds."""
    if engine.dialect.name == "duckdb":
        return StoreBusyError(
            f"DuckDB file {engine.url.database} is open for writing in another process; "
            "DuckDB allows one writing process at a time (use PostgreSQL for many workers)"
        )
    return StoreBusyError(f"state database is locked by another process ({engine.dialect.name}); try again")


__all__ = [
    "SQLITE_INSTANT_FUNCTION",
    "sqlite_instant",
    "busy_error",
    "db_now",
    "is_lock_timeout",
    "make_engine",
    "normalize_url",
    "now_sql",
    "process_lock",
    "serialize_schema_changes",
]

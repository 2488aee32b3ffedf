"""Engines, locks and the clock, set up as each database's profile (backends.py) says.

SQLite takes its write lock up front (BEGIN IMMEDIATE) so two writers queue on
the busy timeout instead of deadlocking; PostgreSQL serializes on a row lock of
the meta table with a lock timeout; DuckDB allows one process to open a file
for writing, so a second one gets a clear error, and threads of one process
share a lock.
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
import weakref
import zlib
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, NoSuchModuleError

from ..errors import ConfigError, StoreBusyError
from ..windows import read_instant
from .backends import Backend, backend_named, backend_of

_DUCKDB_LOCKS: dict[str, threading.Lock] = {}
_DUCKDB_LOCKS_GUARD = threading.Lock()

_SQLITE_CACHE_KIB = -65536  # negative: KiB, not pages
_SQLITE_PAGE_SIZE = 16384  # bytes; applies to files created from now on


def normalize_url(url: str) -> URL:
    """The SQLAlchemy URL, with plain `postgresql://` meaning psycopg 3 (our driver)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        # Said without the password: the text between "user:" and "@" never reaches a message.
        shown = re.sub(r":[^:@/\s]*@", ":***@", url)
        raise ConfigError(f"[state] url: not a database URL: {shown!r}") from None
    backend = backend_named(parsed.get_backend_name())
    if "+" not in parsed.drivername and backend.default_driver:
        parsed = parsed.set(drivername=f"{backend.name}+{backend.default_driver}")
    return parsed


@dataclass(frozen=True)
class Waits:
    """How long a network database may keep pipestate waiting ([state] keys).

    `connect_timeout` bounds opening a connection; `statement_timeout` bounds
    each statement, on the server (PostgreSQL cancels it) and on the client: a
    statement still unanswered `statement_timeout + WATCHDOG_GRACE` later (a
    frozen network, a stopped proxy: nothing the server can cancel) has its
    socket shut down, so the call fails instead of waiting forever. Zero: no bound.
    """

    connect_timeout: timedelta = timedelta(seconds=10)
    statement_timeout: timedelta = timedelta(minutes=5)


# After the server's own statement timeout, how long the client still waits for
# its answer before it calls the connection dead.
WATCHDOG_GRACE = timedelta(seconds=5)
# TCP keepalives: a silent peer is noticed after about idle + interval * count.
_KEEPALIVES = {"keepalives": 1, "keepalives_idle": 30, "keepalives_interval": 10, "keepalives_count": 3}


def make_engine(url: str, lock_timeout: timedelta, waits: Waits | None = None) -> Engine:
    """An engine set up for pipestate's transactions on that database."""
    waits = waits or Waits()
    parsed = normalize_url(url)
    backend = backend_named(parsed.get_backend_name())
    try:
        engine = create_engine(parsed, connect_args=_connect_args(backend, lock_timeout, waits))
    except (NoSuchModuleError, ModuleNotFoundError) as err:
        how = (
            f'pip install "pipestate[{backend.extra}]"'
            if backend.extra
            else f"install a SQLAlchemy driver for {backend.name}"
        )
        raise ConfigError(f"[state] url: no driver for {parsed.drivername!r}; {how}") from err
    if backend.begin_immediate:
        _setup_sqlite(engine)
    if backend.session_options:
        _utc_sessions(engine)
        if waits.statement_timeout:
            _watch_statements(engine, waits.statement_timeout + WATCHDOG_GRACE)
    return engine


def _connect_args(backend: Backend, lock_timeout: timedelta, waits: Waits) -> dict[str, Any]:
    """The driver's connect arguments that bound its waits."""
    connect_args: dict[str, Any] = {}
    if backend.begin_immediate:
        # SQLite: the busy timeout bounds the wait for the write lock.
        connect_args = {"timeout": lock_timeout.total_seconds(), "check_same_thread": False}
    elif backend.session_options:
        # Per session, not per transaction (a SET LOCAL would cost a round trip
        # per claim): bound every wait for a row lock (the pipeline lock row)
        # and every statement, and read and write instants in UTC whatever the
        # server's or the client's (PGTZ) zone, so that a zone-less column
        # another tool made is at least read as the UTC pipestate means.
        options = [f"-c lock_timeout={_millis(lock_timeout)}", "-c timezone=UTC"]
        if waits.statement_timeout:
            options.append(f"-c statement_timeout={_millis(waits.statement_timeout)}")
        connect_args = {"options": " ".join(options), **_KEEPALIVES}
        if waits.connect_timeout:
            connect_args["connect_timeout"] = max(1, int(waits.connect_timeout.total_seconds()))
            # unacknowledged data: libpq gives up on the connection after this
            connect_args["tcp_user_timeout"] = _millis(waits.statement_timeout + WATCHDOG_GRACE)
    return connect_args


def _utc_sessions(engine: Engine) -> None:
    # `-c timezone=UTC` in the options is overridden by a PGTZ in the client's
    # environment (libpq sends it too); a SET once per new connection is not.
    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        try:
            dbapi_connection.execute("SET TIME ZONE 'UTC'")
        finally:
            dbapi_connection.autocommit = autocommit


def _millis(value: timedelta) -> int:
    return max(1, int(value.total_seconds() * 1000))


class _Watchdog:
    """Shuts down the socket of a statement unanswered past its deadline.

    Registering a statement is a dict write, so a claim costs no timer thread;
    one checking thread runs while statements are registered and ends when
    none are. psycopg then raises OperationalError (the connection is lost) in
    the waiting thread, and SQLAlchemy discards the connection from its pool.
    """

    def __init__(self, limit: timedelta) -> None:
        self.limit = limit.total_seconds()
        self.running: dict[int, tuple[float, Any]] = {}
        self.guard = threading.Lock()
        self.thread: threading.Thread | None = None

    def begin(self, dbapi_connection: Any) -> None:
        with self.guard:
            self.running[id(dbapi_connection)] = (time.monotonic() + self.limit, dbapi_connection)
            if self.thread is None:
                self.thread = threading.Thread(target=self._watch, name="pipestate-watchdog", daemon=True)
                self.thread.start()

    def end(self, dbapi_connection: Any) -> None:
        with self.guard:
            self.running.pop(id(dbapi_connection), None)

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.limit / 4))
            now = time.monotonic()
            with self.guard:
                late = [conn for deadline, conn in self.running.values() if deadline <= now]
                for conn in late:
                    self.running.pop(id(conn), None)
                idle = not self.running
                if idle:
                    self.thread = None
            for conn in late:
                _shut_down(conn)
            if idle:
                return


def _shut_down(dbapi_connection: Any) -> None:
    try:
        fd = dbapi_connection.pgconn.socket
        # shutdown acts on the socket itself, so a duplicate descriptor does:
        # the waiting recv returns at once, and psycopg keeps its own fd to close.
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.shutdown(socket.SHUT_RDWR)
    except (OSError, AttributeError, ValueError):  # already closed, or not psycopg
        pass


_WATCHDOGS: weakref.WeakKeyDictionary[Engine, _Watchdog] = weakref.WeakKeyDictionary()


def interrupt_statements(engine: Engine) -> int:
    """Cut the connections of the engine's statements still waiting for an answer
    (each then fails at once); returns how many. A worker's second stop signal
    uses it on a call that hangs on a frozen network."""
    watchdog = _WATCHDOGS.get(engine)
    if watchdog is None:
        return 0
    with watchdog.guard:
        waiting = [conn for _, conn in watchdog.running.values()]
        watchdog.running.clear()
    for conn in waiting:
        _shut_down(conn)
    return len(waiting)


def _watch_statements(engine: Engine, limit: timedelta) -> None:
    watchdog = _WATCHDOGS[engine] = _Watchdog(limit)

    @event.listens_for(engine, "before_cursor_execute")
    def _before(conn: Connection, cursor: Any, *args: Any) -> None:
        watchdog.begin(cursor.connection)

    @event.listens_for(engine, "after_cursor_execute")
    def _after(conn: Connection, cursor: Any, *args: Any) -> None:
        watchdog.end(cursor.connection)

    @event.listens_for(engine, "handle_error")
    def _failed(context: Any) -> None:
        cursor = getattr(context, "cursor", None)
        if cursor is not None:
            watchdog.end(cursor.connection)
            return
        try:
            dbapi_connection = context.connection.connection.dbapi_connection
        except Exception:  # noqa: BLE001 - an invalidated connection: nothing left to watch
            return
        if dbapi_connection is not None:
            watchdog.end(dbapi_connection)


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
    if not backend_of(engine).process_write_lock:
        return None
    key = str(engine.url)
    with _DUCKDB_LOCKS_GUARD:
        return _DUCKDB_LOCKS.setdefault(key, threading.Lock())


def db_now(conn: Connection) -> datetime:
    """The database clock as an aware UTC datetime."""
    from .types import read_stored_instant

    value = read_stored_instant(conn.exec_driver_sql(backend_of(conn).now_sql).scalar())
    if value is None:  # pragma: no cover - a database without a clock
        return datetime.now(UTC)
    return value


def serialize_schema_changes(conn: Connection, key: str) -> None:
    """Make concurrent init-db transactions on `key` run one after the other (PostgreSQL).

    Two processes creating the same missing table at once otherwise collide in
    PostgreSQL's catalog (duplicate key in pg_type) instead of one waiting.
    SQLite's BEGIN IMMEDIATE and DuckDB's single writer serialize already.
    """
    if backend_of(conn).advisory_schema_lock:
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
    backend = backend_of(engine)
    return StoreBusyError(backend.busy_message.format(name=backend.name, database=engine.url.database))


__all__ = [
    "SQLITE_INSTANT_FUNCTION",
    "Waits",
    "interrupt_statements",
    "sqlite_instant",
    "busy_error",
    "db_now",
    "is_lock_timeout",
    "make_engine",
    "normalize_url",
    "process_lock",
    "serialize_schema_changes",
]

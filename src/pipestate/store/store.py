"""StateStore: the state table's transactions, locks and bulk reads and writes."""

from __future__ import annotations

import importlib.util
import sqlite3
import sys
import threading
from collections.abc import Generator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Text,
    and_,
    case,
    false,
    func,
    inspect,
    literal_column,
    null,
    select,
    type_coerce,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.types import NullType

from ..errors import SchemaError, StateStoreError, StoreUnavailable
from . import bulk
from .backends import Backend, backend_of
from .engine import (
    SQLITE_INSTANT_FUNCTION,
    Waits,
    busy_error,
    db_now,
    is_lock_timeout,
    make_engine,
    process_lock,
)
from .schema import SCHEMA_VERSION, StateTables, build_tables
from .types import StatusType, UTCDateTime

if TYPE_CHECKING:
    pass

# The instants Python's datetime can hold (years 1 to 9999), on PostgreSQL.
_PG_FIRST_INSTANT: ColumnElement[Any] = literal_column("TIMESTAMPTZ '0001-01-01 00:00:00+00'")
_PG_PAST_LAST_INSTANT: ColumnElement[Any] = literal_column("TIMESTAMPTZ '10000-01-01 00:00:00+00'")


@lru_cache(maxsize=64)
def _names_missing_table(error: BaseException, table: str) -> bool:
    """Whether a driver error says the state table (or its events/meta table) does not exist."""
    if getattr(error, "sqlstate", None) == "42P01":  # PostgreSQL undefined_table
        return True
    text = str(error).lower()
    if table.lower() not in text:
        return False
    # SQLite: "no such table: t"; DuckDB: "Table with name t does not exist"
    return "no such table" in text or ("table with name" in text and "does not exist" in text)


def _driver_error(err: BaseException) -> bool:
    """Whether `err` comes from a driver pipestate talks to directly (only those
    already imported can have raised it, so none is imported here)."""
    if isinstance(err, sqlite3.Error):
        return True
    for name in ("psycopg", "duckdb"):
        module = sys.modules.get(name)
        if module is not None and isinstance(err, module.Error):
            return True
    return False


def refuse_newer(table: str, version: Any) -> None:
    """SchemaError unless `version` (the meta row's text, or None) is one we can write."""
    if version is None:
        return
    try:
        number = int(str(version).strip())
    except ValueError:
        raise SchemaError(f"state table {table} has an unreadable schema version {version!r}") from None
    if number > SCHEMA_VERSION:
        raise SchemaError(
            f"state table {table} has schema version {number}, newer than this pipestate "
            f"({SCHEMA_VERSION}); upgrade pipestate (nothing was written)"
        )


class StateStore:
    """One state table (with its `_events` and `_meta` tables) in one database."""

    def __init__(
        self,
        url: str,
        table: str = "pipeline_state",
        schema: str | None = None,
        lock_timeout: timedelta = timedelta(seconds=60),
        engine: Engine | None = None,
        waits: Waits | None = None,
        status_map: Mapping[str, str] | None = None,
    ) -> None:
        self.engine = engine or make_engine(url, lock_timeout, waits)
        # [state] status_map: other tools' statuses, read as the ones they mean (see StatusType).
        self.status_aliases = tuple(sorted((status_map or {}).items()))
        self.absent_columns: frozenset[str] = frozenset()  # optional columns the table lacks (note_columns)
        self.backend: Backend = backend_of(self.engine)
        self.tables: StateTables = build_tables(table, schema or None, self.backend.name, self.status_aliases)
        self.lock_timeout = lock_timeout
        self._thread_lock: threading.Lock | None = process_lock(self.engine)
        self.insert_sql: dict[Any, str] = {}
        self.unique_ids_known: bool | None = None
        self._version_checked = False

    @property
    def dialect(self) -> str:
        """The database's name, for messages (ask `backend` what it can do)."""
        return self.backend.name

    @cached_property
    def bulk_path(self) -> str | None:
        """How `insert_windows` writes new windows: "executemany" (sqlite3's
        executemany, the run's constants as literals), "copy" (PostgreSQL COPY
        through psycopg 3), "arrow" (DuckDB, an Arrow table per chunk, with
        pyarrow installed), or None (SQLAlchemy's multi-row INSERT)."""
        backend = self.backend
        if backend.bulk_path is None:
            return None
        if backend.bulk_driver is not None and self.engine.dialect.driver != backend.bulk_driver:
            return None
        if backend.bulk_module is not None and importlib.util.find_spec(backend.bulk_module) is None:
            return None
        return backend.bulk_path

    @property
    def instant_text(self) -> str | None:
        """How `insert_windows` takes instants: None for datetimes, else UTC text
        `YYYY-MM-DD HH:MM:SS.ffffff` followed by this suffix (see RowBuilder)."""
        return self.backend.instant_text if self.bulk_path is not None else None

    # -- transactions -------------------------------------------------------------

    @cached_property
    def database_file(self) -> Path | None:
        """The file of an embedded database (SQLite, DuckDB), which connecting would create."""
        database = self.engine.url.database
        if not self.backend.embedded or not database or database == ":memory:":
            return None
        if database.startswith("file:") or database.startswith("md:"):
            return None  # a URI filename or MotherDuck: not a plain path
        return Path(database).absolute()

    def file_missing(self) -> bool:
        """Whether the embedded database's file does not exist yet (so neither does the table)."""
        return self.database_file is not None and not self.database_file.exists()

    def missing_table_error(self) -> SchemaError:
        where = f" (no database file {self.database_file})" if self.file_missing() else ""
        return SchemaError(
            f"state table {self.tables.state.fullname} does not exist{where}; "
            "run 'pipestate init-db' or 'pipestate populate'"
        )

    @contextmanager
    def transaction(self, write: bool = True, create: bool = False) -> Iterator[Connection]:
        """A transaction; `write=True` takes the database's write lock where that
        is how the database serializes writers (SQLite, DuckDB threads). Without
        `create`, a missing SQLite or DuckDB file is an error, not a new empty file."""
        if not create and self.file_missing():
            raise self.missing_table_error()
        if write:
            self.check_version()
        guard = self._thread_lock if write else None
        if guard is not None and not guard.acquire(timeout=self.lock_timeout.total_seconds()):
            raise busy_error(self.engine, TimeoutError())
        try:
            try:
                connection = self.engine.connect()
            except DBAPIError as err:
                raise self.translate(err) from err
            with connection:
                connection = connection.execution_options(pipestate_write=write)
                try:
                    with connection.begin():
                        yield connection
                except SQLAlchemyError as err:
                    raise self.translate(err) from err
                except Exception as err:
                    # raised around SQLAlchemy (psycopg's COPY, DuckDB's Arrow scan, a
                    # full disk): the same one-line error as any other database error
                    if _driver_error(err):
                        raise self.translate(err) from err
                    raise
        finally:
            if guard is not None:
                guard.release()

    def check_version(self) -> None:
        """Refuse to write to tables a newer pipestate made (once per store: a
        table is not downgraded while we run). SchemaError (exit 3) if so."""
        if self._version_checked:
            return
        meta = self.tables.meta
        try:
            with self.engine.connect() as conn:
                if not inspect(conn).has_table(meta.name, schema=meta.schema):
                    return  # nothing made yet: init-db records our version
                version = conn.execute(select(meta.c.value).where(meta.c.name == "schema_version")).scalar()
        except DBAPIError as err:
            raise self.translate(err) from err
        refuse_newer(self.tables.state.name, version)
        self._version_checked = True

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement is its own transaction (errors translated)."""
        self.check_version()
        try:
            with self.engine.connect() as conn:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as err:
            raise self.translate(err) from err

    def translate(self, err: BaseException) -> StateStoreError:
        if is_lock_timeout(err):
            return busy_error(self.engine, err)
        original = getattr(err, "orig", None) or err
        if _names_missing_table(original, self.tables.state.name):
            return self.missing_table_error()
        first_line = str(original).strip().splitlines()[0] if str(original).strip() else repr(err)
        if any(fragment in first_line.lower() for fragment in self.backend.transient_errors):
            # Busy, not broken (Snowflake's lock queue, a resuming warehouse): retryable.
            return StoreUnavailable(f"state database busy ({self.dialect}), try again: {first_line}")
        if isinstance(err, DBAPIError) and err.connection_invalidated:
            # The driver says the connection dropped (a restart, a network cut): transient.
            return StoreUnavailable(
                f"lost the connection to the state database ({self.dialect}): {first_line}"
            )
        return StateStoreError(f"state database error ({self.dialect}): {first_line}")

    def now(self, conn: Connection) -> datetime:
        return db_now(conn)

    # -- schema -------------------------------------------------------------------

    def exists(self) -> bool:
        if self.file_missing():
            return False  # and connecting would create the file
        try:
            with self.engine.connect() as conn:
                return inspect(conn).has_table(self.tables.state.name, schema=self.tables.state.schema)
        except DBAPIError as err:
            raise self.translate(err) from err

    def is_set_up(self) -> bool:
        """Whether the state table and its helper tables all exist (a table another
        tool made lacks `_meta` and `_events` until init-db adds them)."""
        try:
            with self.engine.connect() as conn:
                inspector = inspect(conn)
                return all(
                    inspector.has_table(table.name, schema=table.schema)
                    for table in (self.tables.state, self.tables.events, self.tables.meta)
                )
        except DBAPIError as err:
            raise self.translate(err) from err

    def check_ready(self) -> None:
        if not self.exists():
            raise self.missing_table_error()

    # -- locks ----------------------------------------------------------------------

    # -- reads ------------------------------------------------------------------

    def raw_column(self, name: str) -> Any:
        """Column `name` as the planner (and `status`) read it, to be parsed with
        `read_stored_instant` or `read_instant`: untyped, so no column type parses every
        value. On PostgreSQL an instant comes as UTC text in SQLite's form
        (`YYYY-MM-DD HH:MM:SS.ffffff`): psycopg's timestamptz values cost ~2 us a
        row to bring to UTC, and one that Python cannot hold (BC, year 10000 and
        later, +-infinity) would fail the whole read; it comes as PostgreSQL's
        own text instead, which the planner reports as an invalid row."""
        column = self.tables.state.c[name]
        if name in self.absent_columns:
            return null().label(name)  # not in this table (yet): see note_columns
        if isinstance(column.type, StatusType):
            return column.label(name)  # text anyway; read through the status map
        if not self.backend.utc_text_reads or not isinstance(column.type, UTCDateTime):
            return type_coerce(column, NullType()).label(name)
        readable = and_(column >= _PG_FIRST_INSTANT, column < _PG_PAST_LAST_INSTANT)
        utc_text = func.to_char(func.timezone("UTC", column), "YYYY-MM-DD HH24:MI:SS.US")
        return case((readable, utc_text), else_=column.cast(Text())).label(name)

    def instant(self, column: Any) -> Any:
        """`column` (an instant) as claims compare it with a bound datetime: on
        SQLite the stored text read by populate's reader and written back in the
        form SQLAlchemy binds (NULL where populate would call the row invalid);
        elsewhere the column itself, which the database types."""
        if self.backend.instants_as_text:
            return getattr(func, SQLITE_INSTANT_FUNCTION)(column, type_=UTCDateTime())
        return column

    def claimable_window(self, conn: Connection) -> list[Any]:
        """The WHERE conditions of "this row's window is one populate calls active":
        both instants readable as populate reads them, the end after the start, and
        a batch_id no other row holds (a duplicated id is an invalid row, never claimed)."""
        state = self.tables.state
        start, end = state.c.source_query_window_start_time, state.c.source_query_window_end_time
        if self.backend.instants_as_text:
            conditions = [self.instant(end) > self.instant(start)]
        elif self.backend.instants_beyond_python:
            conditions = [end > start, start >= _PG_FIRST_INSTANT, end < _PG_PAST_LAST_INSTANT]
        else:
            conditions = [end > start]
        if not self.unique_ids(conn):
            other = state.alias("same_id")
            same = select(func.count()).where(other.c.batch_id == state.c.batch_id).scalar_subquery()
            conditions.append(same == 1)
        return conditions

    def claimable(self, conn: Connection, status: Any, *conditions: Any) -> list[Any]:
        """WHERE terms of a claim's candidate query: `status` (which the index
        serves), `conditions`, and `claimable_window`. On SQLite the rest is
        evaluated only for rows `status` admits (a CASE): its planner may walk
        every row of the pipeline for this query, and `pipestate_instant()` is
        a Python call."""
        rest = [*conditions, *self.claimable_window(conn)]
        if self.backend.instants_as_text:  # the instants are read by a Python function
            return [status, case((status, and_(*rest)), else_=false())]
        return [status, *rest]

    def unique_ids(self, conn: Connection) -> bool:
        """Whether the table itself keeps batch_id unique (a primary key or unique
        index on it alone), as every table pipestate creates on SQLite and
        PostgreSQL does. A table another tool made without one may hold
        duplicates, which claims skip and populate reports; so may DuckDB (not
        asked) and Snowflake (whose primary keys are not enforced)."""
        if self.unique_ids_known is None:
            if not self.backend.reflects_unique_ids:
                self.unique_ids_known = False
            elif inspect(conn).has_table(self.tables.state.name, schema=self.tables.state.schema):
                self.unique_ids_known = self._reflect_unique_ids(conn)
            else:
                return False  # not known yet: ask again once the table exists
        return self.unique_ids_known

    def _reflect_unique_ids(self, conn: Connection) -> bool:
        inspector = inspect(conn)
        name, schema = self.tables.state.name, self.tables.state.schema
        if inspector.get_pk_constraint(name, schema=schema).get("constrained_columns") == ["batch_id"]:
            return True
        uniques: list[list[Any]] = [
            list(u["column_names"]) for u in inspector.get_unique_constraints(name, schema=schema)
        ]
        uniques += [
            list(i["column_names"]) for i in inspector.get_indexes(name, schema=schema) if i.get("unique")
        ]
        return ["batch_id"] in uniques

    def read_chunks(self, conn: Connection, stmt: Any) -> Generator[Sequence[Any], None, None]:
        """The rows of a read-only statement as plain tuples, in chunks, the fastest way."""
        return self._partitions(conn, stmt)

    def _partitions(self, conn: Connection, stmt: Any) -> Generator[Sequence[Any], None, None]:
        """The statement's rows as plain tuples, in chunks.

        On SQLite the compiled statement runs on the transaction's own sqlite3
        connection: SQLAlchemy's result rows cost more per row than the scan
        itself, and a no-op populate reads every row of the pipeline.
        """
        if not self.backend.raw_driver_reads:
            for partition in conn.execute(stmt).partitions():
                yield [tuple(row) for row in partition]
            return
        compiled = stmt.compile(dialect=conn.dialect)
        names = compiled.positiontup or []
        cursor = conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(compiled.string, [compiled.params[name] for name in names])
            while rows := cursor.fetchmany(bulk.CHUNK):
                yield rows
        finally:
            cursor.close()

    # -- writes -------------------------------------------------------------------

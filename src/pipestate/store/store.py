"""StateStore: the state table's transactions, locks and bulk reads and writes."""

from __future__ import annotations

import importlib.util
import json
import sqlite3
import sys
import threading
from collections.abc import Generator, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from functools import cached_property, lru_cache
from itertools import islice
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    ColumnElement,
    Index,
    String,
    Table,
    Text,
    and_,
    case,
    false,
    func,
    insert,
    inspect,
    literal,
    literal_column,
    null,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.types import NullType

from ..errors import SchemaError, StateStoreError, StoreUnavailable
from ..statuses import Status
from ..windows import read_instant
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
    serialize_schema_changes,
)
from .schema import COLUMNS, CORE_COLUMNS, END_TIME, SCHEMA_VERSION, START_TIME, StateTables, build_tables
from .types import StatusType, UTCDateTime

if TYPE_CHECKING:
    pass

_CHUNK = 5000
# A SQLite populate creating at least this many rows, more than the table holds,
# builds the secondary indexes after the inserts instead of during them.
_DEFER_INDEXES_AT = 50_000

# What the planner reads of each non-superseded row, in this order.
ACTIVE_COLUMNS = (
    "batch_id",
    START_TIME,
    END_TIME,
    "pipeline_status",
)
# What ranks overlapping windows: read only for the rows of an overlap.
RANK_COLUMNS = ("updated_at", "created_at", "lease_expires_at")
# The instants Python's datetime can hold (years 1 to 9999), on PostgreSQL.
_PG_FIRST_INSTANT: ColumnElement[Any] = literal_column("TIMESTAMPTZ '0001-01-01 00:00:00+00'")
_PG_PAST_LAST_INSTANT: ColumnElement[Any] = literal_column("TIMESTAMPTZ '10000-01-01 00:00:00+00'")


def _driver_params(
    conn: Connection, table: Table, keys: tuple[str, ...], chunk: list[dict[str, Any]]
) -> tuple[str, list[Any]]:
    """The compiled INSERT for `keys` and the chunk's rows as driver parameters.

    Raises KeyError when a row lacks one of `keys` (the caller falls back).
    """
    sql, positional, order, getter, processors = _compiled_insert(table, keys, conn.dialect)
    # Timestamps repeat from row to row (a window's start is the previous end,
    # created_at/updated_at are one `now`): convert each distinct value once,
    # sharing one memo among the columns of one type.
    shared: dict[type, dict[Any, Any]] = {}
    memos: list[dict[Any, Any]] = [shared.setdefault(kind, {}) for _, _, kind in processors]
    values: list[Any] = []
    for row in chunk:
        picked = getter(row)
        row_values = list(picked) if len(order) > 1 else [picked]
        for (index, processor, _), memo in zip(processors, memos, strict=True):
            value = row_values[index]
            try:
                row_values[index] = memo[value]
            except KeyError:
                row_values[index] = memo[value] = processor(value)
            except TypeError:  # unhashable (a dict for a JSON column): no memo
                row_values[index] = processor(value)
        values.append(row_values)
    if positional:
        params: list[Any] = [tuple(row_values) for row_values in values]
    else:
        params = [dict(zip(order, row_values, strict=True)) for row_values in values]
    return sql, params


@lru_cache(maxsize=64)
def _compiled_insert(
    table: Table, keys: tuple[str, ...], dialect: Any
) -> tuple[str, bool, list[str], Any, list[Any]]:
    """The INSERT for `keys`, compiled once: the runner writes one audit event per step, and
    compiling the statement again each time was a third of the cost of writing it."""
    compiled = insert(table).compile(dialect=dialect, column_keys=list(keys), for_executemany=True)
    order = list(compiled.positiontup) if compiled.positional and compiled.positiontup else list(keys)
    processors = [
        (index, processor, type(table.c[name].type))
        for index, name in enumerate(order)
        if (processor := table.c[name].type.dialect_impl(dialect).bind_processor(dialect)) is not None
    ]
    return compiled.string, bool(compiled.positional), order, itemgetter(*order), processors


def _details_json(details: Any, encoded: dict[Any, str]) -> str:
    """`details` as sorted-key JSON, memoized for flat dicts of hashable values."""
    try:
        key = tuple(sorted(details.items())) if isinstance(details, dict) else None
        if key is not None and key in encoded:
            return encoded[key]
    except TypeError:  # unhashable or unorderable values
        key = None
    text = json.dumps(details, default=str, sort_keys=True)
    if key is not None and len(encoded) < 1024:
        encoded[key] = text
    return text


def _names_missing_table(error: BaseException, table: str) -> bool:
    """Whether a driver error says the state table (or its events/meta table) does not exist."""
    if getattr(error, "sqlstate", None) == "42P01":  # PostgreSQL undefined_table
        return True
    text = str(error).lower()
    if table.lower() not in text:
        return False
    # SQLite: "no such table: t"; DuckDB: "Table with name t does not exist"
    return "no such table" in text or ("table with name" in text and "does not exist" in text)


def _chunks(items: Iterable[Any], size: int = _CHUNK) -> Iterator[list[Any]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


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


def _refuse_newer(table: str, version: Any) -> None:
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


class RowChanged(StateStoreError):
    """A row populate planned to change was changed by someone else meanwhile (a
    worker's claim, heartbeat or completion); nothing of the plan was written."""

    retryable = True


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
        self._absent: frozenset[str] = frozenset()  # optional columns the table lacks (note_columns)
        self.backend: Backend = backend_of(self.engine)
        self.tables: StateTables = build_tables(table, schema or None, self.backend.name, self.status_aliases)
        self.lock_timeout = lock_timeout
        self._thread_lock: threading.Lock | None = process_lock(self.engine)
        self._insert_sql: dict[Any, str] = {}
        self._unique_ids: bool | None = None
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
                raise self._translate(err) from err
            with connection:
                connection = connection.execution_options(pipestate_write=write)
                try:
                    with connection.begin():
                        yield connection
                except SQLAlchemyError as err:
                    raise self._translate(err) from err
                except Exception as err:
                    # raised around SQLAlchemy (psycopg's COPY, DuckDB's Arrow scan, a
                    # full disk): the same one-line error as any other database error
                    if _driver_error(err):
                        raise self._translate(err) from err
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
            raise self._translate(err) from err
        _refuse_newer(self.tables.state.name, version)
        self._version_checked = True

    @contextmanager
    def autocommit(self) -> Iterator[Connection]:
        """A connection whose every statement is its own transaction (errors translated)."""
        self.check_version()
        try:
            with self.engine.connect() as conn:
                yield conn.execution_options(isolation_level="AUTOCOMMIT")
        except SQLAlchemyError as err:
            raise self._translate(err) from err

    def _translate(self, err: BaseException) -> StateStoreError:
        if is_lock_timeout(err):
            return busy_error(self.engine, err)
        original = getattr(err, "orig", None) or err
        if _names_missing_table(original, self.tables.state.name):
            return self.missing_table_error()
        first_line = str(original).strip().splitlines()[0] if str(original).strip() else repr(err)
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
            raise self._translate(err) from err

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
            raise self._translate(err) from err

    def init_db(self, migrate_timestamps: bool = False) -> list[str]:
        """Create missing tables and columns (idempotent); returns what it did.

        Zone-less instants on PostgreSQL are refused, or converted with
        `migrate_timestamps` (see `_zone_less_instants`)."""
        actions: list[str] = []
        with self.transaction(create=True) as conn:
            serialize_schema_changes(conn, f"pipestate init-db {self.tables.state.fullname}")
            inspector = inspect(conn)
            schema = self.tables.state.schema
            for table in (self.tables.state, self.tables.events, self.tables.meta):
                if not inspector.has_table(table.name, schema=schema):
                    actions.append(f"created table {table.name}")
            self.tables.metadata.create_all(conn, checkfirst=True)
            actions += self._add_missing_columns(conn)
            self._absent = frozenset()
            actions += self._zone_less_instants(conn, migrate_timestamps)
            version = conn.execute(
                select(self.tables.meta.c.value).where(self.tables.meta.c.name == "schema_version")
            ).scalar()
            now = self.now(conn)
            if version is None:
                conn.execute(
                    insert(self.tables.meta).values(
                        name="schema_version", value=str(SCHEMA_VERSION), updated_at=now
                    )
                )
                actions.append(f"recorded schema version {SCHEMA_VERSION}")
            else:
                _refuse_newer(self.tables.state.name, version)
        return actions

    def _present_columns(self, conn: Connection) -> set[str]:
        """The state table's column names, lower case, as the database has them."""
        table_name = conn.dialect.identifier_preparer.format_table(self.tables.state)
        # The result's keys, not inspect().get_columns(): duckdb-engine's reflection
        # queries pg_catalog tables DuckDB lacks (pg_collation) under SQLAlchemy 2.1.
        probe = conn.exec_driver_sql(f"SELECT * FROM {table_name} WHERE 1 = 0")
        columns = probe.keys()
        probe.close()
        return {name.lower() for name in columns}

    def note_columns(self, conn: Connection) -> None:
        """Note which optional columns the table lacks (another tool's table before
        init-db): `raw_column` reads them as NULL, so a dry run or validate works
        before init-db adds them. Writes still need them."""
        present = self._present_columns(conn)
        names = [column.name for column in self.tables.state.columns]
        self._absent = frozenset(name for name in names if name.lower() not in present)

    def _add_missing_columns(self, conn: Connection) -> list[str]:
        # A table made by another tool, or by an older pipestate, gets our
        # optional columns added; a missing core column is an error.
        state = self.tables.state
        preparer = conn.dialect.identifier_preparer
        table_name = preparer.format_table(state)
        present = self._present_columns(conn)
        missing_core = [name for name in CORE_COLUMNS if name not in present]
        if missing_core:
            raise SchemaError(
                f"table {state.name} lacks core column(s) {', '.join(missing_core)}; "
                "it is not a pipestate state table"
            )
        actions = []
        for _, name, _typ, _, _ in COLUMNS:
            if name in present:
                continue
            column_type = state.c[name].type.compile(dialect=conn.dialect)
            conn.exec_driver_sql(f"ALTER TABLE {table_name} ADD COLUMN {preparer.quote(name)} {column_type}")
            actions.append(f"added column {name}")
        return actions

    def _zone_less_instants(self, conn: Connection, migrate: bool) -> list[str]:
        """PostgreSQL: instant columns of the state table typed `timestamp without
        time zone` (another tool's layout). Their values mean nothing without a
        zone; read in the session's zone they moved windows by hours and populate
        made windows overlapping COMPLETED ones. Refused, or converted to
        timestamptz reading the values as UTC (how pipestate stores naive UTC)."""
        if not self.backend.timezone_type:
            return []
        state = self.tables.state
        instants = [column.name for column in state.columns if isinstance(column.type, UTCDateTime)]
        found = conn.execute(
            text(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = "
                "coalesce(:schema, current_schema()) AND table_name = :table "
                "AND data_type = 'timestamp without time zone'"
            ),
            {"schema": state.schema, "table": state.name},
        ).scalars()
        zone_less = sorted(set(found) & set(instants), key=instants.index)
        if not zone_less:
            return []
        if not migrate:
            raise SchemaError(
                f"table {state.name}: {', '.join(zone_less)} are timestamp without time zone; "
                "pipestate needs timestamptz (run 'pipestate init-db --migrate-timestamps' to "
                "convert them, reading their values as UTC)"
            )
        preparer = conn.dialect.identifier_preparer
        table_name = preparer.format_table(state)
        for name in zone_less:
            column = preparer.quote(name)
            conn.exec_driver_sql(
                f"ALTER TABLE {table_name} ALTER COLUMN {column} TYPE timestamptz "
                f"USING {column} AT TIME ZONE 'UTC'"
            )
        return [f"converted {name} to timestamptz (values read as UTC)" for name in zone_less]

    def check_ready(self) -> None:
        if not self.exists():
            raise self.missing_table_error()

    # -- locks ----------------------------------------------------------------------

    def lock_pipeline(self, conn: Connection, pipeline: str, holder: str) -> None:
        """Serialize with every other writer of this pipeline until the transaction ends.

        Call `ensure_lock_row` first, outside the transaction.
        """
        meta = self.tables.meta
        stmt = (
            update(meta)
            .where(meta.c.name == f"lock:{pipeline}")
            .values(value=holder[:255], updated_at=self.now(conn))
        )
        if conn.execute(stmt).rowcount != 1:
            raise StateStoreError(f"lock row for pipeline {pipeline} is missing from {meta.name}")

    def ensure_lock_row(self, pipeline: str) -> None:
        """Create the pipeline's lock row if missing, in its own transaction, so
        that a concurrent creator loses cleanly instead of aborting our work."""
        meta = self.tables.meta
        name = f"lock:{pipeline}"
        with self.transaction(write=True) as conn:
            if conn.execute(select(meta.c.name).where(meta.c.name == name)).first() is not None:
                return
        try:
            with self.transaction(write=True) as conn:
                conn.execute(insert(meta).values(name=name, value="", updated_at=None))
        except StateStoreError:
            with self.transaction(write=False) as conn:
                if conn.execute(select(meta.c.name).where(meta.c.name == name)).first() is None:
                    raise

    # -- reads ------------------------------------------------------------------

    @property
    def ranks_read_apart(self) -> bool:
        """Whether `candidate_chunks` leaves out `RANK_COLUMNS`, to be read with
        `rank_values` for the few rows that overlap. Only where a query may run
        while the scan is open: on DuckDB it would silently end the scan."""
        return self.backend.scan_allows_queries

    def candidate_chunks(self, conn: Connection, pipeline: str) -> Generator[Sequence[Any], None, None]:
        """Every non-SUPERSEDED row of the pipeline, sorted by window, in chunks.

        Rows are `ACTIVE_COLUMNS` (plus `RANK_COLUMNS` unless `ranks_read_apart`)
        as the driver returns them: instants are text on SQLite, naive datetimes
        on DuckDB. The planner parses what it needs (one instant per row for a
        clean history, the rank columns only for overlapping windows), so no
        column type parses every value here.
        """
        columns = ACTIVE_COLUMNS if self.ranks_read_apart else ACTIVE_COLUMNS + RANK_COLUMNS
        state = self.tables.state
        start = state.c.source_query_window_start_time
        end = state.c.source_query_window_end_time
        stmt = (
            select(*(self.raw_column(name) for name in columns))
            .where(state.c.pipeline_name == pipeline)
            .where(state.c.pipeline_status != Status.SUPERSEDED)
            .order_by(start, end, state.c.batch_id)
            .execution_options(yield_per=_CHUNK)
        )
        return self._partitions(conn, stmt)

    def rank_values(self, conn: Connection, pipeline: str, batch_ids: Sequence[str]) -> dict[str, tuple]:
        """`RANK_COLUMNS` of the given rows of the pipeline, raw, by batch_id."""
        state = self.tables.state
        found: dict[str, tuple] = {}
        for chunk in _chunks(batch_ids, 500):
            stmt = select(state.c.batch_id, *(self.raw_column(name) for name in RANK_COLUMNS)).where(
                state.c.pipeline_name == pipeline, state.c.batch_id.in_(chunk)
            )
            found.update((row[0], tuple(row[1:])) for row in conn.execute(stmt))
        return found

    def raw_column(self, name: str) -> Any:
        """Column `name` as the planner (and `status`) read it, to be parsed with
        `read_stored_instant` or `read_instant`: untyped, so no column type parses every
        value. On PostgreSQL an instant comes as UTC text in SQLite's form
        (`YYYY-MM-DD HH:MM:SS.ffffff`): psycopg's timestamptz values cost ~2 us a
        row to bring to UTC, and one that Python cannot hold (BC, year 10000 and
        later, +-infinity) would fail the whole read; it comes as PostgreSQL's
        own text instead, which the planner reports as an invalid row."""
        column = self.tables.state.c[name]
        if name in self._absent:
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
        if self._unique_ids is None:
            if not self.backend.reflects_unique_ids:
                self._unique_ids = False
            elif inspect(conn).has_table(self.tables.state.name, schema=self.tables.state.schema):
                self._unique_ids = self._reflect_unique_ids(conn)
            else:
                return False  # not known yet: ask again once the table exists
        return self._unique_ids

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

    def duplicate_ids(self, conn: Connection, pipeline: str) -> dict[str, int]:
        """batch_ids of the pipeline that more than one row of the table holds
        (in any pipeline), with how many rows hold each."""
        if self.unique_ids(conn):
            return {}
        state = self.tables.state
        mine = select(state.c.batch_id).where(state.c.pipeline_name == pipeline)
        stmt = (
            select(state.c.batch_id, func.count())
            .where(state.c.batch_id.in_(mine))
            .group_by(state.c.batch_id)
            .having(func.count() > 1)
        )
        return {str(batch_id): int(count) for batch_id, count in conn.execute(stmt)}

    def iter_candidates(self, conn: Connection, pipeline: str) -> Iterator[tuple[Any, ...]]:
        """`candidate_chunks` row by row, with start and end parsed (aware UTC or None)."""
        chunks = self.candidate_chunks(conn, pipeline)
        try:
            for chunk in chunks:
                for row in chunk:
                    yield (row[0], read_instant(row[1]), read_instant(row[2]), *row[3:])
        finally:
            chunks.close()

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
            while rows := cursor.fetchmany(_CHUNK):
                yield rows
        finally:
            cursor.close()

    def status_counts(self, conn: Connection, pipeline: str) -> dict[str, int]:
        """The pipeline's rows by status (statuses read through the status map)."""
        state = self.tables.state
        stmt = (
            select(state.c.pipeline_status, func.count())
            .where(state.c.pipeline_name == pipeline)
            .group_by(type_coerce(state.c.pipeline_status, String()))
        )
        counts: dict[str, int] = {}
        for status, count in conn.execute(stmt):
            # Two statuses another tool wrote may mean the same one: add them up.
            counts[str(status)] = counts.get(str(status), 0) + int(count)
        return counts

    def inactive_ids(self, conn: Connection, pipeline: str) -> set[str]:
        """batch_ids of this pipeline's SUPERSEDED rows (new ids must not reuse them)."""
        state = self.tables.state
        stmt = select(state.c.batch_id).where(
            state.c.pipeline_name == pipeline, state.c.pipeline_status == Status.SUPERSEDED
        )
        return set(conn.execute(stmt).scalars())

    def has_rows(self, conn: Connection) -> bool:
        """Whether the state table holds any row at all, of any pipeline."""
        state = self.tables.state
        return conn.execute(select(state.c.batch_id).limit(1)).first() is not None

    def existing_ids(self, conn: Connection, ids: Sequence[str]) -> set[str]:
        """Which of `ids` exist in the table already, in any pipeline."""
        state = self.tables.state
        found: set[str] = set()
        for chunk in _chunks(ids, 500):
            found.update(conn.execute(select(state.c.batch_id).where(state.c.batch_id.in_(chunk))).scalars())
        return found

    # -- writes -------------------------------------------------------------------

    def insert_windows(
        self,
        conn: Connection,
        columns: Sequence[str],
        constant: dict[str, Any],
        rows: list[tuple[Any, ...]],
        derived: dict[str, str] | None = None,
    ) -> int:
        """Insert new state rows: `constant` plus each tuple's values for `columns`,
        plus each `derived` column as its prefix followed by the row's batch_id
        (`columns` then starts with batch_id).

        Instants and dates in the tuples are as `instant_text` says (see
        RowBuilder). The way in is `bulk_path`: on SQLite the constants are
        rendered into the statement as literals and the derived ids computed
        by it, so sqlite3 binds only the values that change; PostgreSQL takes
        COPY, DuckDB an Arrow table; anything else SQLAlchemy's executemany,
        which batches the rows into multi-row INSERTs. All of them write in
        the caller's transaction.
        """
        derived = derived or {}
        if not rows:
            return 0
        path = self.bulk_path
        if path == "executemany":
            sql = self._sqlite_window_insert(conn, tuple(columns), constant, derived)
            conn.exec_driver_sql(sql, rows)
            return len(rows)
        if path == "arrow":
            return bulk.arrow_insert(self.tables.state, conn, tuple(columns), constant, rows, derived)
        if path == "copy":
            return bulk.copy_insert(self.tables.state, conn, tuple(columns), constant, rows, derived)
        names = tuple(columns)
        dicts = []
        for row in rows:
            values = constant | dict(zip(names, row, strict=True))
            for name, prefix in derived.items():
                values[name] = prefix + row[0]
            dicts.append(values)
        conn.execute(insert(self.tables.state), dicts)
        return len(rows)

    def _sqlite_window_insert(
        self, conn: Connection, columns: tuple[str, ...], constant: dict[str, Any], derived: dict[str, str]
    ) -> str:
        """`bulk.sqlite_insert_sql`, built once per run (the key holds the run's constants)."""
        key = (columns, tuple(constant.items()), tuple(derived.items()))
        cached = self._insert_sql.get(key)
        if cached is None:
            cached = bulk.sqlite_insert_sql(self.tables.state, conn.dialect, columns, constant, derived)
            self._insert_sql = {key: cached}
        return cached

    @contextmanager
    def bulk_load(self, conn: Connection, expected_rows: int) -> Iterator[None]:
        """Around the inserts of a populate that creates `expected_rows` rows.

        On SQLite a large load into a table that holds fewer rows drops the two
        secondary indexes and builds them again at the end (one sort instead of
        a B-tree insert per row and index), inside the same transaction: a
        failure rolls the indexes back with everything else.
        """
        defer: list[Index] = []
        if self.backend.defer_indexes and expected_rows >= _DEFER_INDEXES_AT:
            present = conn.execute(select(func.count()).select_from(self.tables.state)).scalar() or 0
            if expected_rows > present:
                defer = sorted(self.tables.state.indexes, key=lambda index: str(index.name))
        for index in defer:
            index.drop(conn)
        yield
        for index in defer:
            index.create(conn)

    def release_log(self) -> None:
        """After a large commit on SQLite: empty the write-ahead log, so later
        readers do not look pages up in a log of a gigabyte. Skipped (and left
        to SQLite's automatic checkpoints) when a reader holds it for 0.2 s."""
        if not self.backend.checkpoint_log:
            return
        with self.engine.connect() as conn:
            raw = conn.connection.dbapi_connection
            assert raw is not None
            raw.execute("PRAGMA busy_timeout = 200")
            try:
                raw.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
            finally:
                raw.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout.total_seconds() * 1000)}")

    def _bulk_insert(self, conn: Connection, table: Table, rows: Iterable[dict[str, Any]]) -> int:
        # On SQLite, SQLAlchemy's executemany spends ~50 us per 65-column row
        # building and type-processing parameters; here the INSERT is compiled once
        # per chunk, each column's bind processor (the same one SQLAlchemy would
        # apply) is run directly, and sqlite3 gets plain tuples. Other databases
        # keep SQLAlchemy's path: its "insertmanyvalues" batching into multi-row
        # INSERTs is what makes PostgreSQL and DuckDB fast (their drivers'
        # executemany is 5x and 20x slower). Rows with differing keys fall back too.
        count = 0
        for chunk in _chunks(rows):
            keys = tuple(chunk[0])
            if not self.backend.driver_executemany:
                conn.execute(insert(table), chunk)
                count += len(chunk)
                continue
            try:
                # Same length and every key present: the same columns in every row.
                if not all(len(row) == len(keys) for row in chunk):
                    raise KeyError(keys)
                sql, params = _driver_params(conn, table, keys, chunk)
            except KeyError:
                conn.execute(insert(table), chunk)
            else:
                conn.exec_driver_sql(sql, params)
            count += len(chunk)
        return count

    def supersede(
        self,
        conn: Connection,
        pipeline: str,
        losers: Iterable[tuple[str, str, datetime | None, str, str]],
        *,
        now: datetime,
        run_id: str,
        by: str,
    ) -> int:
        """Mark `(batch_id, old_status, old_updated_at, superseded_by, reason)` rows SUPERSEDED.

        Each update applies only if the row is still what the plan saw: the same
        status and the same `updated_at` (every claim, heartbeat, step and
        completion moves it). Workers claim without the pipeline lock, so a row
        can change between populate's scan and this write; then RowChanged is
        raised, the caller's transaction rolls back and populate plans again.
        """
        state = self.tables.state
        changed = 0
        for batch_id, old_status, old_updated_at, winner, reason in losers:
            guard = [
                state.c.batch_id == batch_id,
                state.c.pipeline_name == pipeline,
                state.c.pipeline_status == old_status,
            ]
            if old_updated_at is not None:
                guard.append(self.instant(state.c.updated_at) == old_updated_at)
            result = conn.execute(
                update(state)
                .where(*guard)
                .values(
                    pipeline_status=Status.SUPERSEDED,
                    superseded_by=winner,
                    superseded_at=now,
                    supersede_reason=reason,
                    populate_run_id=run_id,
                    updated_at=now,
                    updated_by=by,
                )
            )
            if result.rowcount != 1:
                raise RowChanged(f"batch {batch_id} changed after populate read it")
            changed += 1
        return changed

    def insert_created_events(self, conn: Connection, pipeline: str, run_id: str, actor: str) -> int:
        """One CREATED event per row that populate run `run_id` inserted, in one
        INSERT ... SELECT (details: the same JSON text insert_events writes)."""
        state, events = self.tables.state, self.tables.events
        details = (
            literal('{"record_origin": "', String())
            + state.c.record_origin
            + literal(f'", "run_id": "{run_id}"}}', String())
        )
        rows = (
            select(
                state.c.batch_id,
                state.c.pipeline_name,
                literal("CREATED", String()),
                literal(actor, String()),
                state.c.created_at,
                literal(Status.PENDING.value, String()),
                details,
            )
            .where(
                state.c.pipeline_name == pipeline,
                state.c.populate_run_id == run_id,
                state.c.pipeline_status == Status.PENDING,
            )
            .order_by(state.c.source_query_window_start_time)
        )
        columns = [
            "batch_id",
            "pipeline_name",
            "event_type",
            "worker_id",
            "event_time",
            "new_status",
            "details",
        ]
        result = conn.execute(insert(events).from_select(columns, rows))
        return int(result.rowcount or 0)

    def insert_events(self, conn: Connection, events: Iterable[dict[str, Any]]) -> int:
        count = 0
        encoded: dict[Any, str] = {}  # populate's CREATED events share their details
        for chunk in _chunks(events):
            for event in chunk:
                details = event.get("details")
                if details is not None and not isinstance(details, str):
                    event["details"] = _details_json(details, encoded)
            count += self._bulk_insert(conn, self.tables.events, chunk)
        return count

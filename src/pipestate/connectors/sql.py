"""Target `sql`: any SQLAlchemy database (DuckDB by default, SQLite, PostgreSQL).

The target table is typed (see `landing`): `pipestate_batch_id`, `pipestate_loaded_at`, the
record's time as a timestamp, one column per top-level field, and with `raw = true` the whole
record as JSON in `record`. A load deletes the batch's rows and bulk-loads the staged ones in one
transaction (DuckDB scans the Arrow data, PostgreSQL takes COPY, SQLite executemany), so loading
a batch again replaces its rows and a failed load leaves the previous ones in place.
"""

from __future__ import annotations

import contextlib
import io
import logging
import time
import uuid
from datetime import datetime
from typing import Any, Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import sqlalchemy as sa
from pydantic import Field, field_validator

from ..errors import ConfigError, ConnectorError, TargetSchemaError, TransientConnectorError
from ..windows import UTC
from .arrow import stored_instant
from .landing import (
    BATCH_COLUMN,
    LOADED_COLUMN,
    PROFILES,
    Landing,
    Profile,
    framed,
    profile_for,
    sqlite_text_times,
)
from .protocols import (
    BatchContext,
    BatchRows,
    LoadResult,
    Stage,
    StagedData,
)
from .registry import RecordTableOptions

__all__ = ["SqlTarget"]

_EXTRA_FOR = {"duckdb": "duckdb", "postgresql": "postgres"}
_HOLD_SECONDS = 2.0
log = logging.getLogger(__name__)


class SqlOptions(RecordTableOptions):
    type: Literal["sql"] = "sql"
    url: str = "duckdb:///pipestate-target.duckdb"
    schema_: str | None = Field(default=None, alias="schema")
    epoch_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    batch_size: int = Field(default=1000, gt=0)  # kept for old configs: loads go in bulk now
    raw: bool = False  # also keep each whole record as JSON in the `record` column
    columns: dict[str, str] = {}  # field -> SQL type, instead of the type read from the data
    # Seconds a load waits for a target another process holds (DuckDB's one writer), then fails.
    busy_timeout: float = Field(default=60.0, ge=0, le=86400)

    @field_validator("columns")
    @classmethod
    def _types(cls, value: dict[str, str]) -> dict[str, str]:
        for name, sql_type in value.items():
            if not sql_type.replace(" ", "").replace("(", "").replace(")", "").replace(",", "").isalnum():
                raise ValueError(f"{name}: not a plain SQL type: {sql_type!r}")
        return value


class SqlTarget:
    """Loads staged record batches into one typed table of a SQLAlchemy database, exactly once
    per batch."""

    Options = SqlOptions

    def __init__(self, options: SqlOptions) -> None:
        self.options = options
        try:
            # A database that lets one process at a time write (DuckDB) gets one connection,
            # kept across loads (opening and closing costs tens of milliseconds: the close
            # checkpoints) and let go once held _HOLD_SECONDS, so workers in other processes
            # get their turn between two loads.
            url = sa.engine.make_url(options.url)
            known = PROFILES.get(url.get_backend_name())
            engine_options: dict[str, Any] = {}
            if known and known.one_writer:
                engine_options |= {"poolclass": sa.pool.QueuePool, "pool_size": 1, "max_overflow": 0}
            self.engine = sa.create_engine(url, **engine_options)
            if known and known.connect_settings:
                _apply_settings(
                    self.engine, {k: v for k, v in known.connect_settings.items() if k not in url.query}
                )
        except sa.exc.NoSuchModuleError as err:
            backend = options.url.split(":", 1)[0].split("+", 1)[0]
            extra = _EXTRA_FOR.get(backend)
            hint = f': pip install "pipestate[{extra}]"' if extra else ""
            raise ConfigError(f"[target] url: no driver for {backend}{hint}") from err
        except (sa.exc.ArgumentError, ImportError) as err:
            raise ConfigError(f"[target] url: {err}") from err
        try:
            self.profile: Profile = profile_for(self.engine.dialect.name)
        except ConnectorError as err:
            raise ConfigError(f"[target] url: {err}") from err
        assert options.time_column is not None
        quote = self.profile.quote
        self.table = (quote(options.schema_) + "." if options.schema_ else "") + quote(options.table)
        self.landing = Landing(
            self.profile,
            self.table,
            options.time_field,
            options.time_column,
            options.naive_timezone,
            options.epoch_unit,
            "record" if options.raw else None,
            options.columns,
        )
        self._created = False
        self._held_since: float | None = None

    def close(self) -> None:
        """Close the pooled connections."""
        self.engine.dispose()

    @property
    def location(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        name = f"{self.options.schema_}.{self.options.table}" if self.options.schema_ else self.options.table
        return f"{url}#{name}"

    def ensure_table(self) -> None:
        """Create the table (and an index on the batch id) if it is missing."""
        if self._created:
            return
        index_name = f"ix_{self.options.table}_batch"
        if self._in_catalog(index_name):
            self._created = True  # no DDL: CREATE ... IF NOT EXISTS would wait on any open load
            return
        statements = [self.landing.create_sql()]
        if self.profile.index_batch_id:
            index = self.profile.quote(index_name)
            statements.append(
                f"CREATE INDEX IF NOT EXISTS {index} ON {self.table} ({self.profile.quote(BATCH_COLUMN)})"
            )
        if self.profile.ddl_lock_timeout_sql:
            statements.insert(0, self.profile.ddl_lock_timeout_sql)
        try:
            with self.engine.begin() as conn:
                for statement in statements:
                    conn.exec_driver_sql(statement)
        except sa.exc.DBAPIError as err:
            # Two workers may create it at once: only fail if it is still not there.
            try:
                present = bool(self._columns_now())
            except sa.exc.DBAPIError:
                present = False
            if not present:
                raise _wrap(err, "create the target table") from err
        self._created = True

    def _in_catalog(self, index_name: str) -> bool:
        """Whether the table (and its batch-id index, where the profile makes one) exist, read
        from the catalog alone: no lock is taken, so an open load of any batch does not block."""
        query = self.profile.index_query
        if query is None:
            return False
        names = {"table": self.options.table, "schema": self.options.schema_}
        try:
            with self.engine.connect() as conn:
                if not self._columns(conn):
                    return False
                if not self.profile.index_batch_id:
                    return True
                return conn.execute(sa.text(query), {**names, "index": index_name}).first() is not None
        except sa.exc.DBAPIError:
            return False  # the DDL below then says what is wrong

    def _columns(self, conn: sa.Connection) -> dict[str, str]:
        rows = conn.execute(
            sa.text(self.profile.columns_query), {"table": self.options.table, "schema": self.options.schema_}
        )
        return {str(name): str(kind) for name, kind in rows}

    def _columns_now(self) -> dict[str, str]:
        with self.engine.connect() as conn:
            return self._columns(conn)

    def load(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        return self.load_run([(batch, staged)], stage)[0]

    def load_run(self, items: list[tuple[BatchContext, StagedData]], stage: Stage) -> list[LoadResult]:
        """Replace the rows of several batches with their staged ones in ONE transaction (each
        row tagged with its own batch id): one commit for a run of windows, and a failure
        leaves every batch's previous rows in place. One LoadResult per item, in order."""
        # Another process holding a DuckDB file (or a SQLite write lock past its
        # timeout) is a wait, not a failure: retry for a while before giving up.
        wait = self.options.busy_timeout
        deadline = time.monotonic() + wait
        pause = 0.05
        said = False
        while True:
            try:
                return self._load_once(items, stage)
            except TransientConnectorError as err:
                self.engine.dispose()  # a connection that failed is not kept
                self._held_since = None
                if time.monotonic() + pause > deadline:
                    if said:
                        err.add_note(f"still busy after [target] busy_timeout = {wait:g} s")
                    raise
                if not said:  # one line, so a silent wait is not mistaken for a hang
                    log.warning(
                        "target %s is busy (%s); waiting up to %g s ([target] busy_timeout)",
                        self.location,
                        err,
                        wait,
                        extra={"batch_id": items[0][0].batch_id, "step": "target"},
                    )
                    said = True
                time.sleep(pause)
                pause = min(pause * 2, 1.0)
            finally:
                self._let_go_if_held_long()

    def _let_go_if_held_long(self) -> None:
        if not self.profile.one_writer:
            return
        now = time.monotonic()
        if self._held_since is None:
            self._held_since = now
        elif now - self._held_since >= _HOLD_SECONDS:
            self.engine.dispose()
            self._held_since = None

    def _load_once(self, items: list[tuple[BatchContext, StagedData]], stage: Stage) -> list[LoadResult]:
        self.ensure_table()
        load_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        quote = self.profile.quote
        ids = [batch.batch_id for batch, _ in items]
        if len(set(ids)) != len(ids):
            raise ConnectorError(f"target: one load names a batch twice: {sorted(ids)}")
        doing = f"load batch {ids[0]}" if len(ids) == 1 else f"load {len(ids)} batches ({ids[0]}, ...)"
        try:
            if all(staged.record_count == 0 for _, staged in items):
                # Empty windows (quiet hours) replace nothing unless an earlier load of them
                # left rows: a count, not a write transaction and its commit.
                with self.engine.connect() as conn:
                    if not any(self._rows_by_batch(conn, ids).values()):
                        return [LoadResult(0, 0, self.location, load_id) for _ in items]
            with self.engine.begin() as conn:
                if self.profile.lock_sql:
                    for batch_id in sorted(ids):  # one order, so two runs never deadlock
                        conn.execute(sa.text(self.profile.lock_sql), {"key": batch_id})
                if self.profile.utc_sql:
                    conn.exec_driver_sql(self.profile.utc_sql)
                # The rows replaced: counted per batch, then one DELETE for the run.
                previous = self._rows_by_batch(conn, ids)
                if any(previous.values()):
                    marks = ", ".join(f":b{n}" for n in range(len(ids)))
                    conn.execute(
                        sa.text(f"DELETE FROM {self.table} WHERE {quote(BATCH_COLUMN)} IN ({marks})"),
                        {f"b{n}": batch_id for n, batch_id in enumerate(ids)},
                    )
                inserted = dict.fromkeys(ids, 0)
                with _Copy(conn, self.table, quote) as copy:
                    # The table's columns, read once for the run and again after a change: a
                    # read while a COPY is open would wait on the COPY for ever.
                    known: list[dict[str, str]] = []

                    def columns() -> dict[str, str]:
                        if not known:
                            copy.end()
                            known.append(self._columns(conn))
                        return known[0]

                    def ddl(statement: str) -> None:
                        copy.end()  # no other statement while a COPY is open
                        conn.exec_driver_sql(statement)
                        known.clear()

                    for batch, staged in items:
                        if staged.record_count == 0:
                            continue  # nothing staged: nothing to read
                        chunks = stage.read(staged)
                        for table in self.landing.tables(chunks, columns, ddl):
                            if self.profile.bulk == "copy":
                                copy.write(framed(table, batch.batch_id, loaded_at))
                            else:
                                self._bulk(conn, table, batch.batch_id, loaded_at)
                            inserted[batch.batch_id] += table.num_rows
                now = self._rows_by_batch(conn, ids)
                wrong = [batch_id for batch_id in ids if now[batch_id] != inserted[batch_id]]
                if wrong:
                    first = wrong[0]
                    raise ConnectorError(
                        f"target {self.location}: {now[first]} rows for batch {first} "
                        f"after inserting {inserted[first]}; rolled back"
                    )
        except sa.exc.DBAPIError as err:
            raise _wrap(err, doing) from err
        except Exception as err:
            if _data_error(err):  # a driver's own call (PostgreSQL's COPY) refused a value
                raise _wrap_driver(err, doing) from err
            raise
        return [LoadResult(now[batch_id], previous[batch_id], self.location, load_id) for batch_id in ids]

    def _bulk(self, conn: sa.Connection, table: pa.Table, batch_id: str, loaded_at: datetime) -> None:
        quote = self.profile.quote
        names = [BATCH_COLUMN, LOADED_COLUMN, *table.column_names]
        column_list = ", ".join(quote(name) for name in names)
        dbapi: Any = conn.connection.dbapi_connection
        if self.profile.bulk == "arrow":
            view = f"pipestate_staged_{uuid.uuid4().hex[:8]}"
            # Structs and lists arrive as themselves; DuckDB writes their JSON.
            selects = [
                f"to_json({quote(item.name)})" if pa.types.is_nested(item.type) else quote(item.name)
                for item in table.schema
            ]
            # As a reader, not the table: DuckDB keeps a registered table alive until the
            # transaction ends (a 5M-record window would stay in memory), a reader's
            # batches go once they are read.
            dbapi.register(view, pa.RecordBatchReader.from_batches(table.schema, table.to_batches()))
            try:
                dbapi.execute(
                    f"INSERT INTO {self.table} ({column_list}) SELECT ?, ?, {', '.join(selects)} FROM {view}",
                    [batch_id, loaded_at],
                )
            except Exception as err:  # the driver's own error: SQLAlchemy does not see this call
                with contextlib.suppress(Exception):  # the aborted transaction refuses it too
                    dbapi.unregister(view)
                raise _wrap_driver(err, f"load batch {batch_id}") from err
            dbapi.unregister(view)
        else:
            stamp = loaded_at.astimezone(UTC).replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
            columns = [_sqlite_ready(table.column(name)).to_pylist() for name in table.column_names]
            rows_out = [(batch_id, stamp, *values) for values in zip(*columns, strict=True)]
            marks = ", ".join("?" for _ in names)
            conn.exec_driver_sql(f"INSERT INTO {self.table} ({column_list}) VALUES ({marks})", rows_out)

    def count(self, batch: BatchContext) -> int:
        if not self._columns_now():
            return 0
        with self.engine.connect() as conn:
            return self._rows_by_batch(conn, [batch.batch_id])[batch.batch_id]

    def batch_counts(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, BatchRows]:
        """Rows per batch id whose record time is in [start, end): one grouped query."""
        if not self._columns_now():
            return {}
        quote = self.profile.quote
        batch, moment = quote(BATCH_COLUMN), quote(self.options.time_column or "")
        where, params = [], {}
        for name, value, test in (("low", start, ">="), ("high", end, "<")):
            if value is not None:
                where.append(f"{moment} {test} :{name}")
                params[name] = self._instant_param(value)
        sql = f"SELECT {batch}, count(*), min({moment}), max({moment}) FROM {self.table}"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += f" GROUP BY {batch}"
        try:
            with self.engine.connect() as conn:
                rows = conn.execute(sa.text(sql), params).all()
        except sa.exc.DBAPIError as err:
            raise _wrap(err, "count the rows of each batch") from err
        return {str(b): BatchRows(int(n), stored_instant(lo), stored_instant(hi)) for b, n, lo, hi in rows}

    def _instant_param(self, value: datetime) -> Any:
        value = value.astimezone(UTC)
        if self.profile.name == "sqlite":  # stored as UTC text: compared as text
            return value.replace(tzinfo=None).isoformat(sep=" ", timespec="microseconds")
        return value

    def _rows_of(self, conn: sa.Connection, batch_id: str) -> int:
        """The target's rows of one batch."""
        return self._rows_by_batch(conn, [batch_id])[batch_id]

    def _rows_by_batch(self, conn: sa.Connection, batch_ids: list[str]) -> dict[str, int]:
        """The target's rows of each of these batches (0 for a batch with none), in one query."""
        column = self.profile.quote(BATCH_COLUMN)
        marks = ", ".join(f":b{n}" for n in range(len(batch_ids)))
        query = sa.text(
            f"SELECT {column}, count(*) FROM {self.table} WHERE {column} IN ({marks}) GROUP BY {column}"
        )
        rows = conn.execute(query, {f"b{n}": batch_id for n, batch_id in enumerate(batch_ids)})
        found = {str(batch_id): int(count) for batch_id, count in rows}
        return {batch_id: found.get(batch_id, 0) for batch_id in batch_ids}


class _Copy:
    """One `COPY ... FROM STDIN (FORMAT csv)` kept open across a load's chunks, so PostgreSQL
    parses one chunk while the next is prepared here; a new one starts when the columns
    change, and `end` closes it before any other statement (DDL) runs."""

    def __init__(self, conn: sa.Connection, table: str, quote: Any) -> None:
        self.conn, self.table, self.quote = conn, table, quote
        self._cursor: Any = None
        self._context: Any = None
        self._copy: Any = None
        self._names: list[str] | None = None

    def __enter__(self) -> _Copy:
        return self

    def write(self, table: pa.Table) -> None:
        if table.column_names != self._names:
            self.end()
            columns = ", ".join(self.quote(name) for name in table.column_names)
            self._cursor = self.conn.connection.dbapi_connection.cursor()  # type: ignore[union-attr]
            self._context = self._cursor.copy(f"COPY {self.table} ({columns}) FROM STDIN (FORMAT csv)")
            self._copy = self._context.__enter__()
            self._names = table.column_names
        ready = pa.table({name: _csv_ready(table.column(name)) for name in table.column_names})
        buffer = io.BytesIO()
        pa_csv.write_csv(ready, buffer, pa_csv.WriteOptions(include_header=False, batch_size=8192))
        self._copy.write(buffer.getbuffer())

    def end(self, *error: Any) -> None:
        if self._context is not None:
            context, cursor = self._context, self._cursor
            self._context = self._copy = self._cursor = self._names = None
            try:
                context.__exit__(*(error or (None, None, None)))
            finally:
                cursor.close()

    def __exit__(self, *error: Any) -> None:
        self.end(*error)


def _csv_ready(values: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column as PostgreSQL's CSV COPY reads it: instants as naive UTC text (the load sets
    the transaction's time zone to UTC; pyarrow writes zoned instants ten times slower),
    bytes as bytea's hex text."""
    if pa.types.is_timestamp(values.type) and values.type.tz is not None:
        return values.cast(pa.timestamp(values.type.unit))
    if pa.types.is_binary(values.type) or pa.types.is_large_binary(values.type):
        return pa.array([None if v is None else "\\x" + v.hex() for v in values.to_pylist()], pa.string())
    return values


def _sqlite_ready(values: pa.ChunkedArray) -> pa.ChunkedArray | pa.Array:
    """A column as sqlite3 binds it: instants as SQLAlchemy's UTC text, decimals as floats."""
    if pa.types.is_timestamp(values.type):
        return sqlite_text_times(values)
    if pa.types.is_date(values.type):
        return values.cast(pa.string())
    if pa.types.is_decimal(values.type):
        return values.cast(pa.float64())
    return values


def _apply_settings(engine: sa.Engine, settings: dict[str, str]) -> None:
    """`SET name = 'value'` on each new connection. Set, not given as connect-time config: DuckDB
    refuses a second connection to one file with a different config, so a user's own
    connection to the target, in the same process, would fail while the run holds one."""
    if not settings:
        return
    statements = [f"SET {name} = '{value}'" for name, value in settings.items()]

    @sa.event.listens_for(engine, "connect")
    def _settings(dbapi_connection: Any, record: Any) -> None:
        cursor = dbapi_connection.cursor()
        try:
            for statement in statements:
                cursor.execute(statement)
        finally:
            cursor.close()


def _wrap(err: sa.exc.DBAPIError, doing: str) -> ConnectorError:
    kind: type[ConnectorError] = ConnectorError
    if err.connection_invalidated or _busy(err):
        kind = TransientConnectorError
    elif isinstance(err, sa.exc.DataError):  # a value the column's type refuses: so on every retry
        kind = TargetSchemaError
    return kind(f"target: cannot {doing}: {str(err.orig).splitlines()[0]}")


def _wrap_driver(err: Exception, doing: str) -> ConnectorError:
    """`_wrap` for an error of a driver call made past SQLAlchemy (DuckDB's Arrow insert)."""
    if _data_error(err):
        return TargetSchemaError(f"target: cannot {doing}: {str(err).splitlines()[0]}")
    return ConnectorError(f"target: cannot {doing}: {str(err).splitlines()[0]}")


def _data_error(err: BaseException) -> bool:
    """A driver's PEP 249 DataError: the data does not fit the column, whatever the retry."""
    return not isinstance(err, ConnectorError) and any(k.__name__ == "DataError" for k in type(err).__mro__)


def _busy(err: sa.exc.DBAPIError) -> bool:
    text = str(err.orig).lower()
    return any(word in text for word in ("locked", "lock", "conflict", "deadlock", "busy"))

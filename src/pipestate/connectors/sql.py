"""Target `sql`: any SQLAlchemy database (DuckDB by default, SQLite, PostgreSQL).

The target table holds one row per record:

| column | holds |
| --- | --- |
| `pipestate_batch_id` | the batch that loaded the row |
| `pipestate_loaded_at` | when that load ran (UTC) |
| `<time_column>` | the record's time field, as a timestamp (NULL if the record has none) |
| `record` | the whole record as JSON text |

A load deletes the batch's rows and inserts the staged ones in one transaction, so loading a
batch again replaces its rows and a failed load leaves the previous ones in place.
"""

from __future__ import annotations

import time
import uuid
from datetime import datetime
from itertools import islice
from typing import Any, Literal

import sqlalchemy as sa
from pydantic import Field

from ..errors import ConfigError
from ..windows import UTC, zone
from .base import (
    BatchContext,
    ConnectorError,
    LoadResult,
    RecordTableOptions,
    Stage,
    StagedData,
    TransientConnectorError,
    dumps,
    parse_instant,
)

__all__ = ["SqlTarget", "target_table"]

_EXTRA_FOR = {"duckdb": "duckdb", "postgresql": "postgres"}
_BUSY_WAIT_SECONDS = 60.0


class SqlOptions(RecordTableOptions):
    type: Literal["sql"] = "sql"
    url: str = "duckdb:///pipestate-target.duckdb"
    schema_: str | None = Field(default=None, alias="schema")
    epoch_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    batch_size: int = Field(default=1000, gt=0)


def target_table(metadata: sa.MetaData, name: str, time_column: str, schema: str | None) -> sa.Table:
    """The target table's definition (also used by tests and the demo to read it back)."""
    return sa.Table(
        name,
        metadata,
        sa.Column("pipestate_batch_id", sa.String(255), nullable=False),
        sa.Column("pipestate_loaded_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column(time_column, sa.DateTime(timezone=True), nullable=True),
        sa.Column("record", sa.Text, nullable=False),
        schema=schema,
    )


class SqlTarget:
    """Loads staged records into one table of a SQLAlchemy database, exactly once per batch."""

    Options = SqlOptions

    def __init__(self, options: SqlOptions) -> None:
        self.options = options
        self._tz = zone(options.naive_timezone)
        try:
            # DuckDB lets one process at a time open a file for writing: hold it only
            # for the length of a load, so workers in other processes can take turns.
            duckdb = options.url.startswith("duckdb")
            self.engine = sa.create_engine(options.url, poolclass=sa.pool.NullPool if duckdb else None)
        except sa.exc.NoSuchModuleError as err:
            backend = options.url.split(":", 1)[0].split("+", 1)[0]
            extra = _EXTRA_FOR.get(backend)
            hint = f': pip install "pipestate[{extra}]"' if extra else ""
            raise ConfigError(f"[target] url: no driver for {backend}{hint}") from err
        except (sa.exc.ArgumentError, ImportError) as err:
            raise ConfigError(f"[target] url: {err}") from err
        assert options.time_column is not None
        self._time_column: str = options.time_column
        self.table = target_table(sa.MetaData(), options.table, options.time_column, options.schema_)
        self._batch = self.table.c.pipestate_batch_id
        if self.engine.dialect.name != "duckdb":  # DuckDB scans its columns fast without one
            sa.Index(f"ix_{options.table}_batch", self._batch)
        self._created = False

    @property
    def location(self) -> str:
        url = self.engine.url.render_as_string(hide_password=True)
        return f"{url}#{self.table.fullname}"

    def ensure_table(self) -> None:
        """Create the table (and an index on the batch id) if it is missing."""
        if self._created:
            return
        try:
            self.table.metadata.create_all(self.engine, checkfirst=True)
        except sa.exc.DBAPIError as err:
            # Two workers may create it at once: only fail if it is still not there.
            try:
                present = sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema)
            except sa.exc.DBAPIError:
                present = False
            if not present:
                raise _wrap(err, "create the target table") from err
        self._created = True

    def load(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        # Another process holding a DuckDB file (or a SQLite write lock past its
        # timeout) is a wait, not a failure: retry for a while before giving up.
        deadline = time.monotonic() + _BUSY_WAIT_SECONDS
        pause = 0.05
        while True:
            try:
                return self._load_once(batch, staged, stage)
            except TransientConnectorError:
                if time.monotonic() + pause > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _load_once(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        self.ensure_table()
        load_id = uuid.uuid4().hex
        loaded_at = datetime.now(UTC)
        count_rows = self._count_query(batch)
        records = iter(stage.read(staged))
        try:
            with self.engine.begin() as conn:
                self._lock(conn, batch.batch_id)
                previous = conn.execute(count_rows).scalar_one()
                conn.execute(sa.delete(self.table).where(self._batch == batch.batch_id))
                inserted = 0
                while chunk := list(islice(records, self.options.batch_size)):
                    rows = [self._row(batch.batch_id, loaded_at, record) for record in chunk]
                    conn.execute(self.table.insert(), rows)
                    inserted += len(rows)
                now = conn.execute(count_rows).scalar_one()
                if now != inserted:
                    raise ConnectorError(
                        f"target {self.location}: {now} rows for batch {batch.batch_id} "
                        f"after inserting {inserted}; rolled back"
                    )
        except sa.exc.DBAPIError as err:
            raise _wrap(err, f"load batch {batch.batch_id}") from err
        return LoadResult(now, previous, self.location, load_id)

    def _lock(self, conn: sa.Connection, batch_id: str) -> None:
        # PostgreSQL's READ COMMITTED would let two loads of one batch both delete nothing and
        # both insert; a transaction lock on the batch id serializes them. SQLite and DuckDB
        # already allow one writer at a time.
        if conn.dialect.name == "postgresql":
            lock = sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))")
            conn.execute(lock, {"k": batch_id})

    def _row(self, batch_id: str, loaded_at: datetime, record: dict[str, Any]) -> dict[str, Any]:
        value = record.get(self.options.time_field)
        try:
            moment = parse_instant(value, self._tz, self.options.epoch_unit)
        except (ValueError, TypeError, OverflowError):
            moment = None  # the source decided the record belongs here; keep it, time unknown
        return {
            "pipestate_batch_id": batch_id,
            "pipestate_loaded_at": loaded_at,
            self._time_column: moment,
            "record": dumps(record),
        }

    def count(self, batch: BatchContext) -> int:
        if not sa.inspect(self.engine).has_table(self.table.name, schema=self.table.schema):
            return 0
        with self.engine.connect() as conn:
            return int(conn.execute(self._count_query(batch)).scalar_one())

    def _count_query(self, batch: BatchContext) -> sa.Select[Any]:
        where = self._batch == batch.batch_id
        return sa.select(sa.func.count()).select_from(self.table).where(where)


def _wrap(err: sa.exc.DBAPIError, doing: str) -> ConnectorError:
    kind = TransientConnectorError if err.connection_invalidated or _busy(err) else ConnectorError
    return kind(f"target: cannot {doing}: {str(err.orig).splitlines()[0]}")


def _busy(err: sa.exc.DBAPIError) -> bool:
    text = str(err.orig).lower()
    return any(word in text for word in ("locked", "lock", "conflict", "deadlock", "busy"))

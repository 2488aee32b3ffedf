"""Target `snowflake`: the typed landing table, loaded by COPY INTO from Parquet, once per batch.

The table is the typed landing table of `landing` (VARIANT for nested values and for `record`
with `raw = true`). A load writes the batch's staged records into Parquet load files with
`pipestate_batch_id` and `pipestate_loaded_at` already in them, so no COPY transformation is
needed; uploads them (PUT to the internal stage, or into the external stage's bucket through
the stage's filesystem); adds the columns of new fields; then, in one transaction: DELETE the
batch's rows, `COPY INTO <table> FROM <files> FILE_FORMAT = (TYPE = PARQUET)
MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE FORCE = TRUE`, check the row count, COMMIT (else
ROLLBACK). The load files are removed afterwards. `load_method = "insert"` inserts the rows
with `INSERT ... SELECT` instead: slow (row by row), for small batches.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError, ConnectorError, TransientConnectorError
from ..windows import UTC
from .arrow import dumps, stored_instant
from .landing import PROFILES, Landing, framed
from .protocols import (
    BatchContext,
    BatchRows,
    LoadResult,
    Stage,
    StagedData,
)
from .registry import RecordTableOptions, require

__all__ = ["SnowflakeTarget"]

_STAGE = re.compile(r"^@[A-Za-z0-9_$.~/\"-]+$")
_LOADS = "_pipestate_loads"  # the folder of load files in an external stage's bucket


class SnowflakeOptions(RecordTableOptions):
    identifier: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")  # $ is allowed
    type: Literal["snowflake"] = "snowflake"
    account: str  # e.g. "myorg-myaccount"
    user: str
    password: str | None = None
    authenticator: str | None = None  # e.g. "externalbrowser", "SNOWFLAKE_JWT"
    private_key_file: str | None = None
    private_key_file_pwd: str | None = None
    role: str | None = None
    warehouse: str | None = None
    database: str
    schema_: str = Field(alias="schema")
    load_method: Literal["copy", "insert"] = "copy"
    external_stage: str | None = None  # e.g. "@analytics.raw.pipestate_s3"
    external_stage_url: str | None = None  # the URL that stage points at: s3://bucket/prefix
    internal_stage: str = "@~/pipestate"  # where PUT uploads when there is no external stage
    insert_batch_size: int = Field(default=1000, gt=0)
    connect_args: dict[str, Any] = {}  # anything else snowflake.connector.connect takes
    raw: bool = False  # also keep each whole record as a VARIANT in the `record` column
    columns: dict[str, str] = {}  # field -> Snowflake type, instead of the type read from the data

    @field_validator("database", "schema_")
    @classmethod
    def _names(cls, value: str) -> str | None:
        return cls.plain_identifier(value)

    @field_validator("external_stage", "internal_stage")
    @classmethod
    def _stage(cls, value: str | None) -> str | None:
        if value is not None and not _STAGE.fullmatch(value):
            raise ValueError(f"must be a stage reference such as @db.schema.name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SnowflakeOptions:
        if (self.external_stage is None) != (self.external_stage_url is None):
            raise ValueError("external_stage_url: external_stage and external_stage_url go together")
        return self


class SnowflakeTarget:
    """Loads a batch's staged records into a typed Snowflake table, replacing its earlier rows."""

    Options = SnowflakeOptions

    def __init__(self, options: SnowflakeOptions) -> None:
        self.options = options
        self._connector = require("snowflake.connector", "snowflake", "target")
        assert options.time_column is not None
        self.time_column: str = options.time_column
        self.profile = PROFILES["snowflake"]
        self.table = f"{options.database}.{options.schema_}.{options.table}"
        self.landing = Landing(
            self.profile,
            self.table,
            options.time_field,
            options.time_column,
            options.naive_timezone,
            "auto",
            "record" if options.raw else None,
            options.columns,
        )
        self._created = False

    @property
    def location(self) -> str:
        return f"snowflake://{self.options.account}/{self.table}"

    @contextmanager
    def connect(self) -> Iterator[Any]:
        """A connection to the configured database and schema, closed afterwards."""
        o = self.options
        kwargs = {
            "account": o.account,
            "user": o.user,
            "database": o.database,
            "schema": o.schema_,
            **{
                key: value
                for key, value in {
                    "password": o.password,
                    "authenticator": o.authenticator,
                    "private_key_file": o.private_key_file,
                    "private_key_file_pwd": o.private_key_file_pwd,
                    "role": o.role,
                    "warehouse": o.warehouse,
                }.items()
                if value is not None
            },
            **o.connect_args,
        }
        try:
            connection = self._connector.connect(**kwargs)
        except self._connector.errors.Error as err:
            raise TransientConnectorError(f"snowflake: cannot connect: {err}") from err
        try:
            yield connection
        finally:
            connection.close()

    def ensure_table(self, cursor: Any) -> None:
        if not self._created:
            cursor.execute(self.landing.create_sql())
            self._created = True

    def _columns(self, cursor: Any) -> dict[str, str]:
        cursor.execute(
            f"SELECT column_name, CASE WHEN data_type = 'NUMBER' AND numeric_scale = 0 "
            f"THEN 'NUMBER(38,0)' ELSE data_type END "
            f"FROM {self.options.database}.information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (self.options.schema_.upper(), self.options.table.upper()),
        )
        return {str(name): str(kind) for name, kind in cursor.fetchall()}

    def load(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        return self.load_run([(batch, staged)], stage)[0]

    def load_run(self, items: list[tuple[BatchContext, StagedData]], stage: Stage) -> list[LoadResult]:
        """Replace the rows of several batches in ONE transaction: their load files uploaded
        together, one DELETE and one COPY INTO (or the inserts) for all of them, each batch's
        rows counted against its stage before the COMMIT. One LoadResult per item, in order."""
        load_id = uuid.uuid4().hex
        errors = self._connector.errors
        loaded_at = datetime.now(UTC)
        first = items[0][0]
        ids = [batch.batch_id for batch, _ in items]
        doing = (
            f"batch {first.batch_id}" if len(items) == 1 else f"{len(items)} batches ({first.batch_id}, ...)"
        )
        with self.connect() as connection, tempfile.TemporaryDirectory(prefix="pipestate-load-") as folder:
            cursor = connection.cursor()
            uploaded: _Uploaded | None = None
            try:
                self.ensure_table(cursor)
                # Columns are added before the transaction: DDL commits in Snowflake.
                files: list[Path] = []
                counts: dict[str, int] = {}
                for index, (batch, staged) in enumerate(items):
                    place = Path(folder) / f"{index:05d}"
                    place.mkdir()
                    more, counts[batch.batch_id] = self._load_files(
                        cursor, batch, staged, stage, place, loaded_at
                    )
                    files += [path.rename(Path(folder) / f"{index:05d}-{path.name}") for path in more]
                if self.options.load_method == "copy" and files:
                    uploaded = self._upload(cursor, first, stage, files, load_id)
                cursor.execute("BEGIN")
                try:
                    deleted = self._counts(cursor, ids)
                    marks = ", ".join(["%s"] * len(ids))
                    cursor.execute(
                        f"DELETE FROM {self.table} WHERE pipestate_batch_id IN ({marks})", tuple(ids)
                    )
                    if uploaded is not None:
                        self._copy(cursor, uploaded)
                    elif files:
                        self._insert(cursor, files)
                    now = self._counts(cursor, ids)
                    for batch, staged in items:
                        got = now[batch.batch_id]
                        if got != staged.record_count or got != counts[batch.batch_id]:
                            raise ConnectorError(
                                f"snowflake: {got} rows for batch {batch.batch_id} after the load, "
                                f"{staged.record_count} staged; rolled back"
                            )
                    cursor.execute("COMMIT")
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
            except errors.Error as err:
                retry = isinstance(err, errors.OperationalError)
                kind = TransientConnectorError if retry else ConnectorError
                raise kind(f"snowflake: load of {doing} failed: {err}") from err
            finally:
                if uploaded is not None:
                    uploaded.remove(cursor, self._connector.errors.Error)
        return [LoadResult(now[i], deleted[i], self.location, load_id) for i in ids]

    def _counts(self, cursor: Any, batch_ids: list[str]) -> dict[str, int]:
        """The table's rows of each of these batches (0 for none), in one query."""
        marks = ", ".join(["%s"] * len(batch_ids))
        cursor.execute(
            f"SELECT pipestate_batch_id, COUNT(*) FROM {self.table} "
            f"WHERE pipestate_batch_id IN ({marks}) GROUP BY pipestate_batch_id",
            tuple(batch_ids),
        )
        found = {str(batch_id): int(count) for batch_id, count in cursor.fetchall()}
        return {batch_id: found.get(batch_id, 0) for batch_id in batch_ids}

    def _load_files(
        self,
        cursor: Any,
        batch: BatchContext,
        staged: StagedData,
        stage: Stage,
        folder: Path,
        loaded_at: datetime,
    ) -> tuple[list[Path], int]:
        """The staged records as local Parquet load files with the batch id and load time in
        them (a new file whenever the columns change); adds new fields' columns first."""
        files: list[Path] = []
        writer: pq.ParquetWriter | None = None
        count = 0
        try:
            for table in self.landing.tables(
                stage.read(staged), lambda: self._columns(cursor), cursor.execute
            ):
                whole = framed(table, batch.batch_id, loaded_at)
                if writer is None or writer.schema != whole.schema:
                    if writer is not None:
                        writer.close()
                    files.append(folder / f"load-{len(files) + 1:05d}.parquet")
                    writer = pq.ParquetWriter(files[-1], whole.schema, compression="zstd")
                writer.write_table(whole)
                count += whole.num_rows
        finally:
            if writer is not None:
                writer.close()
        return files, count

    def _upload(
        self, cursor: Any, batch: BatchContext, stage: Stage, files: list[Path], load_id: str
    ) -> _Uploaded:
        """Put the load files where COPY reads them: PUT to the internal stage, or into the
        external stage's bucket (through the stage's filesystem, under `_pipestate_loads/`)."""
        o = self.options
        inside = f"{batch.batch_id}/{load_id}/"
        if o.external_stage is not None and o.external_stage_url is not None:
            fs = getattr(stage, "fs", None)
            if fs is None:
                raise ConfigError(
                    "[target] external_stage: needs a stage with a filesystem (type s3 or fsspec)"
                )
            base = o.external_stage_url.rstrip("/")
            fs.makedirs(f"{base}/{_LOADS}/{inside}", exist_ok=True)  # local folders; a no-op on S3
            for path in files:
                fs.put_file(str(path), f"{base}/{_LOADS}/{inside}{path.name}")
            return _Uploaded(
                f"{o.external_stage.rstrip('/')}/{_LOADS}/{inside}", fs, f"{base}/{_LOADS}/{inside}"
            )
        reference = f"{o.internal_stage.rstrip('/')}/{inside}"
        for path in files:
            cursor.execute(f"PUT 'file://{path}' {reference} OVERWRITE = TRUE AUTO_COMPRESS = FALSE")
        return _Uploaded(reference)

    def _copy(self, cursor: Any, uploaded: _Uploaded) -> None:
        purge = " PURGE = TRUE" if uploaded.fs is None else ""
        cursor.execute(
            f"COPY INTO {self.table} FROM {uploaded.reference} "
            "FILE_FORMAT = (TYPE = PARQUET) MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE "
            f"ON_ERROR = ABORT_STATEMENT FORCE = TRUE{purge}"
        )

    def _insert(self, cursor: Any, files: list[Path]) -> None:
        quote = self.profile.quote
        for path in files:
            handle = pq.ParquetFile(path)
            names = handle.schema_arrow.names
            kinds = {field.name: field.type for field in handle.schema_arrow}
            marks = []
            for name in names:
                kind = kinds[name]
                if pa.types.is_timestamp(kind):
                    marks.append("TO_TIMESTAMP_TZ(%s)")
                elif pa.types.is_nested(kind) or name == self.landing.raw_column:
                    marks.append("PARSE_JSON(%s)")
                else:
                    marks.append("%s")
            statement = (
                f"INSERT INTO {self.table} ({', '.join(quote(n) for n in names)}) SELECT {', '.join(marks)}"
            )
            for chunk in handle.iter_batches(batch_size=self.options.insert_batch_size):
                columns = []
                for name in names:
                    values = chunk.column(name).to_pylist()
                    if pa.types.is_timestamp(kinds[name]):
                        values = [None if v is None else v.isoformat() for v in values]
                    elif pa.types.is_nested(kinds[name]):
                        values = [None if v is None else dumps(v) for v in values]
                    columns.append(values)
                cursor.executemany(statement, list(zip(*columns, strict=True)))

    def _count(self, cursor: Any, batch: BatchContext) -> int:
        cursor.execute(f"SELECT COUNT(*) FROM {self.table} WHERE pipestate_batch_id = %s", (batch.batch_id,))
        return int(cursor.fetchone()[0])

    def batch_counts(
        self, start: datetime | None = None, end: datetime | None = None
    ) -> dict[str, BatchRows]:
        """Rows per batch id whose record time is in [start, end): one grouped query."""
        moment = self.profile.quote(self.time_column)
        where, params = [], []
        for value, test in ((start, ">="), (end, "<")):
            if value is not None:
                where.append(f"{moment} {test} %s")
                params.append(value.astimezone(UTC))
        sql = f"SELECT pipestate_batch_id, COUNT(*), MIN({moment}), MAX({moment}) FROM {self.table}"
        sql += (" WHERE " + " AND ".join(where) if where else "") + " GROUP BY pipestate_batch_id"
        errors = self._connector.errors
        with self.connect() as connection:
            cursor = connection.cursor()
            try:
                cursor.execute(sql, tuple(params))
                rows = cursor.fetchall()
            except errors.ProgrammingError as err:
                if getattr(err, "errno", None) == 2003:  # the table does not exist yet
                    return {}
                raise ConnectorError(f"snowflake: cannot count the rows of each batch: {err}") from err
        return {str(b): BatchRows(int(n), stored_instant(lo), stored_instant(hi)) for b, n, lo, hi in rows}

    def count(self, batch: BatchContext) -> int:
        errors = self._connector.errors
        with self.connect() as connection:
            cursor = connection.cursor()
            try:
                return self._count(cursor, batch)
            except errors.ProgrammingError as err:
                if getattr(err, "errno", None) == 2003:  # the table does not exist yet
                    return 0
                raise ConnectorError(f"snowflake: cannot count batch {batch.batch_id}: {err}") from err


class _Uploaded:
    """Where a load's files are for COPY, and how to remove them afterwards."""

    def __init__(self, reference: str, fs: Any = None, url: str | None = None) -> None:
        self.reference, self.fs, self.url = reference, fs, url

    def remove(self, cursor: Any, error: type[Exception]) -> None:
        # A load file left behind costs storage, not correctness: COPY reads only this
        # load's folder, and PURGE already removed what it loaded.
        if self.fs is not None and self.url is not None:
            with contextlib.suppress(Exception):
                self.fs.rm(self.url, recursive=True)
            return
        with contextlib.suppress(error):
            cursor.execute(f"REMOVE {self.reference}")

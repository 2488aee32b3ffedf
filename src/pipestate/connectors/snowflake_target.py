"""Target `snowflake`: COPY INTO a table from the staged file, exactly once per batch.

The table has the same shape as the `sql` target's, with the record as a VARIANT:
`pipestate_batch_id VARCHAR, pipestate_loaded_at TIMESTAMP_TZ, <time_column> TIMESTAMP_TZ,
record VARIANT`. A load runs, in one transaction: DELETE the batch's rows, COPY INTO from the
staged file (adding the batch id through a COPY transformation, FORCE = TRUE so that a reload
is not skipped by Snowflake's load history), check the row count, COMMIT (else ROLLBACK).

Where the file comes from:
- `external_stage` + `external_stage_url`: the stage (say S3) is already a Snowflake external
  stage; the file is read there, nothing is uploaded.
- otherwise the file is PUT to `internal_stage` (default the user stage `@~/pipestate`) first.
`load_method = "insert"` skips COPY and inserts the staged records with
`INSERT ... SELECT ..., PARSE_JSON(...)`: slower (row by row), for small batches and for
stand-ins such as fakesnow that cannot run COPY transformations.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from itertools import islice
from typing import Any, ClassVar, Literal
from urllib.parse import unquote

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError
from ..windows import zone
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
    require,
)

__all__ = ["SnowflakeTarget"]

_STAGE = re.compile(r"^@[A-Za-z0-9_$.~/\"-]+$")
_FILE_FORMAT = {"ndjson.gz": "TYPE = JSON COMPRESSION = GZIP", "parquet": "TYPE = PARQUET"}


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

    @field_validator("database", "schema_")
    @classmethod
    def _names(cls, value: str) -> str | None:
        return cls.plain_identifier(value)

    @field_validator("external_stage", "internal_stage")
    @classmethod
    def _stage(cls, value: str | None) -> str | None:
        if value is not None and not _STAGE.match(value):
            raise ValueError(f"must be a stage reference such as @db.schema.name, got {value!r}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> SnowflakeOptions:
        if (self.external_stage is None) != (self.external_stage_url is None):
            raise ValueError("external_stage_url: external_stage and external_stage_url go together")
        return self


def _literal(text: str) -> str:
    """A Snowflake string literal (COPY transformations take no bind variables)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "''") + "'"


class SnowflakeTarget:
    """Loads a batch's staged file into a Snowflake table, replacing its earlier rows."""

    Options = SnowflakeOptions

    def __init__(self, options: SnowflakeOptions) -> None:
        self.options = options
        self._connector = require("snowflake.connector", "snowflake", "target")
        self._tz = zone(options.naive_timezone)
        assert options.time_column is not None
        self.time_column: str = options.time_column
        self.table = f"{options.database}.{options.schema_}.{options.table}"
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
            cursor.execute(
                f"CREATE TABLE IF NOT EXISTS {self.table} ("
                "pipestate_batch_id VARCHAR NOT NULL, "
                "pipestate_loaded_at TIMESTAMP_TZ NOT NULL, "
                f"{self.time_column} TIMESTAMP_TZ, "
                "record VARIANT NOT NULL)"
            )
            self._created = True

    def load(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        load_id = uuid.uuid4().hex
        errors = self._connector.errors
        with self.connect() as connection:
            cursor = connection.cursor()
            try:
                self.ensure_table(cursor)
                source, file_format = None, staged.file_format
                if self.options.load_method == "copy":
                    source, file_format = self._stage_reference(cursor, batch, staged, stage, load_id)
                cursor.execute("BEGIN")
                try:
                    deleted = self._count(cursor, batch)
                    cursor.execute(
                        f"DELETE FROM {self.table} WHERE pipestate_batch_id = %s", (batch.batch_id,)
                    )
                    if source is not None:
                        self._copy(cursor, batch, file_format, source)
                    else:
                        self._insert(cursor, batch, staged, stage)
                    now = self._count(cursor, batch)
                    if now != staged.record_count:
                        raise ConnectorError(
                            f"snowflake: {now} rows for batch {batch.batch_id} after the load, "
                            f"{staged.record_count} staged; rolled back"
                        )
                    cursor.execute("COMMIT")
                except BaseException:
                    cursor.execute("ROLLBACK")
                    raise
                finally:
                    if source is not None and self.options.external_stage is None:
                        self._remove(cursor, source)
            except errors.Error as err:
                retry = isinstance(err, errors.OperationalError)
                kind = TransientConnectorError if retry else ConnectorError
                raise kind(f"snowflake: load of batch {batch.batch_id} failed: {err}") from err
        return LoadResult(now, deleted, self.location, load_id)

    def _stage_reference(
        self, cursor: Any, batch: BatchContext, staged: StagedData, stage: Stage, load_id: str
    ) -> tuple[str, str]:
        """Where COPY reads the batch's file, and its format: in the external stage, or PUT to
        the internal one (a copy is made locally first when the stage is not on this disk)."""
        o = self.options
        if o.external_stage is not None and o.external_stage_url is not None:
            base = o.external_stage_url.rstrip("/") + "/"
            if not staged.location.startswith(base):
                raise ConfigError(
                    f"[target] external_stage_url: staged file {staged.location} is not under {base}"
                )
            inside = staged.location[len(base) :]
            return f"{o.external_stage.rstrip('/')}/{inside}", staged.file_format
        folder = f"{o.internal_stage.rstrip('/')}/{batch.batch_id}/{load_id}/"
        with _local_copy(staged, stage) as (path, file_format):
            cursor.execute(f"PUT 'file://{path}' {folder} OVERWRITE = TRUE AUTO_COMPRESS = FALSE")
        return folder + os.path.basename(path), file_format

    def _copy(self, cursor: Any, batch: BatchContext, file_format: str, source: str) -> None:
        field = self.options.time_field.replace('"', '""')
        cursor.execute(
            f"COPY INTO {self.table} "
            f"(pipestate_batch_id, pipestate_loaded_at, {self.time_column}, record) "
            f"FROM (SELECT {_literal(batch.batch_id)}, CURRENT_TIMESTAMP(), "
            f'TRY_TO_TIMESTAMP_TZ($1:"{field}"::VARCHAR), $1 FROM {source}) '
            f"FILE_FORMAT = ({_FILE_FORMAT[file_format]}) "
            "ON_ERROR = ABORT_STATEMENT FORCE = TRUE"
        )

    def _insert(self, cursor: Any, batch: BatchContext, staged: StagedData, stage: Stage) -> None:
        statement = (
            f"INSERT INTO {self.table} "
            f"(pipestate_batch_id, pipestate_loaded_at, {self.time_column}, record) "
            "SELECT %s, CURRENT_TIMESTAMP(), TO_TIMESTAMP_TZ(%s), PARSE_JSON(%s)"
        )
        records = iter(stage.read(staged))
        while chunk := list(islice(records, self.options.insert_batch_size)):
            cursor.executemany(statement, [self._row(batch, record) for record in chunk])

    def _row(self, batch: BatchContext, record: dict[str, Any]) -> tuple[str, str | None, str]:
        try:
            moment = parse_instant(record.get(self.options.time_field), self._tz).isoformat()
        except (ValueError, TypeError, OverflowError):
            moment = None
        return batch.batch_id, moment, dumps(record)

    def _count(self, cursor: Any, batch: BatchContext) -> int:
        cursor.execute(f"SELECT COUNT(*) FROM {self.table} WHERE pipestate_batch_id = %s", (batch.batch_id,))
        return int(cursor.fetchone()[0])

    def _remove(self, cursor: Any, source: str) -> None:
        # An uploaded copy left behind costs storage, not correctness.
        with contextlib.suppress(self._connector.errors.Error):
            cursor.execute(f"REMOVE {source}")

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


@contextmanager
def _local_copy(staged: StagedData, stage: Stage) -> Iterator[tuple[str, str]]:
    """A local file with the staged data and its format, for PUT: the file itself, or a
    temporary NDJSON.gz copy of the records."""
    if staged.location.startswith("file://"):
        yield unquote(staged.location[len("file://") :]), staged.file_format
        return
    with tempfile.TemporaryDirectory(prefix="pipestate-put-") as folder:
        path = os.path.join(folder, "batch.ndjson.gz")
        with gzip.open(path, "wb") as handle:
            for record in stage.read(staged):
                handle.write(dumps(record).encode("utf-8") + b"\n")
        yield path, "ndjson.gz"

"""The Snowflake side of `pipestate mirror`: the copy of the state table, its events and its mark.

Four tables in the mirror's schema, named after `[mirror] table` (T): `T` (the state rows),
`T_events` (the audit events), `T_mirror` (one mark per scope: how far the copy goes) and
`T_mirror_stage` (where COPY INTO lands an incremental mirror's rows). An incremental mirror
writes one Parquet file (state rows and events side by side, told apart by `_pipestate_kind`),
PUTs it to the staging table's stage, COPYs it in, then in ONE transaction: moves the mark
(compare-and-set on its sequence, so a second mirror that raced this one rolls back), upserts
the state rows into `T` (one UPDATE ... FROM and one INSERT of the new keys: a MERGE in effect),
inserts the new events into `T_events`, removes its staged rows, COMMIT. A full copy (the
first, or after the columns changed) PUTs one file per table to the table's own stage and, in
the transaction, deletes the scope's rows and COPYs the files straight in. A crash anywhere
before the COMMIT leaves the copy and the mark as they were; the next mirror reads again from
the old mark, so nothing is missed and nothing doubled.

This module knows nothing of the state table's SQL: it is given columns as (name, kind), with
kind one of `instant`, `int`, `float`, `date`, `text`, `bool`, and Arrow tables of rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import ConfigError, ConnectorError, TransientConnectorError
from .base import require

__all__ = ["SnowflakeMirror", "MirrorMark", "Columns", "SNOWFLAKE_TYPES", "mirror_target_name"]

Columns = Sequence[tuple[str, str]]  # (column, kind)

SNOWFLAKE_TYPES = {
    "instant": "TIMESTAMP_TZ(6)",
    "int": "NUMBER(38,0)",
    "float": "FLOAT",
    "date": "DATE",
    "text": "VARCHAR",
    "bool": "BOOLEAN",
}
KIND = "_pipestate_kind"  # S: a state row, E: an event
RUN = "_pipestate_mirror_id"
STAGED_AT = "_pipestate_staged_at"
# (account, host) -> how that server reads hex digits as a number (asked once per process).
_HEX_FORMS: dict[tuple[str, str], str] = {}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
# Staged rows of a mirror that died before its COMMIT are removed by a later mirror once this old.
_LEFTOVER_HOURS = 6
# Connection options the URL's query may carry (everything else is refused: a typo is not ignored).
_URL_OPTIONS = {
    "warehouse",
    "role",
    "authenticator",
    "private_key_file",
    "private_key_file_pwd",
    "host",
    "port",
    "protocol",
    "login_timeout",
    "network_timeout",
    "token",
    "application",
}


def mirror_target_name(url: str) -> str:
    """The mirror's URL with any password or token replaced by ***: for logs, JSON and errors."""
    return _redact_url(url)


def _redact_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
    except Exception:  # noqa: BLE001 - not a URL: say nothing of what it holds
        return "<unparseable url>"
    query = {k: ("***" if k in ("token", "private_key_file_pwd") else v) for k, v in parsed.query.items()}
    return parsed.set(query=query).render_as_string(hide_password=True)


@dataclass(frozen=True)
class MirrorMark:
    """How far the copy goes for one scope (`*` or `pipeline:<name>`), as stored in `T_mirror`."""

    scope: str
    mark: str | None  # the source's position (PostgreSQL: the snapshot's xmin), None before any
    seq: int  # bumped by every mirror: the compare-and-set that keeps two mirrors apart
    signature: str  # the source's columns when the mark was taken: a change forces a full copy
    mirrored_at: datetime | None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class Statements:
    """What was sent to Snowflake, counted (the benchmark's and the JSON's figure)."""

    count: int = 0
    texts: list[str] = field(default_factory=list)

    def note(self, sql: str) -> None:
        self.count += 1
        self.texts.append(sql.split(None, 3)[0].upper() + " " + (sql.split(None, 3)[1:2] or [""])[0])


class SnowflakeMirror:
    """The mirror tables in one Snowflake schema, reached by a Snowflake SQLAlchemy URL
    (`snowflake://user:password@account/database/schema?warehouse=...&role=...`)."""

    def __init__(self, url: str, schema: str | None, table: str) -> None:
        from sqlalchemy.engine import make_url

        self.display = _redact_url(url)
        try:
            parsed = make_url(url)
        except Exception as err:  # noqa: BLE001 - the message must not repeat the URL
            raise ConfigError(f"[mirror] url: not a URL ({self.display})") from err
        if parsed.get_backend_name() != "snowflake":
            raise ConfigError(f"[mirror] url: must be a snowflake:// URL, got {self.display}")
        path = [part for part in (parsed.database or "").split("/") if part]
        if not path:
            raise ConfigError(
                f"[mirror] url: names no database (snowflake://user@account/DATABASE/SCHEMA): {self.display}"
            )
        database = path[0]
        schema = schema or (path[1] if len(path) > 1 else None) or "PUBLIC"
        for name, value in (("database", database), ("schema", schema), ("table", table)):
            if not _IDENTIFIER.fullmatch(value):
                raise ConfigError(f"[mirror] {name}: not a plain identifier: {value!r}")
        unknown = sorted(set(parsed.query) - _URL_OPTIONS)
        if unknown:
            raise ConfigError(f"[mirror] url: unknown option(s) {', '.join(unknown)}")
        self.database, self.schema, self.table = database, schema, table
        token = parsed.query.get("token")
        self._secrets = [s for s in (parsed.password, token) if isinstance(s, str) and s]
        kwargs: dict[str, Any] = {"account": parsed.host, "user": parsed.username, "database": database}
        kwargs["schema"] = schema
        if parsed.password:
            kwargs["password"] = parsed.password
        for key, raw in parsed.query.items():
            given = raw if isinstance(raw, str) else raw[-1]
            kwargs[key] = int(given) if key in ("port", "login_timeout", "network_timeout") else given
        self._kwargs = kwargs
        self.statements = Statements()
        self.timings: dict[str, float] = {}  # seconds of the last write, by phase

    # -- names ----------------------------------------------------------------------

    def _name(self, suffix: str = "") -> str:
        return f"{self.database}.{self.schema}.{self.table}{suffix}"

    @property
    def state_table(self) -> str:
        return self._name()

    @property
    def events_table(self) -> str:
        return self._name("_events")

    @property
    def marks_table(self) -> str:
        return self._name("_mirror")

    @property
    def stage_table(self) -> str:
        return self._name("_mirror_stage")

    # -- connection -----------------------------------------------------------------

    def _clean(self, text: str) -> str:
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    @contextmanager
    def connect(self) -> Iterator[_Cursor]:
        """A counted cursor on a new connection, closed afterwards; errors as ConnectorError
        (transient for the connector's OperationalError) with no credential in them."""
        connector = require("snowflake.connector", "snowflake", "mirror")
        errors = connector.errors
        try:
            connection = connector.connect(**self._kwargs)
        except errors.Error as err:
            raise TransientConnectorError(
                f"mirror: cannot connect to {self.display}: {self._clean(str(err))}"
            ) from None
        try:
            yield _Cursor(connection.cursor(), self.statements, errors.ProgrammingError)
        except errors.Error as err:
            kind = TransientConnectorError if isinstance(err, errors.OperationalError) else ConnectorError
            first = self._clean(str(err)).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise kind(f"mirror: {self.display}: {first}") from None
        finally:
            with contextlib.suppress(Exception):
                connection.close()

    # -- tables and marks -----------------------------------------------------------

    def read_mark(self, cursor: _Cursor, scope: str) -> MirrorMark | None:
        """The scope's mark, or None when there is none (no mark table yet either)."""
        try:
            cursor.execute(
                f"SELECT mark, seq, signature, mirrored_at, details FROM {self.marks_table} WHERE scope = %s",
                (scope,),
            )
        except cursor.missing as err:
            if getattr(err, "errno", None) == 2003:  # no such table: nothing mirrored yet
                return None
            raise
        row = cursor.fetchone()
        if row is None:
            return None
        mark, seq, signature, mirrored_at, details = row
        return MirrorMark(
            scope,
            None if mark is None else str(mark),
            int(seq),
            str(signature or ""),
            _aware(mirrored_at),
            json.loads(details) if details else {},
        )

    def read_marks(self) -> list[MirrorMark]:
        """Every scope's mark (for metrics and status)."""
        with self.connect() as cursor:
            try:
                cursor.execute(f"SELECT scope FROM {self.marks_table}")
            except cursor.missing as err:
                if getattr(err, "errno", None) == 2003:
                    return []
                raise
            scopes = [str(row[0]) for row in cursor.fetchall()]
            return [mark for scope in scopes if (mark := self.read_mark(cursor, scope)) is not None]

    def ensure_tables(self, cursor: _Cursor, state: Columns, events: Columns) -> list[str]:
        """Create the four tables if missing and add the columns the source has and they lack
        (DDL commits in Snowflake, so this happens before the mirror's transaction)."""
        actions = []
        cursor.execute(f"CREATE SCHEMA IF NOT EXISTS {self.database}.{self.schema}")
        stage_columns = _stage_columns(state, events)
        for table, columns in (
            (self.state_table, state),
            (self.events_table, events),
            (self.stage_table, stage_columns),
        ):
            body = ", ".join(f"{_q(name)} {SNOWFLAKE_TYPES[kind]}" for name, kind in columns)
            cursor.execute(f"CREATE TABLE IF NOT EXISTS {table} ({body})")
            have = self._columns(cursor, table)
            for name, kind in columns:
                if name.upper() not in have:
                    cursor.execute(f"ALTER TABLE {table} ADD COLUMN {_q(name)} {SNOWFLAKE_TYPES[kind]}")
                    if table != self.stage_table:
                        actions.append(f"added column {name} to {table}")
        cursor.execute(
            f"CREATE TABLE IF NOT EXISTS {self.marks_table} (scope VARCHAR, mark VARCHAR, "
            "seq NUMBER(38,0), signature VARCHAR, mirrored_at TIMESTAMP_TZ(6), details VARCHAR)"
        )
        return actions

    def _columns(self, cursor: _Cursor, table: str) -> set[str]:
        name = table.rsplit(".", 1)[-1]
        cursor.execute(
            f"SELECT column_name FROM {self.database}.information_schema.columns "
            "WHERE table_schema = %s AND table_name = %s",
            (self.schema.upper(), name.upper()),
        )
        return {str(row[0]).upper() for row in cursor.fetchall()}

    # -- writing --------------------------------------------------------------------

    def write(
        self,
        cursor: _Cursor,
        *,
        scope_filter: str | None,
        expected: MirrorMark | None,
        new: MirrorMark,
        state: pa.Table,
        events: pa.Table,
        state_columns: Columns,
        event_columns: Columns,
        full: bool,
    ) -> bool:
        """Copy `state` and `events` in and move the mark from `expected` to `new`, in one
        transaction. `full`: the rows of the scope (`scope_filter`, a pipeline name, or None for
        all) are replaced, so rows gone from the source go from the copy. False, with nothing
        written, when the mark is no longer `expected` (another mirror got there first)."""
        mirror_id = uuid.uuid4().hex
        timings = self.timings
        with tempfile.TemporaryDirectory(prefix="pipestate-mirror-") as folder:
            began = time.perf_counter()
            if full:
                # Straight into the tables: no staging pass over a million rows.
                loads = []
                for table, rows, columns in (
                    (self.state_table, state, state_columns),
                    (self.events_table, events, event_columns),
                ):
                    if rows.num_rows:
                        path = Path(folder) / f"{table.rsplit('.', 1)[-1].lower()}.parquet"
                        _write_table(path, rows, columns)
                        loads.append((table, self._put(cursor, path, table, mirror_id)))
            elif state.num_rows + events.num_rows:
                path = Path(folder) / f"mirror-{mirror_id}.parquet"
                _write_staged(path, state, events, state_columns, event_columns, mirror_id)
                stage = self._put(cursor, path, self.stage_table, mirror_id)
                self._copy(cursor, self.stage_table, stage)
            timings["stage"] = time.perf_counter() - began
            began = time.perf_counter()
            cursor.execute("BEGIN")
            try:
                if not self._move_mark(cursor, expected, new):
                    cursor.execute("ROLLBACK")
                    return False
                if full:
                    where = "" if scope_filter is None else " WHERE pipeline_name = %s"
                    scope_args = None if scope_filter is None else (scope_filter,)
                    cursor.execute(f"DELETE FROM {self.state_table}{where}", scope_args)
                    cursor.execute(f"DELETE FROM {self.events_table}{where}", scope_args)
                    for table, stage in loads:
                        self._copy(cursor, table, stage)
                else:
                    self._apply_staged(cursor, mirror_id, state, events, state_columns, event_columns)
                cursor.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    cursor.execute("ROLLBACK")
                raise
            timings["apply"] = time.perf_counter() - began
        return True

    def _put(self, cursor: _Cursor, path: Path, table: str, mirror_id: str) -> str:
        """Upload `path` to `table`'s own stage (a table stage: nothing to create or grant)."""
        stage = f"@{table.rsplit('.', 1)[0]}.%{table.rsplit('.', 1)[-1]}/{mirror_id}/"
        cursor.execute(f"PUT 'file://{path.as_posix()}' {stage} OVERWRITE = TRUE AUTO_COMPRESS = FALSE")
        return stage

    def _copy(self, cursor: _Cursor, table: str, stage: str) -> None:
        cursor.execute(
            f"COPY INTO {table} FROM {stage} FILE_FORMAT = (TYPE = PARQUET) "
            "MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE ON_ERROR = ABORT_STATEMENT FORCE = TRUE PURGE = TRUE"
        )

    def _apply_staged(
        self,
        cursor: _Cursor,
        mirror_id: str,
        state: pa.Table,
        events: pa.Table,
        state_columns: Columns,
        event_columns: Columns,
    ) -> None:
        """The staged rows of this mirror into the copy: state rows upserted, new events added."""
        if state.num_rows:
            names = [name for name, _ in state_columns]
            staged_rows = f"{self.stage_table} s WHERE s.{RUN} = %s AND s.{KIND} = 'S'"
            # An upsert in two set-based statements (UPDATE ... FROM, then INSERT of the new
            # keys) rather than one MERGE: the same effect, and it runs inside a transaction on
            # the local stand-in too (fakesnow's MERGE cannot).
            sets = ", ".join(f"{_q(n)} = s.{_q(n)}" for n in names if n != "batch_id")
            cursor.execute(
                f"UPDATE {self.state_table} t SET {sets} FROM {staged_rows} AND t.batch_id = s.batch_id",
                (mirror_id,),
            )
            cursor.execute(
                f"INSERT INTO {self.state_table} ({', '.join(_q(n) for n in names)}) "
                f"SELECT {', '.join('s.' + _q(n) for n in names)} FROM {staged_rows} "
                f"AND NOT EXISTS (SELECT 1 FROM {self.state_table} t WHERE t.batch_id = s.batch_id)",
                (mirror_id,),
            )
        if events.num_rows:
            names = [name for name, _ in event_columns]
            # An event already there (a mark that could not tell it apart) is not added twice.
            cursor.execute(
                f"INSERT INTO {self.events_table} ({', '.join(_q(n) for n in names)}) "
                f"SELECT {', '.join('s.' + _q(n) for n in names)} "
                f"FROM {self.stage_table} s WHERE s.{RUN} = %s AND s.{KIND} = 'E' AND NOT EXISTS "
                f"(SELECT 1 FROM {self.events_table} e WHERE e.event_id = s.event_id)",
                (mirror_id,),
            )
        if state.num_rows + events.num_rows:
            cursor.execute(
                f"DELETE FROM {self.stage_table} WHERE {RUN} = %s OR {STAGED_AT} < %s",
                (mirror_id, _hours_ago(_LEFTOVER_HOURS)),
            )

    def _move_mark(self, cursor: _Cursor, expected: MirrorMark | None, new: MirrorMark) -> bool:
        values = (new.mark, new.seq, new.signature, new.mirrored_at, json.dumps(new.details, sort_keys=True))
        if expected is None:
            # The first mark of a scope: the row must still be absent (INSERT ... WHERE NOT EXISTS).
            cursor.execute(
                f"INSERT INTO {self.marks_table} (scope, mark, seq, signature, mirrored_at, details) "
                f"SELECT %s, %s, %s, %s, %s, %s WHERE NOT EXISTS "
                f"(SELECT 1 FROM {self.marks_table} WHERE scope = %s)",
                (new.scope, *values, new.scope),
            )
        else:
            cursor.execute(
                f"UPDATE {self.marks_table} SET mark = %s, seq = %s, signature = %s, mirrored_at = %s, "
                "details = %s WHERE scope = %s AND seq = %s",
                (*values, new.scope, expected.seq),
            )
        return cursor.rowcount == 1

    # -- verifying ------------------------------------------------------------------

    def digest(
        self, cursor: _Cursor, table: str, columns: Columns, scope_filter: str | None
    ) -> tuple[int, int]:
        """(rows, sum of each row's 60-bit hash) of `table`'s rows in scope: ONE aggregate query."""
        where, args = _scope(scope_filter)
        cursor.execute(
            f"SELECT COUNT(*), COALESCE(SUM({self._hash(cursor, columns)}), 0) FROM {table}{where}", args
        )
        count, total = cursor.fetchone()
        return int(count), int(total)

    def row_hashes(
        self, cursor: _Cursor, table: str, key: str, columns: Columns, scope_filter: str | None
    ) -> dict[str, int]:
        """Each row's key and 60-bit hash (the finer comparison, after a digest differed)."""
        where, args = _scope(scope_filter)
        cursor.execute(
            f"SELECT TO_VARCHAR({_q(key)}), {self._hash(cursor, columns)} FROM {table}{where}", args
        )
        return {str(k): int(h) for k, h in cursor.fetchall()}

    def _hash(self, cursor: _Cursor, columns: Columns) -> str:
        text = " || CHR(31) || ".join(_canonical(name, kind) for name, kind in sorted(columns))
        return self._hex60(cursor, f"SUBSTR(MD5({text}), 1, 15)")

    def _hex60(self, cursor: _Cursor, hex_text: str) -> str:
        """15 hex digits as an integer. Snowflake reads hex with TO_NUMBER(..., 'XXX...');
        its local stand-ins (DuckDB underneath) only with a '0x' cast: asked once."""
        where = (str(self._kwargs.get("account")), str(self._kwargs.get("host")))
        if where not in _HEX_FORMS:
            try:
                cursor.execute("SELECT TO_NUMBER('ff', 'XX')")
                ok = int(cursor.fetchone()[0]) == 255
            except Exception:  # noqa: BLE001 - the stand-in refuses the format argument
                ok = False
            _HEX_FORMS[where] = "to_number" if ok else "cast"
        if _HEX_FORMS[where] == "to_number":
            return f"TO_NUMBER({hex_text}, 'XXXXXXXXXXXXXXX')"
        return f"('0x' || {hex_text})::BIGINT"


class _Cursor:
    """A DB-API cursor that counts what it sends."""

    def __init__(self, cursor: Any, statements: Statements, missing: type[Exception]) -> None:
        self._cursor, self._statements, self.missing = cursor, statements, missing

    def execute(self, sql: str, params: Any = None) -> None:
        self._statements.note(sql)
        self._cursor.execute(sql, params)

    def fetchone(self) -> Any:
        return self._cursor.fetchone()

    def fetchall(self) -> list[Any]:
        return list(self._cursor.fetchall())

    @property
    def rowcount(self) -> int:
        return int(self._cursor.rowcount or 0)


def _q(name: str) -> str:
    return f'"{name.upper()}"' if _IDENTIFIER.fullmatch(name) else '"' + name.replace('"', '""') + '"'


def _scope(scope_filter: str | None) -> tuple[str, Any]:
    return ("", None) if scope_filter is None else (" WHERE pipeline_name = %s", (scope_filter,))


def _canonical(name: str, kind: str) -> str:
    """The column as the text the row's hash is taken of (the same text `store.mirror` makes
    on the source side): NULL as CHR(30), columns joined by CHR(31), instants as UTC
    microseconds, dates as days since 1970-01-01."""
    column = _q(name)
    value = {
        "instant": f"TO_VARCHAR(DATE_PART(EPOCH_MICROSECOND, {column}))",
        "int": f"TO_VARCHAR({column})",
        "float": f"TO_VARCHAR(ROUND({column} * 1000000)::NUMBER(38,0))",
        "date": f"TO_VARCHAR(DATEDIFF(day, '1970-01-01'::DATE, {column}))",
        "text": column,
        "bool": f"IFF({column}, '1', '0')",
    }[kind]
    return f"COALESCE({value}, CHR(30))"


def _stage_columns(state: Columns, events: Columns) -> list[tuple[str, str]]:
    seen: dict[str, str] = {}
    for name, kind in [*state, *events]:
        seen.setdefault(name, kind)
    return [(KIND, "text"), (RUN, "text"), (STAGED_AT, "instant"), *seen.items()]


def _arrow_type(kind: str) -> pa.DataType:
    return {
        "instant": pa.timestamp("us", tz="UTC"),
        "int": pa.int64(),
        "float": pa.float64(),
        "date": pa.date32(),
        "text": pa.string(),
        "bool": pa.bool_(),
    }[kind]


def _arrays(table: pa.Table, columns: Columns, n: int) -> list[pa.Array | pa.ChunkedArray]:
    return [
        table.column(name).cast(_arrow_type(kind))
        if name in table.column_names
        else pa.nulls(n, _arrow_type(kind))
        for name, kind in columns
    ]


def _write_table(path: Path, table: pa.Table, columns: Columns) -> None:
    """A table's rows in its copy's columns (upper case: the names COPY matches)."""
    schema = pa.schema([(name.upper(), _arrow_type(kind)) for name, kind in columns])
    whole = pa.Table.from_arrays(_arrays(table, columns, table.num_rows), schema=schema)
    pq.write_table(whole, path, compression="zstd", row_group_size=256 * 1024)


def _write_staged(
    path: Path,
    state: pa.Table,
    events: pa.Table,
    state_columns: Columns,
    event_columns: Columns,
    mirror_id: str,
) -> None:
    """One file with the state rows and the events, in the staging table's columns."""
    columns = _stage_columns(state_columns, event_columns)
    schema = pa.schema([(name.upper(), _arrow_type(kind)) for name, kind in columns])
    staged_at = datetime.now(UTC)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for kind, table in (("S", state), ("E", events)):
            if not table.num_rows:
                continue
            n = table.num_rows
            tags = [
                pa.array([kind] * n, pa.string()),
                pa.array([mirror_id] * n, pa.string()),
                pa.array([staged_at] * n, _arrow_type("instant")),
            ]
            arrays = tags + _arrays(table, columns[3:], n)
            writer.write_table(pa.Table.from_arrays(arrays, schema=schema), row_group_size=256 * 1024)


def _hours_ago(hours: int) -> datetime:
    from datetime import timedelta

    return datetime.now(UTC) - timedelta(hours=hours)


def _aware(value: Any) -> datetime | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    return datetime.fromisoformat(str(value)).astimezone(UTC)

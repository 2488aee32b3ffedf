"""The typed landing table: its columns from the staged Arrow schema, and what differs per database.

Every per-database difference of the record targets (DuckDB, PostgreSQL, SQLite, Snowflake) is
in `PROFILES`: the SQL type of each kind of value, how a name is quoted, whether `ADD COLUMN IF
NOT EXISTS` exists, how the existing columns are read. The targets ask the profile, never the
database's name. The shape: `pipestate_batch_id`, `pipestate_loaded_at`, the time column (a real
timestamp), one column per top-level field, and with `raw = true` the whole record as JSON.
A field that appears later becomes a new nullable column; a field whose kind does not fit its
column fails the batch, naming the field, the column's type and the batch's type.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConnectorError, TargetSchemaError
from .arrow import dumps, record_batches, utc_times

__all__ = ["PROFILES", "Landing", "Profile", "family_of_arrow", "family_of_sql", "framed", "profile_for"]

BATCH_COLUMN = "pipestate_batch_id"
EMPTY_NAME_COLUMN = "_empty_name"  # where a record field named "" lands
LOADED_COLUMN = "pipestate_loaded_at"
_PLAIN = re.compile(r"^[A-Za-z_][A-Za-z0-9_$]*$")
_FAMILIES = ("integer", "float", "decimal", "boolean", "text", "timestamp", "date", "json", "binary")


@dataclass(frozen=True)
class Profile:
    """How one database holds a landing table."""

    name: str
    types: Mapping[str, str]  # family -> SQL type
    batch_id_type: str
    add_if_not_exists: bool = True
    # Unquoted names fold to this case in the catalog (Snowflake: upper).
    catalog_case: str = "as_is"
    json_in_sql: bool = False  # the database turns Arrow structs/lists into JSON itself
    bulk: str = "executemany"  # how rows go in: "arrow" (scan of Arrow data), "copy", "executemany"
    # The table's columns as (name, declared type) rows, given :table and :schema (or NULL).
    columns_query: str = (
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = :table AND table_schema = coalesce(:schema, current_schema())"
    )
    # Serializes two loads of one batch where the isolation level alone would not (given :key).
    lock_sql: str | None = None
    index_batch_id: bool = True  # an index on pipestate_batch_id for the delete and the count
    # Column names that differ only in case are one column (DuckDB, SQLite; Snowflake folds
    # plain names to upper case): two such fields cannot both land.
    folds_case: bool = True
    # Whether an index named :index exists on the table (given :table, :schema): checked before
    # any DDL, so a worker starting while a load is open never queues behind it for a lock.
    index_query: str | None = None
    # Bounds the wait of the DDL that remains (table or index missing) on another's lock.
    ddl_lock_timeout_sql: str | None = None
    one_writer: bool = False  # one process at a time may open the database for writing
    utc_sql: str | None = None  # makes the load's transaction read naive instants as UTC
    # Settings made on each new target connection (`SET name = 'value'`); the same names in
    # the target URL's query string win (duckdb:///t.duckdb?checkpoint_threshold=1GB).
    connect_settings: Mapping[str, str] = field(default_factory=dict)

    def quote(self, name: str) -> str:
        """A column name as SQL: quoted as given; where the catalog folds plain names (Snowflake),
        a plain name in the catalog's case, so unquoted queries find it."""
        if self.catalog_case == "upper" and _PLAIN.match(name):
            name = name.upper()
        return '"' + name.replace('"', '""') + '"'

    def sql_type(self, family: str, arrow_type: pa.DataType | None = None) -> str:
        if family == "decimal" and arrow_type is not None and pa.types.is_decimal(arrow_type):
            base = self.types["decimal"].split("(")[0]
            return f"{base}({min(arrow_type.precision, 38)},{arrow_type.scale})"
        return self.types[family]


PROFILES: dict[str, Profile] = {
    "duckdb": Profile(
        "duckdb",
        {
            "integer": "BIGINT",
            "float": "DOUBLE",
            "decimal": "DECIMAL(38,9)",
            "boolean": "BOOLEAN",
            "text": "VARCHAR",
            "timestamp": "TIMESTAMPTZ",
            "date": "DATE",
            "json": "JSON",
            "binary": "BLOB",
        },
        batch_id_type="VARCHAR",
        json_in_sql=True,
        bulk="arrow",
        index_batch_id=False,  # DuckDB scans a column fast; an index slows every load
        one_writer=True,
        # Each load is one committed transaction, appended to the WAL; at the default 16 MB
        # DuckDB checkpoints every few hourly batches and rewrites the table's last, partly
        # filled row group each time. 32 MB halves that work (a run of hourly loads went
        # from 4.9 s to 4.1 s) without holding more memory. A load is one stream of Arrow
        # chunks, which DuckDB scans on one thread: more threads only coordinate, and take
        # cores from the source's parse. One thread: a 20,000-row insert 7.5 -> 4.5 ms, one
        # 5M-record window 4.2 -> 4.0 s, the run's peak 8 MB lower (bench/run.py, 2 cores).
        connect_settings={"checkpoint_threshold": "32MB", "threads": "1"},
    ),
    "postgresql": Profile(
        "postgresql",
        {
            "integer": "BIGINT",
            "float": "DOUBLE PRECISION",
            "decimal": "NUMERIC",
            "boolean": "BOOLEAN",
            "text": "TEXT",
            "timestamp": "TIMESTAMPTZ",
            "date": "DATE",
            "json": "JSONB",
            "binary": "BYTEA",
        },
        batch_id_type="VARCHAR(255)",
        bulk="copy",
        # READ COMMITTED lets two loads of one batch both delete nothing and both insert.
        lock_sql="SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))",
        folds_case=False,
        index_query=(
            "SELECT 1 FROM pg_indexes WHERE tablename = :table "
            "AND schemaname = coalesce(:schema, current_schema()) AND indexname = :index"
        ),
        ddl_lock_timeout_sql="SET LOCAL lock_timeout = '5s'",
        utc_sql="SET LOCAL TIME ZONE 'UTC'",
    ),
    # SQLite: instants as UTC text the way SQLAlchemy stores them; JSON as text ("JSON_TEXT"
    # has TEXT affinity, so '1' stays text, and still says what the column holds).
    "sqlite": Profile(
        "sqlite",
        {
            "integer": "INTEGER",
            "float": "REAL",
            "decimal": "NUMERIC",
            "boolean": "BOOLEAN",
            "text": "TEXT",
            "timestamp": "DATETIME",
            "date": "DATE",
            "json": "JSON_TEXT",
            "binary": "BLOB",
        },
        batch_id_type="VARCHAR(255)",
        add_if_not_exists=False,
        columns_query="SELECT name, type FROM pragma_table_info(:table, coalesce(:schema, 'main'))",
        index_query=(
            "SELECT 1 FROM sqlite_master WHERE type = 'index' AND tbl_name = :table "
            "AND name = :index AND :schema IS NULL"
        ),
    ),
    "snowflake": Profile(
        "snowflake",
        {
            "integer": "NUMBER(38,0)",
            "float": "FLOAT",
            "decimal": "NUMBER(38,9)",
            "boolean": "BOOLEAN",
            "text": "VARCHAR",
            "timestamp": "TIMESTAMP_TZ",
            "date": "DATE",
            "json": "VARIANT",
            "binary": "BINARY",
        },
        batch_id_type="VARCHAR",
        catalog_case="upper",
        bulk="copy",
        index_batch_id=False,
    ),
}


def profile_for(name: str) -> Profile:
    """The profile of a database by its SQLAlchemy dialect name; ConnectorError if none."""
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise ConnectorError(f"target: no landing-table profile for {name} (supported: {known})") from None


def family_of_arrow(kind: pa.DataType) -> str | None:
    """The kind of column an Arrow type lands in; None for the null type (no column yet)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    checks = [
        (pa.types.is_null, None),
        (pa.types.is_boolean, "boolean"),
        (pa.types.is_integer, "integer"),
        (pa.types.is_floating, "float"),
        (pa.types.is_decimal, "decimal"),
        (pa.types.is_timestamp, "timestamp"),
        (pa.types.is_date, "date"),
        (pa.types.is_string, "text"),
        (pa.types.is_large_string, "text"),
        (pa.types.is_binary, "binary"),
        (pa.types.is_large_binary, "binary"),
        (pa.types.is_fixed_size_binary, "binary"),
    ]
    for check, family in checks:
        if check(kind):
            return family
    if pa.types.is_nested(kind):
        return "json"
    return "text"  # times of day, durations, ...: their text


_SQL_FAMILY = [
    (re.compile(r"JSON|VARIANT|OBJECT|ARRAY|STRUCT|MAP|\[\]"), "json"),
    (re.compile(r"TIMESTAMP|DATETIME"), "timestamp"),
    (re.compile(r"^DATE$"), "date"),
    (re.compile(r"BOOL"), "boolean"),
    (re.compile(r"NUMBER\(\d+,\s*0\)|INT"), "integer"),
    (re.compile(r"DOUBLE|REAL|FLOAT"), "float"),
    (re.compile(r"NUMERIC|DECIMAL|NUMBER"), "decimal"),
    (re.compile(r"CHAR|TEXT|CLOB|STRING|UUID"), "text"),
    (re.compile(r"BLOB|BYTEA|BINARY"), "binary"),
]


def family_of_sql(type_text: str) -> str:
    """The kind of values a column of this declared type holds (SQLite's affinity rules,
    extended for the others); `text` when nothing matches."""
    upper = type_text.upper().strip()
    for pattern, family in _SQL_FAMILY:
        if pattern.search(upper):
            return family
    return "text"


def fits(new: str, table: str) -> bool:
    """Whether values of family `new` may go into a column of family `table` unchanged."""
    return new == table or (new == "integer" and table in ("float", "decimal"))


@dataclass
class Landing:
    """The landing table of one target: which columns the staged data needs, the DDL that adds
    them, and each record batch turned into the columns to load."""

    profile: Profile
    table: str  # quoted, schema-qualified name
    time_field: str
    time_column: str
    naive_timezone: str = "UTC"
    epoch_unit: str = "auto"
    raw_column: str | None = None
    declared: Mapping[str, str] = field(default_factory=dict)  # field -> SQL type from config

    @property
    def reserved(self) -> set[str]:
        names = {BATCH_COLUMN, LOADED_COLUMN}
        return names | ({self.raw_column} if self.raw_column else set())

    def create_sql(self) -> str:
        p = self.profile
        columns = [
            f"{p.quote(BATCH_COLUMN)} {p.batch_id_type} NOT NULL",
            f"{p.quote(LOADED_COLUMN)} {p.types['timestamp']} NOT NULL",
            f"{p.quote(self.time_column)} {p.types['timestamp']}",
        ]
        if self.raw_column:
            columns.append(f"{p.quote(self.raw_column)} {p.types['json']}")
        return f"CREATE TABLE IF NOT EXISTS {self.table} ({', '.join(columns)})"

    def column_name(self, name: str) -> str:
        """The column a record field lands in: the time field's column; a field with an empty
        name (no database takes one) lands in `_empty_name`."""
        if name == self.time_field:
            return self.time_column
        return name or EMPTY_NAME_COLUMN

    def plan(self, schema: pa.Schema, existing: Mapping[str, str]) -> tuple[list[str], dict[str, str]]:
        """(ALTER statements adding the new fields' columns, column -> family of every column the
        batch fills). `existing` maps the table's column names to their declared SQL types."""
        by_name = {self._catalog(name): (name, kind) for name, kind in existing.items()}
        old_layout = self._catalog("record") in by_name and "record" not in schema.names
        if self.raw_column is None and old_layout:
            raise TargetSchemaError(
                f"target table {self.table} has the earlier layout (each record as JSON in `record`): "
                "set [target] raw = true to keep loading it (typed columns are added beside "
                "`record`), or name a new [target] table"
            )
        alters: list[str] = []
        fills: dict[str, str] = {self.time_column: "timestamp"}
        seen: dict[str, str] = {}
        for item in schema:  # two fields one column: say which, before any SQL hides it
            column = self._catalog(self.column_name(item.name))
            if column in seen:
                raise ConnectorError(
                    f"fields {seen[column]!r} and {item.name!r} would be one column of {self.table} "
                    f"({self.profile.name} column names ignore case; an empty name lands in "
                    f"{EMPTY_NAME_COLUMN}): rename one at the source"
                )
            seen[column] = item.name
        for item in schema:
            column = self.column_name(item.name)
            if column in self.reserved:
                raise TargetSchemaError(
                    f"field {item.name!r} has the name of a column pipestate fills in {self.table}"
                )
            family = "timestamp" if column == self.time_column else family_of_arrow(item.type)
            declared = self.declared.get(item.name)
            if family is None and declared is None:
                continue  # only nulls so far: the column comes with the first value
            found = by_name.get(self._catalog(column))
            if found is None:
                sql_type = declared or self.profile.sql_type(family or "text", item.type)
                alters.append(self._add_column(column, sql_type))
                fills[column] = family_of_sql(sql_type) if declared else family or "text"
                continue
            table_family = family_of_sql(found[1])
            if declared is None and family is not None and not fits(family, table_family):
                raise TargetSchemaError(
                    f"field {item.name!r}: column {column} of {self.table} is {found[1]}, "
                    f"this batch has {item.type} ({family})"
                )
            fills[column] = table_family
        return alters, fills

    def _catalog(self, name: str) -> str:
        if self.profile.catalog_case == "upper":
            return name.upper() if _PLAIN.match(name) else name
        return name.lower() if self.profile.folds_case else name

    def _add_column(self, column: str, sql_type: str) -> str:
        guard = "IF NOT EXISTS " if self.profile.add_if_not_exists else ""
        return f"ALTER TABLE {self.table} ADD COLUMN {guard}{self.profile.quote(column)} {sql_type}"

    def prepare(self, chunk: pa.RecordBatch, fills: Mapping[str, str]) -> pa.Table:
        """The chunk as the columns to load, in `fills`' families: the time field as UTC
        instants under its column name, structs and lists as JSON text (unless the database
        does that itself), integers as floats where the column is a float, the raw record."""
        columns: dict[str, Any] = {}
        for index, item in enumerate(chunk.schema):
            column = self.column_name(item.name)
            if column not in fills:
                continue
            values = chunk.column(index)
            family = fills[column]
            if column == self.time_column:
                values = utc_times(values, self.naive_timezone, self.epoch_unit, strict=False)
            elif family == "json" and not (pa.types.is_nested(values.type) and self.profile.json_in_sql):
                values = _json_text(values)
            elif family == "float" and pa.types.is_integer(values.type):
                values = values.cast(pa.float64())
            columns[column] = values
        if self.time_column not in columns:  # the records carry no time: kept, time unknown
            columns[self.time_column] = pa.nulls(chunk.num_rows, pa.timestamp("us", "UTC"))
        if self.raw_column:
            columns[self.raw_column] = pa.array([dumps(record) for record in chunk.to_pylist()], pa.string())
        return pa.table(columns)

    def tables(
        self,
        chunks: Iterable[pa.RecordBatch],
        columns: Callable[[], Mapping[str, str]],
        execute: Callable[[str], Any],
    ) -> Iterator[pa.Table]:
        """Each staged chunk as the table to load, after `execute` ran the DDL that adds its new
        fields' columns; `columns()` reads the table's columns (again after a change)."""
        existing: Mapping[str, str] | None = None  # read with the first chunk: an empty batch never asks
        for chunk in record_batches(chunks):
            if existing is None:
                existing = columns()
            alters, fills = self.plan(chunk.schema, existing)
            for statement in alters:
                execute(statement)
            if alters:
                existing = columns()
            yield self.prepare(chunk, fills)


def framed(table: pa.Table, batch_id: str, loaded_at: datetime) -> pa.Table:
    """`table` behind the two columns pipestate fills, for loads that take whole files or CSV."""
    rows = table.num_rows
    return pa.table(
        {
            BATCH_COLUMN: pa.repeat(pa.scalar(batch_id, pa.string()), rows),
            LOADED_COLUMN: pa.repeat(pa.scalar(loaded_at, pa.timestamp("us", "UTC")), rows),
            **{name: table.column(name) for name in table.column_names},
        }
    )


def _json_text(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """Each value as JSON text (null stays null): built with Arrow compute for structs, lists
    and scalars, value by value in Python only for what that does not cover (maps, control
    characters in text, ...)."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    try:
        return _arrow_json(values)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, _NotVectorised):
        return pa.array([None if v is None else dumps(v) for v in values.to_pylist()], pa.string())


class _NotVectorised(Exception):
    """A type `_arrow_json` leaves to Python."""


def _quoted(text: pa.Array) -> pa.Array:
    if pc.any(pc.match_substring_regex(text, "[\\x00-\\x1f]")).as_py():
        raise _NotVectorised  # control characters: leave their escapes to json.dumps
    escaped = pc.replace_substring_regex(text, r'(["\\])', r"\\\1")
    return pc.binary_join_element_wise('"', escaped, '"', "")


def _arrow_json(values: pa.Array) -> pa.Array:
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), pa.string())
    if pa.types.is_boolean(kind):
        return pc.if_else(values, "true", "false")
    if pa.types.is_integer(kind):
        return values.cast(pa.string())
    if pa.types.is_floating(kind):
        return pc.if_else(pc.is_finite(values), values.cast(pa.string()), pa.scalar(None, pa.string()))
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return _quoted(values.cast(pa.string()))
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        return _quoted(values.cast(pa.string()))
    if pa.types.is_struct(kind):
        parts: list[Any] = []
        for index, (item, child) in enumerate(zip(kind, values.flatten(), strict=True)):
            key = dumps(item.name)
            parts += [("{" if index == 0 else ",") + key + ":", pc.fill_null(_arrow_json(child), "null")]
        if not parts:
            parts = ["{"]
        joined = pc.binary_join_element_wise(*parts, "}", "")
        return pc.if_else(values.is_null(), pa.scalar(None, pa.string()), joined)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        inner = pc.fill_null(_arrow_json(values.values), "null")
        lists = type(values).from_arrays(values.offsets, inner)
        joined = pc.binary_join_element_wise("[", pc.binary_join(lists, ","), "]", "")
        return pc.if_else(values.is_null(), pa.scalar(None, pa.string()), joined)
    raise _NotVectorised


def sqlite_text_times(values: pa.Array) -> pa.Array:
    """UTC instants as SQLite's text, the way SQLAlchemy's DateTime writes them."""
    # Cast to naive first: the same text, and formatting zoned instants is ten times slower.
    return values.cast(pa.timestamp("us", "UTC")).cast(pa.timestamp("us")).cast(pa.string())

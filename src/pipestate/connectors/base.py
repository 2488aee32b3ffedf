"""The connector Protocols (source, stage, target), their data, and the registry that builds them.

A run moves one batch (a window `[start, end)`) in three steps: `Source.extract` yields its
records as Arrow record batches, `Stage.write` puts them in staged files, `Target.load` replaces
the batch's rows in the target with the staged ones. Arrow is the unit of data: the one adapter
that turns the dicts of a custom source into record batches is `record_batches` here.
Connectors are chosen by `type` in `[source]`, `[stage]` and `[target]`: a built-in name,
`"module:Class"`, or an entry point in group `pipestate.connectors`.
"""

from __future__ import annotations

import importlib
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal, Protocol, Self, TypeAlias, TypeVar, runtime_checkable
from zoneinfo import ZoneInfo

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..errors import ConfigError, ConnectorError, TransientConnectorError
from ..paths import anchor_path
from ..plugins import default_batch_id, import_path
from ..windows import UTC, local_date_of, zone

__all__ = [
    "BatchContext",
    "ConnectorError",
    "TransientConnectorError",
    "Options",
    "RecordTableOptions",
    "RESERVED_COLUMNS",
    "Source",
    "Stage",
    "StagedData",
    "Target",
    "LoadResult",
    "build_source",
    "build_stage",
    "build_target",
    "require",
    "validate_options",
    "parse_instant",
    "json_default",
    "ENTRY_POINT_GROUP",
    "CHUNK_ROWS",
    "record_batches",
    "utc_times",
    "merge_schemas",
    "conform",
]

ENTRY_POINT_GROUP = "pipestate.connectors"
Kind = Literal["source", "stage", "target"]


@dataclass(frozen=True, slots=True)
class BatchContext:
    """What a connector knows about the batch it works on; the window is `[start, end)` in UTC."""

    batch_id: str
    pipeline: str
    start: datetime
    end: datetime
    local_date: date
    timezone: str
    source_id: str | None = None
    stage_id: str | None = None
    target_id: str | None = None

    def __post_init__(self) -> None:
        for name in ("start", "end"):
            value = getattr(self, name)
            if value.tzinfo is None or value.utcoffset() is None:
                raise ValueError(f"BatchContext.{name} must be timezone-aware, got {value!r}")
            object.__setattr__(self, name, value.astimezone(UTC))
        if self.end <= self.start:
            raise ValueError("BatchContext.end must be after start")

    @classmethod
    def for_window(
        cls, pipeline: str, start: datetime, end: datetime, timezone: str = "UTC", **ids: str | None
    ) -> BatchContext:
        """A context for `[start, end)` with the local date and default batch id filled in."""
        batch_id = ids.pop("batch_id", None) or default_batch_id(
            pipeline, start.astimezone(UTC), end.astimezone(UTC)
        )
        local = local_date_of(start.astimezone(UTC), zone(timezone))
        return cls(batch_id, pipeline, start, end, local, timezone, **ids)

    @property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)


@dataclass(frozen=True, slots=True)
class StagedData:
    """One batch's staged file: where it is and what is in it."""

    location: str  # URI of the file, e.g. s3://bucket/orders/2026/01/01/<batch_id>.parquet
    record_count: int
    bytes: int
    file_format: str  # "ndjson.gz" or "parquet"
    file_count: int = 1
    files: tuple[str, ...] = ()  # every file's URI when the batch was split; else just `location`

    @property
    def uris(self) -> tuple[str, ...]:
        return self.files or (self.location,)


@dataclass(frozen=True, slots=True)
class LoadResult:
    """What a load left in the target for the batch."""

    record_count: int  # rows of this batch in the target after the load
    rows_deleted: int  # rows of an earlier load of the same batch that were replaced
    location: str  # where the rows are, e.g. duckdb:///target.duckdb#events (no password)
    load_id: str


# What a source may yield: Arrow record batches (the built-in sources), or records as dicts
# (custom sources; `record_batches` gathers them into chunks).
Chunk: TypeAlias = pa.RecordBatch | pa.Table | Mapping[str, Any]


@runtime_checkable
class Source(Protocol):
    """Where records come from."""

    def extract(self, batch: BatchContext) -> Iterator[Chunk]:
        """Every record whose time field is in `[batch.start, batch.end)`, each exactly once:
        as `pyarrow.RecordBatch` chunks (one column per top-level field), or as dicts."""
        ...

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        """`(location, query text)` for the state table's source_location / source_query."""
        ...


@runtime_checkable
class Stage(Protocol):
    """Where extracted records wait between the source and the target."""

    def write(self, batch: BatchContext, chunks: Iterable[pa.RecordBatch]) -> StagedData:
        """Stage the record batches atomically: a half-written file is never found by `find`.
        Successive chunks may differ in schema (a field missing, a null-typed column)."""
        ...

    def find(self, batch: BatchContext) -> StagedData | None:
        """The batch's completely staged file, if an earlier attempt left one; else None."""
        ...

    def read(self, staged: StagedData) -> Iterator[pa.RecordBatch]:
        """The staged records as record batches, in the order they were written."""
        ...


@runtime_checkable
class Target(Protocol):
    """Where records end up; loads are exactly once per batch."""

    def load(self, batch: BatchContext, staged: StagedData, stage: Stage) -> LoadResult:
        """Replace the batch's rows with the staged ones (never duplicate them), atomically."""
        ...

    def count(self, batch: BatchContext) -> int:
        """How many rows of this batch the target holds now."""
        ...


M = TypeVar("M", bound=BaseModel)


class Options(BaseModel):
    """Base of each connector's settings: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Columns every record table has besides the record's time: not for time_column.
RESERVED_COLUMNS = frozenset({"pipestate_batch_id", "pipestate_loaded_at", "record"})


class RecordTableOptions(Options):
    """What the targets that load records into a table share: the table, the
    record's time field and the column it goes to, the zone of naive times.
    `identifier` is what the target's database accepts as a plain name."""

    identifier: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    table: str = "pipestate_records"
    time_field: str = "timestamp"  # the record's key holding its time
    time_column: str | None = None  # default: time_field when it is a plain identifier
    naive_timezone: str = "UTC"

    @classmethod
    def plain_identifier(cls, value: str | None) -> str | None:
        if value is not None and not cls.identifier.fullmatch(value):
            raise ValueError(f"must be a plain SQL identifier, got {value!r}")
        return value

    @field_validator("table", "time_column")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return cls.plain_identifier(value)

    @field_validator("naive_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _time_column(self) -> Self:
        if self.time_column is None:
            plain = self.identifier.fullmatch(self.time_field) and self.time_field not in RESERVED_COLUMNS
            object.__setattr__(self, "time_column", self.time_field if plain else "event_time")
        if self.time_column in RESERVED_COLUMNS:
            raise ValueError(f"time_column: {self.time_column!r} is a column pipestate fills")
        return self


def _message(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds["less_than_equal"] = "<="
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {error.get('input')!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def validate_options(model: type[M], section: str, values: Mapping[str, Any]) -> M:
    """`values` validated by `model`; ConfigError `[section] key: problem` on the first problem."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        key, message = ".".join(str(part) for part in first["loc"]), _message(first)
        if not key:  # a check across keys says which key it blames: "url: must ..."
            key, _, message = message.partition(": ") if ": " in message else ("", "", message)
        raise ConfigError(f"[{section}] {key + ': ' if key else ''}{message}") from err


def require(module: str, extra: str, section: str) -> ModuleType:
    """Import an optional client library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f'[{section}] type needs the {module.split(".")[0]} package: pip install "pipestate[{extra}]"'
        ) from err


# Built-ins are named by import path so that no optional client is imported before it is used.
BUILTINS: dict[str, dict[str, str]] = {
    "source": {
        "files": "pipestate.connectors.files:FilesSource",
        "elasticsearch": "pipestate.connectors.elastic:ElasticsearchSource",
        "opensearch": "pipestate.connectors.opensearch:OpenSearchSource",
    },
    "stage": {
        "fsspec": "pipestate.connectors.fsspec_stage:FsspecStage",
        "local": "pipestate.connectors.fsspec_stage:FsspecStage",
        "s3": "pipestate.connectors.fsspec_stage:FsspecStage",
    },
    "target": {
        "sql": "pipestate.connectors.sql:SqlTarget",
        "snowflake": "pipestate.connectors.snowflake_target:SnowflakeTarget",
    },
}

_DEFAULT_TYPE: dict[str, str] = {"stage": "local", "target": "sql"}


def _resolve(kind: Kind, name: str) -> type:
    if name in BUILTINS[kind]:
        return import_path(BUILTINS[kind][name], f"[{kind}] type")  # type: ignore[return-value]
    if ":" in name:
        found = import_path(name, f"[{kind}] type")
        if not isinstance(found, type):
            raise ConfigError(f"[{kind}] type: {name!r} is not a class")
        return found
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return point.load()  # type: ignore[no-any-return]
        except Exception as err:  # a broken plugin must not look like a typo
            raise ConfigError(f"[{kind}] type: entry point {name!r} failed to load: {err}") from err
    known = ", ".join(sorted(BUILTINS[kind]))
    raise ConfigError(
        f"[{kind}] type: unknown {kind} type {name!r} (built-ins: {known}; "
        f"or 'module:Class', or an entry point in group {ENTRY_POINT_GROUP!r})"
    )


def _build(kind: Kind, cfg: Mapping[str, Any], base: Path | None) -> Any:
    values = dict(cfg)
    name = values.pop("type", None) or _DEFAULT_TYPE.get(kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"[{kind}] type: required key is missing")
    cls = _resolve(kind, name)
    model = getattr(cls, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        if base is not None:
            # A default path (`./pipestate-stage`) belongs next to the config file, like the
            # paths written in it; otherwise a cron job from another folder stages elsewhere.
            for key in ("url", "path"):
                field = model.model_fields.get(key)
                if key not in values and field is not None and isinstance(field.default, str):
                    values[key] = anchor_path(field.default, base)
        # Built-ins that serve several type names learn which one was used.
        if "type" in model.model_fields:
            values["type"] = name
        instance = cls(validate_options(model, kind, values))
    else:
        try:
            instance = cls(**values)
        except TypeError as err:
            raise ConfigError(f"[{kind}] {err}") from err
    protocol = {"source": Source, "stage": Stage, "target": Target}[kind]
    if not isinstance(instance, protocol):
        raise ConfigError(f"[{kind}] type: {name!r} does not implement the {kind} protocol")
    return instance


def build_source(cfg: Mapping[str, Any], base: Path | None = None) -> Source:
    """The source that `[source]` describes; ConfigError naming the offending key.
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("source", cfg, base)  # type: ignore[no-any-return]


def build_stage(cfg: Mapping[str, Any], base: Path | None = None) -> Stage:
    """The stage that `[stage]` describes (default: a local directory).
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("stage", cfg, base)  # type: ignore[no-any-return]


def build_target(cfg: Mapping[str, Any], base: Path | None = None) -> Target:
    """The target that `[target]` describes (default: SQL on DuckDB).
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("target", cfg, base)  # type: ignore[no-any-return]


_EPOCH_DIVISOR = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}


def parse_instant(
    value: Any,
    naive_tz: tzinfo = UTC,
    epoch_unit: str = "auto",
) -> datetime:
    """A record's time value as an aware UTC datetime.

    Accepts datetimes, ISO 8601 text (`Z` or an offset; naive text is read in `naive_tz`), and
    epoch numbers (or digit strings) in `epoch_unit`; `"auto"` takes |n| >= 1e11 as
    milliseconds (1e11 seconds is the year 5138), else seconds. ValueError when unreadable.
    """
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, int | float | Decimal) and not isinstance(value, bool):
        moment = _from_epoch(value, epoch_unit)
    elif isinstance(value, str):
        text = value.strip()
        if text.lstrip("-").replace(".", "", 1).isdigit():
            return _from_epoch(Decimal(text), epoch_unit)
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    else:
        raise ValueError(f"not a timestamp: {value!r}")
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=naive_tz)
    return moment.astimezone(UTC)


def _from_epoch(number: int | float | Decimal, unit: str) -> datetime:
    if isinstance(number, float) and not math.isfinite(number):
        raise ValueError(f"not a timestamp: {number!r}")
    exact = Decimal(str(number)) if isinstance(number, float) else Decimal(number)
    if unit == "auto":
        unit = "ms" if abs(exact) >= 100_000_000_000 else "s"
    micros = int(exact * 1_000_000 / _EPOCH_DIVISOR[unit])
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros)


def json_default(value: Any) -> Any:
    """`json.dumps(default=...)` for what files and databases hand us besides JSON types."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "backslashreplace")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(record: Any) -> str:
    """A record (or any value) as compact JSON text, the same way every connector writes it."""
    return json.dumps(record, default=json_default, separators=(",", ":"), ensure_ascii=False)


def check_options(kind: Kind, cfg: Mapping[str, Any]) -> None:
    """Validate a `[source]`/`[stage]`/`[target]` section without connecting to anything.

    Called when the config is loaded, so a typo is exit 2 before any work starts.
    Connectors without an `Options` model are checked when they are built.
    """
    values = dict(cfg)
    name = values.pop("type", None) or _DEFAULT_TYPE.get(kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"[{kind}] type: required key is missing")
    model = getattr(_resolve(kind, name), "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        if "type" in model.model_fields:
            values["type"] = name
        validate_options(model, kind, values)


CHUNK_ROWS = 65_536  # rows per record batch built from dicts (tens of thousands: columns pay off)


def record_batches(chunks: Iterable[Any], rows: int = CHUNK_ROWS) -> Iterator[pa.RecordBatch]:
    """The one adapter from what a source yields to Arrow: record batches pass through, tables
    are split into theirs, dicts are gathered `rows` at a time into one batch each."""
    pending: list[Mapping[str, Any]] = []
    for chunk in chunks:
        if isinstance(chunk, pa.RecordBatch):
            if pending:
                yield _from_dicts(pending)
                pending = []
            if chunk.num_rows:
                yield chunk
        elif isinstance(chunk, pa.Table):
            if pending:
                yield _from_dicts(pending)
                pending = []
            yield from (part for part in chunk.to_batches() if part.num_rows)
        elif isinstance(chunk, Mapping):
            pending.append(chunk)
            if len(pending) >= rows:
                yield _from_dicts(pending)
                pending = []
        else:
            raise ConnectorError(
                f"a source yielded a {type(chunk).__name__}: expected pyarrow.RecordBatch or dict records"
            )
    if pending:
        yield _from_dicts(pending)


def _from_dicts(records: list[Mapping[str, Any]]) -> pa.RecordBatch:
    try:
        return pa.RecordBatch.from_pylist(records)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    # Some field mixes kinds (a number here, text there): that field goes column by column,
    # as text, so nothing is lost and the target says which field conflicts with its table.
    names = list(dict.fromkeys(name for record in records for name in record))
    arrays = []
    for name in names:
        values = [record.get(name) for record in records]
        try:
            arrays.append(pa.array(values))
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            text = [None if v is None else v if isinstance(v, str) else dumps(v) for v in values]
            arrays.append(pa.array(text, pa.string()))
    return pa.RecordBatch.from_arrays(arrays, names=names)


UTC_MICROS = pa.timestamp("us", "UTC")


def utc_times(
    values: pa.Array | pa.ChunkedArray,
    naive_tz: str = "UTC",
    epoch_unit: str = "auto",
    strict: bool = True,
) -> pa.Array | pa.ChunkedArray:
    """A time column as `timestamp[us, UTC]`, the way `parse_instant` reads each value.

    Vectorised for timestamps, ISO 8601 text and epoch numbers; anything else goes value by
    value. `strict`: ValueError naming the first unreadable value (its row in the message);
    else unreadable values become null.
    """
    kind = values.type
    if pa.types.is_null(kind):
        return pa.nulls(len(values), UTC_MICROS)
    if pa.types.is_timestamp(kind):
        if kind.tz is None:
            try:
                values = pc.assume_timezone(values, naive_tz, ambiguous="earliest", nonexistent="raise")
            except pa.ArrowInvalid:
                return _times_one_by_one(values, naive_tz, epoch_unit, strict)
        return values.cast(UTC_MICROS)
    if pa.types.is_integer(kind) or pa.types.is_floating(kind):
        return _epoch_times(values, epoch_unit)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        try:
            return values.cast(UTC_MICROS)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        try:
            naive = values.cast(pa.timestamp("us"))
            return pc.assume_timezone(naive, naive_tz, ambiguous="earliest", nonexistent="raise").cast(
                UTC_MICROS
            )
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
    return _times_one_by_one(values, naive_tz, epoch_unit, strict)


def _epoch_times(values: pa.Array | pa.ChunkedArray, unit: str) -> pa.Array | pa.ChunkedArray:
    floating = pa.types.is_floating(values.type)
    numbers = values.cast(pa.float64()) if floating else values.cast(pa.int64())
    if unit == "auto":
        millis = pc.greater_equal(pc.abs(numbers), 100_000_000_000)
        scale = pc.if_else(millis, 1_000, 1_000_000)
    else:
        scale = None
    if floating:
        factor = scale.cast(pa.float64()) if scale is not None else 1_000_000 / _EPOCH_DIVISOR[unit]
        micros = pc.round(pc.multiply(numbers, factor)).cast(pa.int64())
    elif scale is not None:
        micros = pc.multiply(numbers, scale)
    elif _EPOCH_DIVISOR[unit] <= 1_000_000:
        micros = pc.multiply(numbers, 1_000_000 // _EPOCH_DIVISOR[unit])
    else:
        micros = pc.divide(numbers, _EPOCH_DIVISOR[unit] // 1_000_000)
    return micros.cast(UTC_MICROS)


def _times_one_by_one(
    values: pa.Array | pa.ChunkedArray, naive_tz: str, epoch_unit: str, strict: bool
) -> pa.Array:
    tz = zone(naive_tz)
    out: list[datetime | None] = []
    for row, value in enumerate(values.to_pylist()):
        try:
            out.append(None if value is None and not strict else parse_instant(value, tz, epoch_unit))
        except (ValueError, TypeError, OverflowError) as err:
            if strict:
                raise ValueError(f"row {row + 1}: {err}") from err
            out.append(None)
    return pa.array(out, UTC_MICROS)


def merge_schemas(first: pa.Schema, second: pa.Schema) -> pa.Schema:
    """Both schemas' fields in one (a null-typed field takes the other's type, integers widen to
    floats); ConnectorError naming the field when two types do not meet."""
    try:
        return pa.unify_schemas([first, second], promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        for field in second:
            index = first.get_field_index(field.name)
            if index >= 0 and first.field(index).type != field.type:
                try:
                    pa.unify_schemas(
                        [pa.schema([first.field(index)]), pa.schema([field])], promote_options="permissive"
                    )
                except (pa.ArrowInvalid, pa.ArrowTypeError):
                    raise ConnectorError(
                        f"field {field.name!r} is {first.field(index).type} in one chunk "
                        f"and {field.type} in another"
                    ) from err
        raise ConnectorError(f"the chunks' schemas do not merge: {err}") from err


def conform(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """`batch` with exactly `schema`'s columns: missing ones null, the others cast to its types."""
    if batch.schema == schema:
        return batch
    columns = []
    for field in schema:
        index = batch.schema.get_field_index(field.name)
        column = batch.column(index) if index >= 0 else pa.nulls(batch.num_rows, field.type)
        columns.append(column if column.type == field.type else column.cast(field.type))
    return pa.RecordBatch.from_arrays(columns, schema=schema)

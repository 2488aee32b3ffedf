"""Arrow helpers of the data path: records into record batches, instants read from any form a
source sends (text, epoch numbers, naive values in a zone), schemas merged and conformed."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import ConnectorError
from ..windows import UTC, zone

__all__ = [
    "parse_instant",
    "stored_instant",
    "json_default",
    "dumps",
    "CHUNK_ROWS",
    "record_batches",
    "UTC_MICROS",
    "utc_times",
    "merge_schemas",
    "conform",
    "parquet_ready",
]

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


def stored_instant(value: Any) -> datetime | None:
    """A record time as a target gives it back (an aware or naive-UTC datetime, or SQLite's
    UTC text) as an aware UTC datetime."""
    if value is None:
        return None
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


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


# Parquet refuses to read back a schema nested deeper than 100 levels (a list is two).
_PARQUET_DEPTH = 64


def _depth(kind: pa.DataType) -> int:
    if pa.types.is_struct(kind):
        return 1 + max((_depth(kind.field(i).type) for i in range(kind.num_fields)), default=0)
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return 2 + _depth(kind.value_type)
    if pa.types.is_map(kind):
        return 2 + max(_depth(kind.key_type), _depth(kind.item_type))
    return 0


def _empty_struct(kind: pa.DataType) -> bool:
    if pa.types.is_struct(kind):
        return kind.num_fields == 0 or any(_empty_struct(kind.field(i).type) for i in range(kind.num_fields))
    if pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind):
        return _empty_struct(kind.value_type)
    return False


def parquet_ready(batch: pa.RecordBatch) -> tuple[pa.RecordBatch, list[str]]:
    """`batch` with every column Parquet cannot hold as it is turned into JSON text: one that
    holds an empty object (Parquet has no empty group) or is nested deeper than 64 levels
    (Parquet reads back 100 at most). Returns the batch and one note per column changed."""
    notes: list[str] = []
    columns = []
    for item, column in zip(batch.schema, batch.columns, strict=True):
        why = "an empty object" if _empty_struct(item.type) else None
        if why is None and _depth(item.type) > _PARQUET_DEPTH:
            why = f"nesting deeper than {_PARQUET_DEPTH} levels"
        if why is None:
            columns.append(column)
            continue
        notes.append(f"field {item.name!r} kept as JSON text ({why})")
        columns.append(pa.array([None if v is None else dumps(v) for v in column.to_pylist()], pa.string()))
    if not notes:
        return batch, notes
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names), notes

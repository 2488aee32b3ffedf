"""Source `files`: NDJSON, CSV or Parquet files (optionally `.gz`), filtered by a time field.

Read with pyarrow, never record by record. An NDJSON or CSV file is parsed once per process,
sorted by time and kept in a cache bounded in bytes, so the 24 hourly windows of a daily file
cost one parse and 24 slices; a file bigger than the cache is streamed block by block and
filtered instead, so memory stays bounded by a block. Parquet files are read a row group at a
time, and a row group (or a file) whose time statistics miss the window is not read at all.
Hive-style folders (`dt=2026-03-07/hour=05/`) whose span misses the window are skipped.
"""

from __future__ import annotations

import bisect
import functools
import glob
import re
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from ..errors import ConfigError, ConnectorError
from ..windows import UTC, zone
from .arrow import CHUNK_ROWS, utc_times
from .protocols import BatchContext
from .registry import Options

__all__ = ["FilesSource", "partition_span"]

_FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv"}
_FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
_BLOCK_BYTES = 16 << 20  # the parse block of a whole-file read after a streamed one failed
# The parse block of a file read whole: a quarter of pyarrow's default, as fast, and the
# parse's peak 20 MB lower (its read-ahead holds several blocks). A longer record: 16 MB blocks.
_SMALL_BLOCK_BYTES = 256 << 10
_ARROW_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OSError)


class FilesOptions(Options):
    type: Literal["files"] = "files"
    path: str  # a file, a directory (searched recursively) or a glob such as data/**/*.ndjson
    format: Literal["auto", "ndjson", "csv", "parquet"] = "auto"  # auto: by file extension
    time_field: str = "timestamp"
    epoch_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    naive_timezone: str = "UTC"  # how to read timestamps that carry no offset
    csv_delimiter: str = ","
    cache_mb: int = Field(default=256, ge=0)  # parsed NDJSON/CSV kept per process, whole files
    block_mb: int = Field(default=2, gt=0, le=256)  # parse block of a streamed file; a record must fit
    # The zone of hive folder values such as dt=2026-03-07/hour=05; by default the zone naive
    # times are read in, since such folders are mostly named after the records' own clock.
    partition_timezone: str | None = None

    @field_validator("naive_timezone", "partition_timezone")
    @classmethod
    def _zone(cls, value: str | None) -> str | None:
        if value is not None:
            zone(value)
        return value

    @field_validator("time_field", "path")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value

    @field_validator("csv_delimiter")
    @classmethod
    def _one_character(cls, value: str) -> str:
        if len(value) != 1:
            raise ValueError("must be one character")
        return value


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


_PARTITION = re.compile(r"^(dt|date|year|month|day|hour)=(.+)$", re.IGNORECASE)


def partition_span(path: Path, tz: Any) -> tuple[datetime, datetime] | None:
    """The `[start, end)` in UTC that hive-style folders of `path` confine its records to
    (`dt=`/`date=` YYYY-MM-DD, or `year=`/`month=`/`day=`, then `hour=`), or None."""
    parts: dict[str, str] = {}
    for folder in path.parent.parts:
        match = _PARTITION.match(folder)
        if match:
            parts[match.group(1).lower()] = match.group(2)
    try:
        if "dt" in parts or "date" in parts:
            day = datetime.strptime(parts.get("dt") or parts["date"], "%Y-%m-%d")
            start, step = day, timedelta(days=1)
        elif "year" in parts:
            year, month, day_of = int(parts["year"]), int(parts.get("month", 1)), int(parts.get("day", 1))
            start = datetime(year, month, day_of)
            if "day" in parts:
                step = timedelta(days=1)
            elif "month" in parts:
                following = datetime(year + month // 12, month % 12 + 1, 1)
                step = following - start
            else:
                step = datetime(year + 1, 1, 1) - start
        else:
            return None
        if "hour" in parts:
            if step != timedelta(days=1):
                return None  # an hour under a month or a year: not a layout we can bound
            start, step = start + timedelta(hours=int(parts["hour"])), timedelta(hours=1)
    except (ValueError, KeyError):
        return None  # not a date after all: read the file
    # Wall-clock folders: the span covers both readings of a repeated (DST) hour.
    low = start.replace(tzinfo=tz).astimezone(UTC)
    high = (start + step).replace(tzinfo=tz, fold=1).astimezone(UTC)
    return low, max(high, low + step)


class FilesSource:
    """Records of local NDJSON/CSV/Parquet files whose `time_field` is in the batch's window,
    as Arrow record batches with the time field as `timestamp[us, UTC]`."""

    Options = FilesOptions

    def __init__(self, options: FilesOptions) -> None:
        self.options = options
        self._partition_tz = zone(options.partition_timezone or options.naive_timezone)
        self._spans: dict[tuple[str, int, int], tuple[datetime, datetime] | None] = {}
        self._cache: dict[tuple[str, int, int], pa.Table] = {}
        self._cache_bytes = options.cache_mb << 20

    def files(self) -> list[Path]:
        """The files the source reads, sorted by path."""
        pattern = self.options.path
        if any(char in pattern for char in "*?["):
            found = [Path(p) for p in glob.glob(pattern, recursive=True)]
        elif Path(pattern).is_dir():
            found = list(Path(pattern).rglob("*"))
            if self.options.format == "auto":
                found = [p for p in found if _format_of(p)]
        elif Path(pattern).exists():
            found = [Path(pattern)]
        else:
            raise ConnectorError(f"[source] path: {pattern} does not exist")
        return sorted(p for p in found if p.is_file() and not p.name.startswith("."))

    def check(self) -> None:
        """Before any work: the path must exist (a glob may match nothing yet)."""
        pattern = self.options.path
        if not any(char in pattern for char in "*?[") and not Path(pattern).exists():
            raise ConfigError(f"[source] path: {Path(pattern).absolute()} does not exist")

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        location = str(Path(self.options.path).absolute())
        field = self.options.time_field
        query = f"{field} >= {batch.start.isoformat()} AND {field} < {batch.end.isoformat()}"
        return location, query

    def extract(self, batch: BatchContext) -> Iterator[pa.RecordBatch]:
        # Workers take the oldest windows first: a cached file whose records all lie before
        # this window is done with, and its memory is better given back now.
        for key in [k for k in self._cache if _before(self._spans.get(k), batch)]:
            del self._cache[key]
        for path in self.files():
            kind = self.options.format if self.options.format != "auto" else _format_of(path)
            if kind is None:
                raise ConnectorError(f"{path}: unknown file type (set [source] format)")
            if _misses(partition_span(path, self._partition_tz), batch):
                continue
            stat = path.stat()
            key = (str(path), stat.st_mtime_ns, stat.st_size)
            if key in self._spans and _misses(self._spans[key], batch):
                continue  # read before: none of its records is in this window
            if kind == "parquet":
                yield from self._parquet(path, key, batch)
            elif key in self._cache or _parsed_estimate(path, stat.st_size) <= self._cache_bytes:
                if key not in self._spans and self._holds_a_later_file(batch):
                    # Already holding a file for later windows: learn this one's span from
                    # its time field alone, and parse it whole only when a window needs it.
                    known, span = self._probe(path, kind)
                    if known:
                        self._spans[key] = span
                        if _misses(span, batch):
                            continue
                table = self._cached(path, kind, key, batch)
                yield from _window_of_sorted(table, self.options.time_field, batch)
            else:
                yield from self._streamed(path, kind, key, batch)

    def window_counts(self, windows: list[tuple[datetime, datetime]]) -> list[int]:
        """How many records each `[start, end)` holds now, read as `extract` reads them
        (the same files, folders and instants), each file read once: for `reconcile --source`."""
        counts = [0] * len(windows)
        field = self.options.time_field
        for path in self.files():
            kind = self.options.format if self.options.format != "auto" else _format_of(path)
            if kind is None:
                raise ConnectorError(f"{path}: unknown file type (set [source] format)")
            span = partition_span(path, self._partition_tz)
            if kind == "parquet":
                try:
                    column = pq.read_table(_parquet_source(path), columns=[field]).column(field)
                except _ARROW_ERRORS as err:
                    raise ConnectorError(f"{path}: cannot read as parquet: {_first_line(err)}") from err
                times = self._with_times(path, pa.table({field: column}), 1).column(field)
            else:
                times = self._read_whole(path, kind).column(field)
            values = pc.sort_indices(times)  # sorted instants, as integers, for bisection
            micros = pc.take(times, values).cast(pa.int64()).to_pylist()
            for index, (start, end) in enumerate(windows):
                if span is not None and (end <= span[0] or start >= span[1]):
                    continue  # extract skips this file's folder for the window
                low, high = _micros(start), _micros(end)
                counts[index] += bisect.bisect_left(micros, high) - bisect.bisect_left(micros, low)
        return counts

    # -- NDJSON and CSV ------------------------------------------------------------------------

    def _cached(self, path: Path, kind: str, key: tuple[str, int, int], batch: BatchContext) -> pa.Table:
        # Parsed once per process, sorted by time (stable: equal times keep file order), so
        # each window is a slice.
        table = self._cache.get(key)
        if table is None:
            table = self._read_whole(path, kind)
            times = table.column(self.options.time_field)
            if len(times) > 1 and not pc.all(pc.greater_equal(times[1:], times[:-1])).as_py():
                table = table.sort_by([(self.options.time_field, "ascending")])  # a sorted copy
                times = table.column(self.options.time_field)
            self._spans[key] = (times[0].as_py(), times[-1].as_py()) if len(times) else None
            self._cache[key] = table
            self._make_room(key, batch)
        return table

    def _holds_a_later_file(self, batch: BatchContext) -> bool:
        """Whether the cache holds a file none of whose records is in this window (files
        before it are gone by now: the ones held are for windows still to come)."""
        return any(_misses(self._spans.get(key), batch) for key in self._cache)

    def _probe(self, path: Path, kind: str) -> tuple[bool, tuple[datetime, datetime] | None]:
        """(True, the file's time span) read from its time field alone: about half the time
        of a whole parse, and nothing kept; the span is None for a file with no records. (False, None)
        where the field cannot be read that way (numbers, missing values, a parse error): the
        whole parse then decides, and reports any problem naming the record."""
        field = self.options.time_field
        try:
            with _stream(path) as stream:
                if kind == "csv":
                    convert = pa_csv.ConvertOptions(include_columns=[field])
                    table = pa_csv.read_csv(
                        stream, parse_options=self._csv_parse(), convert_options=convert, memory_pool=_pool()
                    )
                else:
                    only = pa_json.ParseOptions(
                        explicit_schema=pa.schema([(field, pa.string())]), unexpected_field_behavior="ignore"
                    )
                    table = pa_json.read_json(stream, parse_options=only, memory_pool=_pool())
            column = table.column(field)
            if column.null_count:
                return False, None
            times = utc_times(column, self.options.naive_timezone, self.options.epoch_unit)
        except (*_ARROW_ERRORS, KeyError, ValueError):
            return False, None
        finally:
            _pool().release_unused()
        if not len(times):
            return True, None
        low, high = pc.min_max(times).values()
        return True, (low.as_py(), high.as_py())

    def _make_room(self, key: tuple[str, int, int], batch: BatchContext) -> None:
        # Over the budget, the file needed last leaves first: workers take windows oldest
        # first, so that is the one whose records start latest (least recently used would
        # drop the file the next window reads). The file this window reads stays.
        while sum(t.nbytes for t in self._cache.values()) > self._cache_bytes:
            candidates = [k for k in self._cache if k != key or _misses(self._spans.get(k), batch)]
            if not candidates:
                return
            victim = max(candidates, key=lambda k: _start_of(self._spans.get(k)))
            del self._cache[victim]

    def _read_whole(self, path: Path, kind: str) -> pa.Table:
        """The whole file, its time field read as instants."""
        try:
            return self._read_blocks(path, kind)
        finally:
            # The parse's read-ahead blocks and text columns are garbage now: hand the
            # allocators' free pages back, or every parsed file leaves tens of MB behind.
            _pool().release_unused()
            pa.default_memory_pool().release_unused()

    def _read_blocks(self, path: Path, kind: str) -> pa.Table:
        # Streamed a block at a time, each block's time text turned into instants as it comes
        # (a third less memory than reading the file at once); when a later block brings a
        # field or a type the first did not have, the file is read whole instead, which infers
        # its schema from all of it.
        blocks: list[pa.Table] = []
        first_row = 1
        try:
            with _stream(path) as stream:
                reader = self._reader(stream, kind, _SMALL_BLOCK_BYTES)
                for block in reader:
                    blocks.append(self._with_times(path, pa.Table.from_batches([block]), first_row))
                    first_row += block.num_rows
                if not blocks:
                    return self._with_times(path, reader.schema.empty_table(), first_row=1)
            return pa.concat_tables(blocks, memory_pool=_pool())
        except _ARROW_ERRORS:
            blocks.clear()
        try:
            with _stream(path) as stream:
                if kind == "csv":
                    table = pa_csv.read_csv(stream, parse_options=self._csv_parse(), memory_pool=_pool())
                else:
                    options = pa_json.ReadOptions(block_size=_BLOCK_BYTES)
                    table = pa_json.read_json(stream, read_options=options, memory_pool=_pool())
        except _ARROW_ERRORS as err:
            raise ConnectorError(f"{path}: cannot read as {kind}: {_first_line(err)}") from err
        return self._with_times(path, table, first_row=1)

    def _reader(self, stream: Any, kind: str, block: int) -> Any:
        if kind == "csv":
            return pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(block_size=block),
                parse_options=self._csv_parse(),
                memory_pool=_pool(),
            )
        return pa_json.open_json(
            stream, read_options=pa_json.ReadOptions(block_size=block), memory_pool=_pool()
        )

    def _streamed(
        self, path: Path, kind: str, key: tuple[str, int, int], batch: BatchContext
    ) -> Iterator[pa.RecordBatch]:
        # Too big to keep: one block at a time, filtered to the window, so memory stays
        # bounded by a few blocks whatever the file's size; its span is learnt on the way.
        low: datetime | None = None
        high: datetime | None = None
        first_row = 1
        try:
            with _stream(path) as stream:
                # pyarrow's streaming readers read ahead several blocks: memory grows with the
                # block (16 MB blocks: ~500 MB), so blocks are small unless records are long.
                for block in self._reader(stream, kind, self.options.block_mb << 20):
                    block = self._with_times(path, pa.Table.from_batches([block]), first_row)
                    first_row += block.num_rows
                    times = block.column(self.options.time_field)
                    if block.num_rows:
                        least, most = pc.min_max(times).values()
                        low = least.as_py() if low is None else min(low, least.as_py())
                        high = most.as_py() if high is None else max(high, most.as_py())
                    yield from _window_of(block, self.options.time_field, batch)
        except _ARROW_ERRORS as err:
            hint = " (a record longer than [source] block_mb?)" if "straddl" in str(err).lower() else ""
            raise ConnectorError(f"{path}: cannot read as {kind}: {_first_line(err)}{hint}") from err
        self._spans[key] = (low, high) if low is not None and high is not None else None

    def _csv_parse(self) -> pa_csv.ParseOptions:
        return pa_csv.ParseOptions(delimiter=self.options.csv_delimiter)

    def _with_times(self, path: Path, table: pa.Table, first_row: int) -> pa.Table:
        """`table` with its time field read as UTC instants; ConnectorError naming the record."""
        field = self.options.time_field
        names = table.schema.names
        if len(set(names)) != len(names):  # a CSV header naming a column twice
            twice = sorted({name for name in names if names.count(name) > 1})
            raise ConnectorError(f"{path}: the header names {', '.join(map(repr, twice))} more than once")
        index = table.schema.get_field_index(field)
        if index < 0:
            if table.num_rows == 0:
                return table.append_column(field, pa.nulls(0, pa.timestamp("us", "UTC")))
            raise ConnectorError(f"{path}: record {first_row} has no field {field!r}")
        column = table.column(index)
        if column.null_count:
            row = pc.index(column.is_null(), True).as_py()
            raise ConnectorError(f"{path}: record {first_row + row} has no field {field!r}")
        try:
            times = utc_times(column, self.options.naive_timezone, self.options.epoch_unit)
        except ValueError as err:
            text = str(err)
            row_text, _, problem = text.partition(": ") if text.startswith("row ") else ("", "", text)
            row = first_row + int(row_text.removeprefix("row ")) - 1 if row_text else first_row
            raise ConnectorError(f"{path}: record {row} has an unreadable {field!r}: {problem}") from err
        return table.set_column(index, field, times)

    # -- Parquet ------------------------------------------------------------------------------

    def _parquet(
        self, path: Path, key: tuple[str, int, int], batch: BatchContext
    ) -> Iterator[pa.RecordBatch]:
        field = self.options.time_field
        try:
            handle = pq.ParquetFile(_parquet_source(path))
        except _ARROW_ERRORS as err:
            raise ConnectorError(f"{path}: cannot read as parquet: {_first_line(err)}") from err
        with handle:
            groups = _row_group_spans(handle, field, self.options.naive_timezone, self.options.epoch_unit)
            known = [span for span in groups if span is not None]
            if len(known) == len(groups) and known:
                self._spans[key] = (min(s[0] for s in known), max(s[1] for s in known))
            first_row = 1
            for index, span in enumerate(groups):
                rows = handle.metadata.row_group(index).num_rows
                if not _misses(span, batch):
                    try:
                        table = handle.read_row_group(index)
                    except _ARROW_ERRORS as err:
                        raise ConnectorError(
                            f"{path}: cannot read row group {index}: {_first_line(err)}"
                        ) from err
                    yield from _window_of(self._with_times(path, table, first_row), field, batch)
                first_row += rows


def _stream(path: Path) -> Any:
    """A pyarrow input stream of the file, decompressed by its extension. pyarrow opens only
    UTF-8 paths: a name holding other bytes (a file copied from another system) is opened by
    Python and handed over, so it is read like any other instead of failing every batch."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        compression = "gzip" if path.name.lower().endswith(".gz") else None
        return pa.input_stream(pa.PythonFile(open(path, "rb"), mode="r"), compression=compression)  # noqa: SIM115
    return pa.input_stream(str(path), compression="detect")


def _parquet_source(path: Path) -> Any:
    """The Parquet file's path, or its bytes where pyarrow cannot open the name (see `_stream`)."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError:
        return pa.BufferReader(path.read_bytes())
    return path


@functools.cache
def _pool() -> pa.MemoryPool:
    """The memory pool files are parsed in. Parsing on several threads leaves pyarrow's default
    pool (mimalloc) holding freed pages in each thread's heap: parsing an 80 MB file peaked
    110 MB above what it started at, to build a 26 MB table. jemalloc told to hand freed
    pages back at once peaks at 47 MB, as fast; where this pyarrow has no jemalloc, the
    system allocator does about as well. Only the parse uses it: the default pool, and any
    jemalloc pool a user chose as their default, are left as they are."""
    if "jemalloc" in pa.supported_memory_backends() and pa.default_memory_pool().backend_name != "jemalloc":
        pool = pa.jemalloc_memory_pool()
        pa.jemalloc_set_decay_ms(0)
        return pool
    return pa.system_memory_pool()


def _parsed_estimate(path: Path, size: int) -> int:
    """About how many bytes a file takes once parsed: JSON and CSV text is usually bigger than
    its Arrow columns; gzip'ed text is about a fifth of its size."""
    return size * 5 if path.suffix.lower() == ".gz" else size


def _row_group_spans(
    handle: pq.ParquetFile, field: str, naive_tz: str = "UTC", epoch_unit: str = "auto"
) -> list[tuple[datetime, datetime] | None]:
    """Each row group's time span from its statistics, in the instants the reader makes of its
    values (`utc_times` with the same zone and unit), or None where they cannot bound them."""
    schema = handle.schema_arrow
    index = schema.get_field_index(field)
    kind = schema.field(index).type if index >= 0 else None
    # Only the column's own leaf has statistics; a nested or repeated field has none we can use.
    leaf = _leaf_index(handle, field) if kind is not None else None
    spans: list[tuple[datetime, datetime] | None] = []
    for group in range(handle.metadata.num_row_groups):
        span = None
        if kind is not None and leaf is not None:
            stats = handle.metadata.row_group(group).column(leaf).statistics
            if stats is not None and stats.has_min_max and stats.null_count == 0:
                span = statistics_span(stats.min, stats.max, kind, naive_tz, epoch_unit)
        spans.append(span)
    return spans


def _leaf_index(handle: pq.ParquetFile, field: str) -> int | None:
    for leaf in range(handle.metadata.num_columns):
        if handle.metadata.schema.column(leaf).path == field:
            return leaf
    return None


# Every zone's offsets lie within this of UTC (historic local mean times included).
_WIDEST_OFFSET = timedelta(hours=16)


def statistics_span(
    low: Any, high: Any, kind: pa.DataType, naive_tz: str = "UTC", epoch_unit: str = "auto"
) -> tuple[datetime, datetime] | None:
    """The closed UTC span that every value between the column statistics `low` and `high`
    reads as (through `utc_times`), or None when no such span can be told: pruning with it
    never skips a record the reader would put in a window.

    An aware timestamp, a naive one in UTC and epoch numbers of a fixed unit read in order,
    so their edges are the span's. A naive timestamp in another zone does not quite: a value
    in a DST gap reads with the offset before it, later than values just after the gap; so
    the span is the edges read with every offset the zone takes around them. Text and
    epoch numbers of unit "auto" (seconds below 1e11, milliseconds above) are not bounded."""
    try:
        if pa.types.is_timestamp(kind):
            edges = pa.array([low, high], kind).cast(pa.timestamp("us", kind.tz), safe=False)
            if kind.tz is not None:
                first, last = utc_times(edges, "UTC").to_pylist()
                return first, last + timedelta(microseconds=1)  # the cast above floors
            naive_low, naive_high = edges.to_pylist()
            return _naive_span(naive_low, naive_high, zone(naive_tz))
        if (pa.types.is_integer(kind) or pa.types.is_floating(kind)) and epoch_unit != "auto":
            first, last = utc_times(pa.array([low, high], kind), "UTC", epoch_unit).to_pylist()
            return first, last
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError, ValueError):
        return None
    return None


def _naive_span(low: datetime, high: datetime, tz: Any) -> tuple[datetime, datetime]:
    first, last = low.replace(tzinfo=UTC), high.replace(tzinfo=UTC) + timedelta(microseconds=1)
    if high - low > timedelta(days=62):
        return first - _WIDEST_OFFSET, last + _WIDEST_OFFSET  # long spans rarely prune anyway
    # The offsets the zone takes from a day before `low` to a day after `high`, a day apart
    # (no zone changes its offset twice in a day).
    offsets = set()
    moment = low - timedelta(days=1)
    while moment <= high + timedelta(days=1):
        for fold in (0, 1):
            offset = moment.replace(tzinfo=tz, fold=fold).utcoffset()
            if offset is not None:
                offsets.add(offset)
        moment += timedelta(days=1)
    for edge in (low, high):
        for fold in (0, 1):
            offset = edge.replace(tzinfo=tz, fold=fold).utcoffset()
            if offset is not None:
                offsets.add(offset)
    if not offsets:
        return first - _WIDEST_OFFSET, last + _WIDEST_OFFSET
    return first - max(offsets), last - min(offsets)


def _micros(moment: datetime) -> int:
    return (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _start_of(span: tuple[datetime, datetime] | None) -> float:
    """When a file's records start, as a number that sorts; a file with no records sorts last
    (no window needs it)."""
    return span[0].timestamp() if span is not None else float("inf")


def _before(span: tuple[datetime, datetime] | None, batch: BatchContext) -> bool:
    return span is not None and span[1] < batch.start


def _misses(span: tuple[datetime, datetime] | None, batch: BatchContext) -> bool:
    """Whether a closed time span `[low, high]` lies wholly outside the window."""
    return span is not None and (span[1] < batch.start or span[0] >= batch.end)


def _bounds(times: pa.ChunkedArray | pa.Array, batch: BatchContext) -> tuple[pa.Scalar, pa.Scalar]:
    kind = times.type
    return pa.scalar(batch.start, kind), pa.scalar(batch.end, kind)


def _window_of_sorted(table: pa.Table, field: str, batch: BatchContext) -> Iterator[pa.RecordBatch]:
    times = table.column(field)
    start, end = _bounds(times, batch)
    # Sorted: the counts of times before each bound are the slice's edges.
    low = pc.sum(pc.less(times, start)).as_py() or 0
    high = pc.sum(pc.less(times, end)).as_py() or 0
    if high > low:
        yield from table.slice(low, high - low).to_batches(max_chunksize=CHUNK_ROWS)


def _window_of(table: pa.Table, field: str, batch: BatchContext) -> Iterator[pa.RecordBatch]:
    times = table.column(field)
    start, end = _bounds(times, batch)
    inside = pc.and_(pc.greater_equal(times, start), pc.less(times, end))
    kept = table.filter(inside)
    if kept.num_rows:
        yield from kept.to_batches(max_chunksize=CHUNK_ROWS)


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]

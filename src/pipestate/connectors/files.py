"""Source `files`: NDJSON, CSV or Parquet files on the local disk, filtered by a timestamp field.

Meant for local use and the demo. There is no index: each file is parsed once per process and
kept sorted in memory (up to 100,000 records), and a file whose time span misses a
window is skipped, so one file per day or hour suits; billions of records do not.
"""

from __future__ import annotations

import bisect
import csv
import glob
import gzip
import io
import json
from collections import OrderedDict
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import IO, Any, Literal

from pydantic import field_validator

from ..windows import zone
from .base import BatchContext, ConnectorError, Options, parse_instant, require

__all__ = ["FilesSource"]

_FORMATS = {".ndjson": "ndjson", ".jsonl": "ndjson", ".json": "ndjson", ".csv": "csv"}
_FORMATS |= {".parquet": "parquet", ".pq": "parquet"}
_CACHE_RECORDS = 100_000  # parsed records kept per process, whole files at a time


class FilesOptions(Options):
    type: Literal["files"] = "files"
    path: str  # a file, a directory (searched recursively) or a glob such as data/**/*.ndjson
    format: Literal["auto", "ndjson", "csv", "parquet"] = "auto"  # auto: by file extension
    time_field: str = "timestamp"
    epoch_unit: Literal["auto", "s", "ms", "us", "ns"] = "auto"
    naive_timezone: str = "UTC"  # how to read timestamps that carry no offset
    csv_delimiter: str = ","

    @field_validator("naive_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("time_field", "path")
    @classmethod
    def _not_empty(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("must not be empty")
        return value


def _format_of(path: Path) -> str | None:
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes.pop()
    return _FORMATS.get(suffixes[-1]) if suffixes else None


class FilesSource:
    """Records of local NDJSON/CSV/Parquet files whose `time_field` is in the batch's window."""

    Options = FilesOptions

    def __init__(self, options: FilesOptions) -> None:
        self.options = options
        self._tz = zone(options.naive_timezone)
        self._spans: dict[tuple[str, int, int], tuple[datetime, datetime]] = {}
        self._cache: OrderedDict[tuple[str, int, int], tuple[list[datetime], list[dict[str, Any]]]] = (
            OrderedDict()
        )
        if options.format == "parquet":
            require("pyarrow.parquet", "parquet", "source")

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
        return sorted(p for p in found if p.is_file())

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        location = str(Path(self.options.path).absolute())
        field = self.options.time_field
        query = f"{field} >= {batch.start.isoformat()} AND {field} < {batch.end.isoformat()}"
        return location, query

    def extract(self, batch: BatchContext) -> Iterator[dict[str, Any]]:
        for path in self.files():
            kind = self.options.format if self.options.format != "auto" else _format_of(path)
            if kind is None:
                raise ConnectorError(f"{path}: unknown file type (set [source] format)")
            stat = path.stat()
            key = (str(path), stat.st_mtime_ns, stat.st_size)
            span = self._spans.get(key)
            if span is not None and (span[1] < batch.start or span[0] >= batch.end):
                continue  # read before: none of its records is in this window
            cached = self._cache.get(key)
            if cached is None:
                cached = self._read(path, kind, key)
            times, records = cached
            low, high = bisect.bisect_left(times, batch.start), bisect.bisect_left(times, batch.end)
            yield from records[low:high]

    def _read(
        self, path: Path, kind: str, key: tuple[str, int, int]
    ) -> tuple[list[datetime], list[dict[str, Any]]]:
        # Each file is parsed once per process and kept sorted by time (the most
        # recent ones, up to _CACHE_RECORDS records), so the windows of one file
        # cost one parse instead of one each; its time span lets later windows
        # skip it without opening it.
        timed = sorted(
            (
                (self._time(record, path, number), number, record)
                for number, record in enumerate(self._records(path, kind), start=1)
            ),
            key=lambda item: (item[0], item[1]),
        )
        times = [item[0] for item in timed]
        records = [item[2] for item in timed]
        if times:
            self._spans[key] = (times[0], times[-1])
        self._cache[key] = (times, records)
        self._cache.move_to_end(key)
        while sum(len(value[1]) for value in self._cache.values()) > _CACHE_RECORDS and len(self._cache) > 1:
            self._cache.popitem(last=False)
        return times, records

    def _time(self, record: dict[str, Any], path: Path, number: int) -> Any:
        field = self.options.time_field
        try:
            return parse_instant(record[field], self._tz, self.options.epoch_unit)
        except (KeyError, ValueError, TypeError, OverflowError) as err:
            problem = "has no field" if isinstance(err, KeyError) else "has an unreadable"
            raise ConnectorError(f"{path}: record {number} {problem} {field!r}: {err}") from err

    def _records(self, path: Path, kind: str) -> Iterator[dict[str, Any]]:
        if kind == "parquet":
            parquet = require("pyarrow.parquet", "parquet", "source")
            for chunk in parquet.ParquetFile(path).iter_batches():
                yield from chunk.to_pylist()
            return
        with _open_text(path) as handle:
            if kind == "csv":
                yield from csv.DictReader(handle, delimiter=self.options.csv_delimiter)
                return
            for number, line in enumerate(handle, start=1):
                if line.strip():
                    try:
                        yield json.loads(line)
                    except json.JSONDecodeError as err:
                        raise ConnectorError(f"{path}:{number}: not JSON: {err}") from err


def _open_text(path: Path) -> IO[str]:
    if path.suffix.lower() == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")

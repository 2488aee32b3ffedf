"""The connector Protocols (source, stage, target) and the data they pass: a batch's context,
its staged data, a load's result. A run moves one batch `[start, end)` through the three."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Protocol, TypeAlias, runtime_checkable
from zoneinfo import ZoneInfo

import pyarrow as pa

from ..ids import default_batch_id
from ..windows import UTC, local_date_of, zone

__all__ = ["BatchContext", "StagedData", "LoadResult", "BatchRows", "Chunk", "Source", "Stage", "Target"]


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
    # What the staged bytes are, as the stage can tell cheaply (sizes and object ETags or a
    # checksum of each file's tail: the Parquet footer, the gzip CRC); "" when it cannot.
    # The target step loads a stage only if it still has the fingerprint the stage step recorded.
    fingerprint: str = ""

    @property
    def uris(self) -> tuple[str, ...]:
        return self.files or (self.location,)


@dataclass(frozen=True, slots=True)
class BatchRows:
    """What a target holds of one batch id: its rows, and the earliest and latest record
    time among them (None where no row has one). `reconcile` asks targets for these, all
    batches in one grouped query, through an optional `batch_counts(start, end)` method:
    `{batch_id: BatchRows}` of the rows whose time is in [start, end) (None: unbounded).
    Sources may answer `window_counts(windows)`: the records in each `[start, end)`."""

    rows: int
    first: datetime | None = None
    last: datetime | None = None


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

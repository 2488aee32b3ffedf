"""What the `elasticsearch` and `opensearch` sources share: options, the paging, and pages as Arrow.

A window is read under one point in time (PIT): `time_field >= start AND time_field < end`
(and the optional `query`), sorted on the time field with a tiebreaker (`_shard_doc`, or a
unique field), one page at a time, each page continuing with `search_after` from the last hit
of the one before. With `slices = N` the PIT is read as N slices in parallel, each paged on its
own; the slices partition the window, so every document still comes exactly once. Responses are
cut by `filter_path` to the hits' `_source` and sort values; pages are gathered into
`pyarrow.RecordBatch`es of 20,000 documents (a column per top-level `_source` field), each
converted while the next pages are already being fetched. A page that fails transiently (429,
5xx, timeouts, a refused connection) is asked again with backoff, from the same `search_after`;
a PIT that expired fails the batch (its retry opens a new one).
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import Field, field_validator, model_validator

from ..errors import ConfigError, ConnectorError, TransientConnectorError
from ..windows import UTC
from .protocols import BatchContext
from .registry import Options, require

__all__ = [
    "PointInTimeExpired",
    "SearchOptions",
    "SearchPages",
    "SearchFailure",
    "records_batch",
]

log = logging.getLogger(__name__)

# What a page's response is cut to: the documents, their sort values, and what says it is whole.
FILTER_PATH = "pit_id,hits.hits._source,hits.hits.sort,_shards.failed,timed_out"
MAX_BACKOFF = 30.0


class PointInTimeExpired(TransientConnectorError):
    """The point in time is gone (expired or closed) before the window was read to its end."""


@dataclass(frozen=True, slots=True)
class SearchFailure:
    """A request's failure as the paging needs to see it, whatever the client's exceptions."""

    message: str
    transient: bool = False  # worth asking again after a pause (429, 5xx, timeouts)
    pit_missing: bool = False  # the search context is gone


class SearchOptions(Options):
    """Settings both search sources take; see docs/connectors.md for how to size them."""

    index: str  # a name, pattern or comma-separated list: "orders-*,archive-orders"
    time_field: str = "@timestamp"
    hosts: list[str] | None = None  # e.g. ["https://es1:9200"]
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout: float = Field(default=30.0, gt=0)
    page_size: int = Field(default=1000, gt=0, le=10000)
    keep_alive: str = "5m"  # how long the point in time lives between two pages
    query: dict[str, Any] | None = None  # extra filter clause, e.g. {term = {status = "paid"}}
    source_includes: list[str] | None = None  # `_source` fields to return (patterns allowed)
    source_excludes: list[str] | None = None  # `_source` fields to leave out
    slices: int = Field(default=1, ge=1, le=64)  # a window read by N slices in parallel
    tiebreaker: str = "_shard_doc"  # or a field unique per document (a keyword or number)
    retries: int = Field(default=5, ge=0, le=50)  # per page, for transient failures
    retry_backoff: float = Field(default=0.5, ge=0, le=MAX_BACKOFF)  # seconds, doubled each time

    @field_validator("hosts", "source_includes", "source_excludes", mode="before")
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part.strip() for part in value.split(",") if part.strip()]
        return value

    @field_validator("query", mode="before")
    @classmethod
    def _query(cls, value: Any) -> Any:
        if isinstance(value, str):  # from PIPESTATE_SOURCE__QUERY, or written as JSON text
            try:
                value = json.loads(value)
            except json.JSONDecodeError as err:
                raise ValueError(f"not a JSON object: {err}") from err
        if value is not None and not isinstance(value, dict):
            raise ValueError("must be a table (one query clause), e.g. {term = {status = 'x'}}")
        return value

    @field_validator("keep_alive")
    @classmethod
    def _keep_alive(cls, value: str) -> str:
        text = value.strip()
        digits = text.rstrip("smhdnu")
        if not digits.isdigit() or text[len(digits) :] not in {"s", "m", "h", "d", "ms"}:
            raise ValueError(f"must be a duration such as 90s, 5m or 1h, got {value!r}")
        return text

    @field_validator("tiebreaker")
    @classmethod
    def _tiebreaker(cls, value: str) -> str:
        if value.strip() in {"", "_id"}:
            # Sorting on _id needs fielddata (off by default, refused by some engines).
            raise ValueError("must be _shard_doc or a field unique per document (not _id)")
        return value.strip()

    @model_validator(mode="after")
    def _credentials(self) -> SearchOptions:
        if (self.username is None) != (self.password is None):
            raise ValueError("password: username and password go together")
        return self


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class SearchPages:
    """Reads one window of a search engine page by page; the engine's client comes from a subclass.

    Subclasses give `_open_pit`, `_close_pit`, `_search` and `_failure`; everything about
    paging, slices, retries and Arrow is here, the same for both engines.
    """

    options: SearchOptions
    engine = "search"  # the name in error messages
    package = ""  # the client's module, and the extra that installs it
    extra = ""
    # Pages are gathered into record batches of this many documents (the last one smaller):
    # one schema over more documents, fewer chunks for the stage to unify.
    chunk_documents = 20_000

    def __init__(self, options: SearchOptions) -> None:
        self.options = options
        self._module = require(self.package, self.extra, "source")
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The engine's client, created on first use."""
        if self._client is None:
            try:
                self._client = self._connect()
            except ValueError as err:  # the clients' own checks of hosts, cloud ids, schemes
                raise ConfigError(f"[source] hosts: {err}") from err
        return self._client

    # -- what a subclass provides ------------------------------------------------------------

    def _connect(self) -> Any:
        """A new client for the options; ValueError for settings the client refuses."""
        raise NotImplementedError

    def _open_pit(self) -> str | None:
        """A new point in time on the index pattern; None where the cluster has none."""
        raise NotImplementedError

    def _close_pit(self, pit_id: str) -> None:
        raise NotImplementedError

    def _search(self, body: dict[str, Any], with_pit: bool) -> dict[str, Any]:
        """One `_search` with `FILTER_PATH`, as the decoded response body."""
        raise NotImplementedError

    def _failure(self, err: Exception) -> SearchFailure | None:
        """What the client's exception means; None for exceptions that are not the client's."""
        raise NotImplementedError

    def check(self) -> None:
        """Before anything is claimed: the cluster answers and the index exists (one `size: 0`
        search), so an unreachable host or a missing index is one error at the start of a run,
        not a failure of every batch."""
        try:
            self._call(self._search, {"size": 0}, False)
        except ConnectorError as err:
            raise type(err)(f"{err} (checked before the run; nothing was written)") from err

    # -- the request -------------------------------------------------------------------------

    def query(self, batch: BatchContext) -> dict[str, Any]:
        """The query clause for the batch: the window as a half-open range, and `query`."""
        return self._window_query(batch.start, batch.end)

    def window_counts(self, windows: list[tuple[datetime, datetime]]) -> list[int]:
        """How many documents each `[start, end)` holds now (the engine's `_count`, the same
        query as the extract's), for `pipestate reconcile --source`."""
        counts = []
        for start, end in windows:
            answer = self._call(self._count, {"query": self._window_query(start, end)})
            counts.append(int(answer["count"]))
        return counts

    def _count(self, body: dict[str, Any]) -> dict[str, Any]:
        """One `_count` on the index pattern, as the decoded response body."""
        raise NotImplementedError

    def _window_query(self, start: datetime, end: datetime) -> dict[str, Any]:
        window = {
            "range": {
                self.options.time_field: {
                    "gte": _iso(start),
                    "lt": _iso(end),
                    "format": "strict_date_optional_time",
                }
            }
        }
        filters = [window] + ([self.options.query] if self.options.query else [])
        return {"bool": {"filter": filters}}

    def sort(self) -> list[dict[str, Any]]:
        # The tiebreaker orders documents with equal times, so search_after never skips or repeats.
        tiebreaker = self.options.tiebreaker
        last: dict[str, Any] = {tiebreaker: "asc" if tiebreaker == "_shard_doc" else {"order": "asc"}}
        return [{self.options.time_field: {"order": "asc"}}, last]

    def body(self, batch: BatchContext) -> dict[str, Any]:
        """The first page's request body, without the PIT, slice and `search_after`."""
        o = self.options
        body: dict[str, Any] = {
            "query": self.query(batch),
            "sort": self.sort(),
            "size": o.page_size,
            "track_total_hits": False,
        }
        if o.source_includes or o.source_excludes:
            body["_source"] = {"includes": o.source_includes or [], "excludes": o.source_excludes or []}
        return body

    def describe_body(self, batch: BatchContext) -> str:
        body = self.body(batch)
        if self.options.slices > 1:
            body["slice"] = {"max": self.options.slices}
        return json.dumps(body, separators=(",", ":"))

    # -- paging ------------------------------------------------------------------------------

    def extract(self, batch: BatchContext) -> Iterator[Any]:
        """The window's documents as `pyarrow.RecordBatch`es of `chunk_documents` (the pages
        gathered), each document once."""
        import pyarrow  # noqa: F401  (fail before any request when pyarrow is missing)

        pit = _Pit(self._call(self._open_pit))
        if pit.id is None:
            if self.options.tiebreaker == "_shard_doc" or self.options.slices > 1:
                raise ConnectorError(
                    f"{self.engine}: the cluster has no point in time; set [source] tiebreaker to a "
                    "field unique per document, and slices = 1, to page it by search_after alone"
                )
            log.warning("%s: no point in time on this cluster; paging by search_after alone", self.engine)
        slices = self.options.slices
        pages: queue.Queue[_Page] = queue.Queue(maxsize=2 * slices)
        stop = threading.Event()
        readers = [
            threading.Thread(
                target=self._read_slice,
                args=(batch, pit, n, slices, pages, stop),
                name=f"pipestate-{self.engine}-slice-{n}",
                daemon=True,
            )
            for n in range(slices)
        ]
        try:
            for reader in readers:
                reader.start()
            running, pending = slices, []
            while running:
                page = pages.get()
                if page.error is not None:
                    raise page.error
                if page.hits is None:
                    running -= 1
                    continue
                pending += [hit.get("_source") or {} for hit in page.hits]
                if len(pending) >= self.chunk_documents:
                    yield records_batch(pending)
                    pending = []
            if pending:
                yield records_batch(pending)
        finally:
            stop.set()
            for reader in readers:
                while reader.is_alive():  # a reader blocked on a full queue needs room to see `stop`
                    _drain(pages)
                    reader.join(timeout=0.05)
            for pit_id in pit.ids:
                self._close_quietly(pit_id)

    def _read_slice(
        self,
        batch: BatchContext,
        pit: _Pit,
        number: int,
        slices: int,
        pages: queue.Queue[_Page],
        stop: threading.Event,
    ) -> None:
        try:
            body = self.body(batch)
            if slices > 1:
                body["slice"] = {"id": number, "max": slices}
            read = 0
            while not stop.is_set():
                if pit.id is not None:
                    body["pit"] = {"id": pit.id, "keep_alive": self.options.keep_alive}
                answer = self._page(body, pit, read, stop)
                if answer is None:  # stopped while waiting to retry
                    return
                hits = (answer.get("hits") or {}).get("hits") or []
                _put(pages, _Page(hits), stop)
                read += len(hits)
                if len(hits) < self.options.page_size:
                    break
                after = hits[-1].get("sort")
                if not after or after == body.get("search_after"):
                    raise ConnectorError(f"{self.engine}: search_after did not advance at {after}")
                body["search_after"] = after
            _put(pages, _Page(None), stop)
        except Exception as err:
            _put(pages, _Page(None, err), stop)

    def _page(
        self, body: dict[str, Any], pit: _Pit, read: int, stop: threading.Event
    ) -> dict[str, Any] | None:
        """One page, asked again with backoff while it fails transiently; None when stopped."""
        o = self.options
        attempt = 0
        while True:
            try:
                answer = self._search(body, pit.id is not None)
                _check_whole(answer, self.engine)
                pit.update(answer.get("pit_id"))
                return answer
            except Exception as err:
                failure = _partial(err) or self._failure(err)
                if failure is None:
                    raise
                if failure.pit_missing and pit.id is not None:
                    raise PointInTimeExpired(
                        f"{self.engine}: the point in time expired or was closed after {read} documents "
                        f"of a slice (keep_alive = {o.keep_alive!r} is the longest pause between two "
                        "pages); the batch's retry opens a new one"
                    ) from err
                if not failure.transient or attempt >= o.retries:
                    kind = TransientConnectorError if failure.transient else ConnectorError
                    tries = f" (after {attempt + 1} attempts)" if attempt else ""
                    raise kind(f"{self.engine}: {failure.message}{tries}") from err
                pause = min(MAX_BACKOFF, o.retry_backoff * 2**attempt) * random.uniform(0.5, 1.0)
                log.warning("%s: %s; asking for the page again in %.1fs", self.engine, failure.message, pause)
                attempt += 1
                if stop.wait(pause):
                    return None

    def _call(self, request: Any, *args: Any) -> Any:
        """A request outside the paging (opening the PIT), with the client's errors wrapped."""
        try:
            return request(*args)
        except Exception as err:
            failure = self._failure(err)
            if failure is None:
                raise
            kind = TransientConnectorError if failure.transient else ConnectorError
            raise kind(f"{self.engine}: {failure.message}") from err

    def _close_quietly(self, pit_id: str) -> None:
        # A PIT left open expires after keep_alive; failing to close it must not fail the batch.
        try:
            self._close_pit(pit_id)
        except Exception as err:  # noqa: BLE001
            log.info("%s: could not close the point in time (it expires by itself): %s", self.engine, err)


@dataclass(slots=True)
class _Page:
    hits: list[dict[str, Any]] | None  # None: the slice is done (or failed, with `error`)
    error: Exception | None = None


@dataclass(slots=True)
class _Pit:
    """The PIT id, which a response may replace; `ids` are all ids seen, to close at the end."""

    id: str | None
    ids: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        if self.id is not None:
            self.ids.append(self.id)

    def update(self, new_id: str | None) -> None:
        if new_id and new_id != self.id:
            with self.lock:
                self.id = new_id
                if new_id not in self.ids:
                    self.ids.append(new_id)


def _check_whole(answer: dict[str, Any], engine: str) -> None:
    # Shards that failed or timed out leave holes in a page; such a page is not the window's.
    failed = (answer.get("_shards") or {}).get("failed") or 0
    if failed or answer.get("timed_out"):
        raise _PartialPage(f"{engine}: a page came back partial ({failed} shards failed, or timed out)")


class _PartialPage(TransientConnectorError):
    pass


def _partial(err: Exception) -> SearchFailure | None:
    if isinstance(err, _PartialPage):
        return SearchFailure(str(err).partition(": ")[2], transient=True)
    return None


def _put(pages: queue.Queue[_Page], page: _Page, stop: threading.Event) -> None:
    while not stop.is_set():
        try:
            pages.put(page, timeout=0.1)
            return
        except queue.Full:
            continue


def _drain(pages: queue.Queue[_Page]) -> None:
    try:
        while True:
            pages.get_nowait()
    except queue.Empty:
        pass


def records_batch(sources: list[dict[str, Any]]) -> Any:
    """Documents as one `pyarrow.RecordBatch`: a column per top-level field, nested values as
    structs and lists. A field whose values Arrow cannot put in one type (a number here, text
    there; an integer beyond 64 bits; an empty object) becomes a column of JSON text."""
    import pyarrow as pa

    try:
        rows = pa.array(sources)
        if isinstance(rows.type, pa.StructType) and not _has_empty_struct(rows.type):
            return pa.RecordBatch.from_struct_array(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    names: dict[str, None] = {}
    for source in sources:
        names.update(dict.fromkeys(source))
    if not names:  # documents without fields (all excluded): still one row each
        return pa.RecordBatch.from_struct_array(pa.array([{}] * len(sources), pa.struct([])))
    columns = []
    for name in names:
        values = [source.get(name) for source in sources]
        try:
            column = pa.array(values)
            if _has_empty_struct(column.type):
                raise pa.ArrowInvalid("an empty object")
        except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
            column = pa.array(
                [None if v is None else json.dumps(v, ensure_ascii=False) for v in values], pa.string()
            )
        columns.append(column)
    return pa.RecordBatch.from_arrays(columns, names=list(names))


def _has_empty_struct(kind: Any) -> bool:
    import pyarrow as pa

    if isinstance(kind, pa.StructType):
        fields = [kind.field(i).type for i in range(kind.num_fields)]
        return not fields or any(_has_empty_struct(child) for child in fields)
    if isinstance(kind, pa.ListType | pa.LargeListType):
        return _has_empty_struct(kind.value_type)
    return False

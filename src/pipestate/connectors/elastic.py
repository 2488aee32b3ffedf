"""Source `elasticsearch`: a window's documents through the official client, paged with a PIT.

For a batch it opens a point in time on the index pattern, then asks `_search` for
`time_field >= start AND time_field < end` (plus the optional `query` filter), sorted on the
time field with `_shard_doc` as the tiebreaker, one page of `page_size` at a time, each page
continuing with `search_after` from the last hit of the one before. The point in time is closed
when the extract ends, also when it fails or is abandoned. Records are the hits' `_source`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import datetime
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from ..windows import UTC
from .base import (
    BatchContext,
    ConnectorError,
    Options,
    TransientConnectorError,
    require,
)

__all__ = ["ElasticsearchSource"]


class ElasticsearchOptions(Options):
    type: Literal["elasticsearch"] = "elasticsearch"
    index: str  # a name, pattern or comma-separated list: "orders-*,archive-orders"
    time_field: str = "@timestamp"
    hosts: list[str] | None = None  # e.g. ["https://es1:9200"]; or cloud_id
    cloud_id: str | None = None
    api_key: str | None = None  # the encoded key (base64 of "id:key"), as Kibana shows it
    username: str | None = None
    password: str | None = None
    verify_certs: bool = True
    ca_certs: str | None = None
    request_timeout: float = Field(default=30.0, gt=0)
    page_size: int = Field(default=1000, gt=0, le=10000)
    keep_alive: str = "5m"  # how long the point in time lives between two pages
    query: dict[str, Any] | None = None  # extra filter clause, e.g. {term = {status = "paid"}}

    @field_validator("hosts", mode="before")
    @classmethod
    def _hosts(cls, value: Any) -> Any:
        return [part.strip() for part in value.split(",")] if isinstance(value, str) else value

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

    @model_validator(mode="after")
    def _connection(self) -> ElasticsearchOptions:
        if (self.hosts is None) == (self.cloud_id is None):
            raise ValueError("hosts: set either hosts or cloud_id (one of them)")
        if (self.username is None) != (self.password is None):
            raise ValueError("password: username and password go together")
        if self.api_key is not None and self.username is not None:
            raise ValueError("api_key: use either api_key or username/password, not both")
        return self


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


class ElasticsearchSource:
    """Documents of `index` whose `time_field` is in the batch's window, paged by PIT."""

    Options = ElasticsearchOptions

    def __init__(self, options: ElasticsearchOptions) -> None:
        self.options = options
        self._module = require("elasticsearch", "elasticsearch", "source")
        self._client: Any = None

    @property
    def client(self) -> Any:
        """The `elasticsearch.Elasticsearch` client, created on first use."""
        if self._client is None:
            o = self.options
            kwargs: dict[str, Any] = {
                "verify_certs": o.verify_certs,
                "request_timeout": o.request_timeout,
            }
            if o.hosts is not None:
                kwargs["hosts"] = o.hosts
            if o.cloud_id is not None:
                kwargs["cloud_id"] = o.cloud_id
            if o.api_key is not None:
                kwargs["api_key"] = o.api_key
            if o.username is not None:
                kwargs["basic_auth"] = (o.username, o.password)
            if o.ca_certs is not None:
                kwargs["ca_certs"] = o.ca_certs
            try:
                self._client = self._module.Elasticsearch(**kwargs)
            except ValueError as err:
                from ..errors import ConfigError

                raise ConfigError(f"[source] hosts: {err}") from err
        return self._client

    def query(self, batch: BatchContext) -> dict[str, Any]:
        """The query clause for the batch: the window as a half-open range, and `query`."""
        window = {
            "range": {
                self.options.time_field: {
                    "gte": _iso(batch.start),
                    "lt": _iso(batch.end),
                    "format": "strict_date_optional_time",
                }
            }
        }
        filters = [window] + ([self.options.query] if self.options.query else [])
        return {"bool": {"filter": filters}}

    def sort(self) -> list[dict[str, Any]]:
        # _shard_doc orders documents with equal times, so search_after never skips or repeats.
        return [{self.options.time_field: {"order": "asc"}}, {"_shard_doc": "asc"}]

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        where = ",".join(self.options.hosts or []) or f"cloud:{self.options.cloud_id}"
        body = {"query": self.query(batch), "sort": self.sort(), "size": self.options.page_size}
        return f"{where}/{self.options.index}", json.dumps(body, separators=(",", ":"))

    def extract(self, batch: BatchContext) -> Iterator[dict[str, Any]]:
        o = self.options
        opened = self._call(self.client.open_point_in_time, index=o.index, keep_alive=o.keep_alive)
        pit_id: str = opened["id"]
        try:
            search_after: list[Any] | None = None
            while True:
                page = self._call(
                    self.client.search,
                    pit={"id": pit_id, "keep_alive": o.keep_alive},
                    query=self.query(batch),
                    sort=self.sort(),
                    size=o.page_size,
                    search_after=search_after,
                    track_total_hits=False,
                )
                pit_id = page.get("pit_id", pit_id)  # the id may change between pages
                hits = page["hits"]["hits"]
                for hit in hits:
                    yield hit["_source"]
                if len(hits) < o.page_size:
                    return
                after = hits[-1]["sort"]
                if after == search_after:
                    raise ConnectorError(f"elasticsearch: search_after did not advance at {after}")
                search_after = after
        finally:
            self._close(pit_id)

    def _close(self, pit_id: str) -> None:
        # A PIT left open expires after keep_alive; failing to close it must not fail the batch.
        with contextlib.suppress(Exception):
            self.client.close_point_in_time(id=pit_id)

    def _call(self, request: Any, **kwargs: Any) -> Any:
        es = self._module
        try:
            return request(**kwargs)
        except es.ApiError as err:
            status = int(getattr(err.meta, "status", 0) or 0)
            kind = TransientConnectorError if status == 429 or status >= 500 else ConnectorError
            raise kind(f"elasticsearch: {status} {err.message}") from err
        except es.TransportError as err:  # connection refused, timeouts, TLS
            raise TransientConnectorError(f"elasticsearch: {err}") from err

"""Source `elasticsearch`: a window's documents through the official client, paged under a PIT.

The paging, slices, retries and the Arrow pages are `search.SearchPages`; this module is what
is Elasticsearch's own: the client (hosts or Elastic Cloud id; API key or basic auth),
`POST /<index>/_pit` and `DELETE /_pit`, and what the client's exceptions mean.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import model_validator

from .protocols import BatchContext
from .search import FILTER_PATH, SearchFailure, SearchOptions, SearchPages

__all__ = ["ElasticsearchSource"]


class ElasticsearchOptions(SearchOptions):
    type: Literal["elasticsearch"] = "elasticsearch"
    cloud_id: str | None = None  # Elastic Cloud's deployment id, instead of hosts
    api_key: str | None = None  # the encoded key (base64 of "id:key"), as Kibana shows it

    @model_validator(mode="after")
    def _connection(self) -> ElasticsearchOptions:
        if (self.hosts is None) == (self.cloud_id is None):
            raise ValueError("hosts: set either hosts or cloud_id (one of them)")
        if self.api_key is not None and self.username is not None:
            raise ValueError("api_key: use either api_key or username/password, not both")
        return self


class ElasticsearchSource(SearchPages):
    """Documents of `index` whose `time_field` is in the batch's window, as Arrow record batches."""

    Options = ElasticsearchOptions
    engine = "elasticsearch"

    options: ElasticsearchOptions
    package, extra = "elasticsearch", "elasticsearch"

    def _connect(self) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {
            "verify_certs": o.verify_certs,
            "request_timeout": o.request_timeout,
            # The source retries a page itself, with backoff; the client's own retries are immediate.
            "max_retries": 0,
            "retry_on_timeout": False,
            "connections_per_node": max(10, o.slices + 1),
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
        return self._module.Elasticsearch(**kwargs)

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        where = ",".join(self.options.hosts or []) or f"cloud:{self.options.cloud_id}"
        return f"{where}/{self.options.index}", self.describe_body(batch)

    def _open_pit(self) -> str | None:
        o = self.options
        return self.client.open_point_in_time(index=o.index, keep_alive=o.keep_alive)["id"]  # type: ignore[no-any-return]

    def _close_pit(self, pit_id: str) -> None:
        self.client.close_point_in_time(id=pit_id)

    def _search(self, body: dict[str, Any], with_pit: bool) -> dict[str, Any]:
        index = None if with_pit else self.options.index
        # Partial results are refused by reading `_shards.failed`, not by asking the cluster
        # (allow_partial_search_results=false): the same guarantee, and no slower on any engine.
        answer = self.client.search(index=index, body=body, filter_path=FILTER_PATH)
        return answer.body  # type: ignore[no-any-return]

    def _count(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.count(index=self.options.index, body=body).body  # type: ignore[no-any-return]

    def _failure(self, err: Exception) -> SearchFailure | None:
        es = self._module
        if isinstance(err, es.ApiError):
            status = int(getattr(err.meta, "status", 0) or 0)
            text = json.dumps(err.body) if isinstance(err.body, dict) else str(err.body)
            missing = "search_context_missing_exception" in text
            transient = (status == 429 or status >= 500) and not missing
            return SearchFailure(f"{status} {err.message}", transient=transient, pit_missing=missing)
        if isinstance(err, es.TransportError):  # connection refused, timeouts, TLS
            return SearchFailure(str(err), transient=True)
        return None

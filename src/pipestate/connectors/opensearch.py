"""Source `opensearch`: a window's documents through `opensearch-py`, paged under a PIT.

The paging, slices, retries and the Arrow pages are `search.SearchPages`; this module is what
is OpenSearch's own: the client (basic auth, an API key header, or AWS SigV4 for Amazon
OpenSearch Service and Serverless through the client's own signer), its point in time
(`POST /<index>/_search/point_in_time`, `DELETE /_search/point_in_time`, OpenSearch 2.4+), and
`search_after` on a stable sort alone where a cluster has no point in time.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import model_validator

from .protocols import BatchContext
from .registry import require
from .search import FILTER_PATH, SearchFailure, SearchOptions, SearchPages

__all__ = ["OpenSearchSource"]


class OpenSearchOptions(SearchOptions):
    type: Literal["opensearch"] = "opensearch"
    api_key: str | None = None  # sent as `Authorization: ApiKey <key>`, where the cluster takes one
    aws_region: str | None = None  # sign requests with AWS SigV4 (credentials: boto3's usual chain)
    aws_service: Literal["es", "aoss"] = "es"  # "es": OpenSearch Service; "aoss": Serverless
    point_in_time: Literal["auto", "always", "never"] = "auto"  # auto: search_after alone without one

    @model_validator(mode="after")
    def _connection(self) -> OpenSearchOptions:
        if not self.hosts:
            raise ValueError("hosts: required key is missing")
        ways = [self.api_key is not None, self.username is not None, self.aws_region is not None]
        if sum(ways) > 1:
            raise ValueError("api_key: use one of api_key, username/password or aws_region")
        return self


class OpenSearchSource(SearchPages):
    """Documents of `index` whose `time_field` is in the batch's window, as Arrow record batches."""

    Options = OpenSearchOptions
    engine = "opensearch"

    options: OpenSearchOptions
    package, extra = "opensearchpy", "opensearch"

    def _connect(self) -> Any:
        o = self.options
        kwargs: dict[str, Any] = {
            "hosts": o.hosts,
            "verify_certs": o.verify_certs,
            "timeout": o.request_timeout,
            # The source retries a page itself, with backoff; the client's own retries are immediate.
            "max_retries": 0,
            "retry_on_timeout": False,
            "pool_maxsize": max(10, o.slices + 1),
        }
        if o.ca_certs is not None:
            kwargs["ca_certs"] = o.ca_certs
        if o.username is not None:
            kwargs["http_auth"] = (o.username, o.password)
        if o.api_key is not None:
            kwargs["headers"] = {"authorization": f"ApiKey {o.api_key}"}
        if o.aws_region is not None:
            kwargs["http_auth"] = self._sigv4(o.aws_region, o.aws_service)
        try:
            return self._module.OpenSearch(**kwargs)
        except self._module.ImproperlyConfigured as err:
            raise ValueError(str(err)) from err

    def _sigv4(self, region: str, service: str) -> Any:
        # The client's own signer for its urllib3 connection (the twin of AWSV4SignerAuth, which
        # is for RequestsHttpConnection); credentials are refreshed by boto3 as they rotate.
        from ..errors import ConfigError

        boto3 = require("boto3", "aws", "source")
        credentials = boto3.Session().get_credentials()
        if credentials is None:
            raise ConfigError(
                "[source] aws_region: no AWS credentials found (environment, ~/.aws, or an instance role)"
            )
        return self._module.Urllib3AWSV4SignerAuth(credentials, region, service)

    def describe(self, batch: BatchContext) -> tuple[str, str]:
        return f"{','.join(self.options.hosts or [])}/{self.options.index}", self.describe_body(batch)

    def _open_pit(self) -> str | None:
        o = self.options
        if o.point_in_time == "never":
            return None
        try:
            opened = self.client.create_pit(index=o.index, params={"keep_alive": o.keep_alive})
        except self._module.TransportError as err:
            if o.point_in_time == "auto" and _no_such_endpoint(err):
                return None
            raise
        return opened["pit_id"]  # type: ignore[no-any-return]

    def _close_pit(self, pit_id: str) -> None:
        self.client.delete_pit(body={"pit_id": [pit_id]})

    def _search(self, body: dict[str, Any], with_pit: bool) -> dict[str, Any]:
        index = None if with_pit else self.options.index
        params = {"filter_path": FILTER_PATH}  # partial pages are refused by `_shards.failed`
        return self.client.search(body=body, index=index, params=params)  # type: ignore[no-any-return]

    def _count(self, body: dict[str, Any]) -> dict[str, Any]:
        return self.client.count(body=body, index=self.options.index)  # type: ignore[no-any-return]

    def _failure(self, err: Exception) -> SearchFailure | None:
        os = self._module
        if isinstance(err, os.ConnectionError):  # refused, timeouts, TLS (status "N/A")
            return SearchFailure(str(err), transient=True)
        if isinstance(err, os.TransportError):
            status = err.status_code if isinstance(err.status_code, int) else 0
            missing = "search_context_missing_exception" in str(err.info)
            transient = (status == 429 or status >= 500) and not missing
            return SearchFailure(f"{status} {err.error}", transient=transient, pit_missing=missing)
        return None


def _no_such_endpoint(err: Any) -> bool:
    """True when the cluster does not know the PIT endpoint (OpenSearch before 2.4)."""
    text = str(err.info)
    if "index_not_found_exception" in text:
        return False
    return err.status_code in (400, 404, 405) and "no handler found" in text

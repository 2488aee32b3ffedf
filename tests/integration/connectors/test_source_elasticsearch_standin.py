"""Source `elasticsearch` against a STAND-IN: the local HTTP server in `es_standin.py`.

The official client talks real HTTP to it. The stand-in evaluates the range filter and pages
by `search_after` itself, so these tests catch boundary and paging bugs; they do not prove how
a real cluster's shards, refreshes or date formats behave. `test_real_elasticsearch` runs
against a real cluster when PIPESTATE_TEST_ES_URL is set (and PIPESTATE_TEST_ES_API_KEY, or
PIPESTATE_TEST_ES_USERNAME / PIPESTATE_TEST_ES_PASSWORD, if it needs them).
"""

from __future__ import annotations

import base64
import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from es_standin import EsStandin

from pipestate.connectors import BatchContext, build_source
from pipestate.connectors.base import ConnectorError, TransientConnectorError
from pipestate.errors import ConfigError

pytest.importorskip("elasticsearch")

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
END = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture
def es() -> Iterator[EsStandin]:
    with EsStandin() as standin:
        yield standin


def seed(es: EsStandin) -> set[int]:
    """47 documents in the window (17 sharing one instant), the edges, and some outside.
    Returns the ids that belong to [START, END)."""
    inside: set[int] = set()
    n = 0

    def add(moment: datetime, index: str = "orders-2026.01", status: str = "paid") -> int:
        nonlocal n
        n += 1
        es.add(index, {"id": n, "@timestamp": iso(moment), "status": status})
        return n

    add(START - timedelta(milliseconds=1))  # just before: out
    inside.add(add(START))  # exactly at start: in
    for minute in range(0, 60, 2):
        inside.add(add(START + timedelta(minutes=minute, seconds=7)))
    for _ in range(17):  # equal timestamps across page boundaries: only _shard_doc orders them
        inside.add(add(START + timedelta(minutes=33)))
    inside.add(add(END - timedelta(milliseconds=1)))  # last instant in
    add(END)  # exactly at end: out
    add(END + timedelta(days=1))
    add(START + timedelta(minutes=5), index="customers")  # other index: out
    return inside


def source(es: EsStandin, **options):
    return build_source({"type": "elasticsearch", "hosts": [es.url], "index": "orders-*", **options})


@pytest.mark.parametrize("page_size", [1, 7, 19, 1000])
def test_range_and_paging_lose_and_repeat_nothing(es: EsStandin, batch: BatchContext, page_size):
    inside = seed(es)
    got = [record["id"] for record in source(es, page_size=page_size).extract(batch)]
    assert sorted(got) == sorted(inside) and len(got) == len(set(got)) == 49
    searches = [r for r in es.requests if r["path"] == "/_search"]
    assert len(searches) == len(got) // page_size + 1  # a short page ends it
    assert all(s["body"]["size"] == page_size for s in searches)
    assert searches[0]["body"].get("search_after") is None
    for before, after in zip(searches, searches[1:], strict=False):
        assert after["body"]["pit"]["id"] == before["body"]["pit"]["id"]
        assert after["body"]["search_after"] is not None
    # The query the connector sends: half-open range on the time field, explicit UTC.
    (window,) = searches[0]["body"]["query"]["bool"]["filter"]
    assert window == {
        "range": {
            "@timestamp": {
                "gte": "2026-01-01T10:00:00Z",
                "lt": "2026-01-01T11:00:00Z",
                "format": "strict_date_optional_time",
            }
        }
    }
    assert searches[0]["body"]["sort"] == [{"@timestamp": {"order": "asc"}}, {"_shard_doc": "asc"}]
    opened = [r for r in es.requests if r["path"].endswith("/_pit") and r["method"] == "POST"]
    assert opened[0]["path"] == "/orders-*/_pit" and opened[0]["params"]["keep_alive"] == ["5m"]
    assert es.closed == [searches[0]["body"]["pit"]["id"]] and es.pits == {}  # PIT closed


def test_product_check_and_media_type_headers(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    list(source(es).extract(batch))
    accept = es.requests[0]["headers"]["accept"]
    assert accept.startswith("application/vnd.elasticsearch+json; compatible-with=")


def test_documents_indexed_after_the_pit_are_not_seen(es: EsStandin, batch: BatchContext):
    seed(es)
    records = source(es, page_size=5).extract(batch)
    first = next(records)
    es.add("orders-2026.01", {"id": 999, "@timestamp": iso(START + timedelta(minutes=1))})
    assert 999 not in [first["id"], *(r["id"] for r in records)]


def test_extra_query_filter_is_and_ed(es: EsStandin, batch: BatchContext) -> None:
    inside = seed(es)
    es.add("orders-x", {"id": 500, "@timestamp": iso(START), "status": "refunded"})
    got = {r["id"] for r in source(es, query={"term": {"status": "paid"}}).extract(batch)}
    assert got == inside
    from_env = source(es, query='{"term": {"status": "refunded"}}')  # a JSON string also works
    assert {r["id"] for r in from_env.extract(batch)} == {500}


def test_abandoned_extract_still_closes_the_pit(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    records = source(es, page_size=3).extract(batch)
    next(records)
    records.close()
    assert len(es.closed) == 1 and es.pits == {}


def test_auth_headers(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    list(source(es, api_key="aWQ6a2V5").extract(batch))
    assert {r["headers"]["authorization"] for r in es.requests} == {"ApiKey aWQ6a2V5"}
    es.requests.clear()
    list(source(es, username="elastic", password="s3cret").extract(batch))
    basic = "Basic " + base64.b64encode(b"elastic:s3cret").decode()
    assert {r["headers"]["authorization"] for r in es.requests} == {basic}


def test_errors_are_wrapped(es: EsStandin, batch: BatchContext) -> None:
    with pytest.raises(ConnectorError, match="404"):
        list(build_source({"hosts": [es.url], "index": "missing", "type": "elasticsearch"}).extract(batch))
    dead = build_source(
        {"type": "elasticsearch", "hosts": ["http://127.0.0.1:9"], "index": "x", "request_timeout": 2}
    )
    with pytest.raises(TransientConnectorError):
        list(dead.extract(batch))


def test_describe(es: EsStandin, batch: BatchContext) -> None:
    location, query = source(es).describe(batch)
    assert location == f"{es.url}/orders-*"
    assert '"gte":"2026-01-01T10:00:00Z","lt":"2026-01-01T11:00:00Z"' in query


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"index": "x"}, r"^\[source\] hosts: set either hosts or cloud_id"),
        ({"index": "x", "hosts": ["http://h"], "page_size": 0}, r"^\[source\] page_size: must be > 0$"),
        ({"index": "x", "hosts": ["http://h"], "page_size": 10001}, r"page_size: must be <= 10000"),
        ({"hosts": ["http://h"]}, r"^\[source\] index: required key is missing$"),
        ({"index": "x", "hosts": "http://h", "username": "u"}, r"^\[source\] password: "),
        ({"index": "x", "hosts": "http://h", "query": "{nope"}, r"^\[source\] query: not a JSON"),
        ({"index": "x", "hosts": "http://h", "bogus": 1}, r"^\[source\] bogus: unknown key$"),
    ],
)
def test_bad_config(cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_source({"type": "elasticsearch", **cfg})


@pytest.mark.skipif(not os.environ.get("PIPESTATE_TEST_ES_URL"), reason="no PIPESTATE_TEST_ES_URL")
def test_real_elasticsearch(batch: BatchContext) -> None:
    """REAL Elasticsearch: indexes documents into a throwaway index, extracts, deletes it."""
    from elasticsearch import Elasticsearch, helpers

    auth: dict = {}
    if os.environ.get("PIPESTATE_TEST_ES_API_KEY"):
        auth["api_key"] = os.environ["PIPESTATE_TEST_ES_API_KEY"]
    elif os.environ.get("PIPESTATE_TEST_ES_USERNAME"):
        auth["username"] = os.environ["PIPESTATE_TEST_ES_USERNAME"]
        auth["password"] = os.environ.get("PIPESTATE_TEST_ES_PASSWORD", "")
    url = os.environ["PIPESTATE_TEST_ES_URL"]
    index = f"pipestate-test-{uuid.uuid4().hex[:8]}"
    client_auth = {"api_key": auth["api_key"]} if "api_key" in auth else {}
    if "username" in auth:
        client_auth = {"basic_auth": (auth["username"], auth["password"])}
    client = Elasticsearch(url, **client_auth)
    client.indices.create(index=index, mappings={"properties": {"@timestamp": {"type": "date"}}})
    try:
        times = [START - timedelta(milliseconds=1), START, END - timedelta(milliseconds=1), END]
        times += [START + timedelta(minutes=20)] * 25
        actions = [{"_index": index, "_source": {"id": n, "@timestamp": iso(t)}} for n, t in enumerate(times)]
        helpers.bulk(client, actions, refresh=True)
        cfg = {"type": "elasticsearch", "hosts": [url], "index": index, "page_size": 4, **auth}
        got = sorted(r["id"] for r in build_source(cfg).extract(batch))
        assert got == [1, 2, *range(4, 29)]
    finally:
        client.indices.delete(index=index)

"""Sources `elasticsearch` and `opensearch` against the project's STAND-IN (`es_standin.py`).

The official clients talk real HTTP to it. The stand-in evaluates the range filter, sorts, slices
and pages by `search_after` itself, and fails requests on demand, so these tests catch request,
paging and retry bugs; they do not prove how a real cluster behaves (the emulator tests in
test_source_search_exactness.py check against third-party implementations). The real-cluster
tests run when PIPESTATE_TEST_ES_URL / PIPESTATE_TEST_OPENSEARCH_URL are set (credentials:
PIPESTATE_TEST_ES_API_KEY, or PIPESTATE_TEST_ES_USERNAME / _PASSWORD; likewise _OPENSEARCH_).
"""

from __future__ import annotations

import base64
import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from es_standin import EsStandin
from search_backends import ClientBackend

from pipestate.connectors import BatchContext, build_source
from pipestate.connectors.search import PointInTimeExpired
from pipestate.errors import ConfigError, ConnectorError, TransientConnectorError

pytest.importorskip("pyarrow")

START = datetime(2026, 1, 1, 10, 0, tzinfo=UTC)
END = datetime(2026, 1, 1, 11, 0, tzinfo=UTC)
CLIENT = {"elasticsearch": "elasticsearch", "opensearch": "opensearchpy"}


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@pytest.fixture(params=["elasticsearch", "opensearch"])
def es(request: pytest.FixtureRequest) -> Iterator[EsStandin]:
    pytest.importorskip(CLIENT[request.param])
    with EsStandin(request.param) as standin:
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
    for _ in range(17):  # equal timestamps across page boundaries: only the tiebreaker orders them
        inside.add(add(START + timedelta(minutes=33)))
    inside.add(add(END - timedelta(milliseconds=1)))  # last instant in
    add(END)  # exactly at end: out
    add(END + timedelta(days=1))
    add(START + timedelta(minutes=5), index="customers")  # other index: out
    return inside


def source(es: EsStandin, chunk: int | None = None, **options):
    """The source on the stand-in; `chunk`: documents per record batch (default: each page's)."""
    flavor = "opensearch" if es.flavor.startswith("opensearch") else "elasticsearch"
    built = build_source({"type": flavor, "hosts": [es.url], "index": "orders-*", **options})
    built.chunk_documents = chunk or options.get("page_size", 1000)  # type: ignore[attr-defined]
    return built


def ids(pages) -> list[int]:
    return [n for records in pages for n in records.column("id").to_pylist()]


def searches(es: EsStandin) -> list[dict]:
    return [r for r in es.requests if r["path"] == "/_search"]


def opened(es: EsStandin) -> list[dict]:
    return [r for r in es.requests if r["method"] == "POST" and r["path"].endswith(("_pit", "point_in_time"))]


@pytest.mark.parametrize("page_size", [1, 7, 19, 1000])
def test_range_and_paging_lose_and_repeat_nothing(es: EsStandin, batch: BatchContext, page_size):
    inside = seed(es)
    got = ids(source(es, page_size=page_size).extract(batch))
    assert sorted(got) == sorted(inside) and len(got) == len(set(got)) == 49
    pages = searches(es)
    assert len(pages) == len(got) // page_size + 1  # a short page ends it
    assert all(s["body"]["size"] == page_size for s in pages)
    assert pages[0]["body"].get("search_after") is None
    for before, after in zip(pages, pages[1:], strict=False):
        assert after["body"]["pit"]["id"] == before["body"]["pit"]["id"]
        assert after["body"]["search_after"] is not None
    # The query the connector sends: half-open range on the time field, explicit UTC.
    (window,) = pages[0]["body"]["query"]["bool"]["filter"]
    assert window == {
        "range": {
            "@timestamp": {
                "gte": "2026-01-01T10:00:00Z",
                "lt": "2026-01-01T11:00:00Z",
                "format": "strict_date_optional_time",
            }
        }
    }
    assert pages[0]["body"]["sort"] == [{"@timestamp": {"order": "asc"}}, {"_shard_doc": "asc"}]
    # Responses cut to what is used; a partial result is an error, never a short page.
    assert pages[0]["params"]["filter_path"] == [
        "pit_id,hits.hits._source,hits.hits.sort,_shards.failed,timed_out"
    ]
    (pit,) = opened(es)
    if es.flavor == "elasticsearch":
        assert pit["path"] == "/orders-*/_pit" and pit["params"]["keep_alive"] == ["5m"]
    else:
        assert pit["path"] == "/orders-*/_search/point_in_time" and pit["params"]["keep_alive"] == ["5m"]
    assert es.closed == [pages[0]["body"]["pit"]["id"]] and es.pits == {}  # PIT closed


def test_pages_are_gathered_into_record_batches(es: EsStandin, batch: BatchContext) -> None:
    inside = seed(es)
    got = list(source(es, chunk=20, page_size=7).extract(batch))
    assert [records.num_rows for records in got] == [21, 21, 7]  # three pages each, and the rest
    assert sorted(ids(got)) == sorted(inside)
    (whole,) = build_source(
        {
            "type": source(es).Options.model_fields["type"].default,
            "hosts": [es.url],
            "index": "orders-*",
            "page_size": 5,
        }
    ).extract(batch)
    assert whole.num_rows == 49  # by default 20,000 documents a batch


@pytest.mark.parametrize("slices", [2, 5])
def test_sliced_pit_reads_each_document_once(es: EsStandin, batch: BatchContext, slices: int) -> None:
    inside = seed(es)
    got = ids(source(es, page_size=3, slices=slices).extract(batch))
    assert sorted(got) == sorted(inside) and len(got) == len(set(got))
    assert {s["body"]["slice"]["id"] for s in searches(es)} == set(range(slices))
    assert {s["body"]["slice"]["max"] for s in searches(es)} == {slices}
    assert len(opened(es)) == 1 and es.pits == {}  # one PIT for all slices, closed


def test_transient_page_errors_are_retried_without_restarting_the_window(es: EsStandin, batch) -> None:
    inside = seed(es)
    pages = source(es, page_size=10, retry_backoff=0.01).extract(batch)
    got = ids([next(pages)])
    for status in (429, 503, 502):
        es.fail(status)
    got += ids(pages)
    assert sorted(got) == sorted(inside) and len(got) == len(set(got))
    assert len(opened(es)) == 1  # the same point in time throughout
    asked = [(s["status"], s["body"].get("search_after")) for s in searches(es)]
    failed = [n for n, (status, _) in enumerate(asked) if status != 200]
    assert len(failed) == 3 and failed == list(range(failed[0], failed[0] + 3))
    # One page in the middle of the window, asked four times from the same search_after.
    (after,) = {str(asked[n][1]) for n in [*failed, failed[-1] + 1]}
    assert after != "None" and asked[failed[-1] + 1][0] == 200


def test_a_timed_out_or_partial_page_is_asked_again(es: EsStandin, batch: BatchContext) -> None:
    inside = seed(es)
    es.fail(delay=1.5)  # longer than request_timeout
    es.fail(partial=True)  # one shard failed: the page has holes
    got = ids(source(es, page_size=10, request_timeout=0.5, retry_backoff=0.01).extract(batch))
    assert sorted(got) == sorted(inside) and len(got) == len(set(got))


def test_retries_run_out(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    es.fail(503, times=3)
    with pytest.raises(TransientConnectorError, match=r"503 .*\(after 3 attempts\)"):
        list(source(es, retries=2, retry_backoff=0.01).extract(batch))
    assert es.pits == {}  # closed on the way out


def test_a_request_error_is_not_retried(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    es.fail(400)
    with pytest.raises(ConnectorError, match="400") as failed:
        list(source(es).extract(batch))
    assert not failed.value.retryable and len(searches(es)) == 1


def test_an_expired_pit_fails_the_batch_clearly(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    pages = source(es, page_size=5, keep_alive="30s").extract(batch)
    next(pages)  # the readers are at most two pages ahead, far from the window's end
    es.expire()
    with pytest.raises(PointInTimeExpired, match=r"point in time expired .*\(keep_alive = '30s'") as failed:
        list(pages)
    assert failed.value.retryable  # the batch's retry opens a new point in time
    assert [r["status"] for r in searches(es)].count(404) == 1  # not asked again with the dead id


def test_abandoned_extract_still_closes_the_pit(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    for slices in (1, 3):
        records = source(es, page_size=3, slices=slices).extract(batch)
        next(records)
        records.close()
        assert es.pits == {}
    assert len(es.closed) == 2


def test_auth_headers(es: EsStandin, batch: BatchContext) -> None:
    seed(es)
    list(source(es, api_key="aWQ6a2V5").extract(batch))
    assert {r["headers"]["authorization"] for r in es.requests} == {"ApiKey aWQ6a2V5"}
    es.requests.clear()
    list(source(es, username="elastic", password="s3cret").extract(batch))
    basic = "Basic " + base64.b64encode(b"elastic:s3cret").decode()
    assert {r["headers"]["authorization"] for r in es.requests} == {basic}


def test_opensearch_sigv4_signs_with_the_clients_signer(monkeypatch, batch: BatchContext) -> None:
    pytest.importorskip("opensearchpy")
    pytest.importorskip("boto3")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIDPIPESTATETEST")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "secret")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with EsStandin("opensearch") as es:
        seed(es)
        got = ids(source(es, aws_region="eu-west-1").extract(batch))
        assert len(got) == 49
        headers = [r["headers"] for r in es.requests]
        assert all(
            h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDPIPESTATETEST/") for h in headers
        )
        assert all("/eu-west-1/es/aws4_request" in h["authorization"] and "x-amz-date" in h for h in headers)


def test_opensearch_without_pit_pages_by_search_after_on_a_unique_field(batch: BatchContext) -> None:
    pytest.importorskip("opensearchpy")
    with EsStandin("opensearch-no-pit") as es:
        inside = seed(es)
        with pytest.raises(ConnectorError, match="no point in time; set \\[source\\] tiebreaker"):
            list(source(es).extract(batch))
        got = ids(source(es, tiebreaker="id", page_size=4).extract(batch))
        assert sorted(got) == sorted(inside) and len(got) == len(set(got))
        (first, *_) = [r for r in es.requests if r["path"] == "/orders-*/_search"]
        assert first["body"]["sort"] == [{"@timestamp": {"order": "asc"}}, {"id": {"order": "asc"}}]
        assert "pit" not in first["body"]
        with pytest.raises(ConnectorError, match="400"):  # point_in_time = "always" insists
            list(source(es, tiebreaker="id", point_in_time="always").extract(batch))


def test_errors_are_wrapped(es: EsStandin, batch: BatchContext) -> None:
    kind = "opensearch" if es.flavor != "elasticsearch" else "elasticsearch"
    with pytest.raises(ConnectorError, match="404"):
        list(build_source({"hosts": [es.url], "index": "missing", "type": kind}).extract(batch))
    dead = build_source({"type": kind, "hosts": ["http://127.0.0.1:9"], "index": "x", "request_timeout": 2})
    with pytest.raises(TransientConnectorError):
        list(dead.extract(batch))


def test_check_finds_a_dead_host_before_any_batch(es: EsStandin) -> None:
    kind = "opensearch" if es.flavor != "elasticsearch" else "elasticsearch"
    source(es).check()  # the stand-in answers
    assert [r["path"] for r in es.requests] == ["/orders-*/_search"]
    dead = build_source({"type": kind, "hosts": ["http://127.0.0.1:9"], "index": "x", "request_timeout": 2})
    with pytest.raises(TransientConnectorError):
        dead.check()


def test_describe(es: EsStandin, batch: BatchContext) -> None:
    location, query = source(es, slices=4).describe(batch)
    assert location == f"{es.url}/orders-*"
    assert '"gte":"2026-01-01T10:00:00Z","lt":"2026-01-01T11:00:00Z"' in query
    assert '"slice":{"max":4}' in query


@pytest.mark.parametrize("kind", ["elasticsearch", "opensearch"])
@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"index": "x", "hosts": ["http://h"], "page_size": 0}, r"^\[source\] page_size: must be > 0$"),
        ({"index": "x", "hosts": ["http://h"], "page_size": 10001}, r"page_size: must be <= 10000"),
        ({"hosts": ["http://h"]}, r"^\[source\] index: required key is missing$"),
        ({"index": "x", "hosts": "http://h", "username": "u"}, r"^\[source\] password: "),
        ({"index": "x", "hosts": "http://h", "query": "{nope"}, r"^\[source\] query: not a JSON"),
        ({"index": "x", "hosts": "http://h", "bogus": 1}, r"^\[source\] bogus: unknown key$"),
        ({"index": "x", "hosts": "http://h", "slices": 0}, r"^\[source\] slices: must be >= 1$"),
        ({"index": "x", "hosts": "http://h", "keep_alive": "5 min"}, r"^\[source\] keep_alive: must be"),
        ({"index": "x", "hosts": "http://h", "tiebreaker": "_id"}, r"^\[source\] tiebreaker: must be"),
    ],
)
def test_bad_config(kind: str, cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_source({"type": kind, **cfg})


@pytest.mark.parametrize(
    ("kind", "cfg", "message"),
    [
        ("elasticsearch", {"index": "x"}, r"^\[source\] hosts: set either hosts or cloud_id"),
        ("opensearch", {"index": "x"}, r"^\[source\] hosts: required key is missing"),
        (
            "opensearch",
            {"index": "x", "hosts": "h", "api_key": "k", "aws_region": "r"},
            r"api_key: use one of",
        ),
        ("opensearch", {"index": "x", "hosts": "h", "aws_service": "s3"}, r"aws_service: must be 'es' or"),
    ],
)
def test_bad_connection_config(kind: str, cfg: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build_source({"type": kind, **cfg})


def real(kind: str) -> tuple[str, dict]:
    prefix = f"PIPESTATE_TEST_{'ES' if kind == 'elasticsearch' else 'OPENSEARCH'}_"
    auth: dict = {}
    if os.environ.get(prefix + "API_KEY"):
        auth["api_key"] = os.environ[prefix + "API_KEY"]
    elif os.environ.get(prefix + "USERNAME"):
        auth["username"] = os.environ[prefix + "USERNAME"]
        auth["password"] = os.environ.get(prefix + "PASSWORD", "")
    return os.environ[prefix + "URL"], auth


@pytest.mark.parametrize(
    "kind",
    [
        pytest.param(
            "elasticsearch",
            marks=pytest.mark.skipif(
                not os.environ.get("PIPESTATE_TEST_ES_URL"), reason="no PIPESTATE_TEST_ES_URL"
            ),
        ),
        pytest.param(
            "opensearch",
            marks=pytest.mark.skipif(
                not os.environ.get("PIPESTATE_TEST_OPENSEARCH_URL"), reason="no PIPESTATE_TEST_OPENSEARCH_URL"
            ),
        ),
    ],
)
def test_real_cluster(kind: str, batch: BatchContext) -> None:
    """A REAL cluster: indexes documents into a throwaway index, extracts, deletes it."""
    url, auth = real(kind)
    backend = ClientBackend(url, kind, f"real {kind}", **auth)
    index = backend.create(shards=2)
    try:
        times = [START - timedelta(milliseconds=1), START, END - timedelta(milliseconds=1), END]
        times += [START + timedelta(minutes=20)] * 25
        backend.index(index, [{"id": n, "@timestamp": iso(t)} for n, t in enumerate(times)])
        for slices in (1, 2):
            cfg = {"type": kind, "hosts": [url], "index": index, "page_size": 4, "slices": slices, **auth}
            assert sorted(ids(build_source(cfg).extract(batch))) == [1, 2, *range(4, 29)]
    finally:
        backend.drop(index)

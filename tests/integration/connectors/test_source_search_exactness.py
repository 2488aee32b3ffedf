"""Window exactness of the `elasticsearch` and `opensearch` sources, the same tests on four servers:
the project's STAND-IN in both flavors, and the third-party EMULATORS noida-db (Elasticsearch 8.15)
and osmem-server (OpenSearch), which pipestate did not write. Emulators check our reading of the
APIs against someone else's; they are not the engines (shards, refresh, security differ).

Each window of a few tens of thousands of documents must come back exactly, each document once:
equal timestamps across pages, documents exactly on the window's bounds and a millisecond either
side, one slice or several, and documents indexed and deleted after the point in time opened.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from es_standin import EsStandin
from search_backends import ClientBackend, StandinBackend

from pipestate.connectors import BatchContext, build_source

pytest.importorskip("pyarrow")

START = datetime(2026, 1, 1, tzinfo=UTC)
WINDOWS = 4  # hourly windows [START, START + 4h)
HOUR = timedelta(hours=1)


@pytest.fixture(
    params=[
        "stand-in elasticsearch",
        "stand-in opensearch",
        "EMULATOR noida-db (elasticsearch)",
        "EMULATOR osmem-server (opensearch)",
    ]
)
def backend(request: pytest.FixtureRequest) -> Iterator[Any]:
    name = request.param
    if name.startswith("stand-in"):
        flavor = name.split()[-1]
        pytest.importorskip("elasticsearch" if flavor == "elasticsearch" else "opensearchpy")
        with EsStandin(flavor) as standin:
            yield StandinBackend(standin, flavor)
    elif "noida" in name:
        yield ClientBackend(request.getfixturevalue("noida"), "elasticsearch", name)
    else:
        yield ClientBackend(request.getfixturevalue("osmem"), "opensearch", name)


def iso(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def dataset(count: int, seed: int = 7) -> tuple[list[dict[str, Any]], dict[int, int]]:
    """`count` documents over the windows and a little beyond; returns them and each id's window
    (-1: outside every window). Hundreds share each window's first instant, many sit a
    millisecond either side of a bound, the rest are spread at random."""
    rng = random.Random(seed)
    documents: list[dict[str, Any]] = []
    window_of: dict[int, int] = {}

    def add(moment: datetime) -> None:
        n = len(documents) + 1
        documents.append({"id": n, "@timestamp": iso(moment), "status": rng.choice(["paid", "open"])})
        offset = moment - START
        window_of[n] = offset // HOUR if timedelta(0) <= offset < WINDOWS * HOUR else -1

    for edge in range(WINDOWS + 1):
        bound = START + edge * HOUR
        for _ in range(count // 40):  # equal timestamps exactly on the bound, across many pages
            add(bound)
        for delta in (-1, 1):
            for _ in range(count // 100):
                add(bound + timedelta(milliseconds=delta))
    while len(documents) < count:
        add(START - HOUR / 2 + timedelta(milliseconds=rng.randrange(int((WINDOWS + 1) * 3_600_000))))
    rng.shuffle(documents)
    return documents, window_of


def read(backend: Any, index: str, window: int, **options: Any) -> list[int]:
    cfg = {"type": backend.type, "hosts": [backend.url], "index": index, **options}
    batch = BatchContext.for_window("orders", START + window * HOUR, START + (window + 1) * HOUR)
    ids: list[int] = []
    for records in build_source(cfg).extract(batch):
        ids += records.column("id").to_pylist()
    return ids


_INDEXED: dict[str, str] = {}


def indexed(backend: Any, documents: list[dict[str, Any]]) -> str:
    """An index holding `documents`; an emulator's is made once and read by every test that
    only reads it (indexing tens of thousands of documents is the slow part)."""
    if isinstance(backend, StandinBackend) or backend.url not in _INDEXED:
        index = backend.create()
        backend.index(index, documents)
        if isinstance(backend, StandinBackend):
            return index
        _INDEXED[backend.url] = index
    return _INDEXED[backend.url]


def count_for(backend: Any) -> int:
    return 3_000 if isinstance(backend, StandinBackend) else 24_000  # the stand-in is pure Python


@pytest.mark.slow
@pytest.mark.parametrize("slices", [1, 3])
def test_each_window_gets_exactly_its_documents_once(backend: Any, slices: int) -> None:
    documents, window_of = dataset(count_for(backend))
    index = indexed(backend, documents)
    seen: Counter[int] = Counter()
    for window in range(WINDOWS):
        got = read(backend, index, window, page_size=997, slices=slices)
        expected = {n for n, w in window_of.items() if w == window}
        assert len(got) == len(set(got)), f"{backend.label}: window {window} repeated documents"
        assert set(got) == expected, f"{backend.label}: window {window} lost or gained documents"
        seen.update(got)
    assert sum(seen.values()) == sum(1 for w in window_of.values() if w >= 0)
    assert all(value == 1 for value in seen.values())


@pytest.mark.slow
def test_documents_indexed_and_deleted_after_the_pit_opened(backend: Any) -> None:
    documents, window_of = dataset(count_for(backend) // 3, seed=11)
    index = backend.create()
    backend.index(index, documents)
    expected = {n for n, w in window_of.items() if w == 1}
    cfg = {"type": backend.type, "hosts": [backend.url], "index": index, "page_size": 200}
    batch = BatchContext.for_window("orders", START + HOUR, START + 2 * HOUR)
    reader = build_source(cfg)
    reader.chunk_documents = 200  # type: ignore[attr-defined]  (a record batch per page)
    pages = reader.extract(batch)
    got = next(pages).column("id").to_pylist()  # the point in time is open now
    late = [{"id": 10**6 + k, "@timestamp": iso(START + HOUR + timedelta(seconds=k))} for k in range(50)]
    backend.index(index, late)
    backend.delete(index, sorted(expected)[-40:])  # not yet read: the PIT still holds them
    for records in pages:
        got += records.column("id").to_pylist()
    assert len(got) == len(set(got)) and set(got) == expected
    # The next read of the window (a retry, a requeue) sees the index as it is now.
    now = set(read(backend, index, 1, page_size=500))
    assert now == (expected - set(sorted(expected)[-40:])) | {d["id"] for d in late}


def test_a_unique_field_as_tiebreaker(backend: Any) -> None:
    index = backend.create()
    same = iso(START + timedelta(minutes=5))
    backend.index(index, [{"id": n, "@timestamp": same} for n in range(1, 301)])
    got = read(backend, index, 0, page_size=7, tiebreaker="id")
    assert sorted(got) == list(range(1, 301)) and len(got) == 300


def test_source_includes_and_excludes(backend: Any) -> None:
    index = backend.create()
    backend.index(index, [{"id": 1, "@timestamp": iso(START), "status": "paid", "note": "x"}])
    cfg = {"type": backend.type, "hosts": [backend.url], "index": index}
    batch = BatchContext.for_window("orders", START, START + HOUR)
    only = list(build_source({**cfg, "source_includes": ["id", "@timestamp"]}).extract(batch))
    assert sorted(only[0].schema.names) == ["@timestamp", "id"]
    (without,) = build_source({**cfg, "source_excludes": "note,status"}).extract(batch)
    assert sorted(without.schema.names) == ["@timestamp", "id"]
    (everything,) = build_source(cfg).extract(batch)
    assert everything.to_pylist() == [{"id": 1, "@timestamp": iso(START), "status": "paid", "note": "x"}]


def test_pages_are_arrow_record_batches_with_nested_values(backend: Any) -> None:
    import pyarrow as pa

    index = backend.create()
    nested = {"id": 1, "@timestamp": iso(START), "customer": {"id": 7, "tags": ["a", "b"]}}
    backend.index(index, [nested, {"id": 2, "@timestamp": iso(START + timedelta(seconds=1))}])
    cfg = {"type": backend.type, "hosts": [backend.url], "index": index}
    (records,) = build_source(cfg).extract(BatchContext.for_window("orders", START, START + HOUR))
    assert isinstance(records, pa.RecordBatch) and records.num_rows == 2
    assert pa.types.is_struct(records.schema.field("customer").type)
    assert records.column("@timestamp").to_pylist() == [iso(START), iso(START + timedelta(seconds=1))]
    assert records.to_pylist()[0]["customer"] == {"id": 7, "tags": ["a", "b"]}

"""Documents per second out of the search sources, side by side with the bare client, in one run.

    python bench/source.py                      # 200,000 documents in each emulator, 3 rounds
    python bench/source.py --docs 500000 --page-size 2000 --slices 4 --rounds 5

Starts the third-party EMULATORS (noida-db for Elasticsearch, osmem-server for OpenSearch; see
tests/integration/connectors/emulators.py) on 127.0.0.1, indexes `--docs` documents into one
window, then reads that window, interleaved round by round:
- `bare client`: the client's own PIT loop, as a hand-written script would page it
  (open a PIT, `search` with `sort`/`search_after`, touch every hit's `_source`, close the PIT);
- `pipestate`: the `elasticsearch` / `opensearch` source, pages to Arrow record batches;
- `pipestate, N slices`: the same, with a sliced PIT read by N slices in parallel.
Prints each variant's best and median rate and the ratio to the bare loop; asserts nothing.
Emulators are not clusters: the figures compare the ways of paging, not the engines.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "integration" / "connectors"))

from emulators import start_noida, start_osmem  # noqa: E402

from pipestate.connectors import BatchContext, build_source  # noqa: E402

START = datetime(2026, 1, 1, tzinfo=UTC)
END = START + timedelta(hours=1)
BODY_TIME = {
    "gte": "2026-01-01T00:00:00Z",
    "lt": "2026-01-01T01:00:00Z",
    "format": "strict_date_optional_time",
}


def documents(count: int) -> Any:
    rng = random.Random(1)
    for n in range(count):
        moment = START + timedelta(milliseconds=rng.randrange(3_600_000))
        yield {
            "id": n,
            "@timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "status": rng.choice(["paid", "open", "refunded"]),
            "amount": round(rng.uniform(1, 500), 2),
            "customer": {"id": rng.randrange(10_000), "country": rng.choice(["DE", "FR", "JP", "US"])},
            "tags": rng.sample(["web", "app", "promo", "b2b", "gift"], 2),
        }


def bare_elasticsearch(client: Any, index: str, page_size: int) -> int:
    pit = client.open_point_in_time(index=index, keep_alive="2m")["id"]
    query = {"bool": {"filter": [{"range": {"@timestamp": BODY_TIME}}]}}
    sort = [{"@timestamp": {"order": "asc"}}, {"_shard_doc": "asc"}]
    count, after = 0, None
    try:
        while True:
            page = client.search(
                pit={"id": pit, "keep_alive": "2m"},
                query=query,
                sort=sort,
                size=page_size,
                search_after=after,
                track_total_hits=False,
            )
            pit = page.get("pit_id", pit)
            hits = page["hits"]["hits"]
            for hit in hits:
                count += hit["_source"] is not None
            if len(hits) < page_size:
                return count
            after = hits[-1]["sort"]
    finally:
        client.close_point_in_time(id=pit)


def bare_opensearch(client: Any, index: str, page_size: int) -> int:
    pit = client.create_pit(index=index, params={"keep_alive": "2m"})["pit_id"]
    body: dict[str, Any] = {
        "query": {"bool": {"filter": [{"range": {"@timestamp": BODY_TIME}}]}},
        "sort": [{"@timestamp": {"order": "asc"}}, {"_shard_doc": "asc"}],
        "size": page_size,
        "track_total_hits": False,
    }
    count = 0
    try:
        while True:
            body["pit"] = {"id": pit, "keep_alive": "2m"}
            page = client.search(body=body)
            pit = page.get("pit_id", pit)
            hits = page["hits"]["hits"]
            for hit in hits:
                count += hit["_source"] is not None
            if len(hits) < page_size:
                return count
            body["search_after"] = hits[-1]["sort"]
    finally:
        client.delete_pit(body={"pit_id": [pit]})


def pipestate(kind: str, url: str, index: str, page_size: int, slices: int) -> int:
    source = build_source(
        {"type": kind, "hosts": [url], "index": index, "page_size": page_size, "slices": slices}
        | {"request_timeout": 300}  # the emulators filter and sort every match for each page
    )
    batch = BatchContext.for_window("bench", START, END)
    return sum(records.num_rows for records in source.extract(batch))


def measure(kind: str, args: argparse.Namespace) -> None:
    from elasticsearch import Elasticsearch, helpers
    from opensearchpy import OpenSearch
    from opensearchpy import helpers as os_helpers

    start = start_noida if kind == "elasticsearch" else start_osmem
    with start() as emulator:
        index = "bench-orders"
        settings = {"number_of_shards": args.shards, "number_of_replicas": 0}
        mappings = {"properties": {"@timestamp": {"type": "date"}}}
        if kind == "elasticsearch":
            client: Any = Elasticsearch(emulator.url, request_timeout=300)
            client.indices.create(index=index, settings=settings, mappings=mappings)
            bulk, bare = helpers.bulk, bare_elasticsearch
        else:
            client = OpenSearch([emulator.url], timeout=300)
            client.indices.create(index=index, body={"settings": settings, "mappings": mappings})
            bulk, bare = os_helpers.bulk, bare_opensearch
        began = time.perf_counter()
        actions = ({"_index": index, "_id": str(d["id"]), "_source": d} for d in documents(args.docs))
        bulk(client, actions, chunk_size=5000, refresh=True)
        print(
            f"\n{kind}: EMULATOR {emulator.name} at {emulator.url}, {args.docs:,} documents in one "
            f"window, {args.shards} shards, page_size {args.page_size} "
            f"(indexed in {time.perf_counter() - began:.1f} s)"
        )
        variants: dict[str, Callable[[], int]] = {
            "bare client PIT loop": lambda: bare(client, index, args.page_size),
            "pipestate -> Arrow": lambda: pipestate(kind, emulator.url, index, args.page_size, 1),
            f"pipestate -> Arrow, {args.slices} slices": lambda: pipestate(
                kind, emulator.url, index, args.page_size, args.slices
            ),
        }
        rates: dict[str, list[float]] = {name: [] for name in variants}
        for _ in range(args.rounds):
            for name, run in variants.items():
                began = time.perf_counter()
                count = run()
                seconds = time.perf_counter() - began
                if count != args.docs:
                    print(f"  {name}: read {count:,} documents, expected {args.docs:,}: MISMATCH")
                rates[name].append(count / seconds)
        floor = statistics.median(rates["bare client PIT loop"])
        for name, values in rates.items():
            median = statistics.median(values)
            print(
                f"  {name:<32} median {median:>9,.0f} docs/s   best {max(values):>9,.0f}   "
                f"{median / floor:>5.2f}x the bare loop   ({args.rounds} rounds)"
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--docs", type=int, default=200_000)
    parser.add_argument("--page-size", type=int, default=1000)
    parser.add_argument("--slices", type=int, default=4)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", choices=["elasticsearch", "opensearch"], default=None)
    args = parser.parse_args()

    for kind in ("elasticsearch", "opensearch"):
        if args.only in (None, kind):
            measure(kind, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

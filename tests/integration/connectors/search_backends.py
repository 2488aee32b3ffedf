"""One face for the four servers the search sources are tested against: the project's STAND-IN
(`es_standin.py`, Elasticsearch and OpenSearch flavors) and the third-party EMULATORS
(`noida-db` for Elasticsearch, `osmem-server` for OpenSearch, see `emulators.py`).

A backend indexes documents, deletes them, and says which source `type` and URL read it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

from es_standin import EsStandin

MAPPINGS = {
    "properties": {"@timestamp": {"type": "date"}, "id": {"type": "long"}, "status": {"type": "keyword"}}
}


class StandinBackend:
    def __init__(self, standin: EsStandin, source_type: str) -> None:
        self.standin, self.type, self.url = standin, source_type, standin.url
        self.label = f"stand-in ({standin.flavor})"

    def create(self, shards: int = 3) -> str:
        return f"orders-{uuid.uuid4().hex[:8]}"

    def index(self, index: str, documents: Iterable[dict[str, Any]]) -> None:
        with self.standin.lock:
            for document in documents:
                self.standin.documents.append(
                    {"_index": index, "_id": str(document["id"]), "_source": document}
                )

    def delete(self, index: str, ids: Iterable[int]) -> None:
        gone = {str(n) for n in ids}
        with self.standin.lock:
            self.standin.documents[:] = [
                d for d in self.standin.documents if not (d["_index"] == index and d["_id"] in gone)
            ]


class ClientBackend:
    """An emulator (or a real cluster) through its official client."""

    def __init__(self, url: str, source_type: str, label: str, **auth: Any) -> None:
        self.type, self.url, self.label, self.auth = source_type, url, label, auth
        if source_type == "elasticsearch":
            from elasticsearch import Elasticsearch, helpers

            basic = (auth["username"], auth["password"]) if "username" in auth else None
            self.client = Elasticsearch(
                url, api_key=auth.get("api_key"), basic_auth=basic, request_timeout=120
            )
        else:
            from opensearchpy import OpenSearch, helpers  # type: ignore[no-redef]

            basic = (auth["username"], auth["password"]) if "username" in auth else None
            self.client = OpenSearch([url], http_auth=basic, timeout=120)
        self.helpers = helpers

    def create(self, shards: int = 3) -> str:
        index = f"pipestate-test-{uuid.uuid4().hex[:8]}"
        settings = {"number_of_shards": shards, "number_of_replicas": 0}
        if self.type == "elasticsearch":
            self.client.indices.create(index=index, mappings=MAPPINGS, settings=settings)
        else:
            self.client.indices.create(index=index, body={"mappings": MAPPINGS, "settings": settings})
        return index

    def index(self, index: str, documents: Iterable[dict[str, Any]]) -> None:
        actions = ({"_index": index, "_id": str(d["id"]), "_source": d} for d in documents)
        self.helpers.bulk(self.client, actions, refresh=True, chunk_size=5000)

    def delete(self, index: str, ids: Iterable[int]) -> None:
        actions = ({"_op_type": "delete", "_index": index, "_id": str(n)} for n in ids)
        self.helpers.bulk(self.client, actions, refresh=True)

    def drop(self, index: str) -> None:
        self.client.indices.delete(index=index)

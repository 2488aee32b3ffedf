"""A STAND-IN for Elasticsearch: a threaded HTTP server answering the endpoints the source uses.

It answers, shaped after Elasticsearch's documented responses:
- `POST /{index}/_pit?keep_alive=..` -> `{"id": ...}` (a snapshot of the matching documents),
- `POST /_search` with `pit`, `query`, `sort`, `size`, `search_after` -> hits with `sort` values,
- `DELETE /_pit` with `{"id": ...}` -> `{"succeeded": true, "num_freed": 1}`.
Every response carries `X-Elastic-Product: Elasticsearch` (the client's product check) and the
compatibility media type. It really evaluates `bool` filters, `range` (gte/gt/lt/lte on ISO
dates), `term` and `match_all`, sorts by the time field and `_shard_doc`, and pages by
`search_after`, so a range or paging bug in the connector shows up as wrong records.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import uuid
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

CONTENT_TYPE = "application/vnd.elasticsearch+json;compatible-with=9"


def millis(value: str) -> int:
    moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp() * 1000)


class QueryError(Exception):
    pass


def matches(query: dict[str, Any], source: dict[str, Any]) -> bool:
    ((kind, body),) = query.items()
    if kind == "match_all":
        return True
    if kind == "bool":

        def clauses(name: str) -> list[dict[str, Any]]:
            value = body.get(name, [])
            return value if isinstance(value, list) else [value]

        unknown = set(body) - {"filter", "must", "must_not"}
        if unknown:
            raise QueryError(f"bool clause {sorted(unknown)} not supported by the stand-in")
        return all(matches(q, source) for q in clauses("filter") + clauses("must")) and not any(
            matches(q, source) for q in clauses("must_not")
        )
    if kind == "term":
        ((field, wanted),) = body.items()
        wanted = wanted["value"] if isinstance(wanted, dict) else wanted
        return source.get(field) == wanted
    if kind == "range":
        ((field, bounds),) = body.items()
        if field not in source:
            return False
        value = millis(source[field])
        checks = {"gte": value.__ge__, "gt": value.__gt__, "lt": value.__lt__, "lte": value.__le__}
        return all(checks[op](millis(bound)) for op, bound in bounds.items() if op in checks)
    raise QueryError(f"query type {kind!r} not supported by the stand-in")


class EsStandin:
    """Holds the documents and the open PITs; `requests` records every request made."""

    def __init__(self) -> None:
        self.documents: list[dict[str, Any]] = []  # each {"_index", "_id", "_source"}
        self.pits: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.closed: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Type", CONTENT_TYPE)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                url = urlsplit(self.path)
                record = {"method": self.command, "path": url.path, "body": body}
                record["params"] = parse_qs(url.query)
                record["headers"] = {k.lower(): v for k, v in self.headers.items()}
                with standin.lock:
                    standin.requests.append(record)
                    status, answer = standin.route(self.command, url.path, record["params"], body)
                self._answer(status, answer)

            do_GET = do_POST = do_DELETE = do_HEAD = _handle  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> EsStandin:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def add(self, index: str, source: dict[str, Any]) -> None:
        self.documents.append({"_index": index, "_id": uuid.uuid4().hex[:20], "_source": source})

    # -- endpoints -------------------------------------------------------------------------

    def route(self, method: str, path: str, params: dict[str, list[str]], body: dict[str, Any]):
        parts = [p for p in path.split("/") if p]
        if method == "POST" and len(parts) == 2 and parts[1] == "_pit":
            if "keep_alive" not in params:
                return 400, error("action_request_validation_exception", "keep_alive missing")
            return self.open_pit(parts[0])
        if method == "POST" and parts == ["_search"]:
            return self.search(body)
        if method == "DELETE" and parts == ["_pit"]:
            freed = 1 if self.pits.pop(body.get("id"), None) is not None else 0
            self.closed.append(body.get("id"))
            return 200, {"succeeded": True, "num_freed": freed}
        return 400, error("illegal_argument_exception", f"stand-in has no {method} {path}")

    def open_pit(self, pattern: str):
        patterns = pattern.split(",")
        found = [d for d in self.documents if any(fnmatch.fnmatch(d["_index"], p) for p in patterns)]
        if not found and not any("*" in p for p in patterns):
            return 404, error("index_not_found_exception", f"no such index [{pattern}]", 404)
        pit_id = uuid.uuid4().hex
        self.pits[pit_id] = list(enumerate(found))  # the snapshot: later documents are unseen
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        return 200, {"id": pit_id, "_shards": shards}

    def search(self, body: dict[str, Any]):
        pit = body.get("pit") or {}
        if pit.get("id") not in self.pits:
            return 404, error("search_context_missing_exception", "No search context found", 404)
        query = body.get("query", {"match_all": {}})
        try:
            hits = [(n, d) for n, d in self.pits[pit["id"]] if matches(query, d["_source"])]
            keyed = [(self.sort_values(body.get("sort") or [], n, d), d) for n, d in hits]
        except QueryError as err:
            return 400, error("parsing_exception", str(err))
        keyed.sort(key=lambda pair: pair[0])
        after = body.get("search_after")
        if after is not None:
            keyed = [pair for pair in keyed if pair[0] > list(after)]
        page = keyed[: body.get("size", 10)]
        return 200, {
            "pit_id": pit["id"],
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "max_score": None,
                "hits": [{**d, "_score": None, "sort": values} for values, d in page],
            },
        }

    @staticmethod
    def sort_values(sort: list[Any], position: int, document: dict[str, Any]) -> list[int]:
        values = []
        for spec in sort:
            ((field, order),) = spec.items() if isinstance(spec, dict) else [(spec, "asc")]
            order = order.get("order", "asc") if isinstance(order, dict) else order
            if order != "asc":
                raise QueryError("the stand-in sorts ascending only")
            # A date sorts as epoch milliseconds; _shard_doc is the document's place in the PIT.
            values.append(position if field == "_shard_doc" else millis(document["_source"][field]))
        return values


def error(kind: str, reason: str, status: int = 400) -> dict[str, Any]:
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}

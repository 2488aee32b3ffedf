"""A STAND-IN for Elasticsearch and OpenSearch: a threaded HTTP server answering what the sources use.

It answers, shaped after the engines' documented responses:
- Elasticsearch (`flavor="elasticsearch"`): `POST /{index}/_pit?keep_alive=..` -> `{"id": ...}`
  (a snapshot of the matching documents), `DELETE /_pit` with `{"id": ...}`;
- OpenSearch (`flavor="opensearch"`): `POST /{index}/_search/point_in_time?keep_alive=..` ->
  `{"pit_id": ...}`, `DELETE /_search/point_in_time` with `{"pit_id": [...]}`; and
  `flavor="opensearch-no-pit"`, a cluster from before PIT, where only `/{index}/_search` works;
- `POST /_search` with `pit`, `query`, `sort`, `size`, `search_after`, `slice`, `_source`.
The Elasticsearch flavor sends `X-Elastic-Product: Elasticsearch` (the client's product check)
and the compatibility media type; the OpenSearch flavors send neither. It really evaluates
`bool` filters, `range` (gte/gt/lt/lte on ISO dates), `term` and `match_all`, sorts by the time
field and `_shard_doc` or a field, slices by `_shard_doc`, and pages by `search_after`, so a
range or paging bug in the connector shows up as wrong records. It is kept for what third-party
emulators cannot do on demand: failures injected per request (`fail`), slow answers, expiry.
"""

from __future__ import annotations

import fnmatch
import json
import threading
import time
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

    def __init__(self, flavor: str = "elasticsearch") -> None:
        assert flavor in ("elasticsearch", "opensearch", "opensearch-no-pit")
        self.flavor = flavor
        self.documents: list[dict[str, Any]] = []  # each {"_index", "_id", "_source"}
        self.pits: dict[str, list[tuple[int, dict[str, Any]]]] = {}
        self.closed: list[str] = []
        self.requests: list[dict[str, Any]] = []
        self.failures: list[tuple[str, int, float, bool]] = []  # (path, status, delay, partial)
        self.lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                if standin.flavor == "elasticsearch":
                    self.send_header("X-Elastic-Product", "Elasticsearch")
                    self.send_header("Content-Type", CONTENT_TYPE)
                else:
                    self.send_header("Content-Type", "application/json; charset=UTF-8")
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
                    injected = standin.injected(url.path)
                    if injected is None or injected[3]:
                        status, answer = standin.route(self.command, url.path, record["params"], body)
                if injected is not None:
                    _, fail_status, delay, partial = injected
                    time.sleep(delay)
                    if partial:
                        answer["_shards"] = {"total": 2, "successful": 1, "skipped": 0, "failed": 1}
                    elif fail_status:
                        status, answer = (
                            fail_status,
                            error("injected", f"injected {fail_status}", fail_status),
                        )
                record["status"] = status
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

    def fail(
        self,
        status: int = 0,
        times: int = 1,
        path: str = "/_search",
        delay: float = 0.0,
        partial: bool = False,
    ) -> None:
        """The next `times` requests to `path` answer `status` (0: answer normally) after `delay`
        seconds; `partial` answers normally but with one failed shard."""
        self.failures += [(path, status, delay, partial)] * times

    def injected(self, path: str) -> tuple[str, int, float, bool] | None:
        for n, failure in enumerate(self.failures):
            if path.endswith(failure[0]):
                return self.failures.pop(n)
        return None

    def expire(self) -> None:
        """Every open point in time is gone, as after its keep_alive."""
        with self.lock:
            self.pits.clear()

    # -- endpoints -------------------------------------------------------------------------

    def route(self, method: str, path: str, params: dict[str, list[str]], body: dict[str, Any]):
        parts = [p for p in path.split("/") if p]
        if self.flavor == "elasticsearch":
            if method == "POST" and len(parts) == 2 and parts[1] == "_pit":
                if "keep_alive" not in params:
                    return 400, error("action_request_validation_exception", "keep_alive missing")
                return self.open_pit(parts[0], "id")
            if method == "DELETE" and parts == ["_pit"]:
                return 200, {"succeeded": True, "num_freed": self.close_pit(body.get("id"))}
        if self.flavor == "opensearch" and parts[-2:] == ["_search", "point_in_time"]:
            if method == "POST" and len(parts) == 3:
                if "keep_alive" not in params:
                    return 400, error("illegal_argument_exception", "keep_alive missing")
                return self.open_pit(parts[0], "pit_id")
            if method == "DELETE" and len(parts) == 2:
                ids = body.get("pit_id") or []
                return 200, {"pits": [{"pit_id": i, "successful": bool(self.close_pit(i))} for i in ids]}
        if method in ("POST", "GET") and parts == ["_search"]:
            return self.search(body)
        if method in ("POST", "GET") and len(parts) == 2 and parts[1] == "_search":
            if body.get("pit"):
                return 400, error("action_request_validation_exception", "[indices] cannot be used with PIT")
            return self.search(body, self.matching(parts[0]))
        return 400, {"error": f"no handler found for uri [{path}] and method [{method}]", "status": 400}

    def close_pit(self, pit_id: Any) -> int:
        self.closed.append(pit_id)
        return 1 if self.pits.pop(pit_id, None) is not None else 0

    def matching(self, pattern: str) -> list[tuple[int, dict[str, Any]]]:
        patterns = pattern.split(",")
        found = [d for d in self.documents if any(fnmatch.fnmatch(d["_index"], p) for p in patterns)]
        return list(enumerate(found))

    def open_pit(self, pattern: str, key: str):
        found = self.matching(pattern)
        if not found and not any("*" in p for p in pattern.split(",")):
            return 404, error("index_not_found_exception", f"no such index [{pattern}]", 404)
        pit_id = uuid.uuid4().hex
        self.pits[pit_id] = found  # the snapshot: later documents are unseen
        shards = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}
        return 200, {key: pit_id, "_shards": shards}

    def search(self, body: dict[str, Any], live: list[tuple[int, dict[str, Any]]] | None = None):
        pit = body.get("pit") or {}
        if live is None and pit.get("id") not in self.pits:
            cause = {"type": "search_context_missing_exception", "reason": "No search context found"}
            return 404, {
                "error": {
                    "root_cause": [cause],
                    "type": "search_phase_execution_exception",
                    "reason": "all shards failed",
                    "caused_by": cause,
                },
                "status": 404,
            }
        documents = self.pits[pit["id"]] if live is None else live
        query = body.get("query", {"match_all": {}})
        part = body.get("slice")
        try:
            hits = [(n, d) for n, d in documents if matches(query, d["_source"])]
            if part is not None:
                hits = [(n, d) for n, d in hits if n % part["max"] == part["id"]]
            keyed = [(self.sort_values(body.get("sort") or [], n, d), d) for n, d in hits]
        except QueryError as err:
            return 400, error("parsing_exception", str(err))
        keyed.sort(key=lambda pair: pair[0])
        after = body.get("search_after")
        if after is not None:
            keyed = [pair for pair in keyed if pair[0] > list(after)]
        page = keyed[: body.get("size", 10)]
        answer = {
            "took": 1,
            "timed_out": False,
            "_shards": {"total": 1, "successful": 1, "skipped": 0, "failed": 0},
            "hits": {
                "max_score": None,
                "hits": [
                    {**d, "_source": pick(d["_source"], body.get("_source")), "_score": None, "sort": values}
                    for values, d in page
                ],
            },
        }
        return 200, ({"pit_id": pit["id"], **answer} if live is None else answer)

    @staticmethod
    def sort_values(sort: list[Any], position: int, document: dict[str, Any]) -> list[Any]:
        values: list[Any] = []
        for spec in sort:
            ((field, order),) = spec.items() if isinstance(spec, dict) else [(spec, "asc")]
            order = order.get("order", "asc") if isinstance(order, dict) else order
            if order != "asc":
                raise QueryError("the stand-in sorts ascending only")
            if field == "_shard_doc":  # the document's place in the PIT
                values.append(position)
                continue
            if field == "_id":
                raise QueryError("No mapping found for [_id] in order to sort on")
            value = document["_source"].get(field)
            try:  # a date sorts as epoch milliseconds
                values.append(millis(value) if isinstance(value, str) else value)
            except ValueError:
                values.append(value)
        return values


def pick(source: dict[str, Any], spec: Any) -> dict[str, Any]:
    """`_source` filtering on top-level names (patterns allowed), as includes and excludes."""
    if not isinstance(spec, dict):
        return source
    includes, excludes = spec.get("includes") or [], spec.get("excludes") or []
    return {
        k: v
        for k, v in source.items()
        if (not includes or any(fnmatch.fnmatch(k, p) for p in includes))
        and not any(fnmatch.fnmatch(k, p) for p in excludes)
    }


def error(kind: str, reason: str, status: int = 400) -> dict[str, Any]:
    cause = {"type": kind, "reason": reason}
    return {"error": {"root_cause": [cause], **cause}, "status": status}

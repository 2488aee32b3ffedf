"""Records and files a source may hold that pipestate must carry to every target, each with
what must come of it (issue 20, point 10; `hostile.py` holds the state-table rows). A case
`loads` (every record reaches the target) or `fails` with a message naming the field: then
only the windows holding it fail."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

WHEN = datetime(2026, 1, 1, 10, tzinfo=UTC)


def _nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def _at(n: int, **fields: Any) -> dict[str, Any]:
    return {"id": n, "timestamp": (WHEN + timedelta(seconds=n)).isoformat(), **fields}


@dataclass(frozen=True)
class HostileRecords:
    name: str
    records: list[dict[str, Any]]
    fails: str | None = None  # a fragment of the one-line error, or None: every record loads
    folding_only: bool = False  # fails only where column names ignore case (not PostgreSQL)


HOSTILE_RECORDS = [
    HostileRecords("empty object", [_at(1, meta={}), _at(2, meta={})]),
    HostileRecords("empty object beside values", [_at(1, meta={"k": 1}, extra={}), _at(2, meta={"k": 2})]),
    HostileRecords("list of empty objects", [_at(1, tags=[{}, {}]), _at(2, tags=[])]),
    HostileRecords("nested 120 deep", [_at(1, deep=_nested(120)), _at(2, deep=_nested(120))]),
    HostileRecords("empty field name", [_at(1, **{"": 5}), _at(2)]),
    HostileRecords("unicode and odd names", [_at(1, **{"naïve name": 1, "with space": "x", 'quo"te': 2})]),
    HostileRecords("names with dots and dashes", [_at(1, **{"a.b": 1, "c-d": 2, "e$": 3})]),
    HostileRecords("emoji and RTL text", [_at(1, text="🧪 ✓ مرحبا"), _at(2, text="")]),
    HostileRecords("only nulls in a field", [_at(1, maybe=None), _at(2, maybe=None)]),
    HostileRecords("integer beyond 64 bits", [_at(1, big=2**70), _at(2, big=1)]),
    HostileRecords("long text", [_at(1, text="x" * 1_000_000)]),
    HostileRecords("case-colliding names", [_at(1, Id=1)], fails="'id' and 'Id'", folding_only=True),
]

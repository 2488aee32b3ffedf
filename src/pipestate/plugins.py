"""Pluggable functions that give each new window its ids and categories.

A function takes a `WindowInfo` and returns a string (or None for a category).
Config names a built-in below or `module:function`, resolved once at start.
"""

from __future__ import annotations

import importlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from .errors import ConfigError

__all__ = ["WindowInfo", "BUILTINS", "resolve", "default_batch_id"]


@dataclass(frozen=True, slots=True)
class WindowInfo:
    """What an id or category function knows about the new window."""

    pipeline: str
    start: datetime  # UTC
    end: datetime  # UTC, exclusive
    local_date: date
    timezone: str
    sequence_in_day: int  # 1-based position on the day's grid
    duration_minutes: int
    granularity: str  # label of the grid the window sits on, e.g. "15m" or "1d"
    record_origin: str


IdFunction = Callable[[WindowInfo], "str | None"]

_NAMESPACE = uuid.UUID("6f0b5f3c-7d9b-4d1e-9a55-2f5b1c3e8a10")


def stamp_from_iso(text: str) -> str:
    """`YYYYMMDDTHHMMSSZ` from an instant's ISO text in UTC (either separator)."""
    return f"{text[:4]}{text[5:7]}{text[8:10]}T{text[11:13]}{text[14:16]}{text[17:19]}Z"


def _stamp(instant: datetime) -> str:
    return stamp_from_iso(instant.astimezone(UTC).isoformat(" "))


def default_batch_id(pipeline: str, start: datetime, end: datetime) -> str:
    """`<pipeline>-<startZ>-<endZ>`: readable, and the same in every process."""
    return f"{pipeline}-{_stamp(start)}-{_stamp(end)}"


def _deterministic(kind: str) -> IdFunction:
    def make(window: WindowInfo) -> str:
        base = default_batch_id(window.pipeline, window.start, window.end)
        return base if kind == "batch" else f"{kind}-{base}"

    return make


def _uuid5(window: WindowInfo) -> str:
    return str(uuid.uuid5(_NAMESPACE, default_batch_id(window.pipeline, window.start, window.end)))


def _uuid4(window: WindowInfo) -> str:
    return str(uuid.uuid4())


def _none(window: WindowInfo) -> None:
    return None


def _weekday(window: WindowInfo) -> str:
    return window.local_date.strftime("%A").lower()


def _weekday_weekend(window: WindowInfo) -> str:
    return "weekend" if window.local_date.weekday() >= 5 else "weekday"


def _local_month(window: WindowInfo) -> str:
    return window.local_date.strftime("%Y-%m")


def _granularity(window: WindowInfo) -> str:
    return window.granularity


def _origin(window: WindowInfo) -> str:
    return window.record_origin.lower()


BUILTINS: dict[str, dict[str, IdFunction]] = {
    "ids": {"deterministic": _deterministic("batch"), "uuid5": _uuid5, "uuid4": _uuid4},
    "categories": {
        "none": _none,
        "local_weekday": _weekday,
        "weekday_weekend": _weekday_weekend,
        "local_month": _local_month,
        "granularity": _granularity,
        "record_origin": _origin,
    },
}

_ID_PREFIX = {"batch_id": "batch", "source_id": "src", "stage_id": "stg", "target_id": "tgt"}


def resolve(section: str, key: str, name: str) -> IdFunction:
    """The function that config `[section] key = name` refers to; ConfigError if none."""
    if section == "ids" and name == "deterministic":
        return _deterministic(_ID_PREFIX[key])
    if name in BUILTINS[section]:
        return BUILTINS[section][name]
    module_name, _, attribute = name.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"[{section}] {key}: cannot import {name!r}: {err}") from err
    if not callable(function):
        raise ConfigError(f"[{section}] {key}: {name!r} is not callable")
    return function

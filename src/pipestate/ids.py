"""Pluggable functions that give each new window its ids and categories.

A function takes a `WindowInfo` and returns a string (or None for a category).
Config names a built-in below or `module:function`, resolved once at start.
"""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime

from .errors import ConfigError

__all__ = [
    "WindowInfo",
    "BUILTINS",
    "IMPORT_PATH",
    "import_path",
    "resolve",
    "default_batch_id",
    "call",
    "probe",
    "MAX_ID_LENGTH",
]

# batch_id, the other ids and the categories are String(255) columns.
MAX_ID_LENGTH = 255
# `package.module:attribute`: how config names an id function, a category function or a
# connector. Matched whole (fullmatch).
IMPORT_PATH = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")


def import_path(path: str, key: str) -> object:
    """The object `module:attribute` names; ConfigError naming the config `key` if it cannot be imported."""
    module_name, _, attribute = path.partition(":")
    try:
        return getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot import {path!r}: {err}") from err


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
    function = import_path(name, f"[{section}] {key}")
    if not callable(function):
        raise ConfigError(f"[{section}] {key}: {name!r} is not callable")
    return function


def call(function: IdFunction, window: WindowInfo, key: str, required: bool = False) -> str | None:
    """`function(window)`, checked: a string of at most MAX_ID_LENGTH characters
    (or None, unless `required`); ConfigError naming `key` otherwise."""
    try:
        value = function(window)
    except Exception as err:  # noqa: BLE001 - the user's function: any failure is theirs
        raise ConfigError(f"{key}: the function failed: {type(err).__name__}: {err}") from err
    if value is None and not required:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: the function returned {type(value).__name__}, not a string")
    if required and not value:
        raise ConfigError(f"{key}: the function returned an empty id")
    if len(value) > MAX_ID_LENGTH:
        raise ConfigError(f"{key}: the function returned {len(value)} characters (at most {MAX_ID_LENGTH})")
    return value


def probe(functions: dict[str, dict[str, IdFunction]], window: WindowInfo) -> None:
    """Call every configured function once on `window` (the pipeline's first), so a
    broken plug-in is a config error before anything is written."""
    for section, by_key in functions.items():
        for key, function in by_key.items():
            call(function, window, f"[{section}] {key}", required=section == "ids" and key == "batch_id")

"""Configuration: the TOML file and PIPESTATE_<SECTION>__<KEY> env, merged and validated once."""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from datetime import date, datetime, time, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainSerializer,
    PlainValidator,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from .errors import ConfigError
from .paths import anchor_path
from .statuses import STATUS_ORDER
from .windows import UTC, Step, day_bounds, format_step, parse_granularity, zone

__all__ = ["Config", "load_config", "parse_duration", "DEFAULT_CONFIG_PATH", "ENV_PREFIX"]

DEFAULT_CONFIG_PATH = Path("pipestate.toml")
ENV_PREFIX = "PIPESTATE_"
# Every pattern is matched against the whole text (fullmatch): `$` would also
# match before a final newline, and "orders\n" would be a second pipeline.
_DURATION = re.compile(r"\s*(\d{1,12})\s*([smh])\s*")
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Lengths the state table's columns (and PostgreSQL's 63-byte names) can hold:
# pipeline_name is String(128); `<table>_events` must stay within 63 bytes.
MAX_PIPELINE_NAME = 128
MAX_TABLE_NAME = 63 - len("_events")
MAX_SCHEMA_NAME = 63
# Upper bounds of the durations: a lease or backoff past them is a typo, and an
# unbounded one overflows the database's timestamps (a lease to the year 13434).
MAX_LEASE = timedelta(hours=24)
MAX_RETRY_BACKOFF = timedelta(hours=24)
MAX_LAG = timedelta(days=366)
MAX_LOCK_TIMEOUT = timedelta(hours=1)
MAX_STATEMENT_TIMEOUT = timedelta(hours=24)
MAX_RETRIES = 1000
# The first and last local day a pipeline may cover: a window needs its day's
# end, and every zone's midnight must still be an instant Python can hold.
FIRST_DAY = date(1, 1, 2)
LAST_DAY = date(9999, 12, 30)


def parse_duration(text: str | int, maximum: timedelta | None = None) -> timedelta:
    """`"<N>s"`, `"<N>m"` or `"<N>h"` (zero allowed), at most `maximum`; ValueError otherwise."""
    match = _DURATION.fullmatch(str(text))
    if not match:
        raise ValueError(f"must be '<N>s', '<N>m' or '<N>h', got {text!r}")
    unit = {"s": "seconds", "m": "minutes", "h": "hours"}[match.group(2)]
    try:
        value = timedelta(**{unit: int(match.group(1))})
    except OverflowError:
        value = timedelta.max
    if maximum is not None and value > maximum:
        raise ValueError(f"must be at most {_describe_duration(maximum)}, got {text!r}")
    return value


def _describe_duration(value: timedelta) -> str:
    seconds = int(value.total_seconds())
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


class Duration(timedelta):
    """A config duration, parsed once: a `timedelta` everywhere it is used, and the text it was
    written as (`"15m"`) for `str()`, config_hash and messages."""

    text: str

    def __new__(cls, text: str | int, maximum: timedelta | None = None) -> Duration:
        value = parse_duration(text, maximum)
        self = super().__new__(cls, value.days, value.seconds, value.microseconds)
        self.text = str(text).strip()
        return self

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Duration({self.text!r})"

    def __reduce__(self) -> tuple[Any, ...]:  # worker processes get the config pickled
        return (Duration, (self.text,))


def _duration(maximum: timedelta | None = None, positive: bool = False) -> Any:
    """The annotation of a duration key: text in, a `Duration` out, its text when dumped."""

    def read(value: Any) -> Duration:
        if isinstance(value, Duration):
            return value
        parsed = Duration(value, maximum)
        if positive and parsed <= timedelta(0):
            raise ValueError("must be longer than zero")
        return parsed

    return Annotated[timedelta, PlainValidator(read), PlainSerializer(str, return_type=str)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PipelineConfig(_Section):
    name: str
    timezone: str = "UTC"
    granularity: str = "1h"
    start: str
    end: str | None = None
    lag: _duration(MAX_LAG) = Duration("0s")  # type: ignore[valid-type]

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError(
                f"must be letters, digits, '_' and '-' only, not starting with '-', got {value!r}"
            )
        if len(value) > MAX_PIPELINE_NAME:
            raise ValueError(f"must be at most {MAX_PIPELINE_NAME} characters, got {len(value)}")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str) -> str:
        zone(value)
        return value

    @field_validator("granularity")
    @classmethod
    def _granularity(cls, value: str) -> str:
        parse_granularity(value)
        return value.strip()

    @field_validator("start", "end", mode="before")
    @classmethod
    def _toml_dates(cls, value: Any) -> Any:
        # TOML has native dates and datetimes: accept them as their text.
        if isinstance(value, datetime | date):
            return value.isoformat()
        return value

    @field_validator("start", "end")
    @classmethod
    def _day_in_range(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is not None:
            _local_instant(value, zone("UTC"), str(info.field_name))  # the zone is checked in _range
        return value

    @model_validator(mode="after")
    def _range(self) -> PipelineConfig:
        tz = zone(self.timezone)
        start = _local_instant(self.start, tz, "start")
        if self.end is not None and _local_instant(self.end, tz, "end") <= start:
            raise ValueError("end must be after start")
        return self

    # The typed values, parsed once on first use (the text fields stay as written:
    # they are what config_hash and the error messages show).

    @cached_property
    def tz(self) -> ZoneInfo:
        return zone(self.timezone)

    @cached_property
    def step(self) -> Step:
        return parse_granularity(self.granularity)

    @cached_property
    def start_utc(self) -> datetime:
        return _local_instant(self.start, self.tz, "start")

    @cached_property
    def end_utc(self) -> datetime | None:
        return None if self.end is None else _local_instant(self.end, self.tz, "end")


class StateConfig(_Section):
    url: str = "sqlite:///pipestate.db"
    table: str = "pipeline_state"
    schema_: str = Field(default="", alias="schema")
    # Network databases (PostgreSQL): bounds on every wait; "0s" for none.
    connect_timeout: _duration(MAX_STATEMENT_TIMEOUT) = Duration("10s")  # type: ignore[valid-type]
    statement_timeout: _duration(MAX_STATEMENT_TIMEOUT) = Duration("5m")  # type: ignore[valid-type]
    # Statuses another tool wrote, read as pipestate's: {"SUCCESS" = "COMPLETED", "done" = "COMPLETED"}.
    status_map: dict[str, str] = Field(default_factory=dict)
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("status_map", mode="before")
    @classmethod
    def _status_map_text(cls, value: Any) -> Any:
        # From the environment: PIPESTATE_STATE__STATUS_MAP="SUCCESS=COMPLETED,done=COMPLETED".
        if isinstance(value, str):
            pairs = [item.partition("=") for item in value.split(",") if item.strip()]
            if any(not sep for _, sep, _ in pairs):
                raise ValueError(f"expected OTHER=STATUS[,OTHER=STATUS...], got {value!r}")
            return {other.strip(): status.strip() for other, _, status in pairs}
        return value

    @field_validator("status_map")
    @classmethod
    def _status_map(cls, value: dict[str, str]) -> dict[str, str]:
        for other, status in value.items():
            if status not in STATUS_ORDER:
                raise ValueError(f"{other!r} must map to one of {', '.join(STATUS_ORDER)}, got {status!r}")
            if other in STATUS_ORDER:
                raise ValueError(f"{other!r} is pipestate's own status and cannot be mapped")
            if not other.strip():
                raise ValueError("an empty status cannot be mapped")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return _identifier(value, MAX_TABLE_NAME)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        return value if value == "" else _identifier(value, MAX_SCHEMA_NAME)


def _identifier(value: str, limit: int) -> str:
    """A table or schema name used exactly as given: a plain SQL identifier."""
    if not _IDENTIFIER.fullmatch(value):
        raise ValueError(f"must be a plain SQL identifier (letters, digits, '_'), got {value!r}")
    if len(value) > limit:
        raise ValueError(f"must be at most {limit} characters, got {len(value)}")
    return value


class IdsConfig(_Section):
    """Which function computes each id of a new window: a built-in name or `module:function`."""

    batch_id: str = "deterministic"
    source_id: str = "deterministic"
    stage_id: str = "deterministic"
    target_id: str = "deterministic"

    @field_validator("*")
    @classmethod
    def _function(cls, value: str) -> str:
        return _check_function(value, "ids")


class CategoriesConfig(_Section):
    """Which function computes each category of a new window."""

    source_category: str = "none"
    stage_category: str = "none"
    target_category: str = "none"

    @field_validator("*")
    @classmethod
    def _function(cls, value: str) -> str:
        return _check_function(value, "categories")


# One claim takes at most this many windows: each is held (and heartbeated) until done.
MAX_CLAIM_BATCH = 1000


class ConcurrencyConfig(_Section):
    lease: _duration(MAX_LEASE, positive=True) = Duration("10m")  # type: ignore[valid-type]
    max_in_flight: int = Field(default=0, ge=0)
    max_retries: int = Field(default=3, ge=0, le=MAX_RETRIES)
    retry_backoff: _duration(MAX_RETRY_BACKOFF) = Duration("1m")  # type: ignore[valid-type]
    claim_order: Literal["oldest_first", "newest_first"] = "oldest_first"
    lock_timeout: _duration(MAX_LOCK_TIMEOUT) = Duration("60s")  # type: ignore[valid-type]
    # The most windows one claim takes, each with its own row, lease, token and heartbeat.
    claim_batch: int = Field(default=1, ge=1, le=MAX_CLAIM_BATCH)


class MirrorConfig(_Section):
    """[mirror]: where `pipestate mirror` keeps its copy of the state table (Snowflake)."""

    url: str = ""  # snowflake://user:password@account/database/schema?warehouse=...&role=...
    schema_: str = Field(default="", alias="schema")  # default: the URL's schema, else PUBLIC
    table: str = ""  # default: the state table's name; the events table follows it
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        # The message never repeats the value: it may hold a password.
        if value and not value.startswith("snowflake://"):
            raise ValueError("must be a snowflake:// URL (snowflake://user:password@account/database/schema)")
        return value

    @field_validator("table")
    @classmethod
    def _table(cls, value: str) -> str:
        return value if value == "" else _identifier(value, MAX_TABLE_NAME)

    @field_validator("schema_")
    @classmethod
    def _schema(cls, value: str) -> str:
        return value if value == "" else _identifier(value, MAX_SCHEMA_NAME)


class RunConfig(_Section):
    """How `run` groups the windows of one claim into loads: a run is loaded into the target in
    one transaction; windows are added to it until it holds `max_run_records` staged records
    (a window bigger than that is a run of its own)."""

    max_run_records: int = Field(default=1_000_000, ge=1)


def _check_function(value: str, section: str) -> str:
    from .ids import BUILTINS, IMPORT_PATH

    if value in BUILTINS[section] or IMPORT_PATH.fullmatch(value):
        return value
    names = ", ".join(sorted(BUILTINS[section]))
    raise ValueError(f"must be one of {names} or 'module:function', got {value!r}")


class Config(_Section):
    """The whole validated configuration. Build it with `load_config` or directly."""

    pipeline: PipelineConfig
    state: StateConfig = StateConfig()
    ids: IdsConfig = IdsConfig()
    categories: CategoriesConfig = CategoriesConfig()
    concurrency: ConcurrencyConfig = ConcurrencyConfig()
    mirror: MirrorConfig = MirrorConfig()
    run: RunConfig = RunConfig()
    source: dict[str, Any] = Field(default_factory=dict)
    stage: dict[str, Any] = Field(default_factory=dict)
    target: dict[str, Any] = Field(default_factory=dict)
    _origin: str = PrivateAttr(default="<memory>")
    _base: Path | None = PrivateAttr(default=None)

    @property
    def origin(self) -> str:
        """Where the config came from (file, env), for error messages."""
        return self._origin

    @property
    def base_dir(self) -> Path | None:
        """The folder relative paths are taken against: the config file's, the current one
        for environment-only configuration, None for a Config built in memory."""
        return self._base

    def config_hash(self) -> str:
        """A short hash of what decides the windows: stored on every new row."""
        decisive = {
            "pipeline": self.pipeline.model_dump(),
            "ids": self.ids.model_dump(),
            "categories": self.categories.model_dump(),
        }
        text = json.dumps(decisive, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def step_label(self) -> str:
        return format_step(self.pipeline.step)

    @classmethod
    def from_dict(cls, data: dict[str, Any], origin: str = "<memory>") -> Config:
        """Validate a merged mapping; ConfigError naming the first offending key."""
        source, target = data.get("source"), data.get("target")
        field = source.get("time_field") if isinstance(source, dict) else None
        if isinstance(target, dict) and target and "time_field" not in target and isinstance(field, str):
            # The records' time field is the source's: the target reads the same one,
            # instead of adding an always-NULL `timestamp` column beside it.
            data = {**data, "target": {**target, "time_field": field}}
        try:
            config = cls.model_validate(data)
        except ValidationError as err:
            raise ConfigError(_describe(err, origin)) from err
        from .connectors.registry import check_options

        for kind in ("source", "stage", "target"):
            section = getattr(config, kind)
            if section:
                try:
                    check_options(kind, section)  # type: ignore[arg-type]
                except ConfigError as err:
                    raise ConfigError(f"{origin}: {err}") from err
        config._origin = origin
        return config


def _local_instant(text: str, tz: ZoneInfo, key: str) -> datetime:
    """A config `start`/`end`: a local date (its first instant), a local datetime,
    or a datetime with an explicit offset. A wall time a DST change skips is refused."""
    text = text.strip()
    try:
        if len(text) == 10:
            day = date.fromisoformat(text)
            _check_day(day, key, text)
            return day_bounds(day, tz)[0]
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError as err:
        if str(err).startswith(key):
            raise
        raise ValueError(f"{key} must be YYYY-MM-DD or YYYY-MM-DDTHH:MM[:SS], got {text!r}") from err
    _check_day(value.date(), key, text)
    if value.tzinfo is not None:
        return value.astimezone(UTC)
    if value.time() == time() and day_bounds(value.date(), tz)[0] != value.replace(tzinfo=tz).astimezone(UTC):
        return day_bounds(value.date(), tz)[0]
    instant = value.replace(tzinfo=tz).astimezone(UTC)
    if instant.astimezone(tz).replace(tzinfo=None) != value:
        raise ValueError(f"{key} {text} does not exist in {tz.key} (skipped by a DST change)")
    return instant


def _check_day(day: date, key: str, text: str) -> None:
    if not FIRST_DAY <= day <= LAST_DAY:
        raise ValueError(f"{key} must be between {FIRST_DAY} and {LAST_DAY}, got {text!r}")


def _describe(err: ValidationError, origin: str) -> str:
    first = err.errors()[0]
    location = [str(part) for part in first["loc"]]
    message = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key"
    elif first["type"] == "missing":
        message = "required key is missing"
    if len(location) >= 2:
        key = f"[{location[0]}] {'.'.join(location[1:])}"
    elif location:
        key = f"[{location[0]}]" if first["type"] != "extra_forbidden" else f"[{location[0]}]"
    else:
        key = "(top level)"
    if location and location[0] not in Config.model_fields and first["type"] == "extra_forbidden":
        key = f"[{location[0]}]"
        message = "unknown section"
    return f"{origin}: {key}: {message}"


def _env_overrides(environ: dict[str, str]) -> tuple[dict[str, dict[str, Any]], list[str]]:
    overrides: dict[str, dict[str, Any]] = {}
    names = []
    for name, value in environ.items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        section, _, key = name[len(ENV_PREFIX) :].partition("__")
        if not section or not key:
            raise ConfigError(f"env {name}: expected PIPESTATE_<SECTION>__<KEY>")
        overrides.setdefault(section.lower(), {})[key.lower()] = value
        names.append(name)
    return overrides, names


# The keys that may hold a local path (a plain path, or a sqlite:/// or duckdb:/// URL).
_PATH_KEYS = {
    "state": ("url",),
    "source": ("path", "url"),
    "stage": ("url", "path"),
    "target": ("url", "path"),
}


def _anchor_section_paths(data: dict[str, Any], base: Path) -> None:
    """Make the relative paths of `data` (config sections) absolute against `base`, in place."""
    for section, keys in _PATH_KEYS.items():
        values = data.get(section)
        if not isinstance(values, dict):
            continue
        for key in keys:
            if isinstance(values.get(key), str):
                values[key] = anchor_path(values[key], base)


def load_config(path: str | os.PathLike[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    """Read the TOML file (`path`, else $PIPESTATE_CONFIG, else ./pipestate.toml),
    apply PIPESTATE_<SECTION>__<KEY> overrides and validate the result.

    Relative paths in the file (state URL, source path, stage and target URLs)
    are relative to the file's folder; those from the environment, to the
    current folder. The Config holds them absolute, so every message names the
    path that is really used.
    """
    environ = dict(os.environ if environ is None else environ)
    chosen = Path(path or environ.get("PIPESTATE_CONFIG") or DEFAULT_CONFIG_PATH)
    overrides, names = _env_overrides(environ)
    _anchor_section_paths(overrides, Path.cwd())
    data: dict[str, Any] = {}
    base = Path.cwd()
    if chosen.exists():
        if not chosen.is_file():
            # A FIFO would block the read forever; a folder cannot be read.
            raise ConfigError(f"{chosen}: not a regular file")
        try:
            data = tomllib.loads(chosen.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{chosen}: not valid TOML: {err}") from err
        except UnicodeDecodeError as err:
            raise ConfigError(f"{chosen}: not UTF-8 text (byte {err.start}): TOML files are UTF-8") from err
        except OSError as err:
            raise ConfigError(f"{chosen}: cannot read: {err.strerror}") from err
        base = chosen.absolute().parent
        _anchor_section_paths(data, base)
    elif not overrides:
        raise ConfigError(f"{chosen}: config file not found (run 'pipestate init' to write one)")
    for section, values in overrides.items():
        current = data.get(section, {})
        if not isinstance(current, dict):
            raise ConfigError(f"{chosen}: [{section}] must be a table")
        data[section] = {**current, **values}
    # The default state file sits next to the config file too.
    state = data.setdefault("state", {})
    if isinstance(state, dict) and "url" not in state:
        state["url"] = anchor_path(StateConfig.model_fields["url"].default, base)
    origin = str(chosen) if chosen.exists() else "environment"
    if names and chosen.exists():
        origin = f"{chosen} (+ env {', '.join(sorted(names))})"
    config = Config.from_dict(data, origin=origin)
    config._base = base
    return config

"""The connector registry: `[source]`, `[stage]` and `[target]` `type` resolved to a class (a built-in
name, `"module:Class"` or an entry point in group `pipestate.connectors`), their options validated."""

from __future__ import annotations

import importlib
import re
from collections.abc import Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar, Literal, Self, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator, model_validator

from ..errors import ConfigError
from ..ids import import_path
from ..paths import anchor_path
from ..windows import zone
from .protocols import Source, Stage, Target

__all__ = [
    "ENTRY_POINT_GROUP",
    "Kind",
    "Options",
    "RESERVED_COLUMNS",
    "RecordTableOptions",
    "validate_options",
    "require",
    "BUILTINS",
    "build_source",
    "build_stage",
    "build_target",
    "check_options",
]

ENTRY_POINT_GROUP = "pipestate.connectors"
Kind = Literal["source", "stage", "target"]


M = TypeVar("M", bound=BaseModel)


class Options(BaseModel):
    """Base of each connector's settings: unknown keys are an error."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# Columns every record table has besides the record's time: not for time_column.
RESERVED_COLUMNS = frozenset({"pipestate_batch_id", "pipestate_loaded_at", "record"})


class RecordTableOptions(Options):
    """What the targets that load records into a table share: the table, the
    record's time field and the column it goes to, the zone of naive times.
    `identifier` is what the target's database accepts as a plain name."""

    identifier: ClassVar[re.Pattern[str]] = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    table: str = "pipestate_records"
    time_field: str = "timestamp"  # the record's key holding its time
    time_column: str | None = None  # default: time_field when it is a plain identifier
    naive_timezone: str = "UTC"

    @classmethod
    def plain_identifier(cls, value: str | None) -> str | None:
        if value is not None and not cls.identifier.fullmatch(value):
            raise ValueError(f"must be a plain SQL identifier, got {value!r}")
        return value

    @field_validator("table", "time_column")
    @classmethod
    def _identifier(cls, value: str | None) -> str | None:
        return cls.plain_identifier(value)

    @field_validator("naive_timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        zone(value)
        return value

    @model_validator(mode="after")
    def _time_column(self) -> Self:
        if self.time_column is None:
            plain = self.identifier.fullmatch(self.time_field) and self.time_field not in RESERVED_COLUMNS
            object.__setattr__(self, "time_column", self.time_field if plain else "event_time")
        if self.time_column in RESERVED_COLUMNS:
            raise ValueError(f"time_column: {self.time_column!r} is a column pipestate fills")
        return self


def _message(error: Mapping[str, Any]) -> str:
    kind, ctx = error["type"], error.get("ctx") or {}
    if kind == "extra_forbidden":
        return "unknown key"
    if kind == "missing":
        return "required key is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<"}
    bounds["less_than_equal"] = "<="
    if kind in bounds:
        limit = next(iter(ctx.values()), "?")
        return f"must be {bounds[kind]} {limit}"
    if kind == "literal_error":
        return f"must be {ctx.get('expected')}, got {error.get('input')!r}"
    return str(error["msg"]).removeprefix("Value error, ")


def validate_options(model: type[M], section: str, values: Mapping[str, Any]) -> M:
    """`values` validated by `model`; ConfigError `[section] key: problem` on the first problem."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as err:
        first = err.errors()[0]
        key, message = ".".join(str(part) for part in first["loc"]), _message(first)
        if not key:  # a check across keys says which key it blames: "url: must ..."
            key, _, message = message.partition(": ") if ": " in message else ("", "", message)
        raise ConfigError(f"[{section}] {key + ': ' if key else ''}{message}") from err


def require(module: str, extra: str, section: str) -> ModuleType:
    """Import an optional client library, or say which extra installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(
            f'[{section}] type needs the {module.split(".")[0]} package: pip install "pipestate[{extra}]"'
        ) from err


# Built-ins are named by import path so that no optional client is imported before it is used.
BUILTINS: dict[str, dict[str, str]] = {
    "source": {
        "files": "pipestate.connectors.files:FilesSource",
        "elasticsearch": "pipestate.connectors.elastic:ElasticsearchSource",
        "opensearch": "pipestate.connectors.opensearch:OpenSearchSource",
    },
    "stage": {
        "fsspec": "pipestate.connectors.fsspec_stage:FsspecStage",
        "local": "pipestate.connectors.fsspec_stage:FsspecStage",
        "s3": "pipestate.connectors.fsspec_stage:FsspecStage",
    },
    "target": {
        "sql": "pipestate.connectors.sql:SqlTarget",
        "snowflake": "pipestate.connectors.snowflake_target:SnowflakeTarget",
    },
}

_DEFAULT_TYPE: dict[str, str] = {"stage": "local", "target": "sql"}


def _resolve(kind: Kind, name: str) -> type:
    if name in BUILTINS[kind]:
        return import_path(BUILTINS[kind][name], f"[{kind}] type")  # type: ignore[return-value]
    if ":" in name:
        found = import_path(name, f"[{kind}] type")
        if not isinstance(found, type):
            raise ConfigError(f"[{kind}] type: {name!r} is not a class")
        return found
    for point in entry_points(group=ENTRY_POINT_GROUP, name=name):
        try:
            return point.load()  # type: ignore[no-any-return]
        except Exception as err:  # a broken plugin must not look like a typo
            raise ConfigError(f"[{kind}] type: entry point {name!r} failed to load: {err}") from err
    known = ", ".join(sorted(BUILTINS[kind]))
    raise ConfigError(
        f"[{kind}] type: unknown {kind} type {name!r} (built-ins: {known}; "
        f"or 'module:Class', or an entry point in group {ENTRY_POINT_GROUP!r})"
    )


def _build(kind: Kind, cfg: Mapping[str, Any], base: Path | None) -> Any:
    values = dict(cfg)
    name = values.pop("type", None) or _DEFAULT_TYPE.get(kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"[{kind}] type: required key is missing")
    cls = _resolve(kind, name)
    model = getattr(cls, "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        if base is not None:
            # A default path (`./pipestate-stage`) belongs next to the config file, like the
            # paths written in it; otherwise a cron job from another folder stages elsewhere.
            for key in ("url", "path"):
                field = model.model_fields.get(key)
                if key not in values and field is not None and isinstance(field.default, str):
                    values[key] = anchor_path(field.default, base)
        # Built-ins that serve several type names learn which one was used.
        if "type" in model.model_fields:
            values["type"] = name
        instance = cls(validate_options(model, kind, values))
    else:
        try:
            instance = cls(**values)
        except TypeError as err:
            raise ConfigError(f"[{kind}] {err}") from err
    protocol = {"source": Source, "stage": Stage, "target": Target}[kind]
    if not isinstance(instance, protocol):
        raise ConfigError(f"[{kind}] type: {name!r} does not implement the {kind} protocol")
    return instance


def build_source(cfg: Mapping[str, Any], base: Path | None = None) -> Source:
    """The source that `[source]` describes; ConfigError naming the offending key.
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("source", cfg, base)  # type: ignore[no-any-return]


def build_stage(cfg: Mapping[str, Any], base: Path | None = None) -> Stage:
    """The stage that `[stage]` describes (default: a local directory).
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("stage", cfg, base)  # type: ignore[no-any-return]


def build_target(cfg: Mapping[str, Any], base: Path | None = None) -> Target:
    """The target that `[target]` describes (default: SQL on DuckDB).
    Relative default paths are taken against `base` (the config file's folder) when given."""
    return _build("target", cfg, base)  # type: ignore[no-any-return]


def check_options(kind: Kind, cfg: Mapping[str, Any]) -> None:
    """Validate a `[source]`/`[stage]`/`[target]` section without connecting to anything.

    Called when the config is loaded, so a typo is exit 2 before any work starts.
    Connectors without an `Options` model are checked when they are built.
    """
    values = dict(cfg)
    name = values.pop("type", None) or _DEFAULT_TYPE.get(kind)
    if not isinstance(name, str) or not name:
        raise ConfigError(f"[{kind}] type: required key is missing")
    model = getattr(_resolve(kind, name), "Options", None)
    if isinstance(model, type) and issubclass(model, BaseModel):
        if "type" in model.model_fields:
            values["type"] = name
        validate_options(model, kind, values)

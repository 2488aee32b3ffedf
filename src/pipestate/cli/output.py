"""How the command line talks to people and to machines: log lines on stderr (text, or one
JSON object per line), progress only on a terminal, and the result on stdout (`--json`: one
line, `--pretty` for people). The only place that sets up logging."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

__all__ = [
    "LEVELS",
    "JsonLines",
    "Settings",
    "configure",
    "dump_json",
    "log",
    "progress_wanted",
    "say_error",
]

LEVELS = ("debug", "info", "warning", "error")
# What a record may carry beyond its message (given as `extra=` by the code that logs it).
CONTEXT_FIELDS = ("pipeline", "batch_id", "worker", "step")

log = logging.getLogger("pipestate")


class Settings(dict[str, Any]):
    """The shared options as given: quiet, log_level, log_format, pretty, progress, now."""

    @property
    def level(self) -> int:
        name = self.get("log_level") or ("error" if self.get("quiet") else "warning")
        return int(getattr(logging, name.upper()))

    @property
    def json_logs(self) -> bool:
        return self.get("log_format") == "json"


class JsonLines(logging.Formatter):
    """One JSON object per record: `ts` (UTC, ISO 8601), `level`, `message`, and `pipeline`,
    `batch_id`, `worker`, `step` where the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        data: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "message": record.getMessage(),
        }
        for name in CONTEXT_FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                data[name] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False, separators=(",", ":"))


class _Text(logging.Formatter):
    """`pipestate: warning: message`, as the command's own error lines read."""

    def format(self, record: logging.LogRecord) -> str:
        text = f"pipestate: {record.levelname.lower()}: {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


class _Context(logging.Filter):
    """Adds the pipeline's name to records that do not name one."""

    def __init__(self, pipeline: str) -> None:
        super().__init__()
        self.pipeline = pipeline

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "pipeline", None) is None:
            record.pipeline = self.pipeline
        return True


class _CurrentStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """A handler on whatever `sys.stderr` is when a record is written: a command run
    in-process (by a test, a notebook) must not keep writing to a stream it outlived."""

    @property  # type: ignore[override]
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def configure(level: int, json_logs: bool, pipeline: str | None = None, stream: TextIO | None = None) -> None:
    """Send the `pipestate` loggers' records at `level` and above to stderr, as text or JSON
    Lines. Also called in each worker process `run` starts (with the parent's settings)."""
    handler = logging.StreamHandler(stream) if stream is not None else _CurrentStderr()
    handler.setFormatter(JsonLines() if json_logs else _Text())
    if pipeline is not None:
        handler.addFilter(_Context(pipeline))
    log.handlers[:] = [handler]
    log.setLevel(level)
    log.propagate = False


def say_error(settings: Mapping[str, Any], message: str) -> None:
    """The command's one line about what failed, on stderr: text, or a JSON log line."""
    if isinstance(settings, Settings) and settings.json_logs:
        log.error(message.removeprefix("error: "))
    else:
        print(f"pipestate: {message}", file=sys.stderr, flush=True)


def dump_json(data: Any, pretty: bool) -> str:
    """`data` as one line of JSON (the contract's `--json`), or indented with `pretty`."""
    if pretty:
        return json.dumps(data, indent=2, default=str)
    return json.dumps(data, separators=(",", ":"), default=str)


def progress_wanted(settings: Mapping[str, Any], stream: TextIO | None = None) -> bool:
    """Progress on stderr: as `--progress`/`--no-progress` say; else only on a terminal,
    and never with `--quiet`."""
    forced = settings.get("progress")
    if forced is not None:
        return bool(forced)
    if settings.get("quiet"):
        return False
    return (stream or sys.stderr).isatty()

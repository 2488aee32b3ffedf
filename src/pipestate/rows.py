"""The state-table rows of new windows, built fast enough for a million at a time.

Everything that is the same for every row of a populate run is computed once;
ids and local times come from per-instant caches, since each new window starts
where the previous one ended; columns that would be NULL are left out so the
INSERT carries only what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from . import plugins
from .config import Config
from .errors import ConfigError
from .planning import NewWindow
from .store.schema import SCHEMA_VERSION
from .windows import format_step

__all__ = ["RowBuilder"]

_ID_PREFIX = {"source_id": "src", "stage_id": "stg", "target_id": "tgt"}


class RowBuilder:
    """Turns planned windows into state-table rows for one populate run."""

    def __init__(
        self,
        config: Config,
        id_functions: Mapping[str, Callable[[plugins.WindowInfo], Any]],
        category_functions: Mapping[str, Callable[[plugins.WindowInfo], Any]],
        actor: str,
        run_id: str,
        now: datetime,
    ) -> None:
        pipeline = config.pipeline
        self.pipeline = pipeline.name
        self.timezone = pipeline.timezone
        self.tz = pipeline.tz
        self.ids = id_functions
        self.categories = category_functions
        # Built-in defaults are computed inline; anything else gets a WindowInfo.
        self.default_ids = all(name == "deterministic" for name in config.ids.model_dump().values())
        self.no_categories = all(name == "none" for name in config.categories.model_dump().values())
        constant: dict[str, Any] = {
            "pipeline_name": pipeline.name,
            "source_type": config.source.get("type"),
            "stage_type": config.stage.get("type"),
            "target_type": config.target.get("type"),
            "window_timezone": pipeline.timezone,
            "pipeline_status": "PENDING",
            "retry_count": 0,
            "attempt_count": 0,
            "requeue_count": 0,
            "populate_run_id": run_id,
            "created_at": now,
            "updated_at": now,
            "created_by": actor,
            "updated_by": actor,
            "config_hash": config.config_hash(),
            "schema_version": SCHEMA_VERSION,
        }
        self.constant = {key: value for key, value in constant.items() if value is not None}
        self._stamps: dict[datetime, str] = {}
        self._locals: dict[datetime, str] = {}
        self._steps: dict[Any, str] = {}

    def _stamp(self, instant: datetime) -> str:
        stamp = self._stamps.get(instant)
        if stamp is None:
            if len(self._stamps) > 4:
                self._stamps.clear()
            stamp = self._stamps[instant] = instant.strftime("%Y%m%dT%H%M%SZ")
        return stamp

    def _local(self, instant: datetime) -> str:
        text = self._locals.get(instant)
        if text is None:
            if len(self._locals) > 4:
                self._locals.clear()
            text = self._locals[instant] = instant.astimezone(self.tz).isoformat()
        return text

    def _step(self, step: Any) -> str:
        label = self._steps.get(step)
        if label is None:
            label = self._steps[step] = format_step(step)
        return label

    def row(self, window: NewWindow) -> dict[str, Any]:
        """The row of one new window (keys: only the columns that are not NULL)."""
        start, end = window.start, window.end
        minutes = int((end - start).total_seconds() // 60)
        granularity = self._step(window.step)
        row = dict(self.constant)
        if self.default_ids:
            batch_id = f"{self.pipeline}-{self._stamp(start)}-{self._stamp(end)}"
            row["batch_id"] = batch_id
            for key, prefix in _ID_PREFIX.items():
                row[key] = f"{prefix}-{batch_id}"
        if not (self.default_ids and self.no_categories):
            info = plugins.WindowInfo(
                pipeline=self.pipeline,
                start=start,
                end=end,
                local_date=window.local_date,
                timezone=self.timezone,
                sequence_in_day=window.sequence_in_day,
                duration_minutes=minutes,
                granularity=granularity,
                record_origin=window.origin,
            )
            if not self.default_ids:
                for key, function in self.ids.items():
                    value = _text(function(info), f"[ids] {key}")
                    if value is not None:
                        row[key] = value
                if not row.get("batch_id"):
                    raise ConfigError("[ids] batch_id: the function returned an empty id")
            for key, function in self.categories.items():
                value = _text(function(info), f"[categories] {key}")
                if value is not None:
                    row[key] = value
        row["source_query_window_start_time"] = start
        row["source_query_window_end_time"] = end
        row["source_query_window_duration_minutes"] = minutes
        row["window_local_date"] = window.local_date
        row["window_local_start"] = self._local(start)
        row["window_local_end"] = self._local(end)
        row["window_sequence_in_day"] = window.sequence_in_day
        row["window_granularity"] = granularity
        row["record_origin"] = window.origin
        return row


def _text(value: Any, key: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigError(f"{key}: the function returned {type(value).__name__}, not a string")
    return value

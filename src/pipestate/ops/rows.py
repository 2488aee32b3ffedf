"""The state-table rows of new windows, built fast enough for a million at a time.

Everything that is the same for every row of a populate run is computed once;
ids and local times come from per-instant caches, since each new window starts
where the previous one ended; columns that would be NULL are left out so the
INSERT carries only what it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, date, datetime, timedelta
from typing import Any

from ..config import Config
from ..ids import WindowInfo, stamp_from_iso
from ..ids import call as call_function
from ..plans import Cell, Fill, fill_cells
from ..statuses import Status
from ..store.schema import (
    DURATION_MINUTES,
    END_TIME,
    SCHEMA_VERSION,
    START_TIME,
)
from ..windows import DayStep, format_step

__all__ = ["RowBuilder"]

_ID_PREFIX = {"source_id": "src", "stage_id": "stg", "target_id": "tgt"}


_WINDOW_COLUMNS = (
    START_TIME,
    END_TIME,
    DURATION_MINUTES,
    "window_local_date",
    "window_local_start",
    "window_local_end",
    "window_sequence_in_day",
    "window_granularity",
    "record_origin",
)
_ONE_MINUTE = timedelta(minutes=1)


class RowBuilder:
    """Turns planned windows into state-table rows for one populate run.

    A row is `constant` (the same for every row of the run) plus a tuple of
    values for `columns`, in that order. With `instant_text` set, the start
    and end are text, `YYYY-MM-DD HH:MM:SS.ffffff` in UTC followed by
    `instant_text` ("" for SQLite: what SQLAlchemy's `DateTime` binds there;
    "+00:00" for PostgreSQL's COPY), and the local date ISO text, so the rows
    go to the driver as they are; otherwise they are datetimes and dates.
    """

    def __init__(
        self,
        config: Config,
        id_functions: Mapping[str, Callable[[WindowInfo], Any]],
        category_functions: Mapping[str, Callable[[WindowInfo], Any]],
        actor: str,
        run_id: str,
        now: datetime,
        instant_text: str | None = None,
    ) -> None:
        pipeline = config.pipeline
        self.pipeline = pipeline.name
        self.timezone = pipeline.timezone
        self.tz = pipeline.tz
        self.utc = pipeline.timezone in ("UTC", "Etc/UTC")
        self.ids = id_functions
        self.categories = category_functions
        self.instant_text = instant_text
        # Built-in defaults are computed inline; anything else gets a WindowInfo.
        self.default_ids = all(name == "deterministic" for name in config.ids.model_dump().values())
        self.no_categories = all(name == "none" for name in config.categories.model_dump().values())
        constant: dict[str, Any] = {
            "pipeline_name": pipeline.name,
            "source_type": config.source.get("type"),
            "stage_type": config.stage.get("type"),
            "target_type": config.target.get("type"),
            "window_timezone": pipeline.timezone,
            "pipeline_status": Status.PENDING.value,
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
        # Default source/stage/target ids are `<prefix>-<batch_id>`: `derived`
        # tells the store to compute them from the batch_id it writes.
        self.derived: dict[str, str] = (
            {key: f"{prefix}-" for key, prefix in _ID_PREFIX.items()} if self.default_ids else {}
        )
        other_ids = () if self.default_ids else tuple(k for k in self.ids if k != "batch_id")
        id_columns = ("batch_id", *other_ids)
        category_columns = () if self.no_categories else tuple(self.categories)
        self.columns: tuple[str, ...] = (*id_columns, *category_columns, *_WINDOW_COLUMNS)
        self._other_ids = other_ids
        self._last: tuple[datetime, Any, str, str] | None = None  # the previous end: value, stamp, local
        self._steps: dict[Any, str] = {}
        self._days: dict[date, Any] = {}
        self._date_texts: dict[int, tuple[str, str]] = {}
        self._time_texts: dict[int, tuple[str, str]] = {}
        self._last_texts: tuple[int, str, str, str] | None = None

    def _instant(self, instant: datetime) -> tuple[Any, str, str]:
        """(stored value, id stamp, local ISO text) of one instant; the previous
        window's end is reused, since new windows mostly start where one ended."""
        last = self._last
        if last is not None and last[0] == instant:
            return last[1], last[2], last[3]
        if not instant.microsecond:  # whole seconds: the integer path's texts
            stored, stamp, local = self._texts(_epoch_seconds(instant))
        else:
            text = instant.isoformat(" ", "microseconds")  # "YYYY-MM-DD HH:MM:SS.ffffff+00:00"
            stored, stamp = text[:26] + (self.instant_text or ""), stamp_from_iso(text)
            if self.utc:
                local = f"{text[:10]}T{text[11:19]}+00:00"
            else:
                local = instant.astimezone(self.tz).isoformat()
        return (instant if self.instant_text is None else stored), stamp, local

    def _step(self, step: Any) -> str:
        label = self._steps.get(step)
        if label is None:
            label = self._steps[step] = format_step(step)
        return label

    def _day(self, day: date) -> Any:
        if self.instant_text is None:
            return day
        text = self._days.get(day)
        if text is None:
            if len(self._days) > 64:
                self._days.clear()
            text = self._days[day] = day.isoformat()
        return text

    def rows(self, fills: Iterable[Fill]) -> Iterator[tuple[Any, ...]]:
        """The rows of every window of `fills`, in order (`values` of each cell)."""
        fast = self.instant_text is not None and self.default_ids and self.no_categories
        for fill in fills:
            if fast and _whole_seconds(fill):
                yield from self._text_rows(fill)
            else:
                for cell in fill_cells((fill,)):
                    yield self.values(cell)

    def _text_rows(self, fill: Fill) -> Iterator[tuple[Any, ...]]:
        """`values` of each cell of `fill`, for default ids, no categories and
        `instant_text`, in integer seconds since the epoch: the same grid as
        `windows.day_cells` (a test holds them equal), without a datetime or a
        strftime per window. The texts of one instant are computed once."""
        day_start, day_end = _epoch_seconds(fill.day_start), _epoch_seconds(fill.day_end)
        start, end = _epoch_seconds(fill.start), _epoch_seconds(fill.end)
        step = fill.step
        local_date = self._day(fill.local_date)
        granularity = self._step(step)
        origin = fill.origin
        prefix = f"{self.pipeline}-"
        texts = self._texts
        if isinstance(step, DayStep) or step >= fill.day_end - fill.day_start:
            cells: Iterable[tuple[int, int, int]] = [(0, start, end)] if start < end else []
        else:
            cells = _second_cells(day_start, day_end, int(step.total_seconds()), start, end)
        last = self._last_texts
        for k, cell_start, cell_end in cells:
            if last is not None and last[0] == cell_start:
                start_text, start_stamp, start_local = last[1], last[2], last[3]
            else:
                start_text, start_stamp, start_local = texts(cell_start)
            end_text, end_stamp, end_local = texts(cell_end)
            last = (cell_end, end_text, end_stamp, end_local)
            batch_id = f"{prefix}{start_stamp}-{end_stamp}"
            yield (
                batch_id,
                start_text,
                end_text,
                max((cell_end - cell_start) // 60, 1),  # as `values`: never 0
                local_date,
                start_local,
                end_local,
                k + 1,
                granularity,
                origin,
            )
        self._last_texts = last

    def _texts(self, seconds: int) -> tuple[str, str, str]:
        """(stored text, id stamp, local ISO text) of an instant in epoch seconds."""
        day, second = divmod(seconds, 86400)
        date_texts = self._date_texts.get(day)
        if date_texts is None:
            if len(self._date_texts) > 64:
                self._date_texts.clear()
            iso = (_EPOCH_DATE + timedelta(days=day)).isoformat()
            date_texts = self._date_texts[day] = (iso, iso.replace("-", ""))
        time_texts = self._time_texts.get(second)
        if time_texts is None:
            hours, rest = divmod(second, 3600)
            clock = f"{hours:02d}:{rest // 60:02d}:{rest % 60:02d}"
            time_texts = self._time_texts[second] = (clock, clock.replace(":", ""))
        stored = f"{date_texts[0]} {time_texts[0]}.000000{self.instant_text or ''}"
        stamp = f"{date_texts[1]}T{time_texts[1]}Z"
        if self.utc:
            local = f"{date_texts[0]}T{time_texts[0]}+00:00"
        else:
            local = (_EPOCH + timedelta(seconds=seconds)).astimezone(self.tz).isoformat()
        return stored, stamp, local

    def values(self, window: Cell) -> tuple[Any, ...]:
        """The row of one new window: the values of `columns`, in that order."""
        local_date, sequence, start, end, step, origin = window
        start_value, start_stamp, start_local = self._instant(start)
        end_value, end_stamp, end_local = self._instant(end)
        self._last = (end, end_value, end_stamp, end_local)
        # Whole minutes; a window shorter than one (cut by a start with seconds, or a zone whose
        # day starts at an odd second) says 1: a 0 would read as an empty window.
        minutes = max((end - start) // _ONE_MINUTE, 1)
        granularity = self._step(step)
        window_values = (
            start_value,
            end_value,
            minutes,
            self._day(local_date),
            start_local,
            end_local,
            sequence,
            granularity,
            origin,
        )
        if self.default_ids and self.no_categories:
            return (f"{self.pipeline}-{start_stamp}-{end_stamp}", *window_values)
        info = WindowInfo(
            pipeline=self.pipeline,
            start=start,
            end=end,
            local_date=local_date,
            timezone=self.timezone,
            sequence_in_day=sequence,
            duration_minutes=minutes,
            granularity=granularity,
            record_origin=origin,
        )
        if self.default_ids:
            ids: tuple[Any, ...] = (f"{self.pipeline}-{start_stamp}-{end_stamp}",)
        else:
            custom_id = call_function(self.ids["batch_id"], info, "[ids] batch_id", required=True)
            others = (call_function(self.ids[key], info, f"[ids] {key}") for key in self._other_ids)
            ids = (custom_id, *others)
        categories: tuple[Any, ...] = ()
        if not self.no_categories:
            categories = tuple(
                call_function(function, info, f"[categories] {key}")
                for key, function in self.categories.items()
            )
        return (*ids, *categories, *window_values)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_DATE = date(1970, 1, 1)
_ONE_SECOND = timedelta(seconds=1)


def _epoch_seconds(instant: datetime) -> int:
    return (instant - _EPOCH) // _ONE_SECOND


def _whole_seconds(fill: Fill) -> bool:
    """Whether every instant of the fill's grid is a whole second (the integer path)."""
    instants = (fill.day_start, fill.day_end, fill.start, fill.end)
    if any(instant.microsecond for instant in instants):
        return False
    return isinstance(fill.step, DayStep) or not fill.step % _ONE_SECOND


def _second_cells(
    day_start: int, day_end: int, step: int, start: int, end: int
) -> Iterator[tuple[int, int, int]]:
    """`windows.day_cells` for a step shorter than the day, in epoch seconds."""
    k = (start - day_start) // step
    cell_start = day_start + k * step
    while cell_start < end:
        cell_end = cell_start + step
        if cell_end > day_end:
            cell_end = day_end
        piece_start = cell_start if cell_start > start else start
        piece_end = cell_end if cell_end < end else end
        if piece_start < piece_end:
            yield k, piece_start, piece_end
        k += 1
        cell_start = cell_end

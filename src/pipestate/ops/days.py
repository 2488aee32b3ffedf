"""One local day of a pipeline, as orchestrators see it: which windows it has and where they stand.

A day is complete when the pipeline's active windows cover all of it (within
the configured range) and every one of them is COMPLETED. Airflow's day Asset
and Dagster's daily partitions both ask this.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from ..errors import UsageError
from ..statuses import Status
from ..store.views import day_windows
from ..windows import day_bounds, iso, read_instant

if TYPE_CHECKING:
    from .context import Context

__all__ = ["DayState", "day_span", "day_state", "parse_day"]


def parse_day(value: str | date) -> date:
    """A local day from `YYYY-MM-DD` (or a date); UsageError naming the value otherwise."""
    if isinstance(value, datetime):
        raise UsageError(f"day: expected a date (YYYY-MM-DD), got the datetime {value.isoformat()}")
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value).strip())
    except ValueError as err:
        raise UsageError(f"day: expected YYYY-MM-DD, got {value!r}") from err


def day_span(ctx: Context, day: date) -> tuple[datetime, datetime]:
    """The UTC instants of local `day` in the pipeline's zone, cut to the configured range."""
    pipeline = ctx.config.pipeline
    low, high = day_bounds(day, pipeline.tz)
    low = max(low, pipeline.start_utc)
    if pipeline.end_utc is not None:
        high = min(high, pipeline.end_utc)
    if high <= low:
        raise UsageError(
            f"day {day.isoformat()} is outside the range of pipeline {pipeline.name} "
            f"(from {pipeline.start}{' to ' + pipeline.end if pipeline.end else ''}, {pipeline.timezone})"
        )
    return low, high


@dataclass
class DayState:
    """The active windows that share an instant with one local day, by status."""

    pipeline: str
    day: date
    start: datetime
    end: datetime
    counts: dict[str, int] = field(default_factory=dict)
    covered_minutes: float = 0.0
    not_completed: list[str] = field(default_factory=list)

    @property
    def windows(self) -> int:
        return sum(self.counts.values())

    @property
    def day_minutes(self) -> float:
        return (self.end - self.start).total_seconds() / 60

    @property
    def complete(self) -> bool:
        """Covered without a gap, and every window COMPLETED."""
        return bool(self.counts) and not self.not_completed and self.covered_minutes >= self.day_minutes

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "day": self.day.isoformat(),
            "start": iso(self.start),
            "end": iso(self.end),
            "windows": self.windows,
            "counts": dict(sorted(self.counts.items())),
            "covered_minutes": round(self.covered_minutes, 3),
            "day_minutes": round(self.day_minutes, 3),
            "complete": self.complete,
            "not_completed": self.not_completed[:50],
        }


def day_state(ctx: Context, day: str | date) -> DayState:
    """Where local `day` stands: counts by status, minutes covered, windows not COMPLETED."""
    the_day = parse_day(day)
    low, high = day_span(ctx, the_day)
    state = DayState(ctx.pipeline, the_day, low, high)
    store = ctx.store
    if not store.exists():
        return state
    cursor = low
    with store.transaction(write=False) as conn:
        for batch_id, raw_start, raw_end, status in day_windows(
            conn, store.tables, store.raw_column, ctx.pipeline, low, high
        ):
            start, end = read_instant(raw_start), read_instant(raw_end)
            if start is None or end is None or end <= start:
                continue
            state.counts[str(status)] = state.counts.get(str(status), 0) + 1
            if status != Status.COMPLETED:
                state.not_completed.append(str(batch_id))
            start, end = max(start, cursor), min(end, high)
            if end > start:
                state.covered_minutes += (end - start).total_seconds() / 60
                cursor = end
    return state

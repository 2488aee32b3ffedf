"""One local day of a pipeline, as orchestrators see it: its windows' state, and running it.

A day is complete when the pipeline's active windows cover all of it (within
the configured range) and every one of them is COMPLETED. Airflow's day Asset
and Dagster's daily partitions both ask this, and both run a day the same way.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy import select

from ..errors import UsageError
from ..report import iso
from ..windows import day_bounds, read_instant

if TYPE_CHECKING:
    from ..manager import PipelineStateManager
    from ..runner import RunResult

__all__ = ["DayRun", "DayState", "day_span", "day_state", "parse_day", "run_day"]


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


def day_span(manager: PipelineStateManager, day: date) -> tuple[datetime, datetime]:
    """The UTC instants of local `day` in the pipeline's zone, cut to the configured range."""
    pipeline = manager.config.pipeline
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


def day_state(manager: PipelineStateManager, day: str | date) -> DayState:
    """Where local `day` stands: counts by status, minutes covered, windows not COMPLETED."""
    the_day = parse_day(day)
    low, high = day_span(manager, the_day)
    state = DayState(manager.pipeline, the_day, low, high)
    store = manager.store
    if not store.exists():
        return state
    c = store.tables.state.c
    raw = store.raw_column
    stmt = (
        select(c.batch_id, raw("source_query_window_start_time"), raw("source_query_window_end_time"))
        .add_columns(c.pipeline_status)
        .where(
            c.pipeline_name == manager.pipeline,
            c.pipeline_status != "SUPERSEDED",
            c.source_query_window_start_time < high,
            c.source_query_window_end_time > low,
        )
        .order_by(c.source_query_window_start_time, c.batch_id)
    )
    cursor = low
    with store.transaction(write=False) as conn:
        for batch_id, raw_start, raw_end, status in conn.execute(stmt):
            start, end = read_instant(raw_start), read_instant(raw_end)
            if start is None or end is None or end <= start:
                continue
            state.counts[str(status)] = state.counts.get(str(status), 0) + 1
            if status != "COMPLETED":
                state.not_completed.append(str(batch_id))
            start, end = max(start, cursor), min(end, high)
            if end > start:
                state.covered_minutes += (end - start).total_seconds() / 60
                cursor = end
    return state


@dataclass
class DayRun:
    """What `run_day` did: the ids it requeued, the run, and the day afterwards."""

    requeued: list[str]
    result: RunResult
    state: DayState

    def to_dict(self) -> dict[str, Any]:
        summary = self.result.summary
        return {
            **self.state.to_dict(),
            "requeued": len(self.requeued),
            "created": self.result.created,
            "superseded": self.result.superseded,
            "completed_batches": summary.completed,
            "failed_batches": sorted(summary.failed_ids),
            "lost_batches": sorted(summary.lost_ids),
            "seconds": round(self.result.seconds, 3),
        }


def run_day(
    manager: PipelineStateManager,
    day: str | date,
    *,
    requeue: bool = True,
    workers: int = 1,
) -> DayRun:
    """Run local `day` through pipestate: populate, then that day's batches only.

    With `requeue`, the day's COMPLETED and FAILED windows are made PENDING
    first (with a fresh retry budget), so running a day again reads its source
    again: what a re-materialization or a cleared task means.
    """
    from ..runner import run_pipeline

    the_day = parse_day(day)
    low, high = day_span(manager, the_day)
    requeued: list[str] = []
    if requeue and manager.store.exists():
        requeued = manager.requeue(start=low, end=high, statuses=("COMPLETED", "FAILED"))
    result = run_pipeline(manager, workers=workers, within=(low, high))
    return DayRun(requeued, result, day_state(manager, the_day))

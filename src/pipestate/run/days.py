"""Running one local day of a pipeline, as orchestrators do: requeue it, run its batches, say
where it stands afterwards (the day's state comes from `ops/days.py`)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import TYPE_CHECKING, Any

from ..ops.days import DayState, parse_day
from ..statuses import Status

if TYPE_CHECKING:
    from ..manager import PipelineStateManager
    from .runner import RunResult

__all__ = ["DayRun", "run_day"]


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
    from .runner import run_pipeline

    the_day = parse_day(day)
    low, high = manager.day_span(the_day)
    requeued: list[str] = []
    if requeue and manager.table_exists():
        requeued = manager.requeue(start=low, end=high, statuses=(Status.COMPLETED, Status.FAILED))
    result = run_pipeline(manager, workers=workers, within=(low, high))
    return DayRun(requeued, result, manager.day_state(the_day))

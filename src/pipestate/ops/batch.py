"""A claimed batch: its window and the claim that fences every later call (see claims.py)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from ..statuses import Step
from ..store.schema import DURATION_MINUTES, END_TIME, START_TIME
from ..windows import iso

__all__ = ["Batch", "STEP_COLUMNS"]

STEP_COLUMNS: dict[str, tuple[str, str, str]] = {
    Step.SOURCE: ("source_extract_status", "source_extract_started_at", "source_extract_completed_at"),
    Step.STAGE: ("stage_write_status", "stage_write_started_at", "stage_write_completed_at"),
    Step.TARGET: ("target_load_status", "target_load_started_at", "target_load_completed_at"),
}


@dataclass(frozen=True)
class Batch:
    """A claimed batch: its window, and the claim that fences every later call."""

    batch_id: str
    pipeline: str
    start: datetime
    end: datetime
    duration_minutes: int
    local_date: date | None
    retry_count: int
    attempt_count: int
    worker_id: str
    claim_token: str
    claimed_at: datetime
    lease_expires_at: datetime
    row: dict[str, Any]

    @classmethod
    def from_row(cls, pipeline: str, row: dict[str, Any]) -> Batch:
        """The batch a claim just stamped, from its row (as the claim left it)."""
        return cls(
            batch_id=row["batch_id"],
            pipeline=pipeline,
            start=row[START_TIME],
            end=row[END_TIME],
            duration_minutes=int(row[DURATION_MINUTES]),
            local_date=row["window_local_date"],
            retry_count=int(row["retry_count"]),
            attempt_count=int(row["attempt_count"]),
            worker_id=row["worker_id"],
            claim_token=row["claim_token"],
            claimed_at=row["claimed_at"],
            lease_expires_at=row["lease_expires_at"],
            row=row,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "pipeline": self.pipeline,
            "start": iso(self.start),
            "end": iso(self.end),
            "duration_minutes": self.duration_minutes,
            "local_date": self.local_date.isoformat() if self.local_date else None,
            "retry_count": self.retry_count,
            "attempt_count": self.attempt_count,
            "worker_id": self.worker_id,
            "claim_token": self.claim_token,
            "claimed_at": iso(self.claimed_at),
            "lease_expires_at": iso(self.lease_expires_at),
            "source_id": self.row.get("source_id"),
            "stage_id": self.row.get("stage_id"),
            "target_id": self.row.get("target_id"),
            "current_step": self.row.get("current_step"),
        }

    def step_done(self, step: str) -> bool:
        """Whether an earlier attempt finished `step` (source, stage or target)."""
        return self.row.get(STEP_COLUMNS[step][0]) == "DONE"

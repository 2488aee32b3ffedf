"""The context every operation on one pipeline's rows is given: passed down, never reached back for."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..config import ConcurrencyConfig, Config
from ..errors import UsageError
from ..plans import Settings
from ..store.store import StateStore

__all__ = ["Context", "aware"]


def aware(value: datetime | None, argument: str) -> datetime | None:
    """`value` in UTC, or None; a naive datetime is refused, naming the `argument`
    (a guess about its zone is how windows end up an hour off)."""
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise UsageError(f"{argument}: must be a datetime, got {type(value).__name__} {value!r:.60}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise UsageError(
            f"{argument}: naive datetime {value.isoformat()}; give it a time zone (e.g. tzinfo=UTC)"
        )
    return value.astimezone(UTC)


@dataclass(frozen=True)
class Context:
    """The store, the validated config (the settings), who acts, and the clock.

    `clock` replaces the database clock (tests, replays); None means the
    database's, by which leases are judged.
    """

    store: StateStore
    config: Config
    actor: str
    clock: Callable[[], datetime] | None = None

    @property
    def pipeline(self) -> str:
        return self.config.pipeline.name

    @property
    def concurrency(self) -> ConcurrencyConfig:
        return self.config.concurrency

    def now(self, conn: Connection) -> datetime:
        """Now, by the injected clock or else the database's."""
        if self.clock is not None:
            return self._clock_now()
        return self.store.now(conn)

    def now_without_table(self) -> datetime:
        """Now, for a read-only look at a pipeline with no table: an embedded
        database whose file does not exist is not created just to ask its clock."""
        if self.clock is not None:
            return self._clock_now()
        if self.store.file_missing():
            return datetime.now(UTC)
        with self.store.engine.connect() as conn:
            return self.store.now(conn)

    def plan_settings(self, now: datetime) -> Settings:
        """What the planner needs of the config, at `now`."""
        pipeline = self.config.pipeline
        return Settings(
            tz=pipeline.tz,
            step=pipeline.step,
            start=pipeline.start_utc,
            end=pipeline.end_utc,
            horizon=now - pipeline.lag,
            now=now,
        )

    def fixed_now(self) -> datetime | None:
        """The injected clock's now, or None when the database's clock decides."""
        return self._clock_now() if self.clock is not None else None

    def _clock_now(self) -> datetime:
        assert self.clock is not None
        now = aware(self.clock(), "clock")
        assert now is not None
        return now

    def event(
        self,
        batch_id: str,
        event_type: str,
        now: datetime,
        old_status: str | None,
        new_status: str | None,
        details: dict[str, Any] | None = None,
        worker_id: str | None = None,
        claim_token: str | None = None,
    ) -> dict[str, Any]:
        """One row of the audit table, by `worker_id` or else the actor."""
        return {
            "batch_id": batch_id,
            "pipeline_name": self.pipeline,
            "event_type": str(event_type),
            "worker_id": worker_id or self.actor,
            "claim_token": claim_token,
            "event_time": now,
            # Status members as plain text: some drivers (Snowflake's) bind only exact str.
            "old_status": None if old_status is None else str(old_status),
            "new_status": None if new_status is None else str(new_status),
            "details": details,
        }

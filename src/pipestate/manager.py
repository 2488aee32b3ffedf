"""PipelineStateManager: the one object a Python caller needs, delegating one way down.

Populate and validate are in populate.py, the workers' calls in claims.py,
requeue and history in operations.py, status in status.py; each takes the
pipeline's Context (store, config, actor, clock), which the manager builds
once. Nothing below imports the manager.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from pathlib import Path
from typing import Any

from sqlalchemy.engine import Connection, Engine

from .config import Config, load_config
from .ops import claims, days, observe, populate, regrid, status
from .ops import operator as operations
from .ops import reconcile as recount
from .ops.batch import Batch
from .ops.context import Context, aware
from .ops.populate import WindowFunctions
from .ops.populate_report import PopulateReport
from .statuses import Status, Step
from .store import migrate
from .store.engine import Waits, interrupt_statements
from .store.store import StateStore

__all__ = ["PipelineStateManager"]


class PipelineStateManager:
    """Everything pipestate does to one pipeline's rows in the state table.

    `config` is a `Config`, a path to a TOML file, or None for the default
    lookup (`$PIPESTATE_CONFIG`, then ./pipestate.toml). `clock` replaces the
    database clock (tests, replays); `engine` reuses an existing SQLAlchemy engine.
    """

    def __init__(
        self,
        config: Config | str | os.PathLike[str] | None = None,
        *,
        engine: Engine | None = None,
        clock: Callable[[], datetime] | None = None,
        actor: str | None = None,
    ) -> None:
        if not isinstance(config, Config):
            config = load_config(Path(config) if config is not None else None)
        self.config = config
        state = config.state
        self.store = StateStore(
            state.url,
            state.table,
            state.schema_ or None,
            lock_timeout=config.concurrency.lock_timeout,
            engine=engine,
            waits=Waits(state.connect_timeout, state.statement_timeout),
            status_map=state.status_map,
        )
        self.actor = actor or f"pipestate@{socket.gethostname()}:{os.getpid()}"
        self.context = Context(self.store, config, self.actor, clock)
        self._functions = WindowFunctions.from_config(config)

    @property
    def pipeline(self) -> str:
        return self.config.pipeline.name

    def now(self, conn: Connection) -> datetime:
        """Now, by the injected clock or else the database's."""
        return self.context.now(conn)

    def close(self) -> None:
        self.store.engine.dispose()

    def __enter__(self) -> PipelineStateManager:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- schema -------------------------------------------------------------------

    def init_db(self, migrate_timestamps: bool = False) -> list[str]:
        """Create the state, events and meta tables if missing (idempotent).

        On PostgreSQL a table whose instants are zone-less `timestamp` columns is
        refused (SchemaError), or with `migrate_timestamps` converted to
        `timestamptz`, its values read as UTC.
        """
        return migrate.init_db(self.store, migrate_timestamps=migrate_timestamps)

    # -- populate (populate.py) ---------------------------------------------------

    def populate_pipeline_batches(self, dry_run: bool = False) -> PopulateReport:
        """Repair and extend the pipeline's windows so they tile [start, end).

        Analyses the active windows, finds gaps and overlaps, supersedes the
        losers of each overlap and fills every uncovered stretch with PENDING
        windows; all in one transaction under the pipeline's lock. With
        `dry_run` the same plan is computed and nothing is written.
        """
        return populate.populate(self.context, self._functions, dry_run)

    def validate(self) -> PopulateReport:
        """Phases 1-3 only: what populate would find; writes nothing."""
        return populate.validate(self.context, self._functions)

    def regrid(
        self,
        granularity: str,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        dry_run: bool = False,
    ) -> regrid.RegridReport:
        """Put the PENDING and FAILED windows of `[start, end)` (UTC; default the whole
        range) on `granularity`'s grid; COMPLETED and IN_PROGRESS windows stay."""
        return regrid.regrid(
            self.context, self._functions, granularity, aware(start, "start"), aware(end, "end"), dry_run
        )

    # -- workers (claims.py; the state table is the lock) -------------------------

    def claim(self, worker: str, within: tuple[datetime, datetime] | None = None) -> Batch | None:
        """Atomically take the next claimable batch, or None; with `within` (UTC
        `[low, high)`), only a window that starts in that range."""
        return claims.claim(self.context, worker, within)

    def claim_batches(
        self, worker: str, count: int | None = None, within: tuple[datetime, datetime] | None = None
    ) -> list[Batch]:
        """Take up to `count` claimable batches (default `[concurrency] claim_batch`) in
        claim order, each with its own lease and fencing token; [] when none is claimable."""
        return claims.claim_many(self.context, worker, count, within)

    def heartbeat(self, batch_id: str, worker: str, token: str | None = None) -> datetime:
        """Extend the caller's lease; LeaseLost if the claim is not current."""
        return claims.heartbeat(self.context, batch_id, worker, token)

    def complete(
        self, batch_id: str, worker: str, token: str | None = None, values: dict[str, Any] | None = None
    ) -> None:
        """Mark the caller's batch COMPLETED; LeaseLost if the claim is not current."""
        claims.complete(self.context, batch_id, worker, token, values)

    def fail(
        self,
        batch_id: str,
        worker: str,
        error: str,
        token: str | None = None,
        step: str | None = None,
        values: dict[str, Any] | None = None,
        *,
        retryable: bool | None = None,
    ) -> dict[str, Any]:
        """Record a failed attempt (retry_count + 1, FAILED, backoff); LeaseLost if not current.

        `retryable=False` fails the batch for good at once, its retries unspent."""
        return claims.fail(self.context, batch_id, worker, error, token, step, values, retryable)

    def release(self, batch_id: str, worker: str, token: str | None = None) -> None:
        """Give the batch back unfinished, with no retry counted."""
        claims.release(self.context, batch_id, worker, token)

    def record_step(
        self,
        batch_id: str,
        worker: str,
        values: dict[str, Any],
        token: str | None = None,
        step: str | None = None,
    ) -> None:
        """Write step columns while holding the claim (fenced)."""
        claims.record_step(self.context, batch_id, worker, values, token, step)

    def record_steps(
        self, worker: str, items: Sequence[tuple[str, str, dict[str, Any]]], step: str | None = None
    ) -> set[str]:
        """`record_step` for several batches `(batch_id, token, values)` in one transaction;
        returns the ids whose claim was not current (those are left unchanged)."""
        return claims.record_steps(self.context, worker, items, step)

    def complete_many(
        self,
        worker: str,
        items: Sequence[tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]],
        claimed_at: dict[str, datetime | None] | None = None,
    ) -> set[str]:
        """Complete several batches `(batch_id, token, values, event details)` in one
        transaction; returns the ids whose claim was not current (those are left unchanged).
        `claimed_at` (each batch's claim time) gives `processing_seconds`."""
        return claims.complete_many(self.context, worker, items, claimed_at)

    # -- operators (operations.py) ------------------------------------------------

    def requeue(
        self,
        batch_ids: list[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        statuses: tuple[str, ...] = (Status.FAILED,),
        force: bool = False,
        from_step: str = Step.SOURCE,
    ) -> list[str]:
        """Make batches PENDING again with a fresh retry budget; returns their ids. The next run
        reads the source again (`from_step="source"`) or reloads the staged files ("target")."""
        return operations.requeue(
            self.context, batch_ids, start=start, end=end, statuses=statuses, force=force, from_step=from_step
        )

    def quarantine(self, batch_ids: list[str], reason: str, *, force: bool = False) -> list[dict[str, Any]]:
        """Take rows out of the active set (SUPERSEDED, with the reason and an audit event)."""
        return operations.quarantine(self.context, batch_ids, reason, force=force)

    def history(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's audit trail, oldest first."""
        return operations.history(self.context, batch_id)

    # -- status (status.py) -------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows of the pipeline by status (cheap: one grouped count)."""
        return status.counts(self.context)

    def statuses(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """The current status of each of these batches of the pipeline that exists."""
        return status.statuses(self.context, batch_ids)

    def status(self) -> dict[str, Any]:
        """Counts by status, coverage of the range, first/last window, oldest pending, failures."""
        return status.status(self.context)

    # -- observing (ops/observe.py, ops/days.py): readers come in by the same door --

    def calendar(self, *, hours: bool = False, steps: bool = False) -> observe.Calendar:
        """Per local day of the range: counts by status, coverage, gaps, overlaps, failures."""
        return observe.calendar(self.context, hours=hours, steps=steps)

    def status_and_calendar(self) -> tuple[dict[str, Any], observe.Calendar]:
        """`status()` and `calendar()` read together, the windows swept once."""
        return observe.status_and_calendar(self.context)

    def reconcile(
        self, start: datetime | None = None, end: datetime | None = None, with_source: bool = False
    ) -> recount.ReconcileReport:
        """Recount the target's rows (and the source's records) of the COMPLETED windows that
        start in [start, end) against the state table; see `pipestate reconcile`."""
        return recount.reconcile(self.context, start, end, with_source)

    def window_range(self, day: str | None, start: str | None, end: str | None) -> tuple[datetime, datetime]:
        """The UTC range of `--date D` or `--start A --end B` (bare dates are local days)."""
        return observe.window_range(self.context, day, start, end)

    def list_windows(
        self, start: datetime, end: datetime, statuses: tuple[str, ...] = (), limit: int = 1000
    ) -> dict[str, Any]:
        """The windows of `[start, end)` with local and UTC times, status, step, retries, worker, error."""
        return observe.list_windows(self.context, start, end, statuses, limit)

    def alert_data(self) -> dict[str, Any]:
        """The figures `pipestate metrics` exposes."""
        return observe.alert_data(self.context)

    def report_data(self) -> observe.ReportData:
        """What the HTML report shows, read in one transaction."""
        return observe.report_data(self.context)

    def day_span(self, day: date) -> tuple[datetime, datetime]:
        """The UTC instants of local `day`, cut to the configured range."""
        return days.day_span(self.context, day)

    def day_state(self, day: str | date) -> days.DayState:
        """Where local `day` stands: counts by status, minutes covered, windows not COMPLETED."""
        return days.day_state(self.context, day)

    def table_exists(self) -> bool:
        """Whether the state table exists (nothing is created to find out)."""
        return self.store.exists()

    def interrupt(self) -> None:
        """Cancel the statements this manager's connections are running (a worker's hard stop)."""
        interrupt_statements(self.store.engine)

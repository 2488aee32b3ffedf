"""PipelineStateManager: load -> plan -> apply for populate, plus validate and status."""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Callable, Iterable, Iterator
from contextlib import nullcontext
from datetime import UTC, datetime
from itertools import chain, islice
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Connection, Engine

from . import batches, operations, plugins
from .batches import Batch
from .config import Config, load_config
from .errors import StoreBusyError
from .planning import InvalidRow, Plan, Settings, UnsortedInput, plan
from .report import CreatedLog, PopulateReport, iso
from .rows import RowBuilder
from .store.dialects import Waits
from .store.store import RowChanged, StateStore
from .windows import day_bounds, day_cells, local_date_of, parse_instant, step_minutes

__all__ = ["PipelineStateManager"]

_CHUNK = 5000
_REPLANS = 5  # times populate plans again when workers change rows under it
_LARGE_WRITE = 50_000  # rows created by one populate after which SQLite's log is emptied


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
            lock_timeout=config.concurrency.lock_timeout_delta,
            engine=engine,
            waits=Waits(state.connect_timeout_delta, state.statement_timeout_delta),
            status_map=state.status_map,
        )
        self._clock = clock
        self.actor = actor or f"pipestate@{socket.gethostname()}:{os.getpid()}"
        self._ids = {key: plugins.resolve("ids", key, name) for key, name in config.ids.model_dump().items()}
        self._categories = {
            key: plugins.resolve("categories", key, name)
            for key, name in config.categories.model_dump().items()
        }
        plugins.probe({"ids": self._ids, "categories": self._categories}, _first_window(config))

    @property
    def pipeline(self) -> str:
        return self.config.pipeline.name

    def now(self, conn: Connection) -> datetime:
        """Now, by the injected clock or else the database's."""
        if self._clock is not None:
            return self._clock()
        return self.store.now(conn)

    def _now_without_table(self) -> datetime:
        """Now, for a read-only look at a pipeline with no table: an embedded
        database whose file does not exist is not created just to ask its clock."""
        if self._clock is not None:
            return self._clock()
        if self.store.file_missing():
            return datetime.now(UTC)
        with self.store.engine.connect() as conn:
            return self.store.now(conn)

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
        return self.store.init_db(migrate_timestamps=migrate_timestamps)

    # -- populate -----------------------------------------------------------------

    def populate_pipeline_batches(self, dry_run: bool = False) -> PopulateReport:
        """Repair and extend the pipeline's windows so they tile [start, end).

        Analyses the active windows, finds gaps and overlaps, supersedes the
        losers of each overlap and fills every uncovered stretch with PENDING
        windows; all in one transaction under the pipeline's lock. With
        `dry_run` the same plan is computed and nothing is written.
        """
        run_id = uuid.uuid4().hex
        if dry_run:
            return self._dry_run(run_id, verb_is_validate=False)
        if not self.store.is_set_up():
            self.store.init_db()
        self.store.ensure_lock_row(self.pipeline)
        for attempt in range(_REPLANS + 1):
            try:
                with self.store.transaction(write=True) as conn:
                    self.store.lock_pipeline(conn, self.pipeline, holder=f"populate {run_id} {self.actor}")
                    now = self.now(conn)
                    the_plan = self._plan(conn, now)
                    report = PopulateReport(
                        self.pipeline, False, run_id, now, the_plan, CreatedLog(self.pipeline)
                    )
                    self._apply(conn, report)
                break
            except RowChanged as changed:
                # A worker claimed (or finished) a row between our scan and our
                # write: nothing was written; plan again from what is there now.
                if attempt == _REPLANS:
                    raise StoreBusyError(
                        f"populate: rows kept changing under workers ({changed}); "
                        f"planned {_REPLANS + 1} times, nothing was written; try again"
                    ) from changed
        if len(report.created) >= _LARGE_WRITE:
            self.store.release_log()
        return report

    def validate(self) -> PopulateReport:
        """Phases 1-3 only: what populate would find; writes nothing."""
        return self._dry_run(uuid.uuid4().hex, verb_is_validate=True)

    def _dry_run(self, run_id: str, verb_is_validate: bool) -> PopulateReport:
        if not self.store.exists():
            now = self._now_without_table()
            the_plan = plan([], self._settings(now))
            report = PopulateReport(self.pipeline, True, run_id, now, the_plan, CreatedLog(self.pipeline))
            report.table_missing = True
            if not verb_is_validate:
                self._name_windows(the_plan, set(), report.created, now, run_id, sink=None)
            return report
        with self.store.transaction(write=False) as conn:
            now = self.now(conn)
            the_plan = self._plan(conn, now)
            report = PopulateReport(self.pipeline, True, run_id, now, the_plan, CreatedLog(self.pipeline))
            report.superseded = self._superseded_entries(the_plan)
            # validate names the new windows too, to report ids another row holds,
            # but lists none of them.
            log = CreatedLog(self.pipeline) if verb_is_validate else report.created
            taken = self.store.inactive_ids(conn, self.pipeline) | {r.batch_id for r in the_plan.invalid}
            self._name_windows(the_plan, taken, log, now, run_id, sink=None, conn=conn, report=report)
        return report

    def _settings(self, now: datetime) -> Settings:
        pipeline = self.config.pipeline
        return Settings(
            tz=pipeline.tz,
            step=pipeline.step,
            start=pipeline.start_utc,
            end=pipeline.end_utc,
            horizon=now - pipeline.lag_delta,
            now=now,
        )

    def _plan(self, conn: Connection, now: datetime) -> Plan:
        settings = self._settings(now)
        self.store.note_columns(conn)  # another tool's table may lack optional columns before init-db
        # A batch_id held by two rows (a table without a primary key) is an
        # invalid row: claims never take it, so neither may the plan count it.
        duplicates = self.store.duplicate_ids(conn, self.pipeline)
        chunks = self.store.candidate_chunks(conn, self.pipeline)
        ranks = None
        if self.store.ranks_read_apart:

            def ranks(batch_ids: list[str]) -> dict[str, tuple]:
                return self.store.rank_values(conn, self.pipeline, batch_ids)

        def unique(rows: Iterable[tuple[Any, ...]]) -> Iterable[tuple[Any, ...]]:
            return (row for row in rows if row[0] not in duplicates) if duplicates else rows

        try:
            the_plan = plan(unique(chain.from_iterable(chunks)), settings, ranks)
        except UnsortedInput:
            # Text timestamps in mixed formats (written by other tools) can sort
            # wrongly in SQL; sort the parsed values here instead.
            chunks.close()
            everything = sorted(unique(self.store.iter_candidates(conn, self.pipeline)), key=_sort_key)
            the_plan = plan(everything, settings, ranks)
        finally:
            chunks.close()
        the_plan.invalid.extend(
            InvalidRow(batch_id, f"batch_id is held by {count} rows of the table; never claimed", False)
            for batch_id, count in sorted(duplicates.items())
        )
        return the_plan

    @staticmethod
    def _superseded_entries(the_plan: Plan) -> list[dict[str, Any]]:
        return [
            {
                "batch_id": r.superseded.batch_id,
                "superseded_by": r.kept.batch_id,
                "reason": r.reason,
                "previous_status": r.superseded.status,
            }
            for r in the_plan.resolutions
        ]

    def _apply(self, conn: Connection, report: PopulateReport) -> None:
        the_plan, now, run_id = report.plan, report.now, report.run_id
        store = self.store
        losers = [
            (r.superseded.batch_id, r.superseded.status, r.superseded.updated_at, r.kept.batch_id, r.reason)
            for r in the_plan.resolutions
        ]
        store.supersede(conn, self.pipeline, losers, now=now, run_id=run_id, by=self.actor)
        report.superseded = self._superseded_entries(the_plan)
        store.insert_events(
            conn,
            (
                self._event(
                    entry["batch_id"],
                    "SUPERSEDED",
                    now,
                    entry["previous_status"],
                    "SUPERSEDED",
                    {
                        "superseded_by": entry["superseded_by"],
                        "reason": entry["reason"],
                        "run_id": run_id,
                    },
                )
                for entry in report.superseded
            ),
        )
        taken = store.inactive_ids(conn, self.pipeline) | {r.batch_id for r in the_plan.invalid}
        self._name_windows(the_plan, taken, report.created, now, run_id, sink=conn, conn=conn, report=report)

    def _name_windows(
        self,
        the_plan: Plan,
        taken: set[str],
        log: CreatedLog,
        now: datetime,
        run_id: str,
        sink: Connection | None,
        conn: Connection | None = None,
        report: PopulateReport | None = None,
    ) -> None:
        """Give each new window its ids and categories; insert them when `sink` is set.

        An id another row of the table holds (any pipeline's, or a differently
        timed row of this one) is replaced by a free `<id>-rN` and reported in
        `report.id_collisions`. The CREATED events are then written by one
        INSERT ... SELECT of the rows this run made, not one Python object per event.
        """
        store = self.store
        builder = RowBuilder(
            self.config,
            self._ids,
            self._categories,
            self.actor,
            run_id,
            now,
            instant_text=store.instant_text,
        )
        custom_ids = not builder.default_ids
        # Ids are looked up in the table unless it is empty (a first populate).
        look_up = conn is not None and store.has_rows(conn)
        seen: set[str] = set()
        new_rows = builder.rows(the_plan.fills)
        chunks: Iterator[list[tuple[Any, ...]]] = iter(lambda: list(islice(new_rows, _CHUNK)), [])
        index = 0
        load = store.bulk_load(sink, the_plan.estimated_new_windows()) if sink is not None else nullcontext()
        with load:
            for rows in chunks:
                held: set[str] = set()
                if look_up and conn is not None:
                    held = store.existing_ids(conn, [row[0] for row in rows]) - taken
                    taken = taken | held
                for offset, row in enumerate(rows):
                    batch_id = row[0]
                    if batch_id in taken or batch_id in seen:
                        batch_id = _unique(batch_id, taken, seen)
                        rows[offset] = (batch_id, *row[1:])
                        log.set_id(index + offset, batch_id)
                        if row[0] in held and report is not None:
                            report.id_collisions.append({"wanted": row[0], "used": batch_id})
                    elif custom_ids:
                        log.set_id(index + offset, batch_id)
                    if custom_ids or held:
                        seen.add(batch_id)
                index += len(rows)
                if sink is not None:
                    store.insert_windows(sink, builder.columns, builder.constant, rows, builder.derived)
        log.record(the_plan.fills, index)
        if sink is not None and index:
            store.insert_created_events(sink, self.pipeline, run_id, self.actor)

    def _event(
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
        return {
            "batch_id": batch_id,
            "pipeline_name": self.pipeline,
            "event_type": event_type,
            "worker_id": worker_id or self.actor,
            "claim_token": claim_token,
            "event_time": now,
            "old_status": old_status,
            "new_status": new_status,
            "details": details,
        }

    # -- workers (the state table is the lock; see batches.py) --------------------

    def claim(self, worker: str, within: tuple[datetime, datetime] | None = None) -> Batch | None:
        """Atomically take the next claimable batch, or None; with `within` (UTC
        `[low, high)`), only a window that starts in that range."""
        return batches.claim(self, worker, within)

    def heartbeat(self, batch_id: str, worker: str, token: str | None = None) -> datetime:
        """Extend the caller's lease; LeaseLost if the claim is not current."""
        return batches.heartbeat(self, batch_id, worker, token)

    def complete(
        self, batch_id: str, worker: str, token: str | None = None, values: dict[str, Any] | None = None
    ) -> None:
        """Mark the caller's batch COMPLETED; LeaseLost if the claim is not current."""
        batches.complete(self, batch_id, worker, token, values)

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
        return batches.fail(self, batch_id, worker, error, token, step, values, retryable)

    def release(self, batch_id: str, worker: str, token: str | None = None) -> None:
        """Give the batch back unfinished, with no retry counted."""
        batches.release(self, batch_id, worker, token)

    def record_step(
        self,
        batch_id: str,
        worker: str,
        values: dict[str, Any],
        token: str | None = None,
        step: str | None = None,
    ) -> None:
        """Write step columns while holding the claim (fenced)."""
        batches.record_step(self, batch_id, worker, token, values, step)

    def requeue(
        self,
        batch_ids: list[str] | None = None,
        *,
        start: datetime | None = None,
        end: datetime | None = None,
        statuses: tuple[str, ...] = ("FAILED",),
        force: bool = False,
        from_step: str = "source",
    ) -> list[str]:
        """Make batches PENDING again with a fresh retry budget; returns their ids. The next run
        reads the source again (`from_step="source"`) or reloads the staged files ("target")."""
        return operations.requeue(
            self, batch_ids, start=start, end=end, statuses=statuses, force=force, from_step=from_step
        )

    def quarantine(self, batch_ids: list[str], reason: str, *, force: bool = False) -> list[dict[str, Any]]:
        """Take rows out of the active set (SUPERSEDED, with the reason and an audit event)."""
        return operations.quarantine(self, batch_ids, reason, force=force)

    def history(self, batch_id: str) -> list[dict[str, Any]]:
        """The batch's audit trail, oldest first."""
        return operations.history(self, batch_id)

    # -- status -------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Rows of the pipeline by status (cheap: one grouped count)."""
        with self.store.transaction(write=False) as conn:
            return self.store.status_counts(conn, self.pipeline)

    def statuses(self, batch_ids: Iterable[str]) -> dict[str, str]:
        """The current status of each of these batches of the pipeline that exists."""
        state = self.store.tables.state
        ids = list(batch_ids)
        found: dict[str, str] = {}
        with self.store.transaction(write=False) as conn:
            for low in range(0, len(ids), 500):
                stmt = select(state.c.batch_id, state.c.pipeline_status).where(
                    state.c.pipeline_name == self.pipeline, state.c.batch_id.in_(ids[low : low + 500])
                )
                found.update((str(batch_id), str(status)) for batch_id, status in conn.execute(stmt))
        return found

    def status(self) -> dict[str, Any]:
        """Counts by status, coverage of the range, first/last window, oldest pending, failures."""
        self.store.check_ready()
        state = self.store.tables.state
        with self.store.transaction(write=False) as conn:
            now = self.now(conn)
            settings = self._settings(now)
            counts = self.store.status_counts(conn, self.pipeline)
            covered, first, last, active = _coverage(
                self.store.iter_candidates(conn, self.pipeline), settings.start, settings.covered_stop
            )
            # Instants read raw and parsed here: a value another tool wrote that
            # Python cannot hold shows as null instead of failing status.
            raw = self.store.raw_column
            oldest_pending = conn.execute(
                select(state.c.batch_id, raw("source_query_window_start_time"), raw("created_at"))
                .where(state.c.pipeline_name == self.pipeline, state.c.pipeline_status == "PENDING")
                .order_by(state.c.source_query_window_start_time)
                .limit(1)
            ).first()
            failures = conn.execute(
                select(
                    state.c.batch_id,
                    raw("source_query_window_start_time"),
                    state.c.retry_count,
                    state.c.last_error,
                    raw("last_error_at"),
                )
                .where(state.c.pipeline_name == self.pipeline, state.c.pipeline_status == "FAILED")
                .order_by(state.c.source_query_window_start_time)
                .limit(50)
            ).all()
            lease_view = operations.leases(self, conn, now)
        total = max((settings.covered_stop - settings.start).total_seconds(), 0.0)
        return {
            "pipeline": self.pipeline,
            "now": iso(now),
            "range": {"start": iso(settings.start), "end": iso(settings.covered_stop)},
            "counts": {status: int(counts.get(status, 0)) for status in _STATUS_ORDER}
            | {str(k): int(v) for k, v in counts.items() if k not in _STATUS_ORDER},
            "total_rows": int(sum(counts.values())),
            "active_windows": active,
            "coverage": {
                "covered_minutes": round(covered / 60, 3),
                "range_minutes": round(total / 60, 3),
                "percent": round(100 * covered / total, 3) if total else 100.0,
            },
            "first_window_start": iso(first),
            "last_window_end": iso(last),
            "oldest_pending": None
            if oldest_pending is None
            else {
                "batch_id": oldest_pending[0],
                "start": iso(parse_instant(oldest_pending[1])),
                "created_at": iso(parse_instant(oldest_pending[2])),
            },
            "failures": [
                {
                    "batch_id": row[0],
                    "start": iso(parse_instant(row[1])),
                    "retry_count": row[2],
                    "last_error": row[3],
                    "last_error_at": iso(parse_instant(row[4])),
                }
                for row in failures
            ],
            **lease_view,
        }


_STATUS_ORDER = ("PENDING", "IN_PROGRESS", "COMPLETED", "FAILED", "SUPERSEDED")


def _first_window(config: Config) -> plugins.WindowInfo:
    """The pipeline's first grid window, on which the id and category functions are tried."""
    pipeline = config.pipeline
    start = pipeline.start_utc
    day = local_date_of(start, pipeline.tz)
    day_start, day_end = day_bounds(day, pipeline.tz)
    _, cell_start, cell_end = next(day_cells(day_start, day_end, pipeline.step, start, day_end))
    return plugins.WindowInfo(
        pipeline=pipeline.name,
        start=cell_start,
        end=cell_end,
        local_date=day,
        timezone=pipeline.timezone,
        sequence_in_day=1,
        duration_minutes=step_minutes(cell_start, cell_end),
        granularity=config.step_label(),
        record_origin="SCHEDULED",
    )


def _sort_key(row: tuple[Any, ...]) -> tuple[Any, ...]:
    if row[1] is None or row[2] is None:
        return (0,)
    return (1, row[1], row[2], str(row[0]))


def _unique(batch_id: str, taken: set[str], seen: set[str]) -> str:
    """`batch_id`, or `batch_id-rN` if a superseded row (or this run) already has it."""
    if batch_id not in taken and batch_id not in seen:
        return batch_id
    n = 2
    while f"{batch_id}-r{n}" in taken or f"{batch_id}-r{n}" in seen:
        n += 1
    return f"{batch_id}-r{n}"


def _coverage(
    rows: Iterable[tuple[Any, ...]] | Iterator[tuple[Any, ...]], low: datetime, high: datetime
) -> tuple[float, datetime | None, datetime | None, int]:
    """Seconds of [low, high) covered by the rows' windows, plus first start, last end, count."""
    covered = 0.0
    cursor = low
    first = last = None
    count = 0
    for row in rows:
        start, end = row[1], row[2]
        if start is None or end is None or end <= start:
            continue
        count += 1
        first = start if first is None or start < first else first
        last = end if last is None or end > last else last
        start, end = max(start, cursor), min(end, high)
        if end > start:
            covered += (end - start).total_seconds()
            cursor = end
    return covered, first, last, count

"""Populate and validate: load the pipeline's rows -> plan (planning.py) -> apply.

Populate writes in one transaction under the pipeline's lock; a dry run and
validate compute the same plan and write nothing (nor create the table).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from itertools import chain, islice
from typing import Any

from sqlalchemy.engine import Connection

from .. import ids
from ..config import Config
from ..errors import StoreBusyError
from ..ids import IdFunction
from ..planning import plan, plan_counted
from ..plans import InvalidRow, Plan, UnsortedInput
from ..statuses import Status
from ..store import locks, migrate, populate_sql, spans
from ..store.events import insert_created_events, insert_events
from ..store.populate_sql import RowChanged
from ..windows import (
    day_bounds,
    day_cells,
    local_date_of,
    step_minutes,
)
from .context import Context
from .populate_report import CreatedLog, PopulateReport
from .rows import RowBuilder

__all__ = ["WindowFunctions", "name_windows", "populate", "validate"]

_CHUNK = 5000
_REPLANS = 5  # times populate plans again when workers change rows under it
_LARGE_WRITE = 50_000  # rows created by one populate after which SQLite's log is emptied


@dataclass(frozen=True)
class WindowFunctions:
    """The functions that give each new window its ids and categories, resolved once."""

    ids: dict[str, IdFunction]
    categories: dict[str, IdFunction]

    @classmethod
    def from_config(cls, config: Config) -> WindowFunctions:
        """Resolve `[ids]` and `[categories]` and try each on the pipeline's first
        window; ConfigError naming the key if one cannot be imported or fails."""
        functions = cls(
            ids={key: ids.resolve("ids", key, name) for key, name in config.ids.model_dump().items()},
            categories={
                key: ids.resolve("categories", key, name)
                for key, name in config.categories.model_dump().items()
            },
        )
        ids.probe({"ids": functions.ids, "categories": functions.categories}, _first_window(config))
        return functions


def populate(ctx: Context, functions: WindowFunctions, dry_run: bool = False) -> PopulateReport:
    """Repair and extend the pipeline's windows so they tile [start, end).

    Analyses the active windows, finds gaps and overlaps, supersedes the
    losers of each overlap and fills every uncovered stretch with PENDING
    windows; all in one transaction under the pipeline's lock. With
    `dry_run` the same plan is computed and nothing is written.
    """
    run_id = uuid.uuid4().hex
    if dry_run:
        return _dry_run(ctx, functions, run_id, verb_is_validate=False)
    ctx.store.check_version()
    if ctx.store.outdated or not ctx.store.is_set_up():
        migrate.init_db(ctx.store)
        ctx.store.outdated = False
    locks.ensure_lock_row(ctx.store, ctx.pipeline)
    for attempt in range(_REPLANS + 1):
        try:
            with ctx.store.transaction(write=True) as conn:
                locks.lock_pipeline(ctx.store, conn, ctx.pipeline, holder=f"populate {run_id} {ctx.actor}")
                now = ctx.now(conn)
                the_plan = _plan(ctx, conn, now)
                report = PopulateReport(ctx.pipeline, False, run_id, now, the_plan, CreatedLog(ctx.pipeline))
                _apply(ctx, functions, conn, report)
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
        populate_sql.release_log(ctx.store)
    return report


def validate(ctx: Context, functions: WindowFunctions) -> PopulateReport:
    """Phases 1-3 only: what populate would find; writes nothing."""
    return _dry_run(ctx, functions, uuid.uuid4().hex, verb_is_validate=True)


def _dry_run(ctx: Context, functions: WindowFunctions, run_id: str, verb_is_validate: bool) -> PopulateReport:
    if not ctx.store.exists():
        now = ctx.now_without_table()
        the_plan = plan([], ctx.plan_settings(now))
        report = PopulateReport(ctx.pipeline, True, run_id, now, the_plan, CreatedLog(ctx.pipeline))
        report.table_missing = True
        if not verb_is_validate:
            name_windows(ctx, functions, the_plan, set(), report.created, now, run_id, sink=None)
        return report
    with ctx.store.transaction(write=False) as conn:
        now = ctx.now(conn)
        the_plan = _plan(ctx, conn, now)
        report = PopulateReport(ctx.pipeline, True, run_id, now, the_plan, CreatedLog(ctx.pipeline))
        report.superseded = _superseded_entries(the_plan)
        # validate names the new windows too, to report ids another row holds,
        # but lists none of them.
        log = CreatedLog(ctx.pipeline) if verb_is_validate else report.created
        taken = populate_sql.inactive_ids(ctx.store, conn, ctx.pipeline) | {
            r.batch_id for r in the_plan.invalid
        }
        name_windows(ctx, functions, the_plan, taken, log, now, run_id, sink=None, conn=conn, report=report)
    return report


def _plan(ctx: Context, conn: Connection, now: datetime, in_database: bool | None = None) -> Plan:
    """The plan at `now`. Where the database sweeps the windows itself
    (`Backend.sweeps_in_sql`, or `in_database`), it returns only the windows
    that break the tiling and a count of the others per day and length
    (store/spans.py); else every row is read and planned here."""
    settings = ctx.plan_settings(now)
    migrate.note_columns(ctx.store, conn)  # another tool's table may lack optional columns before init-db
    # A batch_id held by two rows (a table without a primary key) is an
    # invalid row: claims never take it, so neither may the plan count it.
    duplicates = populate_sql.duplicate_ids(ctx.store, conn, ctx.pipeline)
    duplicate_rows = [
        InvalidRow(batch_id, f"batch_id is held by {count} rows of the table; never claimed", False)
        for batch_id, count in sorted(duplicates.items())
    ]
    if ctx.store.backend.sweeps_in_sql if in_database is None else in_database:
        reduced = spans.plan_rows(ctx.store, conn, ctx.pipeline, settings.tz, list(duplicates))
        if reduced is not None:
            invalid = [InvalidRow(batch_id, reason, False) for batch_id, reason in reduced.invalid]
            the_plan = plan_counted(reduced.explicit, reduced.counted, reduced.last_end, invalid, settings)
            the_plan.invalid.extend(duplicate_rows)
            return the_plan
    chunks = populate_sql.candidate_chunks(ctx.store, conn, ctx.pipeline)
    ranks = None
    if populate_sql.ranks_read_apart(ctx.store):

        def ranks(batch_ids: list[str]) -> dict[str, tuple]:
            return populate_sql.rank_values(ctx.store, conn, ctx.pipeline, batch_ids)

    def unique(rows: Iterable[tuple[Any, ...]]) -> Iterable[tuple[Any, ...]]:
        return (row for row in rows if row[0] not in duplicates) if duplicates else rows

    try:
        the_plan = plan(unique(chain.from_iterable(chunks)), settings, ranks)
    except UnsortedInput:
        # Text timestamps in mixed formats (written by other tools) can sort
        # wrongly in SQL; sort the parsed values here instead.
        chunks.close()
        everything = sorted(
            unique(populate_sql.iter_candidates(ctx.store, conn, ctx.pipeline)), key=_sort_key
        )
        the_plan = plan(everything, settings, ranks)
    finally:
        chunks.close()
    the_plan.invalid.extend(duplicate_rows)
    return the_plan


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


def _apply(ctx: Context, functions: WindowFunctions, conn: Connection, report: PopulateReport) -> None:
    the_plan, now, run_id = report.plan, report.now, report.run_id
    store = ctx.store
    losers = [
        (r.superseded.batch_id, r.superseded.status, r.superseded.updated_at, r.kept.batch_id, r.reason)
        for r in the_plan.resolutions
    ]
    populate_sql.supersede(store, conn, ctx.pipeline, losers, now=now, run_id=run_id, by=ctx.actor)
    report.superseded = _superseded_entries(the_plan)
    insert_events(
        store,
        conn,
        (
            ctx.event(
                entry["batch_id"],
                Status.SUPERSEDED,
                now,
                entry["previous_status"],
                Status.SUPERSEDED,
                {
                    "superseded_by": entry["superseded_by"],
                    "reason": entry["reason"],
                    "run_id": run_id,
                },
            )
            for entry in report.superseded
        ),
    )
    taken = populate_sql.inactive_ids(store, conn, ctx.pipeline) | {r.batch_id for r in the_plan.invalid}
    name_windows(
        ctx, functions, the_plan, taken, report.created, now, run_id, sink=conn, conn=conn, report=report
    )


def name_windows(
    ctx: Context,
    functions: WindowFunctions,
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
    store = ctx.store
    builder = RowBuilder(
        ctx.config,
        functions.ids,
        functions.categories,
        ctx.actor,
        run_id,
        now,
        instant_text=store.instant_text,
    )
    custom_ids = not builder.default_ids
    # Ids are looked up in the table unless it is empty (a first populate).
    look_up = conn is not None and populate_sql.has_rows(store, conn)
    seen: set[str] = set()
    new_rows = builder.rows(the_plan.fills)
    chunks: Iterator[list[tuple[Any, ...]]] = iter(lambda: list(islice(new_rows, _CHUNK)), [])
    index = 0
    load = (
        populate_sql.bulk_load(store, sink, the_plan.estimated_new_windows())
        if sink is not None
        else nullcontext()
    )
    with load:
        for rows in chunks:
            held: set[str] = set()
            if look_up and conn is not None:
                held = populate_sql.existing_ids(store, conn, [row[0] for row in rows]) - taken
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
                populate_sql.insert_windows(
                    store, sink, builder.columns, builder.constant, rows, builder.derived
                )
    log.record(the_plan.fills, index)
    if sink is not None and index:
        insert_created_events(store, sink, ctx.pipeline, run_id, ctx.actor)


def _first_window(config: Config) -> ids.WindowInfo:
    """The pipeline's first grid window, on which the id and category functions are tried."""
    pipeline = config.pipeline
    start = pipeline.start_utc
    day = local_date_of(start, pipeline.tz)
    day_start, day_end = day_bounds(day, pipeline.tz)
    _, cell_start, cell_end = next(day_cells(day_start, day_end, pipeline.step, start, day_end))
    return ids.WindowInfo(
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

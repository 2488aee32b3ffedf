"""`regrid`: put the PENDING and FAILED windows of a range on a new granularity's grid.

Reads the range's active windows, plans with regridding.py (pure), and writes
in one transaction under the pipeline's lock, as populate does: the new windows
(`record_origin = REGRID`) are inserted, then the windows they replace are
SUPERSEDED, each guarded on the status and `updated_at` it was read with, so a
window a worker claimed in between is never superseded (the plan is made again).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.engine import Connection

from ..errors import StoreBusyError, UsageError
from ..plans import Analysis, Plan, fill_cells
from ..regridding import Old, RegridPlan, plan_regrid
from ..statuses import Status
from ..store import locks, migrate, populate_sql, queries
from ..store.events import insert_events
from ..store.populate_sql import RowChanged
from ..windows import Step, format_step, iso, local_date_of, parse_granularity, read_stored_instant
from .context import Context
from .populate import WindowFunctions, name_windows
from .populate_report import CreatedLog

__all__ = ["RegridReport", "regrid"]

_REPLANS = 5


@dataclass
class RegridReport:
    """What a regrid found and did (or, with `dry_run`, would do)."""

    pipeline: str
    timezone: str
    dry_run: bool
    run_id: str
    now: datetime
    plan: RegridPlan
    created: list[dict[str, Any]] = field(default_factory=list)
    superseded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return bool(self.plan.days)

    def to_dict(self) -> dict[str, Any]:
        plan = self.plan
        days = []
        for day in plan.days:
            days.append(
                {
                    "date": day.local_date.isoformat(),
                    "before": [
                        {"batch_id": w.batch_id, "start": iso(w.start), "end": iso(w.end), "status": w.status}
                        for w in day.before
                    ],
                    "after": [{"start": iso(s), "end": iso(e)} for s, e in day.after],
                    "windows_staying": day.stays,
                }
            )
        return {
            "pipeline": self.pipeline,
            "dry_run": self.dry_run,
            "run_id": self.run_id,
            "now": iso(self.now),
            "granularity": format_step(plan.step),
            "range": {"start": iso(plan.start), "end": iso(plan.end)},
            "days": days,
            "windows_staying": plan.stayed,
            "created": self.created,
            "superseded": self.superseded,
        }


def regrid(
    ctx: Context,
    functions: WindowFunctions,
    granularity: str | Step,
    start: datetime | None = None,
    end: datetime | None = None,
    dry_run: bool = False,
) -> RegridReport:
    """Replan the PENDING and FAILED windows of `[start, end)` (default: the whole
    range) on `granularity`'s grid; see the module docstring. `start` and `end` are
    UTC instants (a command turns a local date into one)."""
    step = _step(granularity)
    if start is not None and end is not None and end <= start:
        raise UsageError("end: must be after start")
    store = ctx.store
    store.check_ready()
    run_id = uuid.uuid4().hex
    if dry_run:
        with store.transaction(write=False) as conn:
            return _report(ctx, conn, step, start, end, True, run_id)
    locks.ensure_lock_row(store, ctx.pipeline)
    for attempt in range(_REPLANS + 1):
        try:
            with store.transaction(write=True) as conn:
                locks.lock_pipeline(store, conn, ctx.pipeline, holder=f"regrid {run_id} {ctx.actor}")
                report = _report(ctx, conn, step, start, end, False, run_id)
                if report.changed:
                    _apply(ctx, functions, conn, report)
            return report
        except RowChanged as changed:
            if attempt == _REPLANS:
                raise StoreBusyError(
                    f"regrid: rows kept changing under workers ({changed}); nothing was written; try again"
                ) from changed
    raise AssertionError("unreachable")


def _step(granularity: str | Step) -> Step:
    if not isinstance(granularity, str):
        return granularity
    try:
        return parse_granularity(granularity)
    except ValueError as err:
        raise UsageError(f"granularity: {err}") from err


def _report(
    ctx: Context,
    conn: Connection,
    step: Step,
    start: datetime | None,
    end: datetime | None,
    dry_run: bool,
    run_id: str,
) -> RegridReport:
    migrate.note_columns(ctx.store, conn)  # an adopted table may lack the optional columns read here
    now = ctx.now(conn)
    pipeline = ctx.config.pipeline
    low = start if start is not None else pipeline.start_utc
    rows = queries.regrid_candidates(ctx.store, conn, ctx.pipeline, low, end)
    windows = []
    for batch_id, raw_start, raw_end, status, updated, loaded_at, completed_at in rows:
        begin, finish = read_stored_instant(raw_start), read_stored_instant(raw_end)
        if begin is None or finish is None or finish <= begin:
            continue  # an invalid row: validate reports it, regrid leaves it
        loaded = loaded_at is not None or completed_at is not None
        windows.append(Old(str(batch_id), begin, finish, str(status), read_stored_instant(updated), loaded))
    high = end if end is not None else max((w.end for w in windows), default=low)
    the_plan = plan_regrid(windows, pipeline.tz, step, low, max(high, low))
    return RegridReport(ctx.pipeline, pipeline.timezone, dry_run, run_id, now, the_plan)


def _apply(ctx: Context, functions: WindowFunctions, conn: Connection, report: RegridReport) -> None:
    store, the_plan, now, run_id = ctx.store, report.plan, report.now, report.run_id
    old = the_plan.superseded
    taken = populate_sql.inactive_ids(store, conn, ctx.pipeline) | {w.batch_id for w in old}
    fills = the_plan.fills
    log = CreatedLog(ctx.pipeline)
    settings = ctx.plan_settings(now)
    the_fills = Plan(settings, Analysis(), [], [], [], fills, {})
    name_windows(ctx, functions, the_fills, taken, log, now, run_id, sink=conn, conn=conn)
    created = list(log)
    report.created = created
    spans = [(cell[2], cell[3]) for cell in fill_cells(fills)]
    reason = f"{the_plan.reason()} (regrid {run_id})"
    losers = []
    for window in old:
        winner = next(
            (
                entry["batch_id"]
                for entry, (s, e) in zip(created, spans, strict=True)
                if s < window.end and window.start < e
            ),
            None,
        )
        losers.append((window.batch_id, window.status, window.updated_at, winner or "", reason))
    populate_sql.supersede(store, conn, ctx.pipeline, losers, now=now, run_id=run_id, by=ctx.actor)
    report.superseded = [
        {"batch_id": batch_id, "superseded_by": winner, "reason": why, "previous_status": status}
        for batch_id, status, _, winner, why in losers
    ]
    tz = ctx.config.pipeline.tz
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
                    "regrid": format_step(the_plan.step),
                    "local_date": local_date_of(window.start, tz).isoformat(),
                },
            )
            for entry, window in zip(report.superseded, old, strict=True)
        ),
    )

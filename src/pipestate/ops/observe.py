"""What a person or an alert asks of a pipeline: its local days and their state,
the windows of a time range, and the figures worth alerting on.

Every function takes the Context first and only reads. Per-day figures are
aggregated by the database (store/daily.py); the day bounds come from
windows.py, so DST days are 23 or 25 hours long here as everywhere else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..errors import UsageError
from ..statuses import EXHAUSTED, STATUS_ORDER, Status
from ..store.daily import (
    HOURS_PER_DAY_SLOT,
    DayBucket,
    bucket_rows,
    span_query,
)
from ..store.schema import DURATION_MINUTES, END_TIME, START_TIME
from ..store.views import alert_figures, latest_populate, window_rows
from ..windows import day_bounds, iso, local_date_of, read_instant
from .status import leases

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ..planning import Settings
    from .context import Context

__all__ = [
    "DAY_STATES",
    "HOURS_FOR_DAYS",
    "Calendar",
    "Day",
    "alert_data",
    "calendar",
    "list_windows",
    "settings_at",
    "window_range",
]

# The states of a local day, most urgent first: a day takes the first that applies.
DAY_STATES = {
    "failed": "a window FAILED for good (no retries left): needs a requeue",
    "gap": "a gap or an overlap among its active windows: run populate",
    "in_progress": "work under way: running, retrying, or partly completed",
    "pending": "all windows PENDING, none started",
    "completed": "every window COMPLETED and the day fully covered",
    "outside": "outside the configured range",
}
# The report's heatmap and step durations cover this many of the latest days (the
# calendar covers all): a million windows stay a few MB and a few seconds.
HOURS_FOR_DAYS = 400


def settings_at(ctx: Context, now: datetime) -> Settings:
    """The planner's view of the configured range at `now` (as populate sees it)."""
    return ctx.plan_settings(now)


@dataclass
class Day:
    """One local day of the range and what its windows say."""

    date: date
    start: datetime  # UTC
    end: datetime  # UTC, exclusive
    expected_seconds: int  # the part of the day inside the range (and before now - lag)
    counts: Counter[str] = field(default_factory=Counter)
    covered_seconds: int = 0
    overlaps: int = 0
    failed_permanently: int = 0
    retries: int = 0
    records: int = 0
    processing_seconds: float = 0.0
    step_seconds: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])
    # with hours: hour of the local day -> windows starting in it by status, and
    # under "EXHAUSTED" the FAILED ones without retries left
    hours: dict[int, Counter[str]] | None = None
    overlap_hours: set[int] = field(default_factory=set)  # hours of the day where overlaps start

    def add_hour(self, hour: int, row: DayBucket) -> None:
        """The windows of one status starting in `hour` of this day (and their step times)."""
        if self.hours is None:
            self.hours = {}
        counts = self.hours.setdefault(hour, Counter())
        counts[row.status] += row.windows
        counts[EXHAUSTED] += row.exhausted
        for index, seconds in enumerate(row.step_seconds):
            self.step_seconds[index] += seconds

    def add(self, row: DayBucket) -> None:
        self.counts[row.status] += row.windows
        self.covered_seconds += row.covered_seconds
        self.failed_permanently += row.exhausted
        self.retries += row.retries
        self.records += row.records
        self.processing_seconds += row.processing_seconds
        for index, seconds in enumerate(row.step_seconds):
            self.step_seconds[index] += seconds

    @property
    def active(self) -> int:
        return sum(n for status, n in self.counts.items() if status != Status.SUPERSEDED)

    @property
    def gap(self) -> bool:
        """Less of the day covered than expected (overlapping time counts twice,
        so a day with overlaps may hide a gap: populate reports both)."""
        return self.expected_seconds > 0 and self.covered_seconds < self.expected_seconds

    @property
    def state(self) -> str:
        if self.expected_seconds <= 0:
            return "outside"
        if self.failed_permanently:
            return "failed"
        if self.overlaps or self.gap:
            return "gap"
        active = self.active
        done = self.counts.get(Status.COMPLETED, 0)
        if done == active:
            return "completed"
        if self.counts.get(Status.PENDING, 0) == active:
            return "pending"
        return "in_progress"

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "date": self.date.isoformat(),
            "start": iso(self.start),
            "end": iso(self.end),
            "state": self.state,
            "windows": self.active,
            "counts": {status: self.counts.get(status, 0) for status in STATUS_ORDER},
            "covered_minutes": round(self.covered_seconds / 60, 3),
            "expected_minutes": round(self.expected_seconds / 60, 3),
            "gap": self.gap,
            "overlaps": self.overlaps,
            "failed_permanently": self.failed_permanently,
            "retries": self.retries,
        }
        return data


@dataclass
class Calendar:
    """The range's local days, oldest first, with the pipeline's clock and zone."""

    pipeline: str
    timezone: str
    now: datetime
    start: datetime
    end: datetime
    days: list[Day]

    def totals(self) -> dict[str, int]:
        """Days per state (every state named, zeros included)."""
        found = Counter(day.state for day in self.days)
        return {state: found.get(state, 0) for state in DAY_STATES}

    def to_dict(self) -> dict[str, Any]:
        return {
            "pipeline": self.pipeline,
            "timezone": self.timezone,
            "now": iso(self.now),
            "range": {"start": iso(self.start), "end": iso(self.end)},
            "day_totals": self.totals(),
            "days": [day.to_dict() for day in self.days],
        }


def _range_days(settings: Settings) -> list[Day]:
    start, stop = settings.start, settings.covered_stop
    if stop <= start:
        return []
    tz = settings.tz
    day, last = local_date_of(start, tz), local_date_of(stop - timedelta(microseconds=1), tz)
    days = []
    while day <= last:
        day_start, day_end = day_bounds(day, tz)
        expected = (min(day_end, stop) - max(day_start, start)).total_seconds()
        days.append(Day(day, day_start, day_end, max(int(expected), 0)))
        day += timedelta(days=1)
    return days


def calendar(
    ctx: Context, *, hours: bool = False, steps: bool = False, conn: Connection | None = None
) -> Calendar:
    """The range's local days with their counts, coverage, overlaps and state.

    With `hours`, the last `HOURS_FOR_DAYS` days also get their counts per hour
    of the local day (the report's heatmap) and, with `steps`, the summed
    durations of the three steps (which cost six instants read per window).
    """
    store = ctx.store
    store.check_ready()
    if conn is None:
        with store.transaction(write=False) as conn:
            return calendar(ctx, hours=hours, steps=steps, conn=conn)
    now = ctx.now(conn)
    settings = settings_at(ctx, now)
    days = _range_days(settings)
    aggregate = partial(
        bucket_rows,
        conn,
        store.tables,
        ctx.pipeline,
        range_start=settings.start,
        range_end=settings.covered_stop,
        max_retries=ctx.config.concurrency.max_retries,
    )
    for row in aggregate([(day.start, day.end) for day in days]):
        days[row.bucket].add(row)
    if hours:
        recent = days[-HOURS_FOR_DAYS:]
        for day in recent:
            day.hours = {}
        for row in aggregate([(day.start, day.end) for day in recent], hours=True, steps=steps):
            recent[row.bucket // HOURS_PER_DAY_SLOT].add_hour(row.bucket % HOURS_PER_DAY_SLOT, row)
    _count_overlaps(ctx, conn, days)
    return Calendar(
        ctx.pipeline,
        ctx.config.pipeline.timezone,
        now,
        settings.start,
        settings.covered_stop,
        days,
    )


def _count_overlaps(ctx: Context, conn: Connection, days: list[Day]) -> None:
    """Set each day's `overlaps`: its active windows that start before an earlier
    active window ends.

    First every window, in the window index's order (which alone answers it):
    a day without such a window has no overlap. Only the days where one turns
    up, and the day before each (a window may end past midnight), are read
    again, active windows only. A clean million-window table is read once.
    """
    store, tz = ctx.store, ctx.config.pipeline.tz
    query = partial(span_query, store.tables, store.raw_column, ctx.pipeline)
    index_of = {day.date: index for index, day in enumerate(days)}

    def day_indexes(starts: Iterable[datetime]) -> list[int]:
        return [index_of[day] for day in (local_date_of(start, tz) for start in starts) if day in index_of]

    def count(starts: Iterable[datetime], first: int = 0, last: int = len(days) - 1) -> None:
        for start in starts:
            index = index_of.get(local_date_of(start, tz))
            if index is not None and first <= index <= last:
                day = days[index]
                day.overlaps += 1
                day.overlap_hours.add(int((start - day.start).total_seconds() // 3600))

    starts = _overlapping_starts(store.read_chunks(conn, query(active_only=False)))
    if starts is None:  # not in the instants' order: read everything, parse and sort it
        spans = store.read_chunks(conn, query(active_only=True))
        count(_overlaps_parsed(row for chunk in spans for row in chunk))
        return
    for first, last in _runs(sorted(set(day_indexes(starts)))):
        low, high = days[max(first - 1, 0)].start, days[last].end
        found = _overlapping_starts(store.read_chunks(conn, query(active_only=True, start=low, end=high)))
        count(found or (), first, last)


def _runs(indexes: list[int]) -> Iterator[tuple[int, int]]:
    """Consecutive stretches `(first, last)` of sorted day indexes."""
    first = previous = None
    for index in indexes:
        if first is None or previous is None:
            first = previous = index
        elif index == previous + 1:
            previous = index
        else:
            yield first, previous
            first = previous = index
    if first is not None and previous is not None:
        yield first, previous


def _overlapping_starts(chunks: Any) -> list[datetime] | None:
    """Starts of the windows that begin before an earlier one ends, or None if
    the rows did not come in the instants' order.

    `chunks` hold `(start, end)` as stored, sorted: they are compared as stored
    (text on SQLite and PostgreSQL sorts like the instants) and only the few
    overlapping ones are parsed. Text in mixed formats, written by other tools,
    can sort otherwise: then None.
    """
    found = []
    previous_start = latest_end = None
    try:
        for chunk in chunks:
            for start, end in chunk:
                if start is None or end is None or not end > start:
                    continue
                if previous_start is not None and start < previous_start:
                    return None
                if latest_end is not None and start < latest_end:
                    found.append(start)
                if latest_end is None or end > latest_end:
                    latest_end = end
                previous_start = start
    finally:
        chunks.close()
    return [instant for instant in (read_instant(value) for value in found) if instant is not None]


def _overlaps_parsed(rows: Iterable[tuple[Any, Any]]) -> list[datetime]:
    """`_overlapping_starts` for stored rows in any order: parsed, then sorted."""
    found: list[datetime] = []
    latest_end: datetime | None = None
    parsed = ((read_instant(start), read_instant(end)) for start, end in rows)
    for start, end in sorted((s, e) for s, e in parsed if s is not None and e is not None and e > s):
        if latest_end is not None and start < latest_end:
            found.append(start)
        if latest_end is None or end > latest_end:
            latest_end = end
    return found


def window_range(
    ctx: Context, day: str | None, start: str | None, end: str | None
) -> tuple[datetime, datetime]:
    """See `_window_range`; a date at the edge of the calendar (9999-12-31, 0001-01-01 in a
    zone east of UTC) is a UsageError naming the option, not an OverflowError."""
    try:
        return _window_range(ctx, day, start, end)
    except OverflowError:
        option, value = next(
            (pair for pair in (("--date", day), ("--start", start), ("--end", end)) if pair[1] is not None),
            ("--date", day),
        )
        raise UsageError(f"{option}: {value!r} is too close to the ends of the calendar") from None


def _window_range(
    ctx: Context, day: str | None, start: str | None, end: str | None
) -> tuple[datetime, datetime]:
    """The UTC `[low, high)` that `pipestate windows` lists: the local day `day`
    (YYYY-MM-DD), or from `start` (default: the range's start) to `end`
    (default: a day later), or with neither the range's last local day. `start`
    and `end` are each a local date (its first instant), a local datetime, or an
    instant with an offset. UsageError naming the option otherwise."""
    tz = ctx.config.pipeline.tz
    if day is not None and (start is not None or end is not None):
        raise UsageError("--date: give --date, or --start/--end, not both")
    if day is not None:
        if len(day) != 10:
            raise UsageError(f"--date: not a date (YYYY-MM-DD): {day!r}")
        return day_bounds(_read_day(day, "--date"), tz)
    if start is None and end is None:
        with ctx.store.transaction(write=False) as conn:
            stop = settings_at(ctx, ctx.now(conn)).covered_stop
        return day_bounds(local_date_of(stop - timedelta(microseconds=1), tz), tz)
    low = _local_bound(start, "--start", tz) if start else ctx.config.pipeline.start_utc
    high = _local_bound(end, "--end", tz) if end else low + timedelta(days=1)
    if high <= low:
        raise UsageError(f"--end: must be after --start ({end!r} is not)")
    return low, high


def _read_day(value: str, option: str) -> date:
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise UsageError(f"{option}: not a date (YYYY-MM-DD): {value!r}") from err


def _local_bound(value: str, option: str, tz: ZoneInfo) -> datetime:
    if len(value) == 10:
        return day_bounds(_read_day(value, option), tz)[0]
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as err:
        raise UsageError(f"{option}: not a date or ISO 8601 datetime: {value!r}") from err
    if parsed.tzinfo is None:  # a wall clock of the pipeline's zone
        parsed = parsed.replace(tzinfo=tz)
    return parsed.astimezone(UTC)


def list_windows(
    ctx: Context,
    start: datetime,
    end: datetime,
    statuses: Sequence[str] = (),
    limit: int = 1000,
) -> dict[str, Any]:
    """The windows starting in `[start, end)` with their local times, at most `limit`."""
    store = ctx.store
    store.check_ready()
    tz = ctx.config.pipeline.tz
    with store.transaction(write=False) as conn:
        now = ctx.now(conn)
        rows, total = window_rows(
            conn, store.tables, store.raw_column, ctx.pipeline, start, end, statuses, limit
        )
    windows = []
    for row in rows:
        begin, finish = row[START_TIME], row[END_TIME]
        expires = row["lease_expires_at"]
        windows.append(
            {
                "batch_id": row["batch_id"],
                "start": iso(begin),
                "end": iso(finish),
                "local_start": _wall(begin, tz),
                "local_end": _wall(finish, tz),
                "local_date": local_date_of(begin, tz).isoformat() if begin else None,
                "duration_minutes": row[DURATION_MINUTES],
                "status": row["pipeline_status"],
                "step": row["current_step"],
                "retry_count": row["retry_count"] or 0,
                "worker_id": row["worker_id"],
                "lease_expires_at": iso(expires),
                "lease_expired": bool(
                    row["pipeline_status"] == Status.IN_PROGRESS and (not expires or expires <= now)
                ),
                "last_error": row["last_error"],
                "last_error_step": row["last_error_step"],
                "last_error_at": iso(row["last_error_at"]),
                "record_origin": row["record_origin"],
                "records": row["source_record_count"],
                "processing_seconds": row["processing_seconds"],
                "superseded_by": row["superseded_by"],
                "supersede_reason": row["supersede_reason"],
            }
        )
    return {
        "pipeline": ctx.pipeline,
        "timezone": ctx.config.pipeline.timezone,
        "now": iso(now),
        "start": iso(start),
        "end": iso(end),
        "statuses": list(statuses),
        "total": total,
        "shown": len(windows),
        "windows": windows,
    }


def _wall(instant: datetime | None, tz: ZoneInfo) -> str | None:
    """The wall clock of `tz` (no offset: it is a local time, not an instant;
    JSON instants stay UTC), beside the UTC instant."""
    return None if instant is None else instant.astimezone(tz).replace(tzinfo=None).isoformat()


def alert_data(ctx: Context) -> dict[str, Any]:
    """The figures to alert on, with `now`; see store.views.alert_figures."""
    store = ctx.store
    store.check_ready()
    with store.transaction(write=False) as conn:
        now = ctx.now(conn)
        figures = alert_figures(
            conn,
            store.tables,
            store.raw_column,
            ctx.pipeline,
            now,
            ctx.config.concurrency.max_retries,
        )
        # The copies `pipestate mirror` keeps: when each last ran, how many rows it is behind.
        from .mirror import freshness  # here: the mirror's modules load Arrow

        figures["mirrors"] = freshness(ctx, conn)
    settings = settings_at(ctx, now)
    figures["now"] = now
    figures["range_start"] = settings.start
    return figures


_LIST_LIMIT = 200


@dataclass
class ReportData:
    """What the HTML report shows, read in one transaction: the calendar with hours and steps,
    counts by status, the latest populate's decisions, failures (the first `_LIST_LIMIT` and the
    total) and leases."""

    calendar: Calendar
    counts: dict[str, int]
    populate: dict[str, Any] | None
    failures: list[dict[str, Any]]
    failures_total: int
    leases: dict[str, list[dict[str, Any]]]


def report_data(ctx: Context) -> ReportData:
    """Read what the report shows (validate aside, which the caller runs)."""
    store = ctx.store
    store.check_ready()
    with store.transaction(write=False) as conn:
        cal = calendar(ctx, hours=True, steps=True, conn=conn)
        counts: dict[str, int] = {
            status: sum(day.counts.get(status, 0) for day in cal.days) for status in STATUS_ORDER
        }
        populate = latest_populate(conn, store.tables, store.raw_column, ctx.pipeline, _LIST_LIMIT)
        far = datetime.max.replace(tzinfo=cal.now.tzinfo) - timedelta(days=2)
        failures, total = window_rows(
            conn,
            store.tables,
            store.raw_column,
            ctx.pipeline,
            datetime.min.replace(tzinfo=cal.now.tzinfo) + timedelta(days=2),
            far,
            (Status.FAILED,),
            _LIST_LIMIT,
        )
        lease_rows = leases(ctx, conn, cal.now)
    return ReportData(cal, counts, populate, failures, total, lease_rows)

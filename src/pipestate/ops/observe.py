"""What a person or an alert asks of a pipeline: its local days and their state,
the windows of a time range, and the figures worth alerting on.

Every function takes the Context first and only reads. Per-day figures are
aggregated by the database (store/daily.py); the day bounds come from
windows.py, so DST days are 23 or 25 hours long here as everywhere else.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from ..errors import UsageError
from ..plans import Gap, contract_gaps
from ..statuses import EXHAUSTED, STATUS_ORDER, Status
from ..store import spans
from ..store.daily import HOURS_PER_DAY_SLOT, DayBucket, bucket_rows
from ..store.schema import DURATION_MINUTES, END_TIME, START_TIME
from ..store.views import alert_figures, latest_populate, window_rows
from ..windows import day_bounds, iso, local_date_of, local_when, read_day, split_at_midnights
from .status import leases, status

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection

    from ..plans import Settings
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
    "status_and_calendar",
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
    gaps: list[Gap] = field(default_factory=list)  # the contract's gaps (populate's) in the day
    gap_seconds: int = 0  # their length inside the range
    new_seconds: int = 0  # time before the first or after the last window: new work, not a gap
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
    def covered_seconds(self) -> int:
        """The part of `expected_seconds` the active windows cover (overlapping time once)."""
        return max(self.expected_seconds - self.gap_seconds - self.new_seconds, 0)

    @property
    def gap(self) -> bool:
        """A gap of the contract's in the day (populate fills it with GAP_FILL windows)."""
        return self.expected_seconds > 0 and bool(self.gaps)

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
        if active and done == active and not self.new_seconds:
            return "completed"
        if self.counts.get(Status.PENDING, 0) == active:
            return "pending"  # new work alone (no window yet) is pending too
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
            "gaps": [{"start": iso(g.start), "end": iso(g.end), "kind": g.kind} for g in self.gaps],
            "new_work_minutes": round(self.new_seconds / 60, 3),
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
    ctx: Context,
    *,
    hours: bool = False,
    steps: bool = False,
    conn: Connection | None = None,
    swept: spans.Sweep | None = None,
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
            return calendar(ctx, hours=hours, steps=steps, conn=conn, swept=swept)
    now = ctx.now(conn)
    settings = settings_at(ctx, now)
    days = _range_days(settings)
    aggregate = partial(
        bucket_rows, conn, store.tables, ctx.pipeline, max_retries=ctx.config.concurrency.max_retries
    )
    for row in aggregate([(day.start, day.end) for day in days]):
        days[row.bucket].add(row)
    if hours:
        recent = days[-HOURS_FOR_DAYS:]
        for day in recent:
            day.hours = {}
        for row in aggregate([(day.start, day.end) for day in recent], hours=True, steps=steps):
            recent[row.bucket // HOURS_PER_DAY_SLOT].add_hour(row.bucket % HOURS_PER_DAY_SLOT, row)
    _lay_out(days, swept if swept is not None else spans.sweep(store, conn, ctx.pipeline), settings)
    return Calendar(
        ctx.pipeline,
        ctx.config.pipeline.timezone,
        now,
        settings.start,
        settings.covered_stop,
        days,
    )


def status_and_calendar(ctx: Context) -> tuple[dict[str, Any], Calendar]:
    """`status` and its calendar in one transaction, from one sweep of the windows."""
    ctx.store.check_ready()
    with ctx.store.transaction(write=False) as conn:
        swept = spans.sweep(ctx.store, conn, ctx.pipeline)
        return status(ctx, conn, swept), calendar(ctx, conn=conn, swept=swept)


def _lay_out(days: list[Day], swept: spans.Sweep, settings: Settings) -> None:
    """Give each day its gaps, new work and overlaps, from one sweep of the windows:
    the contract's gaps between the first start and the last end, the time of
    the range before the first or after the last window (new work), and the
    windows starting in the day before an earlier one ends."""
    if not days:
        return
    tz = settings.tz
    index_of = {day.date: index for index, day in enumerate(days)}
    low, high = settings.start, settings.covered_stop

    def each_day(start: datetime, end: datetime) -> Iterator[tuple[Day, float]]:
        for day, piece_start, piece_end, _, _ in split_at_midnights(max(start, low), min(end, high), tz):
            index = index_of.get(day)
            if index is not None:
                yield days[index], (piece_end - piece_start).total_seconds()

    for gap in contract_gaps(swept.gaps(), settings):
        index = index_of.get(gap.local_date)
        if index is not None:
            days[index].gaps.append(gap)
            days[index].gap_seconds += int(_length(gap.start, gap.end, low, high))
    if swept.first_start is None or swept.last_end is None:
        new_work = [(low, high)]
    else:
        new_work = [(low, swept.first_start), (swept.last_end, high)]
    for start, end in new_work:
        for day, seconds in each_day(start, end):
            day.new_seconds += int(seconds)
    for window in swept.overlaps():
        index = index_of.get(local_date_of(window.start, tz))
        if index is not None:
            day = days[index]
            day.overlaps += 1
            day.overlap_hours.add(int((window.start - day.start).total_seconds() // 3600))


def _length(start: datetime, end: datetime, low: datetime, high: datetime) -> float:
    return max((min(end, high) - max(start, low)).total_seconds(), 0.0)


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
        return day_bounds(read_day(day, "--date"), tz)
    if start is None and end is None:
        with ctx.store.transaction(write=False) as conn:
            stop = settings_at(ctx, ctx.now(conn)).covered_stop
        return day_bounds(local_date_of(stop - timedelta(microseconds=1), tz), tz)
    low = local_when(start, tz, "--start") if start else ctx.config.pipeline.start_utc
    high = local_when(end, tz, "--end") if end else low + timedelta(days=1)
    if high <= low:
        raise UsageError(f"--end: must be after --start ({end!r} is not)")
    return low, high


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
    # Data can be fresh up to min(now - lag, end): a finished range stops ageing.
    figures["fresh_as_of"] = settings.stop
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
        for day in cal.days:  # every status in the table is shown, another tool's too
            for status, count in day.counts.items():
                if status not in STATUS_ORDER and status != EXHAUSTED:
                    counts[str(status)] = counts.get(str(status), 0) + count
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

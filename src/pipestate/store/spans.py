"""Where a pipeline's active windows break, found in one pass: the gaps between them and the overlaps.

Sorted by (start, end, batch_id), the active windows of a healthy pipeline
tile time: each starts where the latest end before it lies. Only the windows
that do not (a gap before them, or an overlap with an earlier one) come back to
Python, each with that latest end, beside the count and the first start and
last end: a clean million windows cost one row. PostgreSQL and DuckDB compute
it with a window function; SQLite, whose window functions cost seconds a
million rows, reads the window index in order and compares the stored text as
stored, parsing only the breaks (`Backend.sweeps_in_sql`).

`plan_rows` is the same pass for populate's planner: the windows it must see one
by one (breaks, overlaps, whole days, unknown statuses), the others counted per
local day and duration.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import Text, and_, case, func, not_, null, or_, select, type_coerce
from sqlalchemy.engine import Connection

from ..statuses import Status
from ..windows import day_bounds, local_date_of, read_instant, read_stored_instant
from .daily import day_index, epoch_seconds
from .populate_sql import RANK_COLUMNS
from .schema import END_TIME, START_TIME
from .store import PG_READABLE, StateStore

_PG_FIRST_INSTANT, _PG_PAST_LAST_INSTANT = PG_READABLE

__all__ = ["Break", "PlanRows", "Sweep", "plan_rows", "sweep"]

# SQLite's own text form of an instant, which sorts like the instants.
_CANONICAL = (
    "-".join(("[0-9]" * 4, "[0-9]" * 2, "[0-9]" * 2)) + " " + ":".join(("[0-9]" * 2,) * 3) + "." + "[0-9]" * 6
)
# Windows this long or longer are seen one by one: one may be a whole local day.
_LONG_SECONDS = 12 * 3600


@dataclass(frozen=True, slots=True)
class Break:
    """A window that does not start where the active windows before it end."""

    start: datetime
    end: datetime
    before: datetime | None  # the latest end among the earlier windows; None for the first

    @property
    def gap(self) -> bool:
        return self.before is not None and self.start > self.before

    @property
    def overlap(self) -> bool:
        return self.before is not None and self.start < self.before


@dataclass
class Sweep:
    """The active windows (starting in the range asked), in one pass."""

    windows: int = 0
    first_start: datetime | None = None
    last_end: datetime | None = None
    breaks: list[Break] = field(default_factory=list)

    def gaps(self) -> list[tuple[datetime, datetime]]:
        """The uncovered stretches between the first start and the last end."""
        return [(b.before, b.start) for b in self.breaks if b.gap and b.before is not None]

    def overlaps(self) -> list[Break]:
        """The windows that start before an earlier one ends."""
        return [b for b in self.breaks if b.overlap]

    def covered_seconds(self, low: datetime, high: datetime) -> float:
        """Seconds of `[low, high)` the windows cover (overlapping time once)."""
        if self.first_start is None or self.last_end is None:
            return 0.0
        covered = _length(self.first_start, self.last_end, low, high)
        return covered - sum(_length(start, end, low, high) for start, end in self.gaps())


def _length(start: datetime, end: datetime, low: datetime, high: datetime) -> float:
    return max((min(end, high) - max(start, low)).total_seconds(), 0.0)


def _active(store: StateStore, start: datetime | None, end: datetime | None) -> list[Any]:
    """WHERE terms: the pipeline's non-SUPERSEDED rows with readable instants, end after start."""
    c = store.tables.state.c
    begin, finish = c.source_query_window_start_time, c.source_query_window_end_time
    terms: list[Any] = [c.pipeline_status != Status.SUPERSEDED, finish > begin]
    if store.backend.instants_beyond_python:
        terms += [begin >= _PG_FIRST_INSTANT, finish < _PG_PAST_LAST_INSTANT]
    if start is not None:
        terms.append(begin >= start)
    if end is not None:
        terms.append(begin < end)
    return terms


def sweep(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    start: datetime | None = None,
    end: datetime | None = None,
) -> Sweep:
    """The breaks of the pipeline's active windows starting in `[start, end)` (all
    without bounds). Rows whose instants cannot be read are left out (populate
    reports them as invalid rows)."""
    if store.backend.sweeps_in_sql:
        return _sweep_in_sql(store, conn, pipeline, start, end)
    return _sweep_index(store, conn, pipeline, start, end)


def _sweep_in_sql(
    store: StateStore, conn: Connection, pipeline: str, start: datetime | None, end: datetime | None
) -> Sweep:
    c = store.tables.state.c
    begin, finish = c.source_query_window_start_time, c.source_query_window_end_time
    where = [c.pipeline_name == pipeline, *_active(store, start, end)]
    order = (begin, finish)  # ties do not change the latest end before a window
    inner = (
        select(
            begin.label("start"),
            finish.label("end"),
            func.max(finish).over(order_by=order, rows=(None, -1)).label("before"),
            # the count and the last end ride along (one scan, not two)
            func.count().over().label("windows"),
            func.max(finish).over().label("last"),
        )
        .where(*where)
        .subquery("w")
    )
    w = inner.c
    stmt = select(w.start, w.end, w.before, w.windows, w.last).where(
        or_(w.before.is_(None), w.start != w.before)
    )
    found = Sweep()
    for row_start, row_end, before, windows, last in conn.execute(stmt):
        found.breaks.append(_break(row_start, row_end, before))
        found.windows, found.last_end = int(windows), read_stored_instant(last)
    found.breaks.sort(key=lambda b: (b.start, b.end))
    if found.breaks:  # the first window always breaks: nothing before it
        found.first_start = found.breaks[0].start
    return found


def _break(start: Any, end: Any, before: Any) -> Break:
    parsed_start, parsed_end = read_stored_instant(start), read_stored_instant(end)
    assert parsed_start is not None and parsed_end is not None
    return Break(parsed_start, parsed_end, read_stored_instant(before))


def _sweep_index(
    store: StateStore, conn: Connection, pipeline: str, start: datetime | None, end: datetime | None
) -> Sweep:
    """The window index in its order, the stored values compared as stored.

    SUPERSEDED rows are in the index too: their spans, read from the status
    index (few), are skipped as they come. Text in another form than the one
    SQLite's DateTime writes (fixed width, a space before the time) may sort
    unlike its instants: then the rows are parsed and sorted here instead.
    """
    c = store.tables.state.c
    begin, finish = c.source_query_window_start_time, c.source_query_window_end_time
    raw_start, raw_end = store.raw_column(START_TIME), store.raw_column(END_TIME)
    mine = [c.pipeline_name == pipeline]
    if start is not None:
        mine.append(begin >= start)
    if end is not None:
        mine.append(begin < end)
    skipped: Counter[tuple[Any, Any]] = Counter(
        (row[0], row[1])
        for row in conn.execute(
            select(raw_start, raw_end).where(*mine, c.pipeline_status == Status.SUPERSEDED)
        )
    )
    stmt = select(raw_start, raw_end).where(*mine).order_by(begin, finish, c.batch_id)
    chunks = store.read_chunks(conn, stmt)
    text = store.backend.instants_as_text
    found = Sweep()
    pending: list[tuple[Any, Any, Any]] = []  # breaks as stored
    windows = 0
    latest: Any = None
    first: Any = None
    try:
        for chunk in chunks:
            for row_start, row_end in chunk:
                if row_start is None or row_end is None or not row_end > row_start:
                    continue
                if skipped and (row_start, row_end) in skipped:
                    skipped[(row_start, row_end)] -= 1
                    if not skipped[(row_start, row_end)]:
                        del skipped[(row_start, row_end)]
                    continue
                if text and (len(row_end) != 26 or row_end[10] != " "):
                    return _sweep_parsed(store, conn, pipeline, start, end)
                windows += 1
                if row_start != latest:
                    if text and (len(row_start) != 26 or row_start[10] != " "):
                        return _sweep_parsed(store, conn, pipeline, start, end)
                    if first is None:
                        first = row_start
                    pending.append((row_start, row_end, latest))
                if latest is None or row_end > latest:
                    latest = row_end
    finally:
        chunks.close()
    breaks = [(read_instant(s), read_instant(e), read_instant(b)) for s, e, b in pending]
    if any(
        s is None or e is None or (raw is not None and b is None)
        for (s, e, b), (_, _, raw) in zip(breaks, pending, strict=True)
    ):
        return _sweep_parsed(store, conn, pipeline, start, end)  # text that only looks like ours
    found.windows = windows
    found.first_start = read_instant(first)
    found.last_end = read_instant(latest)
    # Equal instants stored as different text are no break.
    found.breaks = [Break(s, e, b) for s, e, b in breaks if s is not None and e is not None and s != b]
    return found


def _sweep_parsed(
    store: StateStore, conn: Connection, pipeline: str, start: datetime | None, end: datetime | None
) -> Sweep:
    """The same, every row parsed and sorted here (text in mixed forms)."""
    c = store.tables.state.c
    stmt = select(store.raw_column(START_TIME), store.raw_column(END_TIME)).where(
        c.pipeline_name == pipeline, c.pipeline_status != Status.SUPERSEDED
    )
    rows = []
    for chunk in store.read_chunks(conn, stmt):
        for raw_start, raw_end in chunk:
            s, e = read_instant(raw_start), read_instant(raw_end)
            if s is None or e is None or e <= s:
                continue
            if (start is not None and s < start) or (end is not None and s >= end):
                continue
            rows.append((s, e))
    rows.sort()
    found = Sweep(len(rows))
    latest: datetime | None = None
    for s, e in rows:
        if found.first_start is None:
            found.first_start = s
        if latest is None or s != latest:
            found.breaks.append(Break(s, e, latest))
        if latest is None or e > latest:
            latest = e
    found.last_end = latest
    return found


# -- populate ---------------------------------------------------------------------


@dataclass
class PlanRows:
    """What the planner needs of the active windows, from the database.

    `explicit`: the windows it must see one by one, sorted, each
    `(batch_id, start, end, status, updated_at, created_at, lease_expires_at, before)`
    (`before`: the latest end of the windows sorted before it). Every other
    window starts exactly at that latest end, overlaps nothing and is counted in
    `counted` by (local day of its start, its length in seconds).
    """

    explicit: list[tuple[Any, ...]]
    counted: dict[tuple[date, int], int]
    last_end: datetime | None
    invalid: list[tuple[str, str]]  # (batch_id, reason) of the rows that cannot be windows


def plan_rows(
    store: StateStore,
    conn: Connection,
    pipeline: str,
    tz: Any,
    duplicates: Sequence[str] = (),
) -> PlanRows | None:
    """Populate's reading of the pipeline in the database, or None where it cannot
    be done there exactly (SQLite text in other forms than its own): then the
    caller reads every row. Rows whose batch_id is in `duplicates` are left out."""
    state = store.tables.state
    c = state.c
    dialect = conn.dialect.name
    backend = store.backend
    if backend.epoch_seconds is None or backend.sub_second is None:
        return None
    begin, finish = c.source_query_window_start_time, c.source_query_window_end_time
    mine: list[Any] = [c.pipeline_name == pipeline, c.pipeline_status != Status.SUPERSEDED]
    if duplicates:
        mine.append(c.batch_id.not_in(list(duplicates)))
    readable: list[Any] = [begin.is_not(None), finish.is_not(None)]
    if backend.instants_beyond_python:
        readable += [begin >= _PG_FIRST_INSTANT, begin < _PG_PAST_LAST_INSTANT]
        readable += [finish >= _PG_FIRST_INSTANT, finish < _PG_PAST_LAST_INSTANT]
    if backend.instants_as_text:
        odd = or_(
            *(
                not_(type_coerce(x, Text()).op("GLOB", is_comparison=True)(_CANONICAL))
                for x in (begin, finish)
            )
        )
        if conn.execute(select(func.count()).where(*mine, *readable, odd)).scalar_one():
            return None
    valid = [*readable, finish > begin]
    invalid = [
        (
            str(batch_id),
            "end time is not after start time"
            if is_readable
            else "start or end time is missing or unreadable",
        )
        for batch_id, is_readable in conn.execute(
            select(c.batch_id, case((and_(*readable), True), else_=False)).where(*mine, not_(and_(*valid)))
        )
    ]
    first, last_start, last_end = conn.execute(
        select(func.min(begin), func.max(begin), func.max(finish)).where(*mine, *valid)
    ).one()
    first, last_start = read_stored_instant(first), read_stored_instant(last_start)
    if first is None or last_start is None:
        return PlanRows([], {}, None, invalid)
    days = _days(local_date_of(first, tz), local_date_of(last_start, tz), tz)
    seconds = epoch_seconds(begin, dialect)
    length = epoch_seconds(finish, dialect) - seconds
    order = (begin, finish, c.batch_id)
    known = c.pipeline_status.in_([str(status) for status in Status])
    rank = [
        c[name].label(name) if name not in store.absent_columns else null().label(name)
        for name in RANK_COLUMNS
    ]
    inner = (
        select(
            c.batch_id.label("batch_id"),
            begin.label("start"),
            finish.label("end"),
            c.pipeline_status.label("status"),
            *rank,
            func.max(finish).over(order_by=order, rows=(None, -1)).label("before"),
            func.max(finish).over(order_by=order, rows=(None, 0)).label("reach"),
            func.lead(begin).over(order_by=order).label("next_start"),
            # the database's order, ties by batch_id in its collation: `before` follows it
            func.row_number().over(order_by=order).label("n"),
            seconds.label("seconds"),
            length.label("length"),
            case(
                (
                    or_(
                        not_(known),
                        c.pipeline_status.is_(None),
                        backend.sub_second(begin),
                        backend.sub_second(finish),
                    ),
                    True,
                ),
                else_=False,
            ).label("odd"),
        )
        .where(*mine, *valid)
        .subquery("w")
    )
    w = inner.c
    explicit = or_(
        w.before.is_(None),
        w.start != w.before,
        w.next_start < w.reach,
        w.odd,
        w.length >= _LONG_SECONDS,
    )
    bucket = day_index(w.seconds, [bounds for _, bounds in days], dialect)
    assert bucket is not None
    # Grouped outside: DuckDB takes no bound parameter in a GROUP BY.
    keyed = select(
        case((explicit, w.batch_id), else_=None).label("one"),
        bucket.label("day"),
        *(w[name] for name in ("length", "start", "end", "status", *RANK_COLUMNS, "before", "n")),
    ).subquery("k")
    k = keyed.c
    stmt = select(
        k.one,
        k.day,
        k.length,
        func.count(),
        *(func.min(k[name]) for name in ("start", "end", "status", *RANK_COLUMNS, "before", "n")),
    ).group_by(k.one, k.day, k.length)
    rows: list[tuple[Any, ...]] = []
    counted: dict[tuple[date, int], int] = {}
    for row in conn.execute(stmt):
        if row[0] is None:
            key = (days[int(row[1])][0], int(row[2]))
            counted[key] = counted.get(key, 0) + int(row[3])
        else:
            rows.append((row[0], read_stored_instant(row[4]), read_stored_instant(row[5]), *row[6:]))
    rows.sort(key=lambda r: r[-1])
    rows = [r[:-1] for r in rows]
    return PlanRows(rows, counted, read_stored_instant(last_end), invalid)


def _days(first: date, last: date, tz: Any) -> list[tuple[date, tuple[datetime, datetime]]]:
    days = []
    day = first
    while day <= last:
        days.append((day, day_bounds(day, tz)))
        day += timedelta(days=1)
    return days

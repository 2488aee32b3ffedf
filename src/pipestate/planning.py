"""Pure planning for populate: analysis, gaps, overlap resolution and the fill plan.

`plan()` consumes the pipeline's non-superseded rows sorted by window and keeps
only what it must: per-day duration counts, the current cluster of overlapping
windows, and the gaps. A million clean windows cost a few counters, not a
million objects. No database here: tests call it with plain tuples.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

from .plans import (
    Analysis,
    Fill,
    InvalidRow,
    Plan,
    Resolution,
    Settings,
    UnsortedInput,
    Window,
    contract_gaps,
    dominant_unit,
    floor_to_grid,
)
from .statuses import Status
from .windows import (
    DAY,
    Step,
    day_bounds,
    local_date_of,
    read_instant,
    read_stored_instant,
    split_at_midnights,
)

_fromisoformat = datetime.fromisoformat

__all__ = ["plan", "plan_counted", "seconds_to_minutes"]

KNOWN_STATUSES = frozenset(Status)
_RANK_NAMES = (
    "completed windows rank first",
    "a window in progress under a live lease ranks before one that is not",
    "",
)
_FAR_PAST = datetime.min.replace(tzinfo=UTC)
_NO_VALUE = object()  # equal to no stored value, None included


class _DayCache:
    """Local day of sorted instants without a zoneinfo call per row."""

    def __init__(self, tz: ZoneInfo) -> None:
        self.tz = tz
        self.day: date | None = None
        self.bounds: tuple[datetime, datetime] | None = None

    def lookup(self, instant: datetime) -> tuple[date, datetime, datetime]:
        bounds = self.bounds
        if bounds is None or not bounds[0] <= instant < bounds[1]:
            self.day = local_date_of(instant, self.tz)
            self.bounds = bounds = day_bounds(self.day, self.tz)
        assert self.day is not None
        return self.day, bounds[0], bounds[1]


RankLookup = Callable[[list[str]], Mapping[str, tuple]]


class _Planner:
    def __init__(self, settings: Settings, ranks: RankLookup | None = None) -> None:
        self.settings = settings
        self.ranks = ranks
        self.analysis = Analysis()
        self.invalid: list[InvalidRow] = []
        self.resolutions: list[Resolution] = []
        self.raw_gaps: list[tuple[datetime, datetime]] = []
        self.covered_until: datetime | None = None
        self.cluster: list[tuple] = []
        self.cluster_end: datetime | None = None
        self.last_key: tuple[datetime, datetime] | None = None
        self.days = _DayCache(settings.tz)
        self.kept_days = _DayCache(settings.tz)
        # after resolution
        self.kept_units: dict[date, Counter[Step]] = {}
        self.kept_overall: Counter[Step] = Counter()
        self.kept_first: datetime | None = None
        self.kept_cursor: datetime | None = None
        self.holes: list[tuple[datetime, datetime]] = []
        # Counted by `consume`'s fast path, merged in `finish`: (day, length) of the
        # windows it saw; each was kept, alone in its cluster, except the ones it
        # handed back to the general path as the open cluster (`fast_unkept`).
        self.fast_seen: Counter[tuple[date, timedelta]] = Counter()
        self.fast_unkept: Counter[tuple[date, timedelta]] = Counter()

    def consume(self, rows: Iterable[tuple]) -> None:
        """Plan every row; instants may be datetimes or the text a database stores.

        A clean history is one window after another, each starting exactly where
        the previous one ended. Such a row cannot overlap anything, and the one
        before it is then alone in its cluster and kept: the fast path below only
        counts it. It compares the raw stored start with the previous raw end
        (no parse), parses one instant per row and counts runs of windows of the
        same day and length. Anything else (a gap, an overlap, an unreadable or
        unknown value, a whole-day window) goes through `add`, the general path,
        with the same result (a property test holds the two paths equal).
        """
        add = self.add
        known = KNOWN_STATUSES
        seen = self.fast_seen
        lookup = self.days.lookup
        fromiso = _fromisoformat
        tail: tuple = ()  # the open cluster's only window, as read
        tail_raw: object = _NO_VALUE  # its raw end, where the next fast row must start
        tail_start = tail_end = _FAR_PAST
        fast_tail = False  # the tail came through the fast path (else through `add`)
        run_day: date | None = None  # the current run: `run_n` fast rows of one day and length
        run_length: timedelta | None = None
        run_n = 0
        day: date | None = None
        day_start = day_end = _FAR_PAST
        for row in rows:
            if row[1] == tail_raw and row[3] in known:
                raw = row[2]
                end: datetime | None
                if type(raw) is str:
                    try:
                        end = fromiso(raw + "+00:00")
                    except ValueError:
                        end = read_instant(raw)
                    else:
                        if end.tzinfo is not UTC:  # a date alone, say: the lenient path
                            end = read_instant(raw)
                else:
                    end = read_instant(raw)
                start = tail_end
                if end is not None and end > start:
                    if not day_start <= start < day_end:
                        day, day_start, day_end = lookup(start)
                    if start != day_start or end != day_end:  # a whole local day counts as a DAY unit
                        if not fast_tail:  # the tail came through `add`: take it over
                            self.cluster = []
                            self._keep(tail_start, tail_end)
                            fast_tail = True
                        length = end - start
                        if length != run_length or day is not run_day:
                            if run_n:
                                seen[(run_day, run_length)] += run_n  # type: ignore[index]
                            run_day, run_length, run_n = day, length, 0
                        run_n += 1
                        tail, tail_raw, tail_start, tail_end = row, raw, start, end
                        continue
            if fast_tail:
                seen[(run_day, run_length)] += run_n  # type: ignore[index]
                self._flush_fast(tail, tail_start, tail_end, (run_day, run_length))  # type: ignore[arg-type]
                run_length, run_n, fast_tail = None, 0, False
            parsed = (row[0], read_instant(row[1]), read_instant(row[2]), *row[3:])
            add(parsed)
            cluster = self.cluster
            if len(cluster) == 1 and cluster[0] is parsed and self.covered_until == parsed[2]:
                tail, tail_raw, tail_start, tail_end = parsed, row[2], parsed[1], parsed[2]
            else:
                tail_raw = _NO_VALUE
        if fast_tail:
            seen[(run_day, run_length)] += run_n  # type: ignore[index]
            self._flush_fast(tail, tail_start, tail_end, (run_day, run_length))  # type: ignore[arg-type]

    def consume_counted(
        self, explicit: Iterable[tuple], counted: Mapping[tuple[date, int], int], last_end: datetime | None
    ) -> None:
        """Plan from what the database already reduced (store/spans.py `plan_rows`):
        the windows to see one by one, sorted, each with `before`, the latest end
        of the windows sorted before it; and the count of every other window per
        (local day, seconds). Those others start exactly at the latest end before
        them and overlap nothing: each is kept, alone, as `consume`'s fast path
        keeps such a window. Between two explicit windows they run from the
        latest end before the first (or its own end) to the second's `before`."""
        reach: datetime | None = None
        for row in explicit:
            before = row[7]
            if reach is not None and before is not None and before > reach:
                self._counted_run(reach, before)
                reach = before
            self.add(row[:7])
            reach = row[2] if reach is None or row[2] > reach else reach
        if reach is not None and last_end is not None and last_end > reach:
            self._counted_run(reach, last_end)
        for (day, seconds), count in counted.items():
            self.fast_seen[(day, timedelta(seconds=seconds))] += count

    def _counted_run(self, first_start: datetime, last_end: datetime) -> None:
        """Counted windows tile `[first_start, last_end)`: the open cluster ends
        before them, and they are kept."""
        if self.cluster:
            self._resolve()
        self.covered_until = last_end
        analysis = self.analysis
        if analysis.last_end is None or last_end > analysis.last_end:
            analysis.last_end = last_end
        if self.kept_first is None:
            self.kept_first = first_start
        elif first_start > self.kept_cursor:  # type: ignore[operator]
            self.holes.append((self.kept_cursor, first_start))  # type: ignore[arg-type]
        if self.kept_cursor is None or last_end > self.kept_cursor:
            self.kept_cursor = last_end

    def _flush_fast(self, tail: tuple, start: datetime, end: datetime, key: tuple[date, timedelta]) -> None:
        """Bring the general path's state up to the fast path's last row, `tail`,
        which becomes the open cluster again (so it is not kept by the fast path)."""
        self.fast_unkept[key] += 1
        analysis = self.analysis
        if analysis.last_end is None or end > analysis.last_end:
            analysis.last_end = end
        self.covered_until = end
        self.last_key = (start, end)
        self.kept_cursor = start  # the window before the tail was kept and ends here
        self.cluster = [(tail[0], start, end, *tail[3:])]
        self.cluster_end = end

    def add(self, row: tuple) -> None:
        batch_id, start, end, status = row[0], row[1], row[2], row[3]
        if start is None or end is None:
            self.invalid.append(
                InvalidRow(str(batch_id), "start or end time is missing or unreadable", False)
            )
            return
        if end <= start:
            self.invalid.append(InvalidRow(str(batch_id), "end time is not after start time", False))
            return
        if status not in KNOWN_STATUSES:
            self.invalid.append(
                InvalidRow(
                    str(batch_id),
                    f"unknown pipeline_status {status!r}; treated as an active, not completed window "
                    "(map it with [state] status_map, see docs/adopting.md)",
                    True,
                )
            )
        key = (start, end)
        if self.last_key is not None and key < self.last_key:
            raise UnsortedInput(batch_id)
        self.last_key = key

        analysis = self.analysis
        analysis.active_windows += 1
        if analysis.first_start is None:
            analysis.first_start = start
        if analysis.last_end is None or end > analysis.last_end:
            analysis.last_end = end
        seconds = int((end - start).total_seconds())
        analysis.distribution[seconds] += 1
        day = self.days.lookup(start)[0]
        per_day = analysis.by_day.get(day)
        if per_day is None:
            per_day = analysis.by_day[day] = Counter()
        per_day[seconds] += 1

        if self.covered_until is None:
            self.covered_until = end
        elif start > self.covered_until:
            self.raw_gaps.append((self.covered_until, start))
            self.covered_until = end
        elif end > self.covered_until:
            self.covered_until = end

        if self.cluster and start >= self.cluster_end:  # type: ignore[operator]
            self._resolve()
        if not self.cluster or end > self.cluster_end:  # type: ignore[operator]
            self.cluster_end = end
        self.cluster.append(row)

    # -- overlaps -----------------------------------------------------------------

    def _rank(self, window: Window) -> tuple:
        if window.status == Status.COMPLETED:
            rank = 0
        elif (
            window.status == Status.IN_PROGRESS
            and window.lease_expires_at is not None
            and window.lease_expires_at > self.settings.now
        ):
            rank = 1
        else:
            rank = 2
        updated = window.updated_at or _FAR_PAST
        created = window.created_at or _FAR_PAST
        return (rank, -updated.timestamp(), -created.timestamp(), window.batch_id)

    def _resolve(self) -> None:
        cluster, self.cluster = self.cluster, []
        if len(cluster) == 1:
            row = cluster[0]
            self._keep(row[1], row[2])
            return
        # updated_at, created_at and the lease arrive unparsed, or not at all
        # (stores skip them for the vast majority of rows, which overlap nothing).
        if self.ranks is not None and len(cluster[0]) < 7:
            found = self.ranks([r[0] for r in cluster])
            cluster = [(*r[:4], *found.get(r[0], (None, None, None))) for r in cluster]
        windows = [
            Window(
                str(r[0]),
                r[1],
                r[2],
                r[3],
                read_stored_instant(r[4]),
                read_stored_instant(r[5]),
                read_stored_instant(r[6]),
            )
            for r in cluster
        ]
        ranked = sorted(windows, key=self._rank)
        position = {id(w): i for i, w in enumerate(ranked)}
        kept: list[Window] = []  # disjoint, sorted by start
        starts: list[datetime] = []
        for window in ranked:
            # The kept windows overlapping `window` form a run ending just before
            # the first kept one that starts at or after window.end.
            index = bisect.bisect_left(starts, window.end)
            winner = None
            while index > 0 and kept[index - 1].end > window.start:
                candidate = kept[index - 1]
                if winner is None or position[id(candidate)] < position[id(winner)]:
                    winner = candidate
                index -= 1
            if winner is None:
                where = bisect.bisect_left(starts, window.start)
                starts.insert(where, window.start)
                kept.insert(where, window)
            else:
                self.resolutions.append(Resolution(winner, window, self._reason(winner, window)))
        for window in kept:
            self._keep(window.start, window.end)

    def _reason(self, kept: Window, loser: Window) -> str:
        kept_rank, loser_rank = self._rank(kept), self._rank(loser)
        overlap = f"[{max(kept.start, loser.start).isoformat()}, {min(kept.end, loser.end).isoformat()})"
        head = f"overlaps {kept.batch_id} on {overlap}; "
        if kept_rank[0] != loser_rank[0]:
            return head + (
                f"{kept.batch_id} is {kept.status}, this one {loser.status}: {_RANK_NAMES[kept_rank[0]]}"
            )
        if kept_rank[1] != loser_rank[1]:
            return head + (
                f"same rank ({kept.status} vs {loser.status}); {kept.batch_id} was updated later "
                f"({_iso(kept.updated_at)} > {_iso(loser.updated_at)})"
            )
        if kept_rank[2] != loser_rank[2]:
            return head + (
                f"same rank and updated_at; {kept.batch_id} was created later "
                f"({_iso(kept.created_at)} > {_iso(loser.created_at)})"
            )
        return head + "same rank, updated_at and created_at; the smaller batch_id wins"

    def _keep(self, start: datetime, end: datetime) -> None:
        day, day_start, day_end = self.kept_days.lookup(start)
        unit: Step = DAY if (start == day_start and end == day_end) else end - start
        units = self.kept_units.get(day)
        if units is None:
            units = self.kept_units[day] = Counter()
        units[unit] += 1
        self.kept_overall[unit] += 1
        if self.kept_first is None:
            self.kept_first = start
        elif start > self.kept_cursor:  # type: ignore[operator]
            self.holes.append((self.kept_cursor, start))  # type: ignore[arg-type]
        if self.kept_cursor is None or end > self.kept_cursor:
            self.kept_cursor = end

    # -- gaps and fills -----------------------------------------------------------

    def finish(self) -> Plan:
        if self.cluster:
            self._resolve()
        settings = self.settings
        analysis = self.analysis
        analysis.active_windows += self.fast_seen.total()
        for (day, length), count in self.fast_seen.items():
            seconds = int(length.total_seconds())
            analysis.distribution[seconds] += count
            per_day = analysis.by_day.get(day)
            if per_day is None:
                per_day = analysis.by_day[day] = Counter()
            per_day[seconds] += count
        for (day, length), count in (self.fast_seen - self.fast_unkept).items():
            units = self.kept_units.get(day)
            if units is None:
                units = self.kept_units[day] = Counter()
            units[length] += count
            self.kept_overall[length] += count
        low, stop = settings.start, settings.stop

        gaps = contract_gaps(self.raw_gaps, settings)

        overall_unit = dominant_unit(self.kept_overall)
        kept_dominant = {
            day: unit for day, counter in self.kept_units.items() if (unit := dominant_unit(counter))
        }
        fills: list[Fill] = []
        if self.kept_first is None or self.kept_cursor is None:
            self._fill(fills, low, stop, "SCHEDULED", None, {})
        else:
            # The span of the windows kept after resolution: a superseded window no
            # longer marks history, and the next run sees only the kept ones.
            span_start, span_end = self.kept_first, self.kept_cursor
            uncovered = [(low, span_start), *self.holes, (span_end, stop)]
            for first, last in uncovered:
                start, end = max(first, low), min(last, stop)
                if start >= end:
                    continue
                # Inside the history's span: gap fill; outside: new scheduled work.
                pieces = (
                    (start, min(end, span_start), "SCHEDULED"),
                    (max(start, span_start), min(end, span_end), "GAP_FILL"),
                    (max(start, span_end), end, "SCHEDULED"),
                )
                for piece_start, piece_end, origin in pieces:
                    if piece_start < piece_end:
                        self._fill(fills, piece_start, piece_end, origin, overall_unit, kept_dominant)
        return Plan(settings, analysis, gaps, self.resolutions, self.invalid, fills, kept_dominant)

    def _fill(
        self,
        fills: list[Fill],
        start: datetime,
        end: datetime,
        origin: str,
        overall_unit: Step | None,
        kept_dominant: dict[date, Step],
    ) -> None:
        settings = self.settings
        for day, piece_start, piece_end, day_start, day_end in split_at_midnights(start, end, settings.tz):
            if origin == "GAP_FILL":
                step = kept_dominant.get(day) or overall_unit or settings.step
            else:
                step = settings.step
            if piece_end == settings.stop and not settings.cut_at_stop:
                # Leave the unfinished cell for a later run. Floor on the configured
                # grid, not the fill's: the fill's step follows the day's dominant
                # duration, which this very fill can change, and a floor that moves
                # would make the next run with the same clock create more windows.
                piece_end = floor_to_grid(piece_end, day_start, day_end, settings.step)
            if piece_start < piece_end:
                fills.append(Fill(day, piece_start, piece_end, day_start, day_end, step, origin))


def _iso(value: datetime | None) -> str:
    return value.isoformat() if value is not None else "never"


def plan(rows: Iterable[tuple], settings: Settings, ranks: RankLookup | None = None) -> Plan:
    """Plan a populate from the pipeline's non-superseded rows sorted by (start, end).

    Each row is `(batch_id, start, end, status, updated_at, created_at,
    lease_expires_at)`; the instants are datetimes (naive ones are UTC) or
    stored text, and None or unreadable text makes the row invalid. Rows may
    stop after the status: `ranks(batch_ids)` then gives the last three of
    each row of an overlap, by batch_id.
    Raises UnsortedInput if the order is wrong.
    """
    planner = _Planner(settings, ranks)
    planner.consume(rows)
    return planner.finish()


def plan_counted(
    explicit: Iterable[tuple],
    counted: Mapping[tuple[date, int], int],
    last_end: datetime | None,
    invalid: Iterable[InvalidRow],
    settings: Settings,
) -> Plan:
    """`plan()` from the database's reduction of the rows (see `_Planner.consume_counted`);
    `invalid` are the rows it found that cannot be windows. The same plan as
    `plan()` over every row (a property test holds them equal)."""
    planner = _Planner(settings)
    planner.invalid.extend(invalid)
    planner.consume_counted(explicit, counted, last_end)
    return planner.finish()


def seconds_to_minutes(seconds: int) -> int | float:
    minutes = seconds / 60
    return int(minutes) if minutes.is_integer() else round(minutes, 4)

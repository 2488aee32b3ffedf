"""Unit, property and sweep tests for the pure window grid in `pipestate.windows`.

The hand-picked DST cases use past dates (2024 and earlier) so that a new tzdata
release cannot change them; the sweep and the properties cover whatever the
installed tzdata says.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate, repeat
from zoneinfo import ZoneInfo, available_timezones

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipestate.errors import UsageError
from pipestate.windows import (
    DAY,
    DayStep,
    Step,
    day_bounds,
    day_cells,
    format_step,
    grid_cells,
    local_date_of,
    local_when,
    parse_granularity,
    read_day,
    read_instant,
    read_stored_instant,
    require_utc,
    split_at_midnights,
    step_minutes,
    zone,
)

MICRO = timedelta(microseconds=1)
H = timedelta(hours=1)
M = timedelta(minutes=1)
ALL_ZONES = sorted(available_timezones())


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def wall(instant: datetime, tz: ZoneInfo) -> datetime:
    """The naive wall-clock reading of `instant` in `tz`."""
    return instant.astimezone(tz).replace(tzinfo=None)


def assert_tiles(
    cells: list[tuple[date, int, datetime, datetime]],
    start: datetime,
    end: datetime,
    tz: ZoneInfo,
    step: Step,
) -> None:
    """`cells` tile `[start, end)` exactly along the contract's grid (CONTRACT.md 3)."""
    cursor = start
    previous: tuple[date, int] | None = None
    for day, k, cell_start, cell_end in cells:
        where = f"{tz.key} {day} k={k} [{cell_start}, {cell_end})"
        assert cell_start == cursor, f"gap or overlap before {where}"
        assert cell_start < cell_end, f"empty cell {where}"
        assert previous is None or (day, k) > previous, f"cells out of order at {where}"
        assert local_date_of(cell_start, tz) == day, f"cell starts outside its day: {where}"
        assert local_date_of(cell_end - MICRO, tz) == day, f"cell crosses midnight: {where}"
        day_start, day_end = day_bounds(day, tz)
        if isinstance(step, DayStep):
            assert k == 0, where
            assert (cell_start, cell_end) == (max(day_start, start), min(day_end, end)), where
        else:
            assert cell_end - cell_start <= step, f"cell longer than the step: {where}"
            grid_start = day_start + k * step
            assert grid_start <= cell_start < grid_start + step, f"wrong k: {where}"
            # Only the cell cut by `start` may begin off the grid; only a day's
            # last cell and the one cut by `end` may be shorter than a step.
            assert cell_start in (grid_start, start), f"off the grid: {where}"
            assert cell_end == min(grid_start + step, day_end, end), f"wrong end: {where}"
        previous = (day, k)
        cursor = cell_end
    assert cursor == (end if end > start else start), f"{tz.key}: cells stop at {cursor}"


# --- parse_granularity / format_step / step_minutes --------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1m", M),
        ("15m", 15 * M),
        ("45m", 45 * M),
        ("90m", 90 * M),
        ("1440m", 24 * H),
        ("1h", H),
        ("24h", 24 * H),
        (" 2 h ", 2 * H),
        ("07m", 7 * M),
        ("1d", DAY),
    ],
)
def test_parse_granularity_accepts(text: str, expected: Step) -> None:
    assert parse_granularity(text) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "m",
        "15",
        "0m",
        "0h",
        "1441m",
        "25h",
        "0d",
        "2d",
        "1D",
        "1H",
        "-5m",
        "1.5h",
        "15 minutes",
        "1h30m",
        "90s",
        "99999999999999999999m",  # must not overflow timedelta into an OverflowError
        "\u0661\u0665m",  # Arabic-Indic digits: only ASCII 0-9 is a number here
    ],
)
def test_parse_granularity_rejects(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_granularity(text)


@pytest.mark.parametrize(
    ("step", "label"),
    [(DAY, "1d"), (M, "1m"), (15 * M, "15m"), (90 * M, "90m"), (2 * H, "2h"), (24 * H, "24h")]
    + [(timedelta(seconds=90), "90s")],
)
def test_format_step(step: Step, label: str) -> None:
    assert format_step(step) == label
    assert repr(DAY) == "DAY"


def test_format_step_round_trips_every_granularity() -> None:
    for minutes in range(1, 24 * 60 + 1):
        step = timedelta(minutes=minutes)
        assert parse_granularity(format_step(step)) == step
    assert parse_granularity(format_step(DAY)) is DAY


def test_step_minutes_rounds_down() -> None:
    assert step_minutes(utc(2024, 1, 1), utc(2024, 1, 1, 1)) == 60
    assert step_minutes(utc(2024, 1, 1), utc(2024, 1, 1, 0, 1, 59)) == 1
    assert step_minutes(utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)) == 23 * 60


def test_zone_and_require_utc() -> None:
    assert zone("Asia/Kolkata") == ZoneInfo("Asia/Kolkata")
    for bad in ("Mars/Olympus_Mons", "", "../etc/passwd"):
        with pytest.raises(ValueError, match="unknown IANA time zone"):
            zone(bad)
    kolkata = datetime(2024, 1, 1, 5, 30, tzinfo=ZoneInfo("Asia/Kolkata"))
    assert require_utc(kolkata) == utc(2024, 1, 1)
    assert require_utc(kolkata).tzinfo is UTC
    with pytest.raises(ValueError, match="start must be timezone-aware"):
        require_utc(datetime(2024, 1, 1), "start")


# --- day_bounds ---------------------------------------------------------------

# (zone, local day, first instant UTC, first instant of the next day UTC)
DAY_BOUNDS_CASES = [
    # New York: spring forward at 02:00 (23 h), fall back at 02:00 (25 h).
    ("America/New_York", date(2024, 3, 10), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
    ("America/New_York", date(2024, 11, 3), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
    ("America/New_York", date(2024, 11, 4), utc(2024, 11, 4, 5), utc(2024, 11, 5, 5)),
    # London: at 01:00 UTC, so the 25 h day starts the evening before in UTC.
    ("Europe/London", date(2024, 3, 31), utc(2024, 3, 31), utc(2024, 3, 31, 23)),
    ("Europe/London", date(2024, 10, 27), utc(2024, 10, 26, 23), utc(2024, 10, 28)),
    # Lord Howe shifts by 30 minutes: 24.5 h and 23.5 h days.
    ("Australia/Lord_Howe", date(2024, 4, 7), utc(2024, 4, 6, 13), utc(2024, 4, 7, 13, 30)),
    ("Australia/Lord_Howe", date(2024, 10, 6), utc(2024, 10, 5, 13, 30), utc(2024, 10, 6, 13)),
    # Fractional offsets without DST.
    ("Asia/Kolkata", date(2024, 3, 10), utc(2024, 3, 9, 18, 30), utc(2024, 3, 10, 18, 30)),
    ("Asia/Kathmandu", date(2024, 3, 10), utc(2024, 3, 9, 18, 15), utc(2024, 3, 10, 18, 15)),
    ("Australia/Eucla", date(2024, 3, 10), utc(2024, 3, 9, 15, 15), utc(2024, 3, 10, 15, 15)),
    # Santiago: 24:00 -> 01:00 skips midnight (the day starts at 01:00 -03);
    # 24:00 -> 23:00 repeats the hour before midnight (a 25 h Saturday).
    ("America/Santiago", date(2024, 9, 8), utc(2024, 9, 8, 4), utc(2024, 9, 9, 3)),
    ("America/Santiago", date(2024, 4, 6), utc(2024, 4, 6, 3), utc(2024, 4, 7, 4)),
    # Havana: 00:00 -> 01:00 skips midnight; 01:00 -> 00:00 repeats it.
    ("America/Havana", date(2024, 3, 9), utc(2024, 3, 9, 5), utc(2024, 3, 10, 5)),
    ("America/Havana", date(2024, 3, 10), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
    ("America/Havana", date(2024, 11, 3), utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)),
    # Beirut: midnight skipped in March, the hour before midnight repeated in October.
    ("Asia/Beirut", date(2024, 3, 31), utc(2024, 3, 30, 22), utc(2024, 3, 31, 21)),
    ("Asia/Beirut", date(2024, 10, 26), utc(2024, 10, 25, 21), utc(2024, 10, 26, 22)),
    # Azores: skipped midnight (-01 -> +00) and repeated midnight (+00 -> -01).
    ("Atlantic/Azores", date(2024, 3, 31), utc(2024, 3, 31, 1), utc(2024, 4, 1)),
    ("Atlantic/Azores", date(2024, 10, 27), utc(2024, 10, 27), utc(2024, 10, 28, 1)),
    # St. John's 2010: 00:01 -> 23:01 the day before; the day has begun before
    # the clock goes back to the previous date, and lasts 25 h.
    ("America/St_Johns", date(2010, 11, 7), utc(2010, 11, 7, 2, 30), utc(2010, 11, 8, 3, 30)),
    # Apia skipped 30 December 2011 (-10 -> +14): the day has no instant at all.
    ("Pacific/Apia", date(2011, 12, 29), utc(2011, 12, 29, 10), utc(2011, 12, 30, 10)),
    ("Pacific/Apia", date(2011, 12, 30), utc(2011, 12, 30, 10), utc(2011, 12, 30, 10)),
    ("Pacific/Apia", date(2011, 12, 31), utc(2011, 12, 30, 10), utc(2011, 12, 31, 10)),
]


@pytest.mark.parametrize(("name", "day", "start", "end"), DAY_BOUNDS_CASES)
def test_day_bounds(name: str, day: date, start: datetime, end: datetime) -> None:
    tz = ZoneInfo(name)
    assert day_bounds(day, tz) == (start, end)
    assert day_bounds(day + timedelta(days=1), tz)[0] == end
    assert day_bounds(day - timedelta(days=1), tz)[1] == start


def test_day_bounds_of_a_skipped_midnight_is_the_transition() -> None:
    tz = ZoneInfo("America/Havana")
    start, _ = day_bounds(date(2024, 3, 10), tz)
    assert wall(start - MICRO, tz) == datetime(2024, 3, 9, 23, 59, 59, 999999)
    assert wall(start, tz) == datetime(2024, 3, 10, 1)


def test_day_bounds_of_a_repeated_midnight_is_its_first_occurrence() -> None:
    tz = ZoneInfo("America/Havana")
    start, _ = day_bounds(date(2024, 11, 3), tz)
    assert start.astimezone(tz).utcoffset() == timedelta(hours=-4)  # CDT, before the repeat
    assert wall(start + H, tz) == datetime(2024, 11, 3)  # midnight again, in CST


def test_day_bounds_returns_utc() -> None:
    start, end = day_bounds(date(2024, 3, 10), ZoneInfo("Asia/Kolkata"))
    assert start.tzinfo is UTC and end.tzinfo is UTC


# --- local_date_of ------------------------------------------------------------


@pytest.mark.parametrize(("name", "day", "start", "end"), DAY_BOUNDS_CASES)
def test_local_date_of_at_day_bounds(name: str, day: date, start: datetime, end: datetime) -> None:
    tz = ZoneInfo(name)
    if start == end:  # a day without instants is nobody's date
        assert local_date_of(start, tz) == day + timedelta(days=1)
        assert local_date_of(start - MICRO, tz) == day - timedelta(days=1)
        return
    assert local_date_of(start, tz) == day
    assert local_date_of(end - MICRO, tz) == day
    assert local_date_of(start - MICRO, tz) != day
    assert local_date_of(end, tz) != day


def test_local_date_of_follows_the_day_bounds_not_the_wall_clock() -> None:
    # St. John's, 2010-11-07 00:01 -02:30 became 2010-11-06 23:01 -03:30: for an
    # hour the wall clock shows the 6th again, but the 7th has already begun.
    tz = ZoneInfo("America/St_Johns")
    instant = utc(2010, 11, 7, 3)
    assert wall(instant, tz) == datetime(2010, 11, 6, 23, 30)
    assert local_date_of(instant, tz) == date(2010, 11, 7)
    assert local_date_of(utc(2010, 11, 7, 2, 29), tz) == date(2010, 11, 6)


def test_local_date_of_accepts_any_aware_datetime() -> None:
    tz = ZoneInfo("America/New_York")
    tokyo = datetime(2024, 3, 10, 14, tzinfo=ZoneInfo("Asia/Tokyo"))  # 05:00 UTC
    assert local_date_of(tokyo, tz) == date(2024, 3, 10)
    assert local_date_of(tokyo - MICRO, tz) == date(2024, 3, 9)


# --- split_at_midnights -------------------------------------------------------


def test_split_at_midnights_empty_and_single_day() -> None:
    tz = ZoneInfo("America/New_York")
    assert list(split_at_midnights(utc(2024, 3, 10, 8), utc(2024, 3, 10, 8), tz)) == []
    assert list(split_at_midnights(utc(2024, 3, 10, 9), utc(2024, 3, 10, 8), tz)) == []
    day_start, day_end = utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)
    assert list(split_at_midnights(utc(2024, 3, 10, 8), utc(2024, 3, 10, 9), tz)) == [
        (date(2024, 3, 10), utc(2024, 3, 10, 8), utc(2024, 3, 10, 9), day_start, day_end)
    ]


def test_split_at_midnights_over_new_york_dst_days() -> None:
    tz = ZoneInfo("America/New_York")
    pieces = list(split_at_midnights(utc(2024, 3, 9, 17), utc(2024, 3, 11, 16), tz))
    assert [piece[:3] for piece in pieces] == [
        (date(2024, 3, 9), utc(2024, 3, 9, 17), utc(2024, 3, 10, 5)),
        (date(2024, 3, 10), utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),  # 23 h
        (date(2024, 3, 11), utc(2024, 3, 11, 4), utc(2024, 3, 11, 16)),
    ]
    assert [piece[3:] for piece in pieces] == [
        (utc(2024, 3, 9, 5), utc(2024, 3, 10, 5)),
        (utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)),
        (utc(2024, 3, 11, 4), utc(2024, 3, 12, 4)),
    ]


def test_split_at_midnights_skips_a_day_that_does_not_exist() -> None:
    tz = ZoneInfo("Pacific/Apia")
    pieces = list(split_at_midnights(utc(2011, 12, 29, 12), utc(2011, 12, 31, 12), tz))
    assert [(p[0], p[1], p[2]) for p in pieces] == [
        (date(2011, 12, 29), utc(2011, 12, 29, 12), utc(2011, 12, 30, 10)),
        (date(2011, 12, 31), utc(2011, 12, 30, 10), utc(2011, 12, 31, 10)),
        (date(2012, 1, 1), utc(2011, 12, 31, 10), utc(2011, 12, 31, 12)),
    ]


# --- day_cells ----------------------------------------------------------------


def test_day_cells_whole_day_and_cut() -> None:
    day_start, day_end = utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)  # New York, 23 h
    cells = list(day_cells(day_start, day_end, 45 * M, day_start, day_end))
    assert len(cells) == 31
    assert cells[0] == (0, day_start, day_start + 45 * M)
    assert cells[-1] == (30, day_start + 30 * 45 * M, day_end)
    assert day_end - cells[-1][1] == 30 * M
    # A piece starting mid-cell gets that cell's k and is cut at both ends.
    cut = list(day_cells(day_start, day_end, H, utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 8, 15)))
    assert cut == [
        (1, utc(2024, 3, 10, 6, 30), utc(2024, 3, 10, 7)),
        (2, utc(2024, 3, 10, 7), utc(2024, 3, 10, 8)),
        (3, utc(2024, 3, 10, 8), utc(2024, 3, 10, 8, 15)),
    ]
    assert list(day_cells(day_start, day_end, H, day_start, day_start)) == []


def test_day_cells_steps_as_long_as_the_day() -> None:
    day_start, day_end = utc(2024, 11, 3, 4), utc(2024, 11, 4, 5)  # New York, 25 h
    assert list(day_cells(day_start, day_end, DAY, day_start, day_end)) == [(0, day_start, day_end)]
    # A 24 h grid on a 25 h day: one full cell, then the last hour.
    assert list(day_cells(day_start, day_end, 24 * H, day_start, day_end)) == [
        (0, day_start, day_start + 24 * H),
        (1, day_start + 24 * H, day_end),
    ]
    short_start, short_end = utc(2024, 3, 10, 5), utc(2024, 3, 11, 4)  # 23 h
    assert list(day_cells(short_start, short_end, 24 * H, short_start, short_end)) == [
        (0, short_start, short_end)
    ]
    piece = (utc(2024, 11, 3, 10), utc(2024, 11, 3, 11))
    assert list(day_cells(day_start, day_end, DAY, *piece)) == [(0, *piece)]


# --- grid_cells ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "day", "step", "count", "last"),
    [
        ("America/New_York", date(2024, 3, 10), H, 23, H),
        ("America/New_York", date(2024, 3, 10), 45 * M, 31, 30 * M),
        ("America/New_York", date(2024, 11, 3), H, 25, H),
        ("America/New_York", date(2024, 11, 3), 45 * M, 34, 15 * M),
        ("America/New_York", date(2024, 11, 3), DAY, 1, 25 * H),
        ("Europe/London", date(2024, 10, 27), 15 * M, 100, 15 * M),
        ("Australia/Lord_Howe", date(2024, 10, 6), 45 * M, 32, 15 * M),
        ("Australia/Lord_Howe", date(2024, 4, 7), H, 25, 30 * M),
        ("Asia/Kathmandu", date(2024, 3, 10), 7 * M, 206, 5 * M),
        ("America/Santiago", date(2024, 9, 8), H, 23, H),
        ("America/Havana", date(2024, 11, 3), 24 * H, 2, H),
    ],
)
def test_grid_cells_over_one_day(name: str, day: date, step: Step, count: int, last: timedelta) -> None:
    tz = ZoneInfo(name)
    start, end = day_bounds(day, tz)
    cells = list(grid_cells(start, end, tz, step))
    assert len(cells) == count
    assert cells[-1][3] - cells[-1][2] == last
    assert {c[0] for c in cells} == {day}
    assert_tiles(cells, start, end, tz, step)


def test_grid_cells_in_half_hour_zone_sit_on_the_local_hour() -> None:
    tz = ZoneInfo("Asia/Kolkata")
    cells = list(grid_cells(utc(2024, 3, 9, 18, 30), utc(2024, 3, 9, 21), tz, H))
    assert [(c[1], c[2], c[3]) for c in cells] == [
        (0, utc(2024, 3, 9, 18, 30), utc(2024, 3, 9, 19, 30)),
        (1, utc(2024, 3, 9, 19, 30), utc(2024, 3, 9, 20, 30)),
        (2, utc(2024, 3, 9, 20, 30), utc(2024, 3, 9, 21)),
    ]


@pytest.mark.parametrize("step", [M, 7 * M, H, 24 * H, DAY])
def test_grid_cells_tile_the_skipped_apia_day(step: Step) -> None:
    tz = ZoneInfo("Pacific/Apia")
    start, end = utc(2011, 12, 29, 3, 17), utc(2012, 1, 1, 2)
    cells = list(grid_cells(start, end, tz, step))
    assert_tiles(cells, start, end, tz, step)
    assert date(2011, 12, 30) not in {c[0] for c in cells}
    boundary = utc(2011, 12, 30, 10)
    assert any(c[3] == boundary for c in cells)
    assert any(c[2] == boundary for c in cells)


def test_grid_cells_is_empty_for_an_empty_interval() -> None:
    tz = ZoneInfo("Europe/London")
    assert list(grid_cells(utc(2024, 1, 1), utc(2024, 1, 1), tz, H)) == []


# --- properties ---------------------------------------------------------------

granularities = st.one_of(st.integers(1, 24 * 60).map(lambda n: timedelta(minutes=n)), st.just(DAY))


@st.composite
def intervals(draw: st.DrawFn) -> tuple[ZoneInfo, datetime, datetime]:
    """A zone and a `[start, end)` of up to three days near a date of 1990-2040."""
    tz = ZoneInfo(draw(st.sampled_from(ALL_ZONES)))
    day = draw(st.dates(date(1990, 1, 1), date(2040, 12, 31)))
    if draw(st.booleans()):  # start on the zone's day boundary, a likely edge
        start = day_bounds(day, tz)[0]
    else:
        start = datetime.combine(day, time(), UTC) + timedelta(
            seconds=draw(st.integers(-14 * 3600, 38 * 3600)),
            microseconds=draw(st.sampled_from([0, 0, 0, 1, 999_999])),
        )
    length = draw(
        st.one_of(
            st.integers(0, 3 * 86400).map(lambda s: timedelta(seconds=s)),
            st.integers(0, 3).map(lambda n: timedelta(days=n)),
        )
    )
    end = start + length
    if draw(st.booleans()):  # end on a day boundary too
        end = day_bounds(local_date_of(end, tz), tz)[0]
        end = max(end, start)
    return tz, start, end


@settings(max_examples=300, deadline=None)
@given(intervals(), granularities)
def test_grid_cells_tile_any_interval(interval: tuple[ZoneInfo, datetime, datetime], step: Step):
    tz, start, end = interval
    assert_tiles(list(grid_cells(start, end, tz, step)), start, end, tz, step)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ALL_ZONES), st.dates(date(1990, 1, 1), date(2040, 12, 31)))
def test_day_bounds_is_the_first_instant_of_the_day(name: str, day: date) -> None:
    tz = ZoneInfo(name)
    start, end = day_bounds(day, tz)
    midnight = datetime.combine(day, time())
    assert start <= end
    assert day_bounds(day + timedelta(days=1), tz)[0] == end
    assert wall(start, tz) >= midnight
    assert wall(start - MICRO, tz) < midnight
    occurrences = [
        midnight.replace(tzinfo=tz, fold=fold).astimezone(UTC) for fold in (0, 1)
    ]  # both readings of midnight; in a gap neither shows midnight on the wall
    real = [instant for instant in occurrences if wall(instant, tz) == midnight]
    if real:
        assert start == min(real)
    if start < end:
        assert local_date_of(start, tz) == day
        assert local_date_of(end - MICRO, tz) == day


@settings(max_examples=200, deadline=None)
@given(intervals())
def test_split_at_midnights_partitions(interval: tuple[ZoneInfo, datetime, datetime]) -> None:
    tz, start, end = interval
    cursor = start
    for day, piece_start, piece_end, day_start, day_end in split_at_midnights(start, end, tz):
        assert piece_start == cursor < piece_end
        assert (day_start, day_end) == day_bounds(day, tz)
        assert day_start <= piece_start and piece_end <= day_end
        cursor = piece_end
    assert cursor == max(start, end)


# --- exhaustive sweep over 2020-2030 -------------------------------------------

SWEEP_DAYS = [date(2020, 1, 1) + timedelta(days=i) for i in range(4019)]  # to 2031-01-01
SWEEP_MIDNIGHTS = [datetime.combine(d, time()) for d in SWEEP_DAYS]
SWEEP_STEPS: list[Step] = [15 * M, 45 * M, H, 7 * M, 24 * H, DAY]
# The 1-minute grid on a sample of zones (every 8th, plus the odd ones) keeps the sweep fast.
ONE_MINUTE_ZONES = set(ALL_ZONES[::8]) | {
    "America/New_York",
    "America/Havana",
    "America/Santiago",
    "Asia/Beirut",
    "Atlantic/Azores",
    "Australia/Lord_Howe",
}


def offset_change_days(tz: ZoneInfo) -> list[tuple[date, timedelta, timedelta]]:
    """Days of 2020-2030 whose offset at midnight differs from the next day's.

    `utcoffset` of a naive wall time is cheap, and with fold=0 a skipped midnight
    reads the offset in force before the jump: the one the clock had at 24:00.
    """
    offsets = [tz.utcoffset(midnight) for midnight in SWEEP_MIDNIGHTS]
    return [
        (day, before, after)
        for day, before, after in zip(SWEEP_DAYS, offsets, offsets[1:], strict=False)
        if before != after
    ]


def expected_grid(day: date, start: datetime, end: datetime, step: Step) -> list[tuple]:
    """What `grid_cells` must yield for the whole day `[start, end)`, per CONTRACT.md 3."""
    if isinstance(step, DayStep):
        return [(day, 0, start, end)]
    count = math.ceil((end - start) / step)
    starts = list(accumulate(repeat(step, count - 1), initial=start))  # start + k*step
    return list(zip(repeat(day), range(count), starts, [*starts[1:], end], strict=False))


def test_sweep_every_offset_change_day_2020_2030() -> None:
    checked = 0
    for name in ALL_ZONES:
        tz = ZoneInfo(name)
        for day, before, after in offset_change_days(tz):
            where = f"{name} {day}"
            start, end = day_bounds(day, tz)
            previous_end = day_bounds(day - timedelta(days=1), tz)[1]
            next_start = day_bounds(day + timedelta(days=1), tz)[0]
            assert previous_end == start, f"{where}: previous day ends at {previous_end}"
            assert end == next_start, f"{where}: ends at {end}, next day starts {next_start}"
            # Clocks moving forward by an hour (-05:00 -> -04:00) make a 23 h day.
            assert end - start == timedelta(hours=24) - (after - before), (
                f"{where}: {end - start} long, offset {before} -> {after}"
            )
            midnight = datetime.combine(day, time())
            assert wall(start, tz) >= midnight > wall(start - MICRO, tz), f"{where}: {start}"
            steps = [M, *SWEEP_STEPS] if name in ONE_MINUTE_ZONES else SWEEP_STEPS
            for step in steps:
                cells = list(grid_cells(start, end, tz, step))
                expected = expected_grid(day, start, end, step)
                assert cells == expected, f"{where}: {format_step(step)} grid differs"
            checked += 1
    assert checked > 1000, f"only {checked} offset changes found: is tzdata installed?"


# -- reading stored instants ------------------------------------------------------------------------

_FORMATS = [
    lambda d: d.replace(tzinfo=None).isoformat(" ", "microseconds"),  # SQLite, as SQLAlchemy stores it
    lambda d: d.replace(tzinfo=None).isoformat(" "),
    lambda d: d.replace(tzinfo=None).isoformat(),
    lambda d: d.isoformat(),
    lambda d: d.isoformat().replace("+00:00", "Z"),
    lambda d: d.astimezone(ZoneInfo("Asia/Kolkata")).isoformat(),
    lambda d: " " + d.replace(tzinfo=None).isoformat(" ", "seconds") + " ",
    lambda d: d.date().isoformat(),
    lambda d: d.replace(tzinfo=None),
    lambda d: d,
    lambda d: d.astimezone(ZoneInfo("America/St_Johns")),
]


@given(
    st.datetimes(min_value=datetime(1900, 1, 2), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)),
    st.sampled_from(_FORMATS),
)
def test_read_instant_reads_every_stored_form_like_read_stored_instant(instant, form):
    value = form(instant)
    fast = read_instant(value)
    assert fast == read_stored_instant(value)
    assert fast is not None and fast.tzinfo is UTC


@given(st.text(alphabet="0123456789-: TZ+.", max_size=32))
def test_read_instant_agrees_with_read_stored_instant_on_any_text(text):
    assert read_instant(text) == read_stored_instant(text)


# -- one meaning of a date: what every command's --date/--start/--end reads -------------

BERLIN_DST_DAYS = [  # (local day, its hours): spring forward and fall back, now and in later years
    (date(2026, 3, 29), 23),
    (date(2026, 10, 25), 25),
    (date(2027, 3, 28), 23),
    (date(2028, 10, 29), 25),
    (date(2029, 3, 25), 23),
    (date(2030, 10, 27), 25),
]


@pytest.mark.parametrize(("day", "hours"), BERLIN_DST_DAYS)
def test_a_bare_date_is_the_local_day_in_every_year(day: date, hours: int) -> None:
    tz = zone("Europe/Berlin")
    low = local_when(day.isoformat(), tz, "--start")
    high = local_when((day + timedelta(days=1)).isoformat(), tz, "--end")
    assert (low, high) == day_bounds(day, tz)
    assert high - low == timedelta(hours=hours)


def test_a_wall_clock_is_local_and_an_offset_is_an_instant() -> None:
    tz = zone("Europe/Berlin")
    assert local_when("2026-03-29T12:00", tz, "--start") == datetime(2026, 3, 29, 10, tzinfo=UTC)
    assert local_when("2026-03-29T12:00Z", tz, "--start") == datetime(2026, 3, 29, 12, tzinfo=UTC)
    assert local_when("2026-03-29T12:00+01:00", tz, "--start") == datetime(2026, 3, 29, 11, tzinfo=UTC)


@pytest.mark.parametrize("text", ["2026-3-29", "yesterday", "2026-02-30", "2026-03-29 25:00"])
def test_an_unreadable_date_names_the_option(text: str) -> None:
    with pytest.raises(UsageError, match="^--end: "):
        local_when(text, zone("UTC"), "--end")
    with pytest.raises(UsageError, match="^--date: "):
        read_day(text, "--date")

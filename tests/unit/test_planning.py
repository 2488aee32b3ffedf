"""The pure planner (planning.py): analysis, gaps, overlap ranking, remediation; no database."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipestate.planning import plan
from pipestate.plans import Plan, Settings, UnsortedInput
from pipestate.windows import day_bounds, local_date_of, parse_granularity

NY = ZoneInfo("America/New_York")
FAR = datetime(2030, 1, 1, tzinfo=UTC)  # a live lease's expiry
NOW = datetime(2027, 1, 1, tzinfo=UTC)  # the default clock: long after every range
DAY1, DAY2 = datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)


def u(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def H(n: float) -> timedelta:
    return timedelta(hours=n)


def cfg(
    start: datetime = DAY1,
    end: datetime | None = DAY2,
    step: str = "1h",
    tz: ZoneInfo | str = "UTC",
    now: datetime = NOW,
    lag: timedelta = timedelta(0),
) -> Settings:
    zone = ZoneInfo(tz) if isinstance(tz, str) else tz
    return Settings(tz=zone, step=parse_granularity(step), start=start, end=end, horizon=now - lag, now=now)


def row(
    batch_id: str,
    start: datetime | None,
    end: datetime | None,
    status: str = "COMPLETED",
    updated: datetime | None = None,
    created: datetime | None = None,
    lease: datetime | None = None,
) -> tuple:
    return (batch_id, start, end, status, updated, created, lease)


def run(rows: list[tuple], settings: Settings) -> Plan:
    """The plan for `rows` given in any order (the store sorts them by window)."""
    ordered = sorted(rows, key=lambda r: (r[1] is not None, r[1] or FAR, r[2] or FAR, r[0]))
    return plan(ordered, settings)


def new(the_plan: Plan) -> list[tuple[datetime, datetime, str]]:
    return [(w.start, w.end, w.origin) for w in the_plan.new_windows()]


def hourly(first: datetime, count: int, prefix: str = "w", hours: float = 1) -> list[tuple]:
    return [row(f"{prefix}{i:03d}", first + H(i * hours), first + H((i + 1) * hours)) for i in range(count)]


# -- empty pipeline and the configured grid -------------------------------------------------------


def test_empty_pipeline_gets_the_configured_grid_as_scheduled_work():
    result = run([], cfg())
    windows = new(result)
    assert [(s, e) for s, e, _ in windows] == [
        (u(2026, 1, 1) + H(i), u(2026, 1, 1) + H(i + 1)) for i in range(24)
    ]
    assert {origin for *_, origin in windows} == {"SCHEDULED"}
    assert result.gaps == [] and result.resolutions == [] and result.invalid == []
    assert [w.sequence_in_day for w in result.new_windows()] == list(range(1, 25))


def test_clean_history_changes_nothing():
    result = run(hourly(u(2026, 1, 1), 24), cfg())
    assert not result.changes_anything
    assert result.analysis.active_windows == 24
    assert result.analysis.dominant_seconds == 3600
    assert result.gaps == []


# -- gaps -----------------------------------------------------------------------------------------


def test_every_gap_kind():
    rows = [
        row("d1a", u(2026, 1, 1, 0), u(2026, 1, 1, 10)),
        # between_windows 10:00-11:00
        row("d1b", u(2026, 1, 1, 11), u(2026, 1, 1, 20)),
        # end_of_day 20:00-24:00, then missing_day 01-02, then start_of_day 01-03 00:00-05:00
        row("d3", u(2026, 1, 3, 5), u(2026, 1, 4)),
    ]
    result = run(rows, cfg(end=u(2026, 1, 4)))
    assert [(g.start, g.end, g.kind, g.local_date) for g in result.gaps] == [
        (u(2026, 1, 1, 10), u(2026, 1, 1, 11), "between_windows", date(2026, 1, 1)),
        (u(2026, 1, 1, 20), u(2026, 1, 2), "end_of_day", date(2026, 1, 1)),
        (u(2026, 1, 2), u(2026, 1, 3), "missing_day", date(2026, 1, 2)),
        (u(2026, 1, 3), u(2026, 1, 3, 5), "start_of_day", date(2026, 1, 3)),
    ]
    assert {origin for *_, origin in new(result)} == {"GAP_FILL"}


def test_gaps_split_at_local_midnight_not_utc_midnight():
    # New York midnight is 05:00 UTC in January.
    rows = [row("a", u(2026, 1, 1, 5), u(2026, 1, 1, 15)), row("b", u(2026, 1, 2, 15), u(2026, 1, 3, 5))]
    result = run(rows, cfg(start=u(2026, 1, 1, 5), end=u(2026, 1, 3, 5), tz=NY))
    assert [(g.start, g.end, g.kind) for g in result.gaps] == [
        (u(2026, 1, 1, 15), u(2026, 1, 2, 5), "end_of_day"),
        (u(2026, 1, 2, 5), u(2026, 1, 2, 15), "start_of_day"),
    ]


def test_time_before_first_and_after_last_window_is_new_work_not_a_gap():
    rows = [row("mid", u(2026, 1, 1, 10), u(2026, 1, 1, 12), updated=u(2026, 1, 1))]
    result = run(rows, cfg(step="30m"))
    assert result.gaps == []
    windows = new(result)
    assert windows[0] == (u(2026, 1, 1, 0), u(2026, 1, 1, 0, 30), "SCHEDULED")
    assert windows[19] == (u(2026, 1, 1, 9, 30), u(2026, 1, 1, 10), "SCHEDULED")
    assert windows[20] == (u(2026, 1, 1, 12), u(2026, 1, 1, 12, 30), "SCHEDULED")
    assert len(windows) == 20 + 24
    assert {origin for *_, origin in windows} == {"SCHEDULED"}


def test_gaps_are_clipped_to_the_range():
    rows = [row("a", u(2025, 12, 31, 0), u(2025, 12, 31, 1)), row("b", u(2026, 1, 1, 3), u(2026, 1, 2))]
    result = run(rows, cfg())
    assert [(g.start, g.end, g.kind) for g in result.gaps] == [
        (u(2026, 1, 1), u(2026, 1, 1, 3), "start_of_day")
    ]


# -- dominant durations ---------------------------------------------------------------------------


def test_gap_filled_with_the_days_own_dominant_duration():
    day1 = [row("a", u(2026, 1, 1, 0), u(2026, 1, 1, 2)), row("b", u(2026, 1, 1, 2), u(2026, 1, 1, 4))]
    day1 += [row("c", u(2026, 1, 1, 4), u(2026, 1, 1, 5)), row("z", u(2026, 1, 1, 10), u(2026, 1, 2))]
    day2 = hourly(u(2026, 1, 2), 3, "h") + [row("y", u(2026, 1, 2, 6), u(2026, 1, 3))]
    result = run(day1 + day2, cfg(end=u(2026, 1, 3)))
    assert new(result) == [
        (u(2026, 1, 1, 5), u(2026, 1, 1, 6), "GAP_FILL"),  # on the day's 2h grid, cut to the stretch
        (u(2026, 1, 1, 6), u(2026, 1, 1, 8), "GAP_FILL"),
        (u(2026, 1, 1, 8), u(2026, 1, 1, 10), "GAP_FILL"),
        (u(2026, 1, 2, 3), u(2026, 1, 2, 4), "GAP_FILL"),  # day 2: 1h dominates
        (u(2026, 1, 2, 4), u(2026, 1, 2, 5), "GAP_FILL"),
        (u(2026, 1, 2, 5), u(2026, 1, 2, 6), "GAP_FILL"),
    ]


def test_tie_goes_to_the_longer_duration():
    rows = [row("a", u(2026, 1, 1, 0), u(2026, 1, 1, 1)), row("b", u(2026, 1, 1, 1), u(2026, 1, 1, 2))]
    rows += [row("c", u(2026, 1, 1, 2), u(2026, 1, 1, 5)), row("d", u(2026, 1, 1, 5), u(2026, 1, 1, 8))]
    rows += [row("z", u(2026, 1, 1, 17), u(2026, 1, 2))]
    result = run(rows, cfg())
    # two 1h, two 3h, one 7h: the tie of 1h and 3h goes to 3h
    assert result.analysis.dominant_seconds == 3 * 3600
    assert new(result) == [
        (u(2026, 1, 1, 8), u(2026, 1, 1, 9), "GAP_FILL"),
        (u(2026, 1, 1, 9), u(2026, 1, 1, 12), "GAP_FILL"),
        (u(2026, 1, 1, 12), u(2026, 1, 1, 15), "GAP_FILL"),
        (u(2026, 1, 1, 15), u(2026, 1, 1, 17), "GAP_FILL"),
    ]


def test_day_without_windows_uses_the_pipelines_dominant_duration():
    rows = hourly(u(2026, 1, 1), 6, "a", hours=4) + hourly(u(2026, 1, 3), 6, "c", hours=4)
    result = run(rows, cfg(end=u(2026, 1, 4), step="1h"))
    assert [g.kind for g in result.gaps] == ["missing_day"]
    assert new(result) == [
        (u(2026, 1, 2) + H(4 * i), u(2026, 1, 2) + H(4 * (i + 1)), "GAP_FILL") for i in range(6)
    ]


def test_dominant_uses_kept_windows_after_overlap_resolution():
    # Many 30m PENDING rows overlap a 6h COMPLETED one and lose: the day's kept windows are 6h.
    losers = [
        row(f"p{i}", u(2026, 1, 1, 0) + H(i / 2), u(2026, 1, 1, 0) + H((i + 1) / 2), "PENDING")
        for i in range(12)
    ]
    rows = losers + [
        row("big", u(2026, 1, 1, 0), u(2026, 1, 1, 6)),
        row("z", u(2026, 1, 1, 18), u(2026, 1, 2)),
    ]
    result = run(rows, cfg())
    assert result.analysis.dominant_seconds == 1800  # analysis counts every active window
    assert len(result.resolutions) == 12
    assert new(result) == [
        (u(2026, 1, 1, 6), u(2026, 1, 1, 12), "GAP_FILL"),
        (u(2026, 1, 1, 12), u(2026, 1, 1, 18), "GAP_FILL"),
    ]


def test_1d_history_fills_a_missing_dst_day_with_one_window():
    days = [date(2026, 3, 7), date(2026, 3, 9)]
    rows = [row(str(d), *day_bounds(d, NY)) for d in days]
    result = run(rows, cfg(start=day_bounds(days[0], NY)[0], end=day_bounds(days[1], NY)[1], tz=NY))
    assert new(result) == [(*day_bounds(date(2026, 3, 8), NY), "GAP_FILL")]
    assert new(result)[0][1] - new(result)[0][0] == H(23)


# -- overlaps -------------------------------------------------------------------------------------


def _resolved(result: Plan) -> list[tuple[str, str]]:
    return [(r.kept.batch_id, r.superseded.batch_id) for r in result.resolutions]


def _pair(a: tuple, b: tuple) -> list[tuple[str, str]]:
    fill = row("fill", u(2026, 1, 1, 3), u(2026, 1, 2))
    return _resolved(run([row("pre", u(2026, 1, 1), u(2026, 1, 1, 1)), a, b, fill], cfg()))


A = (u(2026, 1, 1, 1), u(2026, 1, 1, 3))
B = (u(2026, 1, 1, 2), u(2026, 1, 1, 3))
T1, T2 = u(2026, 1, 5), u(2026, 1, 6)


@pytest.mark.parametrize(
    ("a", "b", "winner"),
    [
        (row("a", *A, "COMPLETED"), row("b", *B, "IN_PROGRESS", T2, T2, FAR), "a"),
        (row("a", *A, "PENDING", T2), row("b", *B, "COMPLETED", T1), "b"),
        (row("a", *A, "FAILED", T2), row("b", *B, "COMPLETED", T1), "b"),
        (row("a", *A, "IN_PROGRESS", T1, lease=FAR), row("b", *B, "PENDING", T2), "a"),
        (row("a", *A, "IN_PROGRESS", T1, lease=FAR), row("b", *B, "FAILED", T2), "a"),
        # an expired lease ranks with the rest: then the later update wins
        (row("a", *A, "IN_PROGRESS", T1, lease=u(2026, 1, 1)), row("b", *B, "PENDING", T2), "b"),
        (
            row("a", *A, "IN_PROGRESS", T2, lease=u(2026, 1, 1)),
            row("b", *B, "IN_PROGRESS", T1, lease=FAR),
            "b",
        ),
        (row("a", *A, "IN_PROGRESS", T2, lease=None), row("b", *B, "IN_PROGRESS", T1, lease=FAR), "b"),
        (row("a", *A, "COMPLETED", T1), row("b", *B, "COMPLETED", T2), "b"),
        (row("a", *A, "COMPLETED", T2), row("b", *B, "COMPLETED", T1), "a"),
        (row("a", *A, "PENDING", T1, T1), row("b", *B, "PENDING", T1, T2), "b"),
        (row("a", *A, "PENDING", T1, T2), row("b", *B, "PENDING", T1, T1), "a"),
        (row("b", *A, "PENDING", T1, T1), row("a", *B, "PENDING", T1, T1), "a"),
        (row("a", *A, "PENDING", T1, T1), row("b", *B, "PENDING", T1, T1), "a"),
        (row("a", *A, "PENDING", None, None), row("b", *B, "PENDING", T1, None), "b"),
    ],
)
def test_overlap_ranking(a, b, winner):
    loser = "b" if winner == "a" else "a"
    assert _pair(a, b) == [(winner, loser)]


def test_reason_is_human_readable_and_names_the_winner():
    result = run([row("a", *A, "COMPLETED", T1), row("b", *B, "PENDING", T2)], cfg(start=A[0], end=A[1]))
    (resolution,) = result.resolutions
    assert "a" in resolution.reason and "COMPLETED" in resolution.reason
    assert "overlaps" in resolution.reason


def test_chain_is_resolved_greedily_middle_wins():
    a = row("a", u(2026, 1, 1, 0), u(2026, 1, 1, 2), "PENDING", T1)
    b = row("b", u(2026, 1, 1, 1), u(2026, 1, 1, 3), "COMPLETED", T1)
    c = row("c", u(2026, 1, 1, 2), u(2026, 1, 1, 4), "PENDING", T2)
    result = run([a, b, c, row("z", u(2026, 1, 1, 4), u(2026, 1, 2))], cfg())
    assert sorted(_resolved(result)) == [("b", "a"), ("b", "c")]
    # what the losers covered alone is filled again: before the first kept window it is new
    # work (the superseded `a` no longer marks history), inside the kept span a gap fill
    assert new(result) == [
        (u(2026, 1, 1, 0), u(2026, 1, 1, 1), "SCHEDULED"),
        (u(2026, 1, 1, 3), u(2026, 1, 1, 4), "GAP_FILL"),
    ]


def test_chain_is_resolved_greedily_ends_win():
    a = row("a", u(2026, 1, 1, 0), u(2026, 1, 1, 2), "COMPLETED", T1)
    b = row("b", u(2026, 1, 1, 1), u(2026, 1, 1, 3), "PENDING", T2)
    c = row("c", u(2026, 1, 1, 2), u(2026, 1, 1, 4), "COMPLETED", T2)
    result = run([a, b, c, row("z", u(2026, 1, 1, 4), u(2026, 1, 2))], cfg())
    # c ranks first (later update), a is kept (touches c only), b overlaps both: superseded by c
    assert _resolved(result) == [("c", "b")]
    assert new(result) == []


def test_window_contained_in_another():
    outer = row("outer", u(2026, 1, 1, 0), u(2026, 1, 1, 4), "PENDING", T1)
    inner = row("inner", u(2026, 1, 1, 1), u(2026, 1, 1, 2), "COMPLETED", T1)
    rest = hourly(u(2026, 1, 1, 4), 20, "z")
    result = run([outer, inner, *rest], cfg())
    assert _resolved(result) == [("inner", "outer")]
    assert [(s, e) for s, e, _ in new(result)] == [
        (u(2026, 1, 1, 0), u(2026, 1, 1, 1)),
        (u(2026, 1, 1, 2), u(2026, 1, 1, 3)),
        (u(2026, 1, 1, 3), u(2026, 1, 1, 4)),
    ]
    result = run([row("outer", *outer[1:3], "COMPLETED"), row("inner", *inner[1:3], "PENDING"), *rest], cfg())
    assert _resolved(result) == [("outer", "inner")] and new(result) == []


def test_identical_windows_overlap():
    result = run([row("b", *A, "PENDING", T1), row("a", *A, "PENDING", T1)], cfg(start=A[0], end=A[1]))
    assert _resolved(result) == [("a", "b")]


def test_touching_is_not_overlapping():
    result = run(hourly(u(2026, 1, 1), 24), cfg())
    assert result.resolutions == []


# -- invalid rows ---------------------------------------------------------------------------------


def test_invalid_rows_are_reported_and_left_out():
    rows = hourly(u(2026, 1, 1), 24) + [
        row("nostart", None, u(2026, 1, 1, 5)),
        row("noend", u(2026, 1, 1, 5), None),
        row("backwards", u(2026, 1, 1, 6), u(2026, 1, 1, 5)),
        row("empty", u(2026, 1, 1, 6), u(2026, 1, 1, 6)),
    ]
    result = run(rows, cfg())
    assert sorted(i.batch_id for i in result.invalid) == ["backwards", "empty", "noend", "nostart"]
    assert not any(i.active for i in result.invalid)
    assert result.analysis.active_windows == 24
    assert not result.changes_anything


def test_unknown_status_is_reported_but_still_occupies_its_window():
    rows = hourly(u(2026, 1, 1), 24)
    rows[5] = row("odd", rows[5][1], rows[5][2], "DONE")
    result = run(rows, cfg())
    assert [(i.batch_id, i.active) for i in result.invalid] == [("odd", True)]
    assert not result.changes_anything
    # it ranks below COMPLETED in an overlap
    clash = row("c", rows[5][1], rows[5][2], "COMPLETED")
    assert _resolved(run([*rows, clash], cfg())) == [("c", "odd")]


def test_unsorted_input_is_refused():
    with pytest.raises(UnsortedInput):
        plan(list(reversed(hourly(u(2026, 1, 1), 3))), cfg())


# -- lag, horizon and the configured end ----------------------------------------------------------


def test_no_window_ends_after_now_minus_lag_and_the_unfinished_cell_waits():
    result = run([], cfg(end=None, now=u(2026, 1, 1, 5, 10), lag=timedelta(minutes=15)))
    windows = new(result)
    assert windows[-1][:2] == (u(2026, 1, 1, 3), u(2026, 1, 1, 4))  # 04:00-05:00 ends after 04:55
    result = run([], cfg(end=None, now=u(2026, 1, 1, 5, 15), lag=timedelta(minutes=15)))
    assert new(result)[-1][:2] == (u(2026, 1, 1, 4), u(2026, 1, 1, 5))


def test_horizon_before_configured_end_leaves_the_cell_for_later():
    result = run([], cfg(end=u(2026, 1, 2), now=u(2026, 1, 1, 5, 30)))
    assert new(result)[-1][:2] == (u(2026, 1, 1, 4), u(2026, 1, 1, 5))


def test_gap_fill_also_stops_at_the_horizon():
    rows = [row("a", u(2026, 1, 1, 0), u(2026, 1, 1, 2)), row("future", u(2026, 1, 1, 10), u(2026, 1, 1, 12))]
    result = run(rows, cfg(now=u(2026, 1, 1, 5, 30)))
    # The fill sits on the day's 2h grid; the horizon is floored on the configured 1h grid
    # (stable whatever the fill does to the day's dominant duration), so [4, 5) is cut.
    assert [(s, e) for s, e, _ in new(result)] == [
        (u(2026, 1, 1, 2), u(2026, 1, 1, 4)),
        (u(2026, 1, 1, 4), u(2026, 1, 1, 5)),
    ]


def test_configured_end_mid_cell_cuts_the_last_window():
    result = run([], cfg(end=u(2026, 1, 1, 5, 20)))
    assert new(result)[-1][:2] == (u(2026, 1, 1, 5), u(2026, 1, 1, 5, 20))


def test_range_start_mid_cell_stays_on_the_days_grid():
    result = run([], cfg(start=u(2026, 1, 1, 10, 30), end=u(2026, 1, 1, 13)))
    assert [(s, e) for s, e, _ in new(result)] == [
        (u(2026, 1, 1, 10, 30), u(2026, 1, 1, 11)),
        (u(2026, 1, 1, 11), u(2026, 1, 1, 12)),
        (u(2026, 1, 1, 12), u(2026, 1, 1, 13)),
    ]


# -- DST days in America/New_York -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("day", "step", "count", "last_minutes"),
    [
        (date(2026, 3, 8), "1h", 23, 60),
        (date(2026, 11, 1), "1h", 25, 60),
        (date(2026, 3, 8), "45m", 31, 30),  # 1380 min = 30 * 45 + 30
        (date(2026, 11, 1), "45m", 34, 15),  # 1500 min = 33 * 45 + 15
        (date(2026, 3, 8), "1d", 1, 23 * 60),
        (date(2026, 11, 1), "1d", 1, 25 * 60),
        (date(2026, 3, 7), "45m", 32, 0 + 45),  # 1440 = 32 * 45
    ],
)
def test_dst_days_in_new_york(day, step, count, last_minutes):
    start, end = day_bounds(day, NY)
    windows = new(run([], cfg(start=start, end=end, step=step, tz=NY)))
    assert len(windows) == count
    assert windows[0][0] == start and windows[-1][1] == end
    assert windows[-1][1] - windows[-1][0] == timedelta(minutes=last_minutes)
    assert all(w1[1] == w2[0] for w1, w2 in zip(windows, windows[1:], strict=False))
    # the grid is absolute time from local midnight: after spring-forward, 03:00 local is 2h in
    if step == "1h" and day.month == 3:
        assert windows[2][0].astimezone(NY).hour == 3


def test_dst_gap_fill_over_fall_back_day_counts_a_25h_missing_day():
    d0, d1, d2 = date(2026, 10, 31), date(2026, 11, 1), date(2026, 11, 2)
    rows = [row("a", *day_bounds(d0, NY)), row("c", *day_bounds(d2, NY))]
    result = run(rows, cfg(start=day_bounds(d0, NY)[0], end=day_bounds(d2, NY)[1], tz=NY))
    assert [(g.kind, g.end - g.start) for g in result.gaps] == [("missing_day", H(25))]
    assert new(result) == [(*day_bounds(d1, NY), "GAP_FILL")]


# -- properties -----------------------------------------------------------------------------------

ZONES = [
    "UTC",
    "America/New_York",
    "Europe/London",
    "Australia/Lord_Howe",
    "America/Santiago",
    "Asia/Kolkata",
]
GRANULARITIES = ["15m", "45m", "1h", "90m", "7h", "24h", "1d"]
STATUSES = ["PENDING", "IN_PROGRESS", "COMPLETED", "FAILED"]
# Ranges around DST changes of the zones above (and a quiet one).
ANCHORS = [
    u(2026, 3, 7),
    u(2026, 3, 28),
    u(2026, 4, 4),
    u(2026, 9, 5),
    u(2026, 10, 24),
    u(2026, 10, 31),
    u(2026, 6, 1),
]


@st.composite
def histories(draw):
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    anchor = draw(st.sampled_from(ANCHORS))
    start = anchor + timedelta(minutes=15 * draw(st.integers(0, 96)))
    stop = start + timedelta(minutes=15 * draw(st.integers(1, 4 * 96)))
    rows = []
    for index in range(draw(st.integers(0, 12))):
        offset = timedelta(minutes=15 * draw(st.integers(-40, 4 * 96 + 40)))
        length = timedelta(minutes=draw(st.sampled_from([15, 30, 45, 60, 60, 60, 120, 180, 360, 1440, 1500])))
        w_start = start + offset
        status = draw(st.sampled_from(STATUSES))
        lease = draw(st.sampled_from([None, FAR, u(2020, 1, 1)]))
        updated = anchor - timedelta(minutes=draw(st.integers(0, 3)))
        created = anchor - timedelta(minutes=draw(st.integers(0, 3)))
        rows.append(row(f"r{index:02d}", w_start, w_start + length, status, updated, created, lease))
    step = draw(st.sampled_from(GRANULARITIES))
    return zone, step, start, stop, rows


def _apply(rows: list[tuple], result: Plan) -> list[tuple]:
    losers = {r.superseded.batch_id for r in result.resolutions}
    kept = [r for r in rows if r[0] not in losers]
    created = [
        row(f"n{i:04d}", w.start, w.end, "PENDING", FAR, FAR) for i, w in enumerate(result.new_windows())
    ]
    return kept + created


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(histories())
def test_plan_tiles_the_range_and_is_idempotent(history):
    zone, step, start, stop, rows = history
    settings_ = cfg(start=start, end=stop, step=step, tz=zone)
    result = run(rows, settings_)
    losers = {r.superseded.batch_id for r in result.resolutions}
    kept = [(r[1], r[2]) for r in rows if r[0] not in losers]
    fresh = [(w.start, w.end) for w in result.new_windows()]

    # no overlap among kept windows, nor between kept and new ones
    everything = sorted(kept + fresh)
    for (_, end_a), (start_b, _) in zip(everything, everything[1:], strict=False):
        assert end_a <= start_b
    # [start, stop) tiled exactly
    inside = [(max(s, start), min(e, stop)) for s, e in everything if e > start and s < stop]
    assert inside[0][0] == start and inside[-1][1] == stop
    for (_, end_a), (start_b, _) in zip(inside, inside[1:], strict=False):
        assert end_a == start_b
    # new windows: inside the range, never across a local midnight, on their day
    for w in result.new_windows():
        assert start <= w.start < w.end <= stop
        day_start, day_end = day_bounds(w.local_date, zone)
        assert day_start <= w.start and w.end <= day_end
        assert local_date_of(w.start, zone) == w.local_date
    # every loser lost to a kept window it overlaps
    for resolution in result.resolutions:
        assert resolution.kept.batch_id not in losers
        assert resolution.kept.overlaps(resolution.superseded)

    again = run(_apply(rows, result), settings_)
    assert again.fills == [] and again.resolutions == []
    assert [g for g in again.gaps] == []


def test_superseded_window_reaching_past_the_horizon_does_not_break_idempotence():
    # The loser reaches into the future; the kept span ends at 02:00, so what follows is new
    # work on the configured 1h grid, the same the next run sees (it used to be a 2h gap fill,
    # and the second run then created 04:00-05:00).
    rows = [
        row("done", u(2026, 1, 1, 0), u(2026, 1, 1, 2)),
        row("long", u(2026, 1, 1, 1), u(2026, 1, 1, 10), "PENDING"),
    ]
    settings_ = cfg(end=None, now=u(2026, 1, 1, 5, 30))
    result = run(rows, settings_)
    assert new(result) == [(u(2026, 1, 1, h), u(2026, 1, 1, h + 1), "SCHEDULED") for h in (2, 3, 4)]
    again = run(_apply(rows, result), settings_)
    assert again.fills == [] and again.resolutions == []


def test_future_windows_and_a_dominance_flip_at_the_horizon():
    # The horizon is floored on the configured grid, which no fill can change.
    rows = [
        row("r01", u(2026, 3, 7, 0), u(2026, 3, 7, 0, 15), "PENDING"),
        row("r00", u(2026, 3, 8, 0), u(2026, 3, 8, 0, 15), "PENDING"),
        row("r02", u(2026, 3, 8, 1), u(2026, 3, 8, 1, 30), "PENDING"),  # beyond the horizon
    ]
    settings_ = cfg(
        start=u(2026, 3, 7), end=None, step="15m", now=u(2026, 3, 8, 1, 7), lag=timedelta(minutes=10)
    )
    result = run(rows, settings_)
    again = run(_apply(rows, result), settings_)
    assert again.fills == []


@settings(max_examples=60, deadline=None)
@given(histories(), st.integers(0, 4 * 96))
def test_horizon_is_never_exceeded(history, minutes_in):
    zone, step, start, stop, rows = history
    now = start + timedelta(minutes=15 * minutes_in + 7)
    result = run(rows, cfg(start=start, end=None, step=step, tz=zone, now=now, lag=timedelta(minutes=10)))
    assert all(w.end <= now - timedelta(minutes=10) for w in result.new_windows())
    again = run(
        _apply(rows, result),
        cfg(start=start, end=None, step=step, tz=zone, now=now, lag=timedelta(minutes=10)),
    )
    assert again.fills == [] and again.resolutions == []


# -- the fast path for clean histories gives the general path's plan --------------------------------


def _stored_text(instant: datetime | None, style: int) -> object:
    """An instant as a database or another tool may hand it over."""
    if instant is None or style == 0:
        return instant
    naive = instant.astimezone(UTC).replace(tzinfo=None)
    if style == 1:
        return naive.isoformat(" ", "microseconds")  # SQLite, as SQLAlchemy stores it
    if style == 2:
        return naive
    return instant.astimezone(UTC).isoformat().replace("+00:00", "Z")


@st.composite
def chains(draw):
    """Mostly contiguous windows, with the events that break a chain mixed in."""
    zone = ZoneInfo(draw(st.sampled_from(ZONES)))
    anchor = draw(st.sampled_from(ANCHORS))
    cursor = anchor + timedelta(minutes=15 * draw(st.integers(0, 96)))
    style = draw(st.integers(0, 3))
    rows = []
    for index in range(draw(st.integers(0, 60))):
        event = draw(st.sampled_from(["next"] * 8 + ["gap", "overlap", "bad", "unknown", "day", "mixed"]))
        length = timedelta(minutes=draw(st.sampled_from([15, 30, 60, 60, 180])))
        start = cursor
        status = draw(st.sampled_from(STATUSES))
        if event == "gap":
            start = cursor + timedelta(minutes=15 * draw(st.integers(1, 8)))
        elif event == "overlap":
            start = cursor - timedelta(minutes=15 * draw(st.integers(1, 8)))
        elif event == "unknown":
            status = "DONE?"
        elif event == "day":
            day = local_date_of(cursor, zone) + timedelta(days=1)
            start, day_end = day_bounds(day, zone)
            length = day_end - start
        end = start + length
        if event == "bad":
            end = draw(st.sampled_from([None, start, start - length]))
        text_style = draw(st.integers(0, 3)) if event == "mixed" else style
        updated = anchor - timedelta(minutes=draw(st.integers(0, 3)))
        rows.append(
            row(
                f"c{index:03d}",
                _stored_text(start, text_style),
                _stored_text(end, text_style),
                status,
                updated,
                updated,
                draw(st.sampled_from([None, FAR])),
            )
        )
        if end is not None and end > cursor:
            cursor = end
    step = draw(st.sampled_from(GRANULARITIES))
    return zone, step, anchor, rows


def _general_path(rows: list[tuple], settings_: Settings) -> Plan:
    from pipestate.planning import _Planner
    from pipestate.windows import read_instant

    planner = _Planner(settings_)
    for r in rows:
        planner.add((r[0], read_instant(r[1]), read_instant(r[2]), *r[3:]))
    return planner.finish()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_fast_path_plans_exactly_like_the_general_path(history):
    from pipestate.windows import read_instant

    zone, step, anchor, rows = history
    settings_ = cfg(start=anchor, end=anchor + timedelta(days=4), step=step, tz=zone)

    def key(r: tuple) -> tuple:
        start, end = read_instant(r[1]), read_instant(r[2])
        return (start is not None, start or FAR, end or FAR, r[0])

    ordered = sorted(rows, key=key)
    fast, general = plan(ordered, settings_), _general_path(ordered, settings_)
    assert vars(fast.analysis) == vars(general.analysis)
    assert fast.gaps == general.gaps
    assert fast.resolutions == general.resolutions
    assert fast.invalid == general.invalid
    assert fast.fills == general.fills
    assert fast.kept_dominant == general.kept_dominant

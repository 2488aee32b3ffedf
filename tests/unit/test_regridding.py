"""The pure regrid planner: which windows move to a new grid, and the windows that replace them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from pipestate.regridding import Old, plan_regrid
from pipestate.windows import DAY, day_bounds, grid_cells, zone

BERLIN = zone("Europe/Berlin")
H = timedelta(hours=1)


def _day(year: int, month: int, day: int) -> tuple[datetime, datetime]:
    from datetime import date

    return day_bounds(date(year, month, day), BERLIN)


def _windows(start: datetime, end: datetime, step: timedelta, status: str = "PENDING", prefix: str = "w"):
    return [
        Old(f"{prefix}{k}-{s.isoformat()}", s, e, status)
        for _, k, s, e in grid_cells(start, end, BERLIN, step)
    ]


def test_a_dst_day_of_half_hours_becomes_hours_cut_at_a_completed_window() -> None:
    low, high = _day(2027, 3, 28)  # 23 hours in Berlin
    assert high - low == 23 * H
    rows = _windows(low, high, timedelta(minutes=30))
    # two half hours in the middle of the day are done: they stay
    done = {rows[9].batch_id, rows[10].batch_id}
    rows = [Old(r.batch_id, r.start, r.end, "COMPLETED" if r.batch_id in done else r.status) for r in rows]
    plan = plan_regrid(rows, BERLIN, H, low, high)
    (day,) = plan.days
    assert len(day.before) == 46 - 2 and day.stays == 2
    starts = [s for s, _ in day.after]
    ends = [e for _, e in day.after]
    # tiled exactly: the day minus the completed hour [low + 4.5h, low + 5.5h)
    assert starts[0] == low and ends[-1] == high
    assert (low + 4.5 * H, low + 5.5 * H) not in day.after
    assert (low + 4 * H, low + 4.5 * H) in day.after and (low + 5.5 * H, low + 6 * H) in day.after
    covered = sum((e - s for s, e in day.after), timedelta()) + H
    assert covered == 23 * H
    assert plan.stayed == {"COMPLETED windows stay": 2}


def test_a_day_already_on_the_new_grid_is_left_alone_and_in_progress_stays() -> None:
    first, _ = _day(2026, 10, 25)
    _, last = _day(2026, 10, 26)
    rows = _windows(first, last, H)
    rows[3] = Old(rows[3].batch_id, rows[3].start, rows[3].end, "IN_PROGRESS")
    assert plan_regrid(rows, BERLIN, H, first, last).days == []
    to_day = plan_regrid(rows, BERLIN, DAY, first, last)
    assert [d.local_date.isoformat() for d in to_day.days] == ["2026-10-25", "2026-10-26"]
    # the 25-hour day: cut around the hour in progress
    assert to_day.days[0].after == [(first, rows[3].start), (rows[3].end, first + 25 * H)]
    assert to_day.days[1].after == [(first + 25 * H, last)]


def test_loaded_windows_and_windows_crossing_the_range_stay() -> None:
    low, high = _day(2026, 3, 29)
    rows = _windows(low, high, timedelta(minutes=30))
    rows[0] = Old(rows[0].batch_id, rows[0].start, rows[0].end, "FAILED", loaded=True)
    plan = plan_regrid(rows, BERLIN, H, low + 15 * timedelta(minutes=1), high)
    assert plan.stayed == {"loaded once: their rows in the target carry their batch id": 1}
    assert plan.days[0].after[0] == (rows[1].start, low + H)


@settings(max_examples=60, deadline=None)
@given(
    old_minutes=st.sampled_from([15, 30, 60, 90, 180]),
    new_minutes=st.sampled_from([10, 30, 60, 120, 24 * 60]),
    kept=st.sets(st.integers(0, 40), max_size=6),
    first_day=st.sampled_from([(2026, 3, 28), (2028, 10, 28), (2030, 3, 30)]),
)
def test_the_new_windows_tile_exactly_what_the_old_ones_left(
    old_minutes, new_minutes, kept, first_day
) -> None:
    low, _ = _day(*first_day)
    high = low + 3 * 24 * H  # three days around a DST change
    rows = _windows(low, high, timedelta(minutes=old_minutes))
    rows = [
        Old(r.batch_id, r.start, r.end, "COMPLETED" if i in kept else "PENDING") for i, r in enumerate(rows)
    ]
    plan = plan_regrid(rows, BERLIN, timedelta(minutes=new_minutes), low, high)
    replaced = {o.batch_id for o in plan.superseded}
    spans = sorted(
        [(r.start, r.end) for r in rows if r.batch_id not in replaced]
        + [span for day in plan.days for span in day.after]
    )
    assert spans[0][0] == low and spans[-1][1] == high
    for (_, end), (start, _) in zip(spans, spans[1:], strict=False):
        assert end == start  # no gap, no overlap
    for day in plan.days:  # no new window crosses a local midnight
        for start, end in day.after:
            assert (
                start.astimezone(BERLIN).date() == (end - timedelta(microseconds=1)).astimezone(BERLIN).date()
            )
    assert all(r.status == "PENDING" for r in plan.superseded)
    assert sum(1 for _ in plan.fills) >= 0 and all(
        s.tzinfo is UTC or s.utcoffset() == timedelta(0) for s, _ in spans
    )

"""The per-day calendar, the window listing and the alert figures, on every database.

The day of every window is worked out again in Python with windows.py and
compared with what the SQL aggregate says, across DST changes and odd zones.
"""

from __future__ import annotations

from collections import Counter

import pytest
from support import external_row, insert_external, utc

from pipestate.show.metrics import metrics_json
from pipestate.windows import local_date_of, zone


def _populated(manager_factory, now=None, **pipeline):
    manager = manager_factory(now=now or utc(2026, 12, 1), **pipeline)
    manager.populate_pipeline_batches()
    return manager


def _complete_all(manager, worker="w1", until=None):
    while (batch := manager.claim(worker)) is not None:
        if until is not None and batch.start >= until:
            manager.release(batch.batch_id, worker)
            return
        manager.complete(batch.batch_id, worker)


@pytest.mark.parametrize(
    ("timezone", "granularity", "start", "end"),
    [
        ("America/New_York", "1h", "2026-03-06", "2026-03-10"),  # spring forward: a 23-hour day
        ("America/New_York", "15m", "2026-10-30", "2026-11-03"),  # fall back: a 25-hour day
        ("Australia/Lord_Howe", "30m", "2026-04-03", "2026-04-07"),  # half-hour DST change
        ("Asia/Kolkata", "1h", "2026-01-01", "2026-01-04"),  # +05:30: days start at 18:30 UTC
        ("America/Havana", "1h", "2026-03-07", "2026-03-10"),  # DST skips midnight: day starts 01:00
        ("UTC", "1d", "2026-01-01", "2026-01-08"),
    ],
)
def test_each_window_counts_for_the_local_day_its_start_falls_in(
    manager_factory, timezone, granularity, start, end
):
    manager = _populated(manager_factory, timezone=timezone, granularity=granularity, start=start, end=end)
    tz = zone(timezone)
    calendar = manager.calendar()
    expected = Counter(local_date_of(batch_start, tz) for batch_start in _starts(manager))
    assert {day.date: day.active for day in calendar.days} == dict(expected)
    for day in calendar.days:
        assert day.state == "pending"
        assert day.covered_seconds == day.expected_seconds == (day.end - day.start).total_seconds()
    hourly = manager.calendar(hours=True)
    for day in hourly.days:
        assert sum(counts["PENDING"] for counts in day.hours.values()) == day.active
        for hour, counts in day.hours.items():
            starts = [s for s in _starts(manager) if local_date_of(s, tz) == day.date]
            in_hour = [s for s in starts if int((s - day.start).total_seconds() // 3600) == hour]
            assert counts["PENDING"] == len(in_hour)


def _starts(manager):
    listing = manager.list_windows(utc(1990, 1, 1), utc(2100, 1, 1), limit=100_000)
    from pipestate.windows import read_instant

    return [read_instant(window["start"]) for window in listing["windows"]]


def test_days_take_the_most_urgent_state(manager_factory):
    manager = _populated(
        manager_factory,
        timezone="America/New_York",
        granularity="6h",
        start="2026-03-02",
        end="2026-03-09",
        now=utc(2026, 3, 20),
    )
    config = manager.config.concurrency
    assert config.max_retries >= 1
    # 03-02 .. 03-03 completed; 03-04 one failed for good; 03-05 half done; rest pending
    _complete_all(manager, until=utc(2026, 3, 4, 5))
    first = manager.claim("w1")
    for _ in range(config.max_retries):
        manager.fail(first.batch_id, "w1", "boom <b>", step="source")
        with manager.store.engine.begin() as conn:  # no backoff wait in the test
            conn.execute(
                manager.store.tables.state.update()
                .where(manager.store.tables.state.c.batch_id == first.batch_id)
                .values(next_attempt_at=None)
            )
        again = manager.claim("w1")
        if again is None:
            break
        if again.batch_id != first.batch_id:
            manager.release(again.batch_id, "w1")
            break
    _complete_all(manager, until=utc(2026, 3, 5, 17))
    # 03-07: an overlap from another tool; 03-08 (23 hours): a window gone missing
    insert_external(manager, [external_row("foreign", utc(2026, 3, 7, 8), utc(2026, 3, 7, 9), "PENDING")])
    state = manager.store.tables.state
    with manager.store.engine.begin() as conn:
        conn.execute(state.delete().where(state.c.source_query_window_start_time == utc(2026, 3, 8, 11)))
    calendar = manager.calendar()
    states = {day.date.isoformat(): day.state for day in calendar.days}
    assert states == {
        "2026-03-02": "completed",
        "2026-03-03": "completed",
        "2026-03-04": "failed",
        "2026-03-05": "in_progress",
        "2026-03-06": "pending",
        "2026-03-07": "gap",
        "2026-03-08": "gap",
    }
    by_date = {day.date.isoformat(): day for day in calendar.days}
    assert by_date["2026-03-07"].overlaps == 1 and not by_date["2026-03-07"].gap
    assert by_date["2026-03-08"].gap and not by_date["2026-03-08"].overlaps
    assert by_date["2026-03-08"].expected_seconds == 23 * 3600
    assert by_date["2026-03-04"].failed_permanently == 1
    assert calendar.totals() == {
        "failed": 1,
        "gap": 2,
        "in_progress": 1,
        "pending": 1,
        "completed": 2,
        "outside": 0,
    }
    data = calendar.to_dict()
    assert data["days"][0]["start"] == "2026-03-02T05:00:00+00:00"
    assert data["days"][6]["counts"]["PENDING"] == 3


def test_a_shifted_window_is_an_overlap_even_when_the_minutes_add_up(manager_factory):
    """[0,6) [5,11) [12,18) [18,24): as many minutes as the day has, an overlap and a gap:
    the overlapping hour counts once, so the gap shows."""
    manager = manager_factory(start="2026-01-01", end="2026-01-02", granularity="6h")
    rows = [
        external_row("a", utc(2026, 1, 1, 0), utc(2026, 1, 1, 6)),
        external_row("b", utc(2026, 1, 1, 5), utc(2026, 1, 1, 11)),
        external_row("c", utc(2026, 1, 1, 12), utc(2026, 1, 1, 18)),
        external_row("d", utc(2026, 1, 1, 18), utc(2026, 1, 2, 0)),
    ]
    insert_external(manager, rows)
    (day,) = manager.calendar().days
    assert day.covered_seconds == day.expected_seconds - 3600
    assert [(g.start, g.end, g.kind) for g in day.gaps] == [
        (utc(2026, 1, 1, 11), utc(2026, 1, 1, 12), "between_windows")
    ]
    assert day.overlaps == 1 and day.state == "gap"
    # populate repairs it: "b" is SUPERSEDED, [6, 12) becomes a PENDING window
    manager.populate_pipeline_batches()
    (day,) = manager.calendar().days
    assert (day.overlaps, day.gap, day.state) == (0, False, "in_progress")
    assert day.counts == {"COMPLETED": 3, "PENDING": 1, "SUPERSEDED": 1}


def test_superseded_rows_do_not_make_an_overlap(manager_factory):
    manager = manager_factory(start="2026-01-01", end="2026-01-03", granularity="1h")
    insert_external(
        manager,
        [
            external_row("big", utc(2026, 1, 1, 0), utc(2026, 1, 1, 12), "PENDING"),
            external_row("done", utc(2026, 1, 1, 6), utc(2026, 1, 1, 7), "COMPLETED"),
        ],
    )
    manager.populate_pipeline_batches()
    calendar = manager.calendar()
    assert [day.overlaps for day in calendar.days] == [0, 0]
    assert all(not day.gap for day in calendar.days)
    assert calendar.days[0].counts["SUPERSEDED"] == 1


def test_an_unfinished_last_day_expects_time_only_up_to_now_minus_lag(manager_factory):
    manager = _populated(
        manager_factory, start="2026-01-01", end=None, granularity="1h", now=utc(2026, 1, 2, 6)
    )
    calendar = manager.calendar()
    assert [day.expected_seconds for day in calendar.days] == [86400, 6 * 3600]
    assert [day.state for day in calendar.days] == ["pending", "pending"]


def test_list_windows_gives_local_and_utc_times(manager_factory):
    manager = _populated(
        manager_factory, timezone="America/New_York", granularity="1h", start="2026-03-08", end="2026-03-09"
    )
    listing = manager.list_windows(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4))
    assert listing["total"] == listing["shown"] == 23
    second = listing["windows"][1]
    assert second["start"] == "2026-03-08T06:00:00+00:00"
    assert second["local_start"] == "2026-03-08T01:00:00"
    assert second["local_end"] == "2026-03-08T03:00:00"  # the hour DST skips
    assert second["local_date"] == "2026-03-08"
    limited = manager.list_windows(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), ("PENDING",), limit=5)
    assert (limited["total"], limited["shown"]) == (23, 5)
    assert manager.list_windows(utc(2026, 3, 8, 5), utc(2026, 3, 9, 4), ("FAILED",))["total"] == 0


def test_alert_figures_follow_the_completed_prefix(manager_factory):
    manager = _populated(manager_factory, start="2026-01-01", end="2026-01-02", granularity="1h")
    figures = manager.alert_data()
    assert figures["complete_until"] is None and figures["range_start"] == utc(2026, 1, 1)
    assert figures["oldest_pending"]["end"] == utc(2026, 1, 1, 1)
    _complete_all(manager, until=utc(2026, 1, 1, 5))
    figures = manager.alert_data()
    assert figures["complete_until"] == utc(2026, 1, 1, 5)
    assert figures["counts"] == {"COMPLETED": 5, "PENDING": 19}
    held = manager.claim("w2")
    assert held.start == utc(2026, 1, 1, 5)
    stuck_clock = manager_factory(
        now=utc(2026, 12, 2), start="2026-01-01", end="2026-01-02", granularity="1h"
    )
    figures = stuck_clock.alert_data()
    assert figures["stuck_leases"] == 1
    assert figures["complete_until"] == utc(2026, 1, 1, 5)
    assert figures["oldest_pending"]["start"] == utc(2026, 1, 1, 6)
    manager.complete(held.batch_id, "w2")
    _complete_all(manager)
    assert manager.alert_data()["complete_until"] == utc(2026, 1, 2)
    # A range with an end, all of it done: fresh, however long ago the end was.
    assert metrics_json(manager.pipeline, manager.alert_data())["freshness_seconds"] == 0


def test_the_report_counts_every_status_in_the_table(manager_factory):
    manager = manager_factory(start="2026-01-01", end="2026-01-02", granularity="1h", now=utc(2026, 1, 3))
    insert_external(
        manager,
        [
            external_row("a", utc(2026, 1, 1, 0), utc(2026, 1, 1, 1), "COMPLETED"),
            external_row("b", utc(2026, 1, 1, 1), utc(2026, 1, 1, 2), "ARCHIVED"),
        ],
    )
    counts = manager.report_data().counts
    assert counts["COMPLETED"] == 1 and counts["ARCHIVED"] == 1

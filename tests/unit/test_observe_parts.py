"""The observing pieces that need no database: day segments, overlap scans,
the calendar's text, the metrics' format."""

from __future__ import annotations

import io
from collections import Counter
from datetime import UTC, date, datetime, timedelta

from prometheus_client.parser import text_string_to_metric_families

from pipestate.ops.observe import Calendar, Day
from pipestate.show.metrics import metrics_text
from pipestate.show.terminal import render_calendar
from pipestate.store.daily import _segments
from pipestate.store.spans import Break, Sweep
from pipestate.windows import day_bounds, zone


def _year_bounds(tz_name: str, year: int) -> list[tuple[datetime, datetime]]:
    tz = zone(tz_name)
    first = date(year, 1, 1)
    return [day_bounds(first + timedelta(days=n), tz) for n in range((date(year + 1, 1, 1) - first).days)]


def test_plain_days_merge_into_runs_and_dst_days_stand_alone():
    segments = _segments(_year_bounds("America/New_York", 2026))
    # Jan 1 .. Mar 7, Mar 8 (23 h), Mar 9 .. Oct 31, Nov 1 (25 h), Nov 2 .. Dec 31
    assert [(s.first_day, s.days, s.plain) for s in segments] == [
        (0, 66, True),
        (66, 1, False),
        (67, 237, True),
        (304, 1, False),
        (305, 60, True),
    ]
    assert len(_segments(_year_bounds("UTC", 2026))) == 1


def test_a_day_a_dst_change_skipped_has_no_segment():
    tz = zone("Pacific/Apia")  # 2011-12-30 did not happen there
    bounds = [day_bounds(date(2011, 12, 28) + timedelta(days=n), tz) for n in range(5)]
    segments = _segments(bounds)
    assert sum(s.days for s in segments) == 4
    assert all(s.first_day != 2 for s in segments)


def test_a_sweep_counts_overlapping_time_once_and_the_edges_as_new_work():
    hour = lambda h: datetime(2026, 1, 1, tzinfo=UTC) + timedelta(hours=h)  # noqa: E731
    swept = Sweep(
        4,
        hour(1),
        hour(10),
        [
            Break(hour(1), hour(3), None),
            Break(hour(2), hour(4), hour(3)),  # overlaps: its time counts once
            Break(hour(6), hour(8), hour(4)),  # a gap [4, 6)
        ],
    )
    assert swept.gaps() == [(hour(4), hour(6))]
    assert [b.start for b in swept.overlaps()] == [hour(2)]
    # [0, 1) and [10, 12) are new work, [4, 6) a gap: 7 of 12 hours covered
    assert swept.covered_seconds(hour(0), hour(12)) == 7 * 3600
    assert swept.covered_seconds(hour(0), hour(12)) <= 12 * 3600


def _calendar(first: date, states: list[str]) -> Calendar:
    days = []
    for offset, state in enumerate(states):
        start = datetime.combine(first + timedelta(days=offset), datetime.min.time(), UTC)
        day = Day(first + timedelta(days=offset), start, start + timedelta(days=1), 86400)
        day.counts = Counter({"completed": {"COMPLETED": 24}, "pending": {"PENDING": 24}}[state])
        # covered: no gap and no new work in the day
        days.append(day)
    return Calendar("orders", "UTC", days[-1].end, days[0].start, days[-1].end, days)


def test_plain_calendar_in_weeks_and_in_folded_months():
    out = io.StringIO()
    render_calendar(_calendar(date(2026, 3, 4), ["completed"] * 3 + ["pending"] * 2), out, colour=False)
    assert out.getvalue().splitlines()[1:4] == [
        "              Mo  Tu  We  Th  Fr  Sa  Su",
        "  2026-03-02           4#  5#  6#  7.  8.",
        "  legend     X failed 0   ! gap 0   + in progress 0   . pending 2   # completed 3",
    ]
    out = io.StringIO()
    render_calendar(_calendar(date(2025, 1, 1), ["completed"] * 400 + ["pending"] * 5), out, colour=False)
    lines = out.getvalue().splitlines()
    assert lines[1] == "  2025-01 .. 2026-01  ### all completed (13 months, 396 days)"
    assert lines[3] == "  2026-02  ####....."


def test_metrics_text_is_valid_prometheus_text():
    now = datetime(2026, 3, 1, 12, tzinfo=UTC)
    figures = {
        "counts": {"COMPLETED": 10, "PENDING": 2, "WEIRD": 1},
        "failed_permanently": 0,
        "stuck_leases": 0,
        "oldest_pending": {"start": now - timedelta(hours=3), "end": now - timedelta(hours=2)},
        "complete_until": now - timedelta(hours=3),
        "now": now,
        "range_start": now - timedelta(days=1),
    }
    families = {f.name: f for f in text_string_to_metric_families(metrics_text("orders", figures))}
    statuses = {s.labels["status"]: s.value for s in families["pipestate_windows"].samples}
    assert statuses["WEIRD"] == 1 and statuses["SUPERSEDED"] == 0
    assert families["pipestate_freshness_seconds"].samples[0].value == 3 * 3600
    assert families["pipestate_oldest_pending_age_seconds"].samples[0].value == 2 * 3600
    figures["complete_until"] = None  # nothing completed: as stale as the range is long
    families = {f.name: f for f in text_string_to_metric_families(metrics_text("orders", figures))}
    assert families["pipestate_freshness_seconds"].samples[0].value == 24 * 3600


def test_the_throughput_chart_has_plain_numbers_and_its_legend_above_the_plot() -> None:
    from pipestate.show.html import _line_chart

    svg = str(_line_chart("rate", "records/s", ["a", "b", "c"], {"load": [316_000.0, 1_250_000.0, None]}))
    assert "1,250,000" in svg and "e+" not in svg
    legend_y = [float(part.split('"')[0]) for part in svg.split('<rect x="72" y="')[1:]]
    assert legend_y and all(y < 26 for y in legend_y)  # the plot starts at y = 26

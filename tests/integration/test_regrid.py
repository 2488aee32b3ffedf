"""`regrid` on a table of mixed grids across a DST day: what moves, what stays, and that
populate afterwards changes nothing while the config still names the old granularity."""

from __future__ import annotations

from datetime import timedelta

import pytest
import support

from pipestate.ops import regrid as regrid_module
from pipestate.regridding import Old, plan_regrid
from pipestate.windows import zone

BERLIN = zone("Europe/Berlin")
H = timedelta(hours=1)
LATER = support.utc(2026, 4, 15)


@pytest.fixture
def mixed(manager_factory):
    """2026-03-28 on 30 minutes, then 03-29 (23 hours) and 03-30 on hours; in Europe/Berlin.
    Three windows COMPLETED, one IN_PROGRESS, one FAILED."""
    first = manager_factory(
        timezone="Europe/Berlin", granularity="30m", start="2026-03-28", end="2026-03-29", now=LATER
    )
    first.populate_pipeline_batches()
    manager = manager_factory(
        timezone="Europe/Berlin", granularity="1h", start="2026-03-28", end="2026-03-31", now=LATER
    )
    manager.populate_pipeline_batches()
    for _ in range(3):
        batch = manager.claim("w1")
        manager.complete(batch.batch_id, "w1")
    manager.claim("w2")  # stays IN_PROGRESS
    failed = manager.claim("w3")
    manager.fail(failed.batch_id, "w3", "boom")
    return manager


def _by_status(rows):
    found: dict[str, list] = {}
    for row in rows:
        found.setdefault(row["pipeline_status"], []).append(row)
    return found


def test_regrid_moves_pending_and_failed_and_populate_then_changes_nothing(mixed) -> None:
    manager = mixed
    untouched = support.all_rows(manager)
    before = _by_status(untouched)
    events_before = len(support.events(manager))
    dry = manager.regrid("2h", dry_run=True)
    assert [d.local_date.isoformat() for d in dry.plan.days] == ["2026-03-28", "2026-03-29", "2026-03-30"]
    assert support.all_rows(manager) == untouched and len(support.events(manager)) == events_before
    report = manager.regrid("2h")
    assert report.to_dict()["days"] == dry.to_dict()["days"]
    rows = support.all_rows(manager)
    after = _by_status(rows)
    # COMPLETED and IN_PROGRESS windows stay as they were
    for status in ("COMPLETED", "IN_PROGRESS"):
        assert [r["batch_id"] for r in after[status]] == [r["batch_id"] for r in before[status]]
    assert "FAILED" not in after  # the failed window was replanned
    superseded = after["SUPERSEDED"]
    assert len(superseded) == len(before["PENDING"]) + len(before["FAILED"])
    assert all(r["supersede_reason"].startswith("regrid to 2h") and r["superseded_by"] for r in superseded)
    new = [r for r in after["PENDING"] if r["record_origin"] == "REGRID"]
    assert new and len(new) == len(after["PENDING"])
    # the 23-hour day: new windows sit on the day's 2h grid, the last one cut at midnight
    day_start = support.utc(2026, 3, 28, 23)
    march_29 = sorted(
        (r["source_query_window_start_time"], r["source_query_window_end_time"])
        for r in new
        if day_start <= r["source_query_window_start_time"] < day_start + 23 * H
    )
    assert march_29[-1] == (day_start + 22 * H, day_start + 23 * H)
    assert all((s - day_start) % (2 * H) == timedelta(0) for s, _ in march_29)
    support.assert_tiles(support.active(rows), support.utc(2026, 3, 27, 23), support.utc(2026, 3, 30, 22))
    # one audit event per change: a SUPERSEDED for each old row, a CREATED for each new one
    events = [
        e for e in support.events(manager) if e["batch_id"] in {r["batch_id"] for r in superseded + new}
    ]
    kinds = sorted(
        e["event_type"] for e in events if e["event_time"] == report.now.replace(tzinfo=None) or True
    )
    assert kinds.count("SUPERSEDED") == len(superseded)
    assert kinds.count("CREATED") >= len(new)
    # populate with the config's 1h (and validate) find nothing to do
    again = manager.populate_pipeline_batches()
    assert not list(again.created) and not again.superseded
    assert not manager.validate().problems(True)
    assert not manager.regrid("2h").changed  # and a second regrid is a no-op


def test_regrid_of_one_local_day_on_a_dst_day(mixed) -> None:
    manager = mixed
    from datetime import date

    from pipestate.windows import day_bounds

    low, high = day_bounds(date(2026, 3, 29), BERLIN)
    report = manager.regrid("30m", start=low, end=high)
    assert [d.local_date.isoformat() for d in report.plan.days] == ["2026-03-29"]
    assert report.plan.created == 46  # 23 hours of half hours
    again = manager.populate_pipeline_batches()
    assert not list(again.created) and not again.superseded
    support.assert_tiles(support.active(support.all_rows(manager)), low, high)


def test_a_window_changed_between_plan_and_write_is_never_superseded(mixed, monkeypatch) -> None:
    manager = mixed
    calls = []

    def stale_first(windows, *args):
        the_plan = plan_regrid(windows, *args)
        calls.append(1)
        if len(calls) == 1:  # as if a worker claimed the first window after it was read
            day = the_plan.days[0]
            w = day.before[0]
            day.before[0] = Old(w.batch_id, w.start, w.end, "IN_PROGRESS", w.updated_at)
        return the_plan

    monkeypatch.setattr(regrid_module, "plan_regrid", stale_first)
    report = manager.regrid("2h")
    assert len(calls) == 2 and report.changed  # planned again, then written
    rows = support.all_rows(manager)
    support.assert_tiles(support.active(rows), support.utc(2026, 3, 27, 23), support.utc(2026, 3, 30, 22))

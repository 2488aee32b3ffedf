"""populate_pipeline_batches on SQLite, DuckDB and PostgreSQL: contract section 5, row by row."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from support import (
    NOW,
    active,
    all_rows,
    assert_tiles,
    config_dict,
    drop_pg_tables,
    events,
    external_row,
    hours,
    insert_external,
    utc,
)

import pipestate.ops.populate as populating
from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.store.store import StateStore

D1, D2, D3 = utc(2026, 1, 1), utc(2026, 1, 2), utc(2026, 1, 3)


def _counts(manager):
    state, ev = manager.store.tables.state, manager.store.tables.events
    with manager.store.engine.connect() as conn:
        return conn.execute(select(func.count()).select_from(state)).scalar(), conn.execute(
            select(func.count()).select_from(ev)
        ).scalar()


def test_first_populate_creates_the_exact_windows(manager):
    report = manager.populate_pipeline_batches()
    rows = all_rows(manager)
    assert [(r["source_query_window_start_time"], r["source_query_window_end_time"]) for r in rows] == [
        (D1 + hours(i), D1 + hours(i + 1)) for i in range(24)
    ]
    assert {r["pipeline_status"] for r in rows} == {"PENDING"}
    assert {r["record_origin"] for r in rows} == {"SCHEDULED"}
    assert {r["source_query_window_duration_minutes"] for r in rows} == {60}
    assert {r["pipeline_name"] for r in rows} == {"orders"}
    assert rows[0]["batch_id"] == "orders-20260101T000000Z-20260101T010000Z"
    assert [r["window_sequence_in_day"] for r in rows] == list(range(1, 25))
    assert all(r["created_at"] == NOW and r["updated_at"] == NOW for r in rows)
    assert len(report.created) == 24 and report.summary()["created"] == 24
    created_events = [e for e in events(manager) if e["event_type"] == "CREATED"]
    assert sorted(e["batch_id"] for e in created_events) == sorted(r["batch_id"] for r in rows)
    assert {e["new_status"] for e in created_events} == {"PENDING"}


def test_created_instants_do_not_depend_on_the_database_session_time_zone(manager_factory, monkeypatch):
    # PostgreSQL reads an instant written without an offset in the session's
    # TimeZone (PGTZ sets it for libpq): new rows must be written with theirs.
    monkeypatch.setenv("PGTZ", "Asia/Kathmandu")
    manager = manager_factory()
    manager.populate_pipeline_batches()
    rows = all_rows(manager)
    assert [(r["source_query_window_start_time"], r["source_query_window_end_time"]) for r in rows] == [
        (D1 + hours(i), D1 + hours(i + 1)) for i in range(24)
    ]
    assert all(r["created_at"] == NOW and r["updated_at"] == NOW for r in rows)
    assert not manager.populate_pipeline_batches().plan.changes_anything


@pytest.mark.parametrize("named", ["default", "custom", "awkward text"])
def test_the_bulk_insert_writes_what_sqlalchemy_would(db_url, backend, table_name, monkeypatch, named):
    # Each database's bulk path (SQLite literals, PostgreSQL COPY, DuckDB Arrow)
    # against SQLAlchemy's plain INSERT of the same plan: 3 local days of 15m
    # windows in New York across the spring DST change; custom ids and
    # categories; ids holding what COPY's text format must escape.
    pipeline = {"timezone": "America/New_York", "granularity": "15m"}
    pipeline |= {"start": "2026-03-07", "end": "2026-03-10"}
    extra = {}
    if named == "custom":
        extra = {"ids": {"source_id": "uuid5"}, "categories": {"stage_category": "local_weekday"}}
    elif named == "awkward text":
        extra = {
            "ids": {"target_id": "support:awkward_id"},
            "categories": {"source_category": "support:awkward_id"},
        }
    tables = {"bulk": table_name, "plain": f"{table_name}_plain"}
    found = {}
    try:
        for way, table in tables.items():
            if way == "plain":
                monkeypatch.setattr(StateStore, "bulk_path", property(lambda self: None))
            config = Config.from_dict({**config_dict(db_url, table, **pipeline), **extra})
            manager = PipelineStateManager(config, clock=lambda: utc(2026, 4, 1))
            try:
                assert (manager.store.bulk_path is None) == (way == "plain")
                assert manager.store.bulk_path in (None, "executemany", "copy", "arrow")
                manager.populate_pipeline_batches()
                rows = [{**row, "populate_run_id": None} for row in all_rows(manager)]
                made = [(e["batch_id"], e["event_type"], e["new_status"]) for e in events(manager)]
            finally:
                manager.close()
            found[way] = (rows, sorted(made))
    finally:
        if backend == "postgresql":
            drop_pg_tables(db_url, tables["plain"])
    rows, made = found["bulk"]
    assert len(rows) == 23 * 4 + 24 * 4 * 2 == len(made)
    assert rows[0]["source_query_window_start_time"] == utc(2026, 3, 7, 5)
    if named == "awkward text":
        assert rows[0]["target_id"] == rows[0]["source_category"] == "x\t'y'\\N\n\"z\"\r\x07é😀-0500"
    assert found["bulk"] == found["plain"]


def test_second_run_changes_nothing(manager):
    manager.populate_pipeline_batches()
    before_rows, before = all_rows(manager), _counts(manager)
    report = manager.populate_pipeline_batches()
    assert _counts(manager) == before
    assert all_rows(manager) == before_rows
    assert len(report.created) == 0 and report.superseded == []
    assert not report.plan.changes_anything


def test_dry_run_on_a_missing_table_creates_nothing(manager):
    report = manager.populate_pipeline_batches(dry_run=True)
    assert report.dry_run and len(report.created) == 24
    assert not manager.store.exists()


def test_dry_run_reports_the_same_plan_and_writes_nothing(manager):
    rows = [external_row("a", D1, D1 + hours(2)), external_row("b", D1 + hours(1), D1 + hours(3), "PENDING")]
    rows.append(external_row("c", D1 + hours(5), D2))
    insert_external(manager, rows)
    before_rows, before = all_rows(manager), _counts(manager)
    dry = manager.populate_pipeline_batches(dry_run=True)
    assert _counts(manager) == before and all_rows(manager) == before_rows
    real = manager.populate_pipeline_batches()
    strip = lambda report: {k: v for k, v in report.to_dict().items() if k not in ("dry_run", "run_id")}  # noqa: E731
    assert strip(dry) == strip(real)


def test_messy_history(manager_factory):
    manager = manager_factory(end="2026-01-04")
    t1, t2 = utc(2025, 12, 31, 1), utc(2025, 12, 31, 2)
    rows = [
        # day 1: hourly COMPLETED with a between_windows gap at 05-06, an end_of_day gap 20-24
        *[external_row(f"d1-{h:02d}", D1 + hours(h), D1 + hours(h + 1)) for h in range(20) if h != 5],
        # overlaps: PENDING duplicate of a COMPLETED window (loses), two PENDING (later update wins)
        external_row("dup-pending", D1 + hours(2), D1 + hours(3), "PENDING", updated_at=t2),
        external_row("x-old", D1 + hours(7), D1 + hours(9), "FAILED", updated_at=t1),
        external_row("x-new", D1 + hours(8), D1 + hours(10), "FAILED", updated_at=t2),
        # day 2 missing entirely; day 3 starts at 04:00 (start_of_day gap)
        *[external_row(f"d3-{h:02d}", D3 + hours(h), D3 + hours(h + 1)) for h in range(4, 24)],
        # already superseded and invalid rows: never touched
        external_row("old-superseded", D1 + hours(5), D1 + hours(6), "SUPERSEDED"),
        external_row("backwards", D1 + hours(9), D1 + hours(8), "PENDING"),
        # another pipeline in the same table, overlapping everything
        external_row("other-1", D1, D2, "PENDING", pipeline="other"),
        external_row("other-2", D1 + hours(1), D1 + hours(5), "PENDING", pipeline="other"),
    ]
    insert_external(manager, rows)
    untouched = {
        r["batch_id"]: r for r in all_rows(manager) if r["batch_id"] in ("old-superseded", "backwards")
    }
    others = all_rows(manager, "other")

    report = manager.populate_pipeline_batches()

    data = report.to_dict()
    assert [(g["kind"], g["start"], g["end"]) for g in data["gaps"]] == [
        ("between_windows", "2026-01-01T05:00:00+00:00", "2026-01-01T06:00:00+00:00"),
        ("end_of_day", "2026-01-01T20:00:00+00:00", "2026-01-02T00:00:00+00:00"),
        ("missing_day", "2026-01-02T00:00:00+00:00", "2026-01-03T00:00:00+00:00"),
        ("start_of_day", "2026-01-03T00:00:00+00:00", "2026-01-03T04:00:00+00:00"),
    ]
    assert sorted((o["kept"], o["superseded"]) for o in data["overlaps"]) == [
        ("d1-02", "dup-pending"),
        ("d1-07", "x-old"),
        ("d1-08", "x-new"),  # it overlaps d1-08 and d1-09; equal rank, the smaller id is named
    ]
    by_id = {r["batch_id"]: r for r in all_rows(manager)}
    # dup-pending loses to the COMPLETED hour; x-old/x-new lose to the COMPLETED hours 7-9
    for loser, winner in (("dup-pending", "d1-02"), ("x-old", "d1-07"), ("x-new", "d1-08")):
        assert by_id[loser]["pipeline_status"] == "SUPERSEDED"
        assert by_id[loser]["superseded_by"] == winner
        assert winner in by_id[loser]["supersede_reason"]
        assert by_id[loser]["updated_at"] == NOW
    assert {i["batch_id"] for i in data["invalid_rows"]} == {"backwards"}
    for batch_id, before in untouched.items():
        assert by_id[batch_id] == before
    assert all_rows(manager, "other") == others

    mine = all_rows(manager, "orders")
    assert_tiles(active(mine), D1, utc(2026, 1, 4))
    fills = {(r["source_query_window_start_time"], r["record_origin"]) for r in mine if r["record_origin"]}
    assert (D1 + hours(5), "GAP_FILL") in fills and (D2, "GAP_FILL") in fills
    assert {r["source_query_window_duration_minutes"] for r in mine if r["record_origin"] == "GAP_FILL"} == {
        60
    }
    superseded_events = {e["batch_id"] for e in events(manager) if e["event_type"] == "SUPERSEDED"}
    assert superseded_events == {"dup-pending", "x-old", "x-new"}

    before = _counts(manager)
    again = manager.populate_pipeline_batches()
    assert _counts(manager) == before and not again.plan.changes_anything
    assert [i["batch_id"] for i in again.to_dict()["invalid_rows"]] == ["backwards"]


@pytest.mark.parametrize(
    ("statuses", "winner"),
    [
        (("COMPLETED", "IN_PROGRESS"), "a"),
        (("PENDING", "COMPLETED"), "b"),
        (("FAILED", "PENDING"), "b"),  # same rank: later updated_at
    ],
)
def test_overlap_cases_in_the_table(manager, statuses, winner):
    early, late = utc(2025, 12, 31, 1), utc(2025, 12, 31, 2)
    rows = [
        external_row("a", D1, D1 + hours(2), statuses[0], updated_at=early),
        external_row("b", D1 + hours(1), D1 + hours(3), statuses[1], updated_at=late),
        external_row("z", D1 + hours(3), D2),
    ]
    insert_external(manager, rows)
    manager.populate_pipeline_batches()
    by_id = {r["batch_id"]: r for r in all_rows(manager)}
    loser = "b" if winner == "a" else "a"
    assert by_id[winner]["pipeline_status"] == statuses[0 if winner == "a" else 1]
    assert by_id[loser]["pipeline_status"] == "SUPERSEDED" and by_id[loser]["superseded_by"] == winner
    assert_tiles(active(list(by_id.values())), D1, D2)


def test_lag_and_horizon(manager_factory):
    manager = manager_factory(end=None, lag="15m", now=utc(2026, 1, 1, 5, 10))
    manager.populate_pipeline_batches()
    assert active(all_rows(manager))[-1] == (D1 + hours(3), D1 + hours(4))
    later = manager_factory(end=None, lag="15m", now=utc(2026, 1, 1, 6, 20))
    later.populate_pipeline_batches()
    windows = active(all_rows(later))
    assert windows[-1] == (D1 + hours(5), D1 + hours(6))
    assert_tiles(windows, D1, D1 + hours(6))


def test_dst_day_in_new_york(manager_factory):
    manager = manager_factory(
        timezone="America/New_York",
        start="2026-03-08",
        end="2026-03-09",
        granularity="45m",
        now=utc(2026, 4, 1),
    )
    manager.populate_pipeline_batches()
    rows = all_rows(manager)
    assert len(rows) == 31
    assert rows[0]["source_query_window_start_time"] == utc(2026, 3, 8, 5)
    assert rows[-1]["source_query_window_end_time"] == utc(2026, 3, 9, 4)
    assert rows[-1]["source_query_window_duration_minutes"] == 30
    assert {r["window_local_date"].isoformat() for r in rows} == {"2026-03-08"}


def test_one_transaction_failure_mid_apply_leaves_the_table_unchanged(manager, monkeypatch):
    insert_external(
        manager,
        [
            external_row("a", D1, D1 + hours(2)),
            external_row("b", D1 + hours(1), D1 + hours(3), "PENDING"),
            external_row("z", D1 + hours(6), D2),
        ],
    )
    before_rows, before = all_rows(manager), _counts(manager)
    calls = []

    def failing(store, conn, *args):
        # Runs last: the SUPERSEDED updates and events and every new row are written.
        calls.append(1)
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(populating, "insert_created_events", failing)
    with pytest.raises(RuntimeError, match="simulated crash"):
        manager.populate_pipeline_batches()
    assert len(calls) == 1
    assert _counts(manager) == before and all_rows(manager) == before_rows
    monkeypatch.undo()
    manager.populate_pipeline_batches()
    assert_tiles(active(all_rows(manager)), D1, D2)


def test_external_rows_in_another_zone_and_granularity_keep_their_grid(manager_factory):
    manager = manager_factory(end="2026-01-03", granularity="15m")
    rows = [external_row(f"h{h}", D1 + hours(h), D1 + hours(h + 1)) for h in range(24) if h not in (10, 11)]
    rows += [external_row("d2", D2 + hours(6), D2 + hours(7))]
    insert_external(manager, rows)
    manager.populate_pipeline_batches()
    mine = all_rows(manager)
    fills = [r for r in mine if r["record_origin"] == "GAP_FILL"]
    assert [
        (r["source_query_window_start_time"], r["source_query_window_duration_minutes"]) for r in fills[:2]
    ] == [
        (D1 + hours(10), 60),
        (D1 + hours(11), 60),
    ]
    # day 2 before its 06:00 row: its own dominant (60 min); after it: new work on the 15m grid
    scheduled = [r for r in mine if r["record_origin"] == "SCHEDULED"]
    assert scheduled[0]["source_query_window_start_time"] == D2 + hours(7)
    assert {r["source_query_window_duration_minutes"] for r in scheduled} == {15}
    assert_tiles(active(mine), D1, D3)


def test_overlaps_resolved_mid_scan_of_a_long_history(manager_factory):
    # More rows than one read chunk (5,000): the rank columns of an overlap are
    # looked up while the ordered scan is still open, early and late in it.
    manager = manager_factory(start="2026-01-01", end="2026-03-15", granularity="15m")
    step = hours(0.25)
    count = int((utc(2026, 3, 15) - D1) / step)  # 7,008 windows
    rows = [external_row(f"w{i:05d}", D1 + i * step, D1 + (i + 1) * step) for i in range(count)]
    late = utc(2026, 1, 2)
    rows += [
        external_row("early-dup", D1 + 3 * step, D1 + 5 * step, "PENDING", updated_at=late),
        external_row("late-dup", D1 + 6900 * step, D1 + 6902 * step, "COMPLETED", updated_at=late),
    ]
    insert_external(manager, rows)
    report = manager.populate_pipeline_batches()
    assert {(e["batch_id"], e["superseded_by"]) for e in report.superseded} == {
        ("early-dup", "w00003"),
        ("w06900", "late-dup"),
        ("w06901", "late-dup"),
    }
    assert len(report.created) == 0 and report.plan.analysis.active_windows == count + 2
    windows = active(all_rows(manager))
    assert len(windows) == count - 1
    assert_tiles(windows, D1, utc(2026, 3, 15))
    again = manager.populate_pipeline_batches()
    assert not again.plan.changes_anything and again.plan.analysis.active_windows == count - 1


def _sqlite_indexes(manager) -> set[str]:
    with manager.store.engine.connect() as conn:
        rows = conn.exec_driver_sql(f"PRAGMA index_list('{manager.store.tables.state.name}')").all()
    return {row[1] for row in rows if not row[1].startswith("sqlite_autoindex")}


@pytest.mark.parametrize("fail", [False, True])
def test_large_sqlite_populate_builds_its_indexes_after_the_rows(manager_factory, backend, monkeypatch, fail):
    # 70,176 new windows into an empty table: the two secondary indexes are
    # dropped and built again inside the transaction; a failure restores them.
    if backend != "sqlite":
        pytest.skip("the deferred index build is SQLite's")
    manager = manager_factory(start="2024-01-01", end="2026-01-01", granularity="15m")
    manager.init_db()
    expected = {index.name for index in manager.store.tables.state.indexes}
    assert _sqlite_indexes(manager) == expected
    if fail:

        def broken(*args, **kwargs):
            raise RuntimeError("disk full")

        monkeypatch.setattr(populating, "insert_created_events", broken)
        with pytest.raises(RuntimeError):
            manager.populate_pipeline_batches()
        assert _counts(manager) == (0, 0)
    else:
        report = manager.populate_pipeline_batches()
        assert len(report.created) == 70_176 == _counts(manager)[0] == _counts(manager)[1]
        wal = Path(manager.store.engine.url.database + "-wal")
        assert not wal.exists() or wal.stat().st_size < 1_000_000, "the write-ahead log was not emptied"
        assert not manager.populate_pipeline_batches().plan.changes_anything
    assert _sqlite_indexes(manager) == expected

"""Hostile rows (tests/hostile.py) on SQLite and PostgreSQL: claims, populate and
validate agree on every row. A row populate calls invalid is never claimed; a row
it calls active is claimable, and handed out with the window populate read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
import support
from hostile import (
    DAY,
    POSTGRES_FORMS,
    SQLITE_FORMS,
    HostileRow,
    create_foreign_table,
    form,
    insert_raw,
    instant_rows,
    written,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select, text

from pipestate.config import Config
from pipestate.errors import LeaseLost
from pipestate.manager import PipelineStateManager
from pipestate.windows import read_instant


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def hostile_url(request: pytest.FixtureRequest, tmp_path: Path, table_name: str) -> Iterator[str]:
    """The databases whose instants another tool can write in forms pipestate must read."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    yield support.PG_URL
    support.drop_pg_tables(support.PG_URL, table_name)


@pytest.fixture
def make(hostile_url: str, table_name: str) -> Iterator[Callable[..., PipelineStateManager]]:
    made: list[PipelineStateManager] = []

    def factory(**concurrency: object) -> PipelineStateManager:
        data = support.config_dict(hostile_url, table_name, start="2026-01-01", end="2026-01-02")
        if concurrency:
            data["concurrency"] = concurrency
        manager = PipelineStateManager(Config.from_dict(data), clock=lambda: support.NOW)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        manager.close()


def _claim_all(manager: PipelineStateManager) -> dict[str, tuple]:
    claimed = {}
    while (batch := manager.claim("w1")) is not None:
        assert batch.batch_id not in claimed, f"{batch.batch_id} claimed twice"
        claimed[batch.batch_id] = (batch.start, batch.end)
    return claimed


def _stored_windows(manager: PipelineStateManager) -> list[tuple]:
    """(batch_id, start, end, status) of every row, instants read the way populate reads them."""
    store = manager.store
    state = store.tables.state
    stmt = select(
        state.c.batch_id,
        store.raw_column("source_query_window_start_time"),
        store.raw_column("source_query_window_end_time"),
        state.c.pipeline_status,
    ).where(state.c.pipeline_name == manager.pipeline)
    with store.engine.connect() as conn:
        return [(r[0], read_instant(r[1]), read_instant(r[2]), r[3]) for r in conn.execute(stmt)]


def test_claims_populate_and_validate_agree_on_every_instant_form(make, backend_of):
    manager = make()
    manager.init_db()
    rows = instant_rows(backend_of(manager))
    insert_raw(manager, rows)
    valid = {row.batch_id: row.window for row in rows if row.window is not None}
    invalid = {row.batch_id for row in rows if row.window is None}

    report = manager.validate()
    assert {row.batch_id for row in report.plan.invalid} == invalid
    assert report.plan.analysis.active_windows == len(valid)
    assert not report.plan.resolutions  # every valid row on its own hour

    populated = manager.populate_pipeline_batches()
    assert not populated.superseded
    after = _stored_windows(manager)
    active = [
        (s, e) for batch_id, s, e, status in after if batch_id not in invalid and status != "SUPERSEDED"
    ]
    support.assert_tiles(active, DAY, support.utc(2026, 1, 2))
    assert manager.validate().plan.gaps == []

    claimed = _claim_all(manager)
    created = {entry["batch_id"] for entry in populated.created}
    assert set(claimed) == set(valid) | created
    assert not set(claimed) & invalid
    for batch_id, window in valid.items():
        assert claimed[batch_id] == window, batch_id
    for batch_id, start, end, _ in after:
        if batch_id in created:
            assert claimed[batch_id] == (start, end)


def test_an_unreadable_pending_row_does_not_stall_claims_under_max_in_flight(make, backend_of):
    manager = make(max_in_flight=3)
    manager.init_db()
    rows = [row for row in instant_rows(backend_of(manager)) if row.window is None]
    good = HostileRow(
        "h-good", form(backend_of(manager), DAY), form(backend_of(manager), DAY.replace(hour=1)), None
    )
    insert_raw(manager, [*rows, good])
    batch = manager.claim("w1")
    assert batch is not None and batch.batch_id == "h-good"
    assert manager.claim("w2") is None
    statuses = {batch_id: status for batch_id, _, _, status in _stored_windows(manager)}
    assert all(statuses[row.batch_id] == "PENDING" for row in rows)


def test_duplicate_ids_are_invalid_rows_and_never_claimed(make, backend_of):
    manager = make()
    create_foreign_table(manager)
    dialect = backend_of(manager)
    hour = lambda h: form(dialect, DAY.replace(hour=h))  # noqa: E731
    rows = [
        HostileRow("dup", hour(0), hour(1), None),
        HostileRow("dup", hour(1), hour(2), None),  # the same id twice in this pipeline
        HostileRow("shared", hour(2), hour(3), None),
        HostileRow("shared", hour(2), hour(3), None, pipeline="other"),  # and across pipelines
        HostileRow("alone", hour(3), hour(4), (DAY.replace(hour=3), DAY.replace(hour=4))),
    ]
    insert_raw(manager, rows)
    report = manager.validate()
    reasons = {row.batch_id: row.reason for row in report.plan.invalid}
    assert set(reasons) == {"dup", "shared"} and "2 rows" in reasons["dup"]

    batch = manager.claim("w1")
    assert batch is not None and batch.batch_id == "alone"
    manager.complete(batch.batch_id, "w1", batch.claim_token)
    assert manager.claim("w1") is None  # neither duplicated id, in either pipeline
    with manager.store.engine.connect() as conn:
        touched = conn.execute(
            text(
                f"SELECT batch_id, pipeline_name, pipeline_status FROM {_quoted(manager)} "
                "WHERE worker_id IS NOT NULL OR pipeline_status <> 'PENDING'"
            )
        ).all()
    assert [tuple(r) for r in touched] == [("alone", "orders", "COMPLETED")]

    populated = manager.populate_pipeline_batches()  # fills the windows of the invalid rows
    windows = sorted((e["start"], e["end"]) for e in populated.created)
    assert windows[0] == ("2026-01-01T00:00:00+00:00", "2026-01-01T01:00:00+00:00")
    assert "dup" not in {e["batch_id"] for e in populated.created}
    assert len(_claim_all(manager)) == len(populated.created)


def test_an_id_held_by_another_pipeline_gets_a_free_one_and_is_reported(make, backend_of):
    manager = make()
    manager.init_db()
    dialect = backend_of(manager)
    wanted = "orders-20260101T050000Z-20260101T060000Z"
    elsewhere = HostileRow(
        wanted, form(dialect, DAY), form(dialect, DAY.replace(hour=1)), None, pipeline="other"
    )
    differently_timed = HostileRow(
        "orders-20260101T070000Z-20260101T080000Z",
        form(dialect, DAY.replace(hour=20)),
        form(dialect, DAY.replace(hour=21)),
        None,
        status="COMPLETED",
    )
    insert_raw(manager, [elsewhere, differently_timed])

    for report in (manager.validate(), manager.populate_pipeline_batches(dry_run=True)):
        assert {c["wanted"] for c in report.id_collisions} == {wanted, differently_timed.batch_id}
    populated = manager.populate_pipeline_batches()
    used = {c["wanted"]: c["used"] for c in populated.id_collisions}
    assert used[wanted] == f"{wanted}-r2"
    assert used[wanted] in {e["batch_id"] for e in populated.created}
    again = manager.populate_pipeline_batches()
    assert len(again.created) == 0 and not again.id_collisions


def test_a_claim_and_a_complete_change_exactly_one_row(make):
    manager = make()
    manager.populate_pipeline_batches()
    batch = manager.claim("w1")
    assert batch is not None
    manager.complete(batch.batch_id, "w1", batch.claim_token)
    counts = manager.counts()
    assert counts["COMPLETED"] == 1 and counts["PENDING"] == 23
    with pytest.raises(LeaseLost):
        manager.complete(batch.batch_id, "w1", batch.claim_token)


def _quoted(manager: PipelineStateManager) -> str:
    return manager.store.engine.dialect.identifier_preparer.format_table(manager.store.tables.state)


@pytest.fixture
def backend_of() -> Callable[[PipelineStateManager], str]:
    return lambda manager: manager.store.dialect


# -- populate and claims racing (PostgreSQL: claims there take no pipeline lock) --


@pytest.fixture
def pg_make(table_name: str) -> Iterator[Callable[..., PipelineStateManager]]:
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    made: list[PipelineStateManager] = []

    def factory() -> PipelineStateManager:
        data = support.config_dict(support.PG_URL, table_name, start="2026-01-01", end="2026-01-01T03:00")
        manager = PipelineStateManager(Config.from_dict(data), clock=lambda: support.NOW)
        made.append(manager)
        return manager

    yield factory
    for manager in made:
        manager.close()
    support.drop_pg_tables(support.PG_URL, table_name)


@pytest.mark.postgres
@pytest.mark.parametrize("loser_status", ["IN_PROGRESS", "PENDING"])
def test_a_claim_between_populates_scan_and_write_is_never_superseded(pg_make, monkeypatch, loser_status):
    """Deterministic: the worker claims right after populate has planned, before it writes."""
    populate, worker = pg_make(), pg_make()
    earlier, later = support.utc(2026, 2, 1), support.utc(2026, 2, 2)
    a = support.external_row(
        "a", support.utc(2026, 1, 1, 0), support.utc(2026, 1, 1, 2), loser_status, updated_at=earlier
    )
    if loser_status == "IN_PROGRESS":  # a lease that ran out long ago
        a |= {"worker_id": "gone", "claim_token": "old", "lease_expires_at": support.NOW - support.hours(1)}
    b = support.external_row(
        "b", support.utc(2026, 1, 1, 1), support.utc(2026, 1, 1, 2), "PENDING", updated_at=later
    )
    b |= {key: None for key in a if key not in b}
    support.insert_external(populate, [a, b])
    assert [r.superseded.batch_id for r in populate.validate().plan.resolutions] == ["a"]

    from pipestate.ops import populate as populating

    planned = populating._plan
    claimed = []

    def plan_then_claim(ctx, conn, now):  # the worker's claim lands between scan and write
        the_plan = planned(ctx, conn, now)
        if not claimed:
            claimed.append(worker.claim("w1"))
        return the_plan

    monkeypatch.setattr(populating, "_plan", plan_then_claim)
    report = populate.populate_pipeline_batches()
    batch = claimed[0]
    assert batch is not None and batch.batch_id == "a"
    assert [entry["batch_id"] for entry in report.superseded] == ["b"]  # planned again: a is live now
    worker.complete("a", "w1", batch.claim_token)  # not exit 4
    statuses = {row["batch_id"]: row["pipeline_status"] for row in support.all_rows(populate)}
    assert statuses["a"] == "COMPLETED" and statuses["b"] == "SUPERSEDED"
    assert populate.validate().plan.resolutions == []


@pytest.mark.postgres
def test_a_schema_name_with_two_spaces_is_refused_not_squeezed():
    from pipestate.errors import ConfigError

    data = support.config_dict(support.PG_URL, "t_spaces")
    data["state"]["schema"] = "a  b"
    with pytest.raises(ConfigError, match=r"\[state\] schema"):
        Config.from_dict(data)


def test_the_claim_statement_keeps_quoted_identifiers_exactly():
    from sqlalchemy.dialects import postgresql

    from pipestate.store.pg_claims import _claim_statement, _complete_statement
    from pipestate.store.schema import build_tables

    # Config refuses such names; the statement builder must not rewrite them anyway.
    dialect = postgresql.dialect()
    tables = build_tables("x  y", "a  b", "postgresql")
    state = dialect.identifier_preparer.format_table(tables.state)
    events = dialect.identifier_preparer.format_table(tables.events)
    assert state == '"a  b"."x  y"'
    for unique in (True, False):
        sql = str(
            _claim_statement(tables.state, tables.events, state, events, False, False, unique).compile(
                dialect=dialect
            )
        )
        assert sql.count('"a  b"."x  y"') >= 3 and '"a b"' not in sql and '"x y"' not in sql
    sql = str(_complete_statement(state, events, True, False).compile(dialect=dialect))
    assert '"a  b"."x  y"_events' not in sql and '"a  b"."x  y_events"' in sql and '"a b"' not in sql


def test_a_window_rewritten_with_a_t_reaches_the_target(tmp_path):
    """The reproduction: validate counted the rewritten window as covered (exit 0)
    while run processed none of its events."""
    import run_support

    from pipestate.run.runner import run_pipeline

    events = run_support.write_events(tmp_path / "source", DAY, 24, 20)
    data = run_support.config(
        tmp_path, "2026-01-01", "2026-01-02", target_url=f"sqlite:///{tmp_path / 't.db'}"
    )
    with PipelineStateManager(Config.from_dict(data)) as manager:
        manager.populate_pipeline_batches()
        with manager.store.engine.begin() as conn:
            conn.execute(
                text(
                    "UPDATE pipeline_state SET source_query_window_start_time = '2026-01-01T05:00:00', "
                    "source_query_window_end_time = '2026-01-01T06:00:00Z' "
                    "WHERE source_query_window_start_time LIKE '2026-01-01 05:00:00%'"
                )
            )
        report = manager.validate()
        assert not report.plan.invalid and not report.plan.gaps
        result = run_pipeline(manager)
        assert result.summary.completed == 24 and manager.counts() == {"COMPLETED": 24}
    loaded = run_support.target_rows(data["target"]["url"], data["state"]["url"])
    assert len({row[0] for row in loaded}) == events


# -- random hostile tables: claims and populate never disagree -------------------

_row = st.tuples(
    st.integers(0, 23),  # start hour
    st.integers(-1, 3),  # length in hours (zero or negative: end not after start)
    st.integers(0, 9),  # form of the start
    st.integers(0, 9),  # form of the end
    st.sampled_from(["PENDING", "FAILED", "IN_PROGRESS", "COMPLETED"]),
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(_row, min_size=1, max_size=12))
def test_random_hostile_tables_claims_populate_and_validate_agree(make, backend_of, rows):
    manager = make(max_retries=1000)
    manager.init_db()
    dialect = backend_of(manager)
    forms = SQLITE_FORMS if dialect == "sqlite" else POSTGRES_FORMS
    generated, invalid, statuses = [], set(), {}
    for n, (hour, length, start_form, end_form, status) in enumerate(rows):
        start = DAY + timedelta(hours=hour)
        start_value, start_ok = written(forms, start_form % len(forms), start)
        end_value, end_ok = written(forms, end_form % len(forms), start + timedelta(hours=length))
        batch_id = f"r{n}"
        generated.append(HostileRow(batch_id, start_value, end_value, None, status=status))
        statuses[batch_id] = status
        if not (start_ok and end_ok and length > 0):
            invalid.add(batch_id)
    insert_raw(manager, generated)
    try:
        assert {row.batch_id for row in manager.validate().plan.invalid} == invalid
        populated = manager.populate_pipeline_batches()
        superseded = {entry["batch_id"] for entry in populated.superseded}
        created = {entry["batch_id"] for entry in populated.created}
        after = manager.validate()
        assert not after.plan.gaps and not after.plan.resolutions
        claimable = {
            batch_id
            for batch_id, status in statuses.items()
            if batch_id not in invalid | superseded and status != "COMPLETED"
        } | created
        assert set(_claim_all(manager)) == claimable
    finally:
        with manager.store.engine.begin() as conn:
            conn.execute(text(f"DELETE FROM {_quoted(manager)}"))
        manager.close()  # one pool per example: shrinking makes hundreds

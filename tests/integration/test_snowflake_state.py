"""The state table on Snowflake, against fakesnow (a local STAND-IN: DuckDB behind
Snowflake's connector API; not the real service).

Needs the pinned set in ci/requirements-snowflake-state.txt (fakesnow 0.12 needs
snowflake-connector-python 4.x, and snowflake-sqlalchemy 1.x on SQLAlchemy 2.0),
so CI runs this module in its own virtualenv; elsewhere it is skipped. The test
against real Snowflake runs only when SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER,
SNOWFLAKE_PASSWORD, SNOWFLAKE_DATABASE and SNOWFLAKE_SCHEMA are set.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

fakesnow = pytest.importorskip("fakesnow", reason="fakesnow is not installed (see ci/requirements)")
pytest.importorskip("snowflake.sqlalchemy", reason="snowflake-sqlalchemy is not installed")

from sqlalchemy import insert, select  # noqa: E402

from pipestate.config import Config  # noqa: E402
from pipestate.errors import LeaseLost  # noqa: E402
from pipestate.manager import PipelineStateManager  # noqa: E402

pytestmark = pytest.mark.filterwarnings(
    # fakesnow's own result handling warns about an Arrow copy; nothing of ours.
    "ignore:Arrow output on a DB-API result:UserWarning"
)

NOW = datetime(2026, 3, 1, 12, tzinfo=UTC)


def _config(url: str, table: str = "pipeline_state", **concurrency: str) -> Config:
    return Config.from_dict(
        {
            "pipeline": {"name": "orders", "start": "2026-01-01", "end": "2026-01-02", "granularity": "1h"},
            "state": {"url": url, "table": table},
            "concurrency": {"lease": "1m", "max_retries": "3", "retry_backoff": "0s", **concurrency},
        }
    )


@pytest.fixture
def manager() -> Iterator[PipelineStateManager]:
    with fakesnow.patch():
        clock = [NOW]
        with PipelineStateManager(
            _config("snowflake://user:pw@account/db1/schema1"), clock=lambda: clock[0]
        ) as made:
            made.clock = clock  # type: ignore[attr-defined]
            yield made


def _u(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, 1, hour, minute, tzinfo=UTC)


def test_populate_repairs_history_and_is_idempotent(manager: PipelineStateManager) -> None:
    manager.init_db()
    state = manager.store.tables.state
    core = dict(pipeline_name="orders", created_at=NOW, updated_at=NOW)
    with manager.store.engine.begin() as conn:
        conn.execute(
            insert(state),
            [
                dict(
                    core,
                    batch_id="done",
                    source_query_window_start_time=_u(0),
                    source_query_window_end_time=_u(2),
                    source_query_window_duration_minutes=120,
                    pipeline_status="COMPLETED",
                ),
                dict(
                    core,
                    batch_id="loser",
                    source_query_window_start_time=_u(1),
                    source_query_window_end_time=_u(3),
                    source_query_window_duration_minutes=120,
                    pipeline_status="PENDING",
                ),
                dict(
                    core,
                    batch_id="late",
                    source_query_window_start_time=_u(5),
                    source_query_window_end_time=_u(6),
                    source_query_window_duration_minutes=60,
                    pipeline_status="PENDING",
                ),
            ],
        )
    report = manager.populate_pipeline_batches()
    assert [(o["kept"], o["superseded"]) for o in report.to_dict()["overlaps"]] == [("done", "loser")]
    assert [(g["kind"], g["start"]) for g in report.to_dict()["gaps"]] == [
        ("between_windows", "2026-01-01T03:00:00+00:00")
    ]
    assert manager.validate().summary()["gaps"] == 0
    again = manager.populate_pipeline_batches()
    assert again.summary()["created"] == 0 and again.summary()["superseded"] == 0
    with manager.store.engine.connect() as conn:
        loser = conn.execute(
            select(state.c.pipeline_status, state.c.superseded_by).where(state.c.batch_id == "loser")
        ).one()
    assert tuple(loser) == ("SUPERSEDED", "done")
    status = manager.status()
    assert status["coverage"]["percent"] == 100.0


def test_claim_lease_and_fencing(manager: PipelineStateManager) -> None:
    manager.populate_pipeline_batches()
    first = manager.claim("w1")
    assert first is not None and first.start == _u(0)
    second = manager.claim("w2")
    assert second is not None and second.start == _u(1)
    with pytest.raises(LeaseLost):
        manager.complete(first.batch_id, "w2")
    manager.heartbeat(first.batch_id, "w1", first.claim_token)
    manager.complete(first.batch_id, "w1", first.claim_token)
    outcome = manager.fail(second.batch_id, "w2", "boom", second.claim_token)
    assert outcome["retry_count"] == 1 and not outcome["permanent"]
    again = manager.claim("w3")
    assert again is not None and again.batch_id == second.batch_id and again.retry_count == 1
    # w3's lease runs out; w4 takes the batch over and w3's late complete is refused.
    manager.clock[0] = NOW.replace(hour=13)  # type: ignore[attr-defined]
    taken = manager.claim("w4")
    assert taken is not None and taken.batch_id == second.batch_id
    assert taken.retry_count == 2  # the failure, then the expired lease
    with pytest.raises(LeaseLost):
        manager.complete(second.batch_id, "w3", again.claim_token)
    kinds = [event["event_type"] for event in manager.history(second.batch_id)]
    assert kinds == ["CREATED", "CLAIMED", "FAILED", "CLAIMED", "LEASE_EXPIRED", "CLAIMED"]


@pytest.mark.parametrize("operation", ["heartbeat", "record_step", "complete", "fail", "release"])
def test_fencing_refuses_a_write_after_a_takeover(
    manager: PipelineStateManager, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reads its claim; B takes the expired lease over; A writes: LeaseLost, no event
    (fakesnow ignores FOR UPDATE, as Snowflake's standard tables have none)."""
    from sqlalchemy import update

    from pipestate.ops import claims

    manager.populate_pipeline_batches()
    batch = manager.claim("A")
    assert batch is not None
    state = manager.store.tables.state
    read_claim = claims.current_claim
    forced = []

    def read_then_taken_over(store: object, conn: object, *args: object) -> object:
        row = read_claim(store, conn, *args)  # type: ignore[arg-type]
        conn.execute(  # type: ignore[attr-defined]
            update(state).where(state.c.batch_id == batch.batch_id).values(worker_id="B", claim_token="tB")
        )
        forced.append(row)
        return row

    monkeypatch.setattr(claims, "current_claim", read_then_taken_over)
    calls = {
        "heartbeat": lambda: manager.heartbeat(batch.batch_id, "A", batch.claim_token),
        "record_step": lambda: manager.record_step(
            batch.batch_id, "A", {"source_extract_status": "DONE"}, batch.claim_token, "source"
        ),
        "complete": lambda: manager.complete(batch.batch_id, "A", batch.claim_token),
        "fail": lambda: manager.fail(batch.batch_id, "A", "boom", batch.claim_token),
        "release": lambda: manager.release(batch.batch_id, "A", batch.claim_token),
    }
    if operation in ("heartbeat", "record_step", "complete"):
        # One guarded UPDATE each here (no read first, no gap): B's takeover comes first.
        with manager.store.engine.begin() as conn:
            conn.execute(update(state).where(state.c.batch_id == batch.batch_id).values(worker_id="B"))
    with pytest.raises(LeaseLost, match="claimed by B"):
        calls[operation]()
    assert operation in ("heartbeat", "record_step", "complete") or (forced and forced[0] is not None)
    assert [event["event_type"] for event in manager.history(batch.batch_id)] == ["CREATED", "CLAIMED"]


@pytest.mark.skipif(
    not all(
        os.environ.get(k)
        for k in (
            "SNOWFLAKE_ACCOUNT",
            "SNOWFLAKE_USER",
            "SNOWFLAKE_PASSWORD",
            "SNOWFLAKE_DATABASE",
            "SNOWFLAKE_SCHEMA",
        )
    ),
    reason="real Snowflake: set SNOWFLAKE_ACCOUNT, _USER, _PASSWORD, _DATABASE, _SCHEMA (and _WAREHOUSE)",
)
def test_real_snowflake_round_trip() -> None:
    env = os.environ
    url = (
        f"snowflake://{env['SNOWFLAKE_USER']}:{env['SNOWFLAKE_PASSWORD']}@{env['SNOWFLAKE_ACCOUNT']}/"
        f"{env['SNOWFLAKE_DATABASE']}/{env['SNOWFLAKE_SCHEMA']}"
    )
    if env.get("SNOWFLAKE_WAREHOUSE"):
        url += f"?warehouse={env['SNOWFLAKE_WAREHOUSE']}"
    table = f"pipestate_test_{uuid.uuid4().hex[:8]}"
    with PipelineStateManager(_config(url, table)) as manager:
        try:
            report = manager.populate_pipeline_batches()
            assert report.summary()["created"] == 24
            batch = manager.claim("real-test")
            assert batch is not None
            manager.complete(batch.batch_id, "real-test", batch.claim_token)
            assert manager.counts()["COMPLETED"] == 1
        finally:
            with manager.store.engine.begin() as conn:
                for name in (table, f"{table}_events", f"{table}_meta"):
                    conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")


def test_a_fleet_mixing_the_older_locked_protocol_is_refused(manager: PipelineStateManager) -> None:
    """An earlier pipestate claimed under the pipeline lock row within the lease: the
    lock-free claims refuse to run beside it, in one line."""
    from pipestate.errors import SchemaError

    manager.populate_pipeline_batches()
    meta = manager.store.tables.meta
    with manager.store.engine.begin() as conn:  # (populate made the row)
        held = {"value": "claim old-worker", "updated_at": NOW}
        conn.execute(meta.update().where(meta.c.name == "lock:orders").values(**held))
    with pytest.raises(SchemaError, match="older pipestate claimed .* with the pipeline lock"):
        manager.claim("new-worker")
    manager.clock[0] = NOW.replace(hour=13)  # type: ignore[attr-defined]  # past the lease: gone
    assert manager.claim("new-worker") is not None
    with manager.store.engine.connect() as conn:
        assert conn.execute(select(meta.c.value).where(meta.c.name == "claim_protocol")).scalar() == "2"

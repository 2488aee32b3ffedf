"""Contract section 7 on real databases: claim order, leases, fencing, retries, audit, requeue, status.

Single-process tests run on SQLite, DuckDB and PostgreSQL with a hand-driven
clock, so every lease and backoff boundary is exact. The concurrency tests
(threads and processes racing for claims) run on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
import multiprocessing
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import support
import workers_support as ws
from workers_support import Clock

from pipestate.errors import LeaseLost, UsageError
from pipestate.manager import PipelineStateManager
from pipestate.ops import claims

MakeManager = Callable[..., PipelineStateManager]
shared_url = ws.shared_url  # the fixture: a SQLite file or the local PostgreSQL


@pytest.fixture
def make(db_url: str, table_name: str) -> Iterator[MakeManager]:
    """`make(clock=..., **concurrency)` -> a populated manager; closed after the test."""
    made: list[PipelineStateManager] = []

    def factory(clock: Any = None, populate: bool = True, **concurrency: Any) -> PipelineStateManager:
        manager = ws.make_manager(db_url, table_name, clock=clock, **concurrency)
        made.append(manager)
        if populate and len(made) == 1:
            manager.populate_pipeline_batches()
        return manager

    yield factory
    for manager in made:
        manager.close()


def starts(batches: list[Any]) -> list[int]:
    return [b.start.hour for b in batches]


# -- claim order and nothing-to-claim ----------------------------------------------------------


def test_claims_oldest_window_first_then_none(make: MakeManager) -> None:
    manager = make(clock=Clock())
    claimed = [manager.claim(f"w{i}") for i in range(6)]
    assert starts(claimed) == [0, 1, 2, 3, 4, 5]
    assert len({b.claim_token for b in claimed}) == 6
    assert manager.claim("w7") is None


def test_newest_first_claims_latest_window_first(make: MakeManager) -> None:
    manager = make(clock=Clock(), claim_order="newest_first")
    assert starts([manager.claim("w") for _ in range(6)]) == [5, 4, 3, 2, 1, 0]
    assert manager.claim("w") is None


def test_claim_stamps_the_row_and_returns_the_lease(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m")
    batch = manager.claim("w1")
    assert batch is not None
    assert batch.lease_expires_at == clock() + timedelta(minutes=5)
    assert (batch.retry_count, batch.attempt_count, batch.worker_id) == (0, 1, "w1")
    stored = ws.row(manager, batch.batch_id)
    assert stored["pipeline_status"] == "IN_PROGRESS"
    assert stored["worker_id"] == "w1"
    assert stored["claim_token"] == batch.claim_token
    assert stored["lease_expires_at"] == batch.lease_expires_at
    data = batch.to_dict()
    for key in ("batch_id", "start", "end", "duration_minutes", "retry_count", "lease_expires_at"):
        assert key in data
    assert data["lease_expires_at"].endswith("+00:00")


def test_max_in_flight_returns_none_until_a_claim_ends(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, max_in_flight=2, lease="5m")
    first, second = manager.claim("a"), manager.claim("b")
    assert first is not None and second is not None
    assert manager.claim("c") is None
    manager.complete(first.batch_id, "a", first.claim_token)
    third = manager.claim("c")
    assert third is not None and third.start.hour == 2
    assert manager.claim("d") is None
    # An expired claim no longer counts against the limit.
    clock.advance(minutes=5)
    assert manager.claim("d") is not None


def test_completed_and_superseded_rows_are_never_claimed(make: MakeManager) -> None:
    manager = make(clock=Clock())
    while (batch := manager.claim("w")) is not None:
        manager.complete(batch.batch_id, "w", batch.claim_token)
    assert ws.count_status(manager, "COMPLETED") == 6
    assert manager.claim("w") is None


# -- retries and backoff -------------------------------------------------------------------------


def test_failed_batch_waits_its_backoff_doubling_per_attempt(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, max_retries=3, retry_backoff="1m", end="2026-01-01T01:00")
    for attempt, wait in ((1, 60), (2, 120)):
        batch = manager.claim("w")
        assert batch is not None and batch.retry_count == attempt - 1
        outcome = manager.fail(batch.batch_id, "w", f"boom {attempt}", batch.claim_token)
        assert outcome["retry_count"] == attempt and not outcome["permanent"]
        stored = ws.row(manager, batch.batch_id)
        assert stored["pipeline_status"] == "FAILED"
        assert stored["last_error"] == f"boom {attempt}"
        assert stored["next_attempt_at"] == clock() + timedelta(seconds=wait)
        clock.advance(seconds=wait - 1)
        assert manager.claim("w") is None, f"claimable before its {wait}s backoff"
        clock.advance(seconds=1)
    batch = manager.claim("w")
    assert batch is not None and batch.retry_count == 2
    outcome = manager.fail(batch.batch_id, "w", "boom 3", batch.claim_token)
    assert outcome == {"retry_count": 3, "permanent": True, "next_attempt_at": None}
    clock.advance(days=30)
    assert manager.claim("w") is None, "a batch at max_retries must stay FAILED"
    assert ws.row(manager, batch.batch_id)["retry_count"] == 3


def test_failed_retry_is_claimed_in_window_order_with_pending(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, retry_backoff="0s")
    first = manager.claim("w")
    manager.fail(first.batch_id, "w", "x", first.claim_token)
    again = manager.claim("w")
    assert again is not None and again.batch_id == first.batch_id and again.retry_count == 1


def test_release_gives_the_batch_back_without_counting_a_retry(make: MakeManager) -> None:
    manager = make(clock=Clock())
    batch = manager.claim("w")
    manager.release(batch.batch_id, "w", batch.claim_token)
    stored = ws.row(manager, batch.batch_id)
    assert (stored["pipeline_status"], stored["retry_count"]) == ("PENDING", 0)
    assert ws.kinds(manager, batch.batch_id)[-1] == "RELEASED"
    assert manager.claim("w2").batch_id == batch.batch_id


# -- leases ------------------------------------------------------------------------------------


def test_expired_lease_is_claimable_and_counts_as_a_failed_attempt(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m", end="2026-01-01T01:00")
    first = manager.claim("a")
    clock.advance(minutes=4, seconds=59)
    assert manager.claim("b") is None, "the lease is still live"
    clock.advance(seconds=1)
    second = manager.claim("b")
    assert second is not None and second.batch_id == first.batch_id
    assert (second.retry_count, second.attempt_count) == (1, 2)
    trail = ws.events(manager, first.batch_id)
    expired, claimed = trail[-2], trail[-1]
    assert expired["event_type"] == "LEASE_EXPIRED"
    assert (expired["worker_id"], expired["claim_token"]) == ("a", first.claim_token)
    assert json.loads(expired["details"])["retry_count"] == 1
    assert claimed["event_type"] == "CLAIMED"
    assert (claimed["worker_id"], claimed["claim_token"]) == ("b", second.claim_token)


@pytest.mark.parametrize("micro", [0, 120, 123450])
def test_one_statement_claims_log_what_the_general_path_logs(
    db_url: str, table_name: str, monkeypatch: pytest.MonkeyPatch, micro: int
) -> None:
    # PostgreSQL claims in one statement that writes its events' JSON in SQL;
    # it must be the text the general path writes, lease instants with and
    # without a fraction (Python prints six digits, trailing zeros included).
    if not db_url.startswith("postgresql"):
        pytest.skip("the one-statement claim is PostgreSQL's")
    trails = {}
    for way, table in (("one statement", table_name), ("general", f"{table_name}_g")):
        if way == "general":
            monkeypatch.setattr(claims, "_claim_in_one_statement", lambda *args: None)
        clock = Clock(ws.NOW + timedelta(microseconds=micro))
        manager = ws.make_manager(db_url, table, clock=clock, lease="5m", end="2026-01-01T01:00")
        try:
            manager.populate_pipeline_batches()
            first = manager.claim("a")
            clock.advance(minutes=5)
            second = manager.claim("b")
            assert first is not None and second is not None and second.batch_id == first.batch_id
            trails[way] = [
                (e["event_type"], e["worker_id"], e["old_status"], e["new_status"], e["details"])
                for e in ws.events(manager, first.batch_id)
                if e["event_type"] != "CREATED"
            ]
        finally:
            manager.close()
            if way == "general":
                support.drop_pg_tables(db_url, table)
    assert [event[0] for event in trails["general"]] == ["CLAIMED", "LEASE_EXPIRED", "CLAIMED"]
    assert trails["one statement"] == trails["general"]


def test_expired_lease_at_max_retries_fails_for_good(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="1m", max_retries=2, end="2026-01-01T01:00")
    first = manager.claim("a")
    clock.advance(minutes=1)
    second = manager.claim("b")
    assert second is not None and second.retry_count == 1
    clock.advance(minutes=1)
    assert manager.claim("c") is None
    stored = ws.row(manager, first.batch_id)
    assert (stored["pipeline_status"], stored["retry_count"]) == ("FAILED", 2)
    assert "lease expired" in stored["last_error"]
    last = ws.events(manager, first.batch_id)[-1]
    assert (last["event_type"], last["new_status"], last["worker_id"]) == ("LEASE_EXPIRED", "FAILED", "b")
    clock.advance(days=1)
    assert manager.claim("c") is None
    assert [e["batch_id"] for e in manager.status()["failed_permanently"]] == [first.batch_id]


def test_current_claim_still_works_past_expiry_if_nobody_took_over(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m")
    batch = manager.claim("w")
    clock.advance(minutes=10)
    expires = manager.heartbeat(batch.batch_id, "w", batch.claim_token)
    assert expires == clock() + timedelta(minutes=5)
    assert ws.row(manager, batch.batch_id)["lease_expires_at"] == expires
    clock.advance(minutes=10)
    manager.complete(batch.batch_id, "w", batch.claim_token)
    assert ws.row(manager, batch.batch_id)["pipeline_status"] == "COMPLETED"
    other = manager.claim("w")
    clock.advance(minutes=10)
    outcome = manager.fail(other.batch_id, "w", "late but current", other.claim_token)
    assert outcome["retry_count"] == 1


def test_heartbeat_extends_the_lease_so_nobody_takes_over(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m", end="2026-01-01T01:00")
    batch = manager.claim("w")
    for _ in range(5):
        clock.advance(minutes=4)
        manager.heartbeat(batch.batch_id, "w", batch.claim_token)
        assert manager.claim("thief") is None
    manager.complete(batch.batch_id, "w", batch.claim_token)
    assert ws.kinds(manager, batch.batch_id) == ["CREATED", "CLAIMED", "COMPLETED"]


# -- fencing -------------------------------------------------------------------------------------


def _stale_calls(
    manager: PipelineStateManager, batch_id: str, worker: str, token: str | None
) -> dict[str, Any]:
    return {
        "heartbeat": lambda: manager.heartbeat(batch_id, worker, token),
        "complete": lambda: manager.complete(batch_id, worker, token),
        "fail": lambda: manager.fail(batch_id, worker, "late", token),
        "release": lambda: manager.release(batch_id, worker, token),
        "record_step": lambda: manager.record_step(
            batch_id, worker, {"source_record_count": 1}, token, "source"
        ),
    }


def test_stale_worker_gets_lease_lost_and_changes_nothing(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m", end="2026-01-01T01:00")
    stale = manager.claim("a")
    clock.advance(minutes=6)
    current = manager.claim("b")
    assert current.batch_id == stale.batch_id
    before, trail = ws.row(manager, stale.batch_id), ws.events(manager)
    callers = {
        "old holder with its token": ("a", stale.claim_token),
        "old holder without a token": ("a", None),
        "current worker id, old token": ("b", stale.claim_token),
        "a worker that never claimed": ("c", None),
    }
    for who, (worker, token) in callers.items():
        for op, call in _stale_calls(manager, stale.batch_id, worker, token).items():
            with pytest.raises(LeaseLost):
                call()
            assert ws.row(manager, stale.batch_id) == before, f"{op} by {who} changed the row"
    assert ws.events(manager) == trail
    manager.complete(current.batch_id, "b", current.claim_token)


def test_finished_batch_refuses_its_former_holder(make: MakeManager) -> None:
    manager = make(clock=Clock())
    batch = manager.claim("w")
    manager.complete(batch.batch_id, "w", batch.claim_token)
    before = ws.row(manager, batch.batch_id)
    for op, call in _stale_calls(manager, batch.batch_id, "w", batch.claim_token).items():
        with pytest.raises(LeaseLost, match="COMPLETED"):
            call()
        assert ws.row(manager, batch.batch_id) == before, op


def test_unknown_batch_is_lease_lost(make: MakeManager) -> None:
    manager = make(clock=Clock())
    with pytest.raises(LeaseLost, match="no batch"):
        manager.complete("no-such-batch", "w")


# -- audit trail, requeue, history, status -----------------------------------------------------


def test_every_state_change_appends_its_event(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m", retry_backoff="0s")
    batch = manager.claim("w")
    t_claim = clock()
    clock.advance(seconds=1)
    manager.record_step(batch.batch_id, "w", {"source_record_count": 7}, batch.claim_token, step="source")
    manager.heartbeat(batch.batch_id, "w", batch.claim_token)
    manager.fail(batch.batch_id, "w", "disk full", batch.claim_token, step="stage")
    t_fail = clock()
    again = manager.claim("v")
    manager.release(again.batch_id, "v", again.claim_token)
    third = manager.claim("v")
    manager.complete(third.batch_id, "v", third.claim_token)
    requeued = manager.requeue([batch.batch_id], statuses=("COMPLETED",))
    assert requeued == [batch.batch_id]
    trail = ws.events(manager, batch.batch_id)
    got = [(e["event_type"], e["old_status"], e["new_status"], e["worker_id"]) for e in trail]
    assert got[1:] == [
        ("CLAIMED", "PENDING", "IN_PROGRESS", "w"),
        ("STEP", "IN_PROGRESS", "IN_PROGRESS", "w"),
        ("FAILED", "IN_PROGRESS", "FAILED", "w"),
        ("CLAIMED", "FAILED", "IN_PROGRESS", "v"),
        ("RELEASED", "IN_PROGRESS", "PENDING", "v"),
        ("CLAIMED", "PENDING", "IN_PROGRESS", "v"),
        ("COMPLETED", "IN_PROGRESS", "COMPLETED", "v"),
        ("REQUEUED", "COMPLETED", "PENDING", manager.actor),
    ]
    assert got[0][0] == "CREATED"
    assert trail[1]["event_time"] == t_claim and trail[3]["event_time"] == t_fail
    assert trail[1]["claim_token"] == batch.claim_token == trail[3]["claim_token"]
    failed = json.loads(trail[3]["details"])
    assert (failed["error"], failed["step"], failed["retry_count"]) == ("disk full", "stage", 1)
    assert ws.claim_violations(ws.events(manager)) == []


def test_requeue_by_id_resets_retries_and_makes_the_batch_claimable(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, max_retries=1, end="2026-01-01T01:00")
    batch = manager.claim("w")
    manager.fail(batch.batch_id, "w", "bad", batch.claim_token)
    assert manager.claim("w") is None
    assert manager.requeue([batch.batch_id]) == [batch.batch_id]
    stored = ws.row(manager, batch.batch_id)
    assert (stored["pipeline_status"], stored["retry_count"], stored["requeue_count"]) == ("PENDING", 0, 1)
    assert stored["next_attempt_at"] is None and stored["claim_token"] is None
    event = ws.events(manager, batch.batch_id)[-1]
    assert (event["event_type"], event["old_status"], event["new_status"]) == (
        "REQUEUED",
        "FAILED",
        "PENDING",
    )
    again = manager.claim("w")
    assert again.batch_id == batch.batch_id and again.retry_count == 0
    with pytest.raises(UsageError, match="no such batch"):
        manager.requeue(["missing"])


def test_requeue_all_failed_and_a_completed_range(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, retry_backoff="1h")
    outcome = []
    for i in range(6):
        batch = manager.claim("w")
        if i % 2:
            manager.fail(batch.batch_id, "w", "odd", batch.claim_token)
        else:
            manager.complete(batch.batch_id, "w", batch.claim_token)
        outcome.append(batch)
    failed = [b.batch_id for i, b in enumerate(outcome) if i % 2]
    assert sorted(manager.requeue()) == sorted(failed)
    assert ws.count_status(manager, "FAILED") == 0
    # A range of COMPLETED windows: [02:00, 05:00) holds the completed 02:00 and 04:00 windows.
    start, end = support.utc(2026, 1, 1, 2), support.utc(2026, 1, 1, 5)
    done = manager.requeue(start=start, end=end, statuses=("COMPLETED",))
    assert done == [outcome[2].batch_id, outcome[4].batch_id]
    assert all(ws.kinds(manager, b)[-1] == "REQUEUED" for b in done + failed)
    assert ws.count_status(manager, "COMPLETED") == 1
    assert ws.row(manager, outcome[0].batch_id)["pipeline_status"] == "COMPLETED"


def test_requeue_refuses_a_live_claim_unless_forced(make: MakeManager) -> None:
    manager = make(clock=Clock(), end="2026-01-01T01:00")
    batch = manager.claim("w")
    with pytest.raises(UsageError, match="live lease"):
        manager.requeue([batch.batch_id])
    assert ws.row(manager, batch.batch_id)["pipeline_status"] == "IN_PROGRESS"
    manager.requeue([batch.batch_id], force=True)
    with pytest.raises(LeaseLost):
        manager.complete(batch.batch_id, "w", batch.claim_token)
    assert ws.row(manager, batch.batch_id)["pipeline_status"] == "PENDING"


def test_history_tells_the_batch_story_oldest_first(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, retry_backoff="0s")
    batch = manager.claim("w")
    manager.fail(batch.batch_id, "w", "oops", batch.claim_token)
    again = manager.claim("w")
    manager.complete(again.batch_id, "w", again.claim_token)
    story = manager.history(batch.batch_id)
    assert [e["event_type"] for e in story] == ["CREATED", "CLAIMED", "FAILED", "CLAIMED", "COMPLETED"]
    assert [e["event_id"] for e in story] == sorted(e["event_id"] for e in story)
    assert story[1]["event_time"].endswith("+00:00")
    assert story[2]["claim_token"] == batch.claim_token
    assert manager.history("nothing-here") == []


def test_status_shows_in_flight_expired_and_failed_for_good(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="5m", max_retries=1)
    stuck = manager.claim("gone")
    clock.advance(minutes=3)
    live = manager.claim("busy")
    doomed = manager.claim("x")
    manager.fail(doomed.batch_id, "x", "fatal", doomed.claim_token)
    clock.advance(minutes=3)
    view = manager.status()
    assert [(e["batch_id"], e["worker_id"]) for e in view["in_flight"]] == [(live.batch_id, "busy")]
    assert view["in_flight"][0]["lease_age_seconds"] == 180
    assert [(e["batch_id"], e["worker_id"]) for e in view["expired_leases"]] == [(stuck.batch_id, "gone")]
    assert [(e["batch_id"], e["last_error"]) for e in view["failed_permanently"]] == [
        (doomed.batch_id, "fatal")
    ]
    assert view["counts"]["IN_PROGRESS"] == 2


# -- concurrency -------------------------------------------------------------------------------


def test_racing_threads_claim_each_batch_once(shared_url: str, table_name: str) -> None:
    manager = ws.make_manager(shared_url, table_name, end="2026-01-02")
    manager.populate_pipeline_batches()
    got: list[Any] = []
    barrier = threading.Barrier(8)

    def work(i: int) -> None:
        barrier.wait()
        while (batch := manager.claim(f"t{i}")) is not None:
            got.append(batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(b.batch_id for b in got) == sorted(r["batch_id"] for r in ws.rows(manager))
    assert len(got) == 24
    manager.close()


def test_max_in_flight_holds_when_threads_race(shared_url: str, table_name: str) -> None:
    manager = ws.make_manager(shared_url, table_name, max_in_flight=3, end="2026-01-02")
    manager.populate_pipeline_batches()
    barrier = threading.Barrier(12)
    got: list[Any] = []

    def work(i: int) -> None:
        barrier.wait()
        for _ in range(3):
            if (batch := manager.claim(f"t{i}")) is not None:
                got.append(batch)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(got) == 3
    assert ws.count_status(manager, "IN_PROGRESS") == 3
    manager.close()


def test_max_in_flight_holds_across_processes(shared_url: str, table_name: str) -> None:
    settings = {"max_in_flight": 2, "end": "2026-01-02"}
    manager = ws.make_manager(shared_url, table_name, **settings)
    manager.populate_pipeline_batches()
    context = multiprocessing.get_context("spawn")
    with context.Pool(4) as pool:
        made = pool.starmap(
            ws.claim_and_hold, [(shared_url, table_name, f"p{i}", 12, settings) for i in range(4)]
        )
    trail = ws.events(manager)
    assert sum(made) == sum(e["event_type"] == "CLAIMED" for e in trail) > 0
    assert ws.claim_violations(trail, max_in_flight=2) == []
    manager.close()

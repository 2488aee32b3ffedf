"""`[concurrency] claim_batch`: one claim takes several windows, each its own row, lease,
token and heartbeat, each counted by max_in_flight, in claim order; on SQLite, DuckDB
and PostgreSQL."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import workers_support as ws
from workers_support import Clock

from pipestate.errors import LeaseLost, UsageError
from pipestate.manager import PipelineStateManager

MakeManager = Callable[..., PipelineStateManager]


@pytest.fixture
def make(db_url: str, table_name: str) -> Iterator[MakeManager]:
    made: list[PipelineStateManager] = []

    def factory(clock: Any = None, **concurrency: Any) -> PipelineStateManager:
        manager = ws.make_manager(db_url, table_name, clock=clock, **concurrency)
        made.append(manager)
        if len(made) == 1:
            manager.populate_pipeline_batches()
        return manager

    yield factory
    for manager in made:
        manager.close()


def test_one_claim_takes_claim_batch_windows_each_fenced_alone(make: MakeManager) -> None:
    manager = make(clock=Clock(), claim_batch=4)
    taken = manager.claim_batches("w1")
    assert [b.start.hour for b in taken] == [0, 1, 2, 3]
    assert len({b.claim_token for b in taken}) == 4
    for batch in taken:
        stored = ws.row(manager, batch.batch_id)
        assert (stored["pipeline_status"], stored["claim_token"]) == ("IN_PROGRESS", batch.claim_token)
        assert ws.kinds(manager, batch.batch_id) == ["CREATED", "CLAIMED"]
    # Each window is its own claim: the token of one does not fence another.
    with pytest.raises(LeaseLost):
        manager.complete(taken[1].batch_id, "w1", taken[0].claim_token)
    manager.heartbeat(taken[0].batch_id, "w1", taken[0].claim_token)
    manager.complete(taken[0].batch_id, "w1", taken[0].claim_token)
    manager.fail(taken[1].batch_id, "w1", "boom", taken[1].claim_token)
    # The one-batch method still takes one, and the rest come in claim order.
    one = manager.claim("w2")
    assert one is not None and one.start.hour == 4
    assert [b.start.hour for b in manager.claim_batches("w3", 5)] == [5]
    assert manager.claim_batches("w3") == []


def test_newest_first_batches_come_in_claim_order(make: MakeManager) -> None:
    manager = make(clock=Clock(), claim_batch=3, claim_order="newest_first")
    assert [b.start.hour for b in manager.claim_batches("w")] == [5, 4, 3]


def test_each_window_of_a_claim_counts_against_max_in_flight(make: MakeManager) -> None:
    manager = make(clock=Clock(), max_in_flight=3)
    assert len(manager.claim_batches("w1", 2)) == 2
    assert [b.start.hour for b in manager.claim_batches("w2", 5)] == [2]
    assert manager.claim_batches("w3", 5) == []
    assert ws.count_status(manager, "IN_PROGRESS") == 3


def test_expired_windows_of_a_batch_are_taken_over_one_by_one(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, lease="1m", claim_batch=2)
    first = manager.claim_batches("w1")
    clock.advance(minutes=2)
    again = manager.claim_batches("w2")
    assert [b.batch_id for b in again] == [b.batch_id for b in first]
    assert all(b.retry_count == 1 for b in again)
    for old in first:
        assert ws.kinds(manager, old.batch_id) == ["CREATED", "CLAIMED", "LEASE_EXPIRED", "CLAIMED"]
        with pytest.raises(LeaseLost):
            manager.heartbeat(old.batch_id, "w1", old.claim_token)


def test_count_out_of_range_is_refused(make: MakeManager) -> None:
    manager = make(clock=Clock())
    with pytest.raises(UsageError, match="count"):
        manager.claim_batches("w", 0)

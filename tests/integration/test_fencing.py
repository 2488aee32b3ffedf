"""Fencing checks what it changed: the interleaving "A reads its claim; B takes the
expired lease over and commits; A writes" ends in LeaseLost for A, the row left as B
made it, and no audit event from A; on SQLite, DuckDB and PostgreSQL (fakesnow: see
test_snowflake_state.py).

The interleaving is forced: right after A's read of its claim, B's takeover is written
on A's own connection, which is what A's guarded write sees where the read took no row
lock (Snowflake's standard tables). A write that checks claim and change in one
statement (PostgreSQL's heartbeat and complete) has no gap to force.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import workers_support as ws
from sqlalchemy import update
from workers_support import Clock

from pipestate.errors import LeaseLost
from pipestate.manager import PipelineStateManager
from pipestate.ops import claims

OPERATIONS: dict[str, Callable[[PipelineStateManager, Any], Any]] = {
    "heartbeat": lambda m, b: m.heartbeat(b.batch_id, "A", b.claim_token),
    "record_step": lambda m, b: m.record_step(
        b.batch_id, "A", {"source_extract_status": "DONE"}, b.claim_token, "source"
    ),
    "complete": lambda m, b: m.complete(b.batch_id, "A", b.claim_token),
    "complete_with_values": lambda m, b: m.complete(
        b.batch_id, "A", b.claim_token, {"target_load_status": "DONE"}
    ),
    "fail": lambda m, b: m.fail(b.batch_id, "A", "boom", b.claim_token),
    "release": lambda m, b: m.release(b.batch_id, "A", b.claim_token),
}


@pytest.fixture
def manager(db_url: str, table_name: str) -> Iterator[PipelineStateManager]:
    made = ws.make_manager(db_url, table_name, clock=Clock())
    made.populate_pipeline_batches()
    yield made
    made.close()


@pytest.mark.parametrize("operation", sorted(OPERATIONS))
def test_a_write_after_a_takeover_is_lease_lost(
    manager: PipelineStateManager, operation: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    batch = manager.claim("A")
    assert batch is not None
    state = manager.store.tables.state
    forced: list[str] = []
    read_claim = claims.current_claim

    def read_then_taken_over(store: Any, conn: Any, *args: Any) -> Any:
        row = read_claim(store, conn, *args)
        if row is not None:  # B takes the (expired) lease over and commits
            conn.execute(
                update(state)
                .where(state.c.batch_id == batch.batch_id)
                .values(worker_id="B", claim_token="token-of-B")
            )
            forced.append(operation)
        return row

    monkeypatch.setattr(claims, "current_claim", read_then_taken_over)
    before = ws.kinds(manager, batch.batch_id)
    if manager.store.backend.fence_in_update and operation in ("heartbeat", "complete"):
        # One statement checks the claim and writes (PostgreSQL): no gap to force;
        # B's takeover can only come first.
        with manager.store.engine.begin() as conn:
            taken_over = {"worker_id": "B", "claim_token": "tB"}
            conn.execute(update(state).where(state.c.batch_id == batch.batch_id).values(**taken_over))
    with pytest.raises(LeaseLost, match="claimed by B"):
        OPERATIONS[operation](manager, batch)
    assert ws.kinds(manager, batch.batch_id) == before  # nothing logged for A's refused write
    if not forced:
        return
    # (B's stand-in write shared A's transaction, so A's LeaseLost rolled it back too.)
    stored = ws.row(manager, batch.batch_id)
    assert stored["pipeline_status"] == "IN_PROGRESS"
    assert stored["source_extract_status"] is None and stored["target_load_status"] is None


def test_requeue_of_a_row_claimed_meanwhile_writes_nothing(
    manager: PipelineStateManager, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipestate.ops import operator as operations
    from pipestate.store.populate_sql import RowChanged

    batch = manager.claim("A")
    assert batch is not None
    manager.fail(batch.batch_id, "A", "boom", batch.claim_token)
    state = manager.store.tables.state
    read = operations.queries.requeue_candidates

    def read_then_claimed(store: Any, conn: Any, *args: Any) -> Any:
        rows = read(store, conn, *args)
        conn.execute(update(state).where(state.c.batch_id == batch.batch_id).values(claim_token="tB"))
        return rows

    monkeypatch.setattr(operations.queries, "requeue_candidates", read_then_claimed)
    with pytest.raises(RowChanged):
        manager.requeue([batch.batch_id])
    assert ws.kinds(manager, batch.batch_id) == ["CREATED", "CLAIMED", "FAILED"]

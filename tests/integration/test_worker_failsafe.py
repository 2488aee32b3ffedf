"""Workers fail safe: an error of the claim is not a failed batch, and `retryable` is honoured.

- The state database failing under `claim()` stops the loop with that error
  (a state file without its table once made 50 "claims" in 0.16 s, forever);
  a transient one (lock timeout, busy database) backs off and tries again, bounded.
- A handler's error fails the batch: a terminal one (retryable False) for good at
  once with its retries unspent, a transient or unknown one with one retry counted.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import workers_support as ws
from workers_support import Clock

from pipestate.errors import (
    ConfigError,
    SchemaError,
    StateStoreError,
    StoreBusyError,
    TransientConnectorError,
    retryable,
)
from pipestate.manager import PipelineStateManager
from pipestate.run.worker import Worker

MakeManager = Callable[..., PipelineStateManager]


@pytest.fixture
def make(db_url: str, table_name: str) -> Iterator[MakeManager]:
    """`make(clock=..., **concurrency)` -> a populated manager (6 hourly windows); closed after."""
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


class CountingClaims:
    """Wraps `manager.claim_batches` (the Worker's claim): counts the calls, and raises
    `errors` (in order) first."""

    def __init__(self, manager: PipelineStateManager, errors: list[BaseException] | None = None) -> None:
        self.calls = 0
        self.errors = list(errors or [])
        self.real = manager.claim_batches
        manager.claim_batches = self  # type: ignore[method-assign]

    def __call__(self, worker: str, count: int | None = None, within: Any = None) -> Any:
        self.calls += 1
        if self.errors:
            raise self.errors.pop(0)
        return self.real(worker, count, within)


# -- an error of the claim stops the loop --------------------------------------------------


def test_missing_table_stops_the_loop_at_the_first_claim(tmp_path: Path, table_name: str) -> None:
    url = f"sqlite:///{tmp_path / 'empty.db'}"
    sqlite3.connect(tmp_path / "empty.db").close()  # a state file without its table
    manager = ws.make_manager(url, table_name)
    claims = CountingClaims(manager)
    handled: list[Any] = []
    began = time.monotonic()
    with pytest.raises(StateStoreError, match=f"state table {table_name} does not exist"):
        Worker(manager, "w1", store_backoff=0.01).run(handled.append)
    assert claims.calls == 1, "the worker claimed again after the state database failed"
    assert handled == []
    assert time.monotonic() - began < 5
    manager.close()


def test_a_failing_claim_is_not_counted_as_a_failed_batch(make: MakeManager) -> None:
    manager = make()
    CountingClaims(manager, [SchemaError("state table is gone")])
    with pytest.raises(SchemaError):
        Worker(manager, "w1").run(lambda batch: None)
    assert ws.count_status(manager, "FAILED") == 0
    assert ws.count_status(manager, "PENDING") == 6


def test_transient_claim_errors_back_off_and_try_again(make: MakeManager) -> None:
    manager = make()
    claims = CountingClaims(manager, [StoreBusyError("locked"), StoreBusyError("locked")])
    began = time.monotonic()
    summary = Worker(manager, "w1", store_backoff=0.05).run(lambda batch: None)
    assert summary.completed == 6 and summary.failed == 0
    assert claims.calls == 6 + 1 + 2  # six batches, the empty claim, two refused
    assert time.monotonic() - began >= (0.05 + 0.1) * 0.5  # backed off, doubling (jitter: x0.5 to x1.5)


def test_transient_claim_errors_give_up_after_the_bound(make: MakeManager) -> None:
    manager = make()
    claims = CountingClaims(manager, [StoreBusyError("locked")] * 10)
    with pytest.raises(StoreBusyError):
        Worker(manager, "w1", store_retries=3, store_backoff=0.01, store_patience=0).run(lambda batch: None)
    assert claims.calls == 3
    assert ws.count_status(manager, "PENDING") == 6


def test_a_real_lock_timeout_on_sqlite_is_waited_out(tmp_path: Path, table_name: str) -> None:
    path = tmp_path / "state.db"
    config = ws.config_dict(f"sqlite:///{path}", table_name)
    config["concurrency"]["lock_timeout"] = "1s"
    from pipestate.config import Config

    manager = PipelineStateManager(Config.from_dict(config))
    manager.populate_pipeline_batches()
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")  # another process holds the write lock for 1.5 s
    threading.Timer(1.5, holder.rollback).start()
    claims = CountingClaims(manager)
    summary = Worker(manager, "w1", store_backoff=0.2).run(lambda batch: None, limit=1)
    holder.close()
    assert summary.completed == 1
    assert claims.calls >= 2, "the first claim should have timed out on the lock"
    manager.close()


# -- a handler's error fails the batch, as its `retryable` says -----------------------------


def _first_batch(manager: PipelineStateManager) -> dict[str, Any]:
    return ws.rows(manager)[0]


def test_terminal_handler_error_fails_the_batch_for_good_at_once(make: MakeManager) -> None:
    clock = Clock()
    manager = make(clock=clock, max_retries=3, retry_backoff="0s")

    def handler(batch: Any) -> None:
        if batch.start.hour == 0:
            raise ConfigError("[target] table: no such table in the warehouse")

    summary = Worker(manager, "w1").run(handler)
    assert (summary.completed, summary.failed) == (5, 1)
    row = _first_batch(manager)
    assert row["pipeline_status"] == "FAILED"
    assert row["retry_count"] == 0, "a terminal error spent a retry"
    assert row["last_error_kind"] == "terminal"
    assert row["last_error"] == "ConfigError: [target] table: no such table in the warehouse"
    assert row["next_attempt_at"] is None
    # Not claimable again, although its retries are unspent and its backoff is zero.
    clock.advance(hours=1)
    assert manager.claim("w2") is None
    status = manager.status()
    assert [entry["batch_id"] for entry in status["failed_permanently"]] == [row["batch_id"]]
    failed_event = [e for e in ws.events(manager, row["batch_id"]) if e["event_type"] == "FAILED"][0]
    assert '"permanent": true' in failed_event["details"]
    # A requeue (the configuration fixed) makes it claimable again.
    assert manager.requeue([row["batch_id"]]) == [row["batch_id"]]
    assert ws.row(manager, row["batch_id"])["last_error_kind"] is None
    batch = manager.claim("w2")
    assert batch is not None and batch.batch_id == row["batch_id"]


@pytest.mark.parametrize(
    "error",
    [TransientConnectorError("elasticsearch: 503"), ValueError("unexpected")],
    ids=["transient", "unknown"],
)
def test_transient_and_unknown_handler_errors_count_one_retry(make: MakeManager, error: Exception) -> None:
    clock = Clock()
    manager = make(clock=clock, max_retries=3, retry_backoff="1m")
    calls: list[int] = []

    def handler(batch: Any) -> None:
        calls.append(batch.start.hour)
        if batch.start.hour == 0:
            raise error

    summary = Worker(manager, "w1").run(handler)
    assert (summary.completed, summary.failed) == (5, 1)
    row = _first_batch(manager)
    assert (row["pipeline_status"], row["retry_count"]) == ("FAILED", 1)
    assert row["last_error_kind"] == ("transient" if retryable(error) else None)
    assert row["next_attempt_at"] == clock() + timedelta(minutes=1)
    clock.advance(minutes=1)
    assert Worker(manager, "w1").run(lambda batch: None).completed == 1


def test_missing_package_in_a_step_is_terminal(make: MakeManager) -> None:
    manager = make(max_retries=3, retry_backoff="0s")

    def handler(batch: Any) -> None:
        import pipestate_no_such_module  # type: ignore[import-not-found]  # noqa: F401

    summary = Worker(manager, "w1").run(handler)
    assert summary.failed == 6
    assert {(r["pipeline_status"], r["retry_count"], r["last_error_kind"]) for r in ws.rows(manager)} == {
        ("FAILED", 0, "terminal")
    }


def test_retryable_reads_the_answer_of_each_kind() -> None:
    assert retryable(StoreBusyError("x")) is True
    assert retryable(ConfigError("x")) is False
    assert retryable(ModuleNotFoundError("x")) is False
    assert retryable(StateStoreError("x")) is None
    assert retryable(RuntimeError("x")) is None


# -- a batch given up is released, its lease not renewed first (issue 20, point 8) -------------


def test_a_worker_that_gives_a_batch_up_releases_it_and_does_not_renew_it(make: MakeManager) -> None:
    manager = make(lease="1s")
    real_heartbeat = manager.heartbeat
    renewed_after_doubt: list[bool] = []
    worker = Worker(manager, "paused", heartbeat_interval=0.2)

    def stuck_heartbeat(*args: Any, **kwargs: Any) -> Any:
        time.sleep(1.5)  # as a paused process: no beat reaches the database within the lease
        renewed_after_doubt.append(worker._in_doubt)
        return real_heartbeat(*args, **kwargs)

    manager.heartbeat = stuck_heartbeat  # type: ignore[method-assign]
    seen: list[str] = []

    def handler(batch: Any) -> None:
        seen.append(batch.batch_id)
        time.sleep(5)  # interrupted by the lease in doubt

    summary = worker.run(handler, limit=1)
    assert summary.lost == 1
    assert manager.statuses(seen)[seen[0]] == "PENDING"  # released: another worker can take it now
    assert True not in renewed_after_doubt[1:]  # no beat started once the batch was in doubt

"""A frozen network between pipestate and PostgreSQL (tests/proxy.py stops passing
bytes; the server itself is never touched): every wait is bounded, and a Worker
stops on a second signal or when its lease is in doubt."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import support
from proxy import FreezableProxy

from pipestate.config import Config
from pipestate.errors import StateStoreError
from pipestate.manager import PipelineStateManager
from pipestate.run.worker import LeaseInDoubt, Worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def proxy() -> Iterator[FreezableProxy]:
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    with FreezableProxy(5432) as running:
        yield running


@pytest.fixture
def make(proxy: FreezableProxy, table_name: str) -> Iterator[Callable[..., PipelineStateManager]]:
    made: list[PipelineStateManager] = []

    def factory(statement_timeout: str = "1s", lease: str = "10m") -> PipelineStateManager:
        url = f"postgresql+psycopg://root@127.0.0.1:{proxy.port}/test"
        data = support.config_dict(url, table_name, end="2026-01-01T03:00")
        data["state"] |= {"connect_timeout": "2s", "statement_timeout": statement_timeout}
        data["concurrency"] = {"lease": lease}
        manager = PipelineStateManager(Config.from_dict(data), clock=None)
        made.append(manager)
        return manager

    yield factory
    proxy.thaw()
    for manager in made:
        manager.close()
    support.drop_pg_tables(support.PG_URL, table_name)


def _timed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as err:  # noqa: BLE001 - the test inspects it
        return time.monotonic() - started, err
    return time.monotonic() - started, None


def test_claim_and_heartbeat_fail_within_the_bound_when_the_network_freezes(make, proxy):
    manager = make(statement_timeout="1s")
    manager.populate_pipeline_batches()
    batch = manager.claim("w1")
    assert batch is not None
    proxy.freeze()
    for call in (
        lambda: manager.claim("w2"),
        lambda: manager.heartbeat(batch.batch_id, "w1", batch.claim_token),
        lambda: manager.complete(batch.batch_id, "w1", batch.claim_token),
    ):
        elapsed, err = _timed(call)
        assert isinstance(err, StateStoreError), err
        assert "\n" not in str(err)
        assert elapsed < 15, f"waited {elapsed:.1f} s"
    proxy.thaw()
    manager.heartbeat(batch.batch_id, "w1", batch.claim_token)  # the pool recovers


def test_a_new_connection_through_a_frozen_network_times_out(make, proxy):
    manager = make()
    manager.init_db()
    manager.store.engine.dispose()
    proxy.freeze()
    elapsed, err = _timed(lambda: manager.claim("w1"))
    assert isinstance(err, StateStoreError) and elapsed < 15, (elapsed, err)


def test_heartbeats_that_cannot_reach_the_database_stop_the_handler_at_expiry(make, proxy):
    manager = make(statement_timeout="30s", lease="3s")
    manager.populate_pipeline_batches()
    stopped: list[BaseException] = []

    def handler(batch):  # type: ignore[no-untyped-def]
        proxy.freeze()
        try:
            for _ in range(600):
                time.sleep(0.1)
        except LeaseInDoubt as err:
            stopped.append(err)
            raise

    started = time.monotonic()
    summary = Worker(manager, "w1", heartbeat_interval=1).run(handler, limit=1)
    elapsed = time.monotonic() - started
    assert stopped and summary.lost == 1 and summary.completed == 0
    assert elapsed < 20, f"the handler ran {elapsed:.1f} s past a 3 s lease"
    proxy.thaw()
    row = next(r for r in support.all_rows(manager) if r["worker_id"] == "w1")
    assert row["pipeline_status"] == "IN_PROGRESS"  # nothing written: another worker takes it at expiry


def test_a_second_signal_stops_a_worker_whose_database_call_hangs(make, proxy, monkeypatch):
    manager = make(statement_timeout="120s")
    manager.populate_pipeline_batches()
    complete = manager.complete

    def complete_on_a_frozen_network(*args, **kwargs):  # type: ignore[no-untyped-def]
        proxy.freeze()
        for delay in (0.3, 0.6):
            threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
        return complete(*args, **kwargs)

    monkeypatch.setattr(manager, "complete", complete_on_a_frozen_network)
    elapsed, err = _timed(lambda: Worker(manager, "w1").run(lambda batch: None))
    assert elapsed < 20, f"two SIGTERMs and still running after {elapsed:.1f} s"

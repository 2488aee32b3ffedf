"""Transient means transient on every database (issue 20, point 6): a refused connection and
a server starting up or shutting down are StoreUnavailable, retried with bounded, jittered
waits by the worker and by `run`'s parent; a worker process never prints a raw traceback."""

from __future__ import annotations

import queue
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import run_support
import sqlalchemy as sa
import support
from proxy import FreezableProxy

from pipestate.config import Config
from pipestate.errors import StoreUnavailable, transient_reason
from pipestate.manager import PipelineStateManager
from pipestate.run import runner as run_module
from pipestate.run import worker as worker_module
from pipestate.run.retrying import store_retry


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def pg_config(tmp_path: Path, port: int, table: str) -> Config:
    run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 3, 5)
    data = run_support.config(
        tmp_path, "2026-01-01", "2026-01-01T03:00:00+00:00", target_url=f"sqlite:///{tmp_path / 't.db'}"
    )
    data["state"] = {"url": f"postgresql+psycopg://root@127.0.0.1:{port}/test", "table": table}
    return Config.from_dict(data)


@pytest.mark.postgres
def test_refused_and_starting_up_are_store_unavailable(tmp_path: Path) -> None:
    psycopg = pytest.importorskip("psycopg")
    with PipelineStateManager(pg_config(tmp_path, free_port(), support.unique_table())) as manager:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            manager.counts()  # nothing listens: connection refused
        starting = psycopg.errors.CannotConnectNow("FATAL:  the database system is starting up")
        wrapped = sa.exc.OperationalError("connect", {}, starting)
        assert isinstance(manager.store.translate(wrapped), StoreUnavailable)
        shutting = sa.exc.OperationalError("x", {}, psycopg.errors.AdminShutdown("terminating connection"))
        assert isinstance(manager.store.translate(shutting), StoreUnavailable)
    assert transient_reason(starting) is not None
    assert transient_reason(ValueError("no such column")) is None


def test_store_retry_is_bounded_and_jittered() -> None:
    waits: list[float] = []
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) < 4:
            raise StoreUnavailable("refused")
        return "ok"

    assert store_retry("x", flaky, retries=5, backoff=1.0, pause=waits.append) == "ok"
    assert len(waits) == 3 and all(0.5 * 2**i <= w <= 1.5 * 2**i for i, w in enumerate(waits))
    with pytest.raises(StoreUnavailable):
        store_retry(
            "x", lambda: (_ for _ in ()).throw(StoreUnavailable("down")), retries=3, pause=waits.append
        )


@pytest.mark.postgres
def test_run_waits_out_a_database_restart(tmp_path: Path) -> None:
    if problem := support.pg_reachable(support.PG_URL):
        pytest.skip(problem)
    port, table = free_port(), support.unique_table()
    config = pg_config(tmp_path, port, table)
    started: queue.Queue[FreezableProxy] = queue.Queue()

    def come_back() -> None:  # the "restart": nothing listens for 1.5 s, then the server is back
        time.sleep(1.5)
        started.put(FreezableProxy(5432, port=port))

    threading.Thread(target=come_back, daemon=True).start()
    try:
        with PipelineStateManager(config) as manager:
            result = run_module.run_pipeline(manager)
            assert result.summary.completed == 3 and manager.counts() == {"COMPLETED": 3}
    finally:
        started.get(timeout=10).close()
        support.drop_pg_tables(support.PG_URL, table)


def test_a_worker_process_that_cannot_reach_the_database_prints_one_line(
    tmp_path: Path, capsys, monkeypatch
) -> None:
    monkeypatch.setattr(run_module.os, "setpgrp", lambda: None)  # not the test runner's group
    monkeypatch.setattr(worker_module, "STORE_PATIENCE", 0.0)  # the 5 attempts, not 2 minutes
    data = run_support.config(tmp_path, "2026-01-01", "2026-01-01T03:00:00+00:00", target_url="sqlite://")
    data["state"] = {"url": f"postgresql+psycopg://root@127.0.0.1:{free_port()}/test"}
    config = Config.from_dict(data)
    with pytest.raises(SystemExit) as stopped:
        run_module._worker_process(config, "w1", True, None, 0.0, None, queue.Queue())
    err = capsys.readouterr().err
    assert stopped.value.code == 3
    assert "Traceback" not in err and len(err.strip().splitlines()) >= 1
    assert err.strip().splitlines()[-1].startswith("pipestate: worker w1 stopped:")

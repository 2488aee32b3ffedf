"""Helpers for the worker tests: configs with [concurrency], a hand-driven clock, the
audit-trail checks, and the functions that spawned worker processes run.

Everything here is importable by a `spawn`ed child (multiprocessing passes the
parent's sys.path), so process targets live in this module, not in test files.
"""

from __future__ import annotations

import json
import os
import random
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import support
from sqlalchemy import func, select

from pipestate.config import Config
from pipestate.errors import LeaseLost
from pipestate.manager import PipelineStateManager

NOW = support.NOW
PIPESTATE = str(Path(sys.executable).parent / "pipestate")

# Events that end a claim; each must carry the token of the claim it ends.
ENDS_CLAIM = {"COMPLETED", "FAILED", "RELEASED", "LEASE_EXPIRED"}


class Clock:
    """A clock the test moves by hand: `clock()` is now, `clock.advance(seconds=...)` moves it."""

    def __init__(self, now: datetime = NOW) -> None:
        self.now = now
        self._lock = threading.Lock()

    def __call__(self) -> datetime:
        with self._lock:
            return self.now

    def advance(self, **delta: float) -> datetime:
        with self._lock:
            self.now += timedelta(**delta)
            return self.now


def config_dict(
    url: str,
    table: str,
    *,
    lease: str = "10m",
    max_in_flight: int = 0,
    max_retries: int = 3,
    retry_backoff: str = "1m",
    claim_order: str = "oldest_first",
    start: str = "2026-01-01",
    end: str = "2026-01-01T06:00",
    granularity: str = "1h",
    claim_batch: int = 1,
) -> dict[str, Any]:
    """support.config_dict with 6 hourly windows (unless told otherwise) and these [concurrency] keys."""
    concurrency = {
        "lease": lease,
        "max_in_flight": max_in_flight,
        "max_retries": max_retries,
        "retry_backoff": retry_backoff,
        "claim_order": claim_order,
        "claim_batch": claim_batch,
    }
    return support.config_dict(url, table, concurrency, start=start, end=end, granularity=granularity)


def make_manager(url: str, table: str, clock: Any = None, **concurrency: Any) -> PipelineStateManager:
    """A manager on `clock` (None: the database clock)."""
    return PipelineStateManager(Config.from_dict(config_dict(url, table, **concurrency)), clock=clock)


def toml_text(config: dict[str, Any]) -> str:
    """The config mapping as a TOML file (flat sections of strings and ints only)."""
    lines: list[str] = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            lines.append(f"{key} = {json.dumps(value)}")
        lines.append("")
    return "\n".join(lines)


@contextmanager
def postgres_url(table: str) -> Iterator[str]:
    """The local PostgreSQL's URL (the test is skipped, saying why, when it is down); drops `table` after."""
    problem = support.pg_reachable(support.PG_URL)
    if problem:
        pytest.skip(problem)
    try:
        yield support.PG_URL
    finally:
        support.drop_pg_tables(support.PG_URL, table)


@pytest.fixture(
    params=[pytest.param("sqlite"), pytest.param("postgresql", marks=pytest.mark.postgres)],
)
def shared_url(request: pytest.FixtureRequest, tmp_path: Path, table_name: str) -> Iterator[str]:
    """A state database several processes can share: a SQLite file, or the local PostgreSQL."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state.db'}"
        return
    with postgres_url(table_name) as url:
        yield url


# -- reading the tables ---------------------------------------------------------------------


def row(manager: PipelineStateManager, batch_id: str) -> dict[str, Any]:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        found = conn.execute(select(state).where(state.c.batch_id == batch_id)).first()
    assert found is not None, f"no row {batch_id}"
    return dict(found._mapping)


def rows(manager: PipelineStateManager) -> list[dict[str, Any]]:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        result = conn.execute(select(state).order_by(state.c.source_query_window_start_time))
        return [dict(r._mapping) for r in result]


events = support.events


def kinds(manager: PipelineStateManager, batch_id: str) -> list[str]:
    return [e["event_type"] for e in events(manager, batch_id)]


def count_status(manager: PipelineStateManager, status: str) -> int:
    state = manager.store.tables.state
    with manager.store.engine.connect() as conn:
        return int(conn.execute(select(func.count()).where(state.c.pipeline_status == status)).scalar_one())


def claim_violations(trail: list[dict[str, Any]], max_in_flight: int = 0) -> list[str]:
    """Replay the audit trail in event order; what it shows going wrong.

    Per batch at most one claim is open at a time: CLAIMED opens one (none may
    be open), COMPLETED/FAILED/RELEASED/LEASE_EXPIRED close the open one and
    must carry its token, STEP must carry it. With `max_in_flight`, the number
    of open claims across the pipeline never exceeds it (leases are assumed
    not to expire in such a run).
    """
    holder: dict[str, str | None] = defaultdict(lambda: None)
    problems: list[str] = []
    open_claims = 0
    for event in trail:
        batch, kind, token = event["batch_id"], event["event_type"], event["claim_token"]
        if kind == "CLAIMED":
            if holder[batch] is not None:
                problems.append(
                    f"event {event['event_id']}: {batch} claimed by {token} while {holder[batch]} held it"
                )
            else:
                open_claims += 1
            holder[batch] = token
            if max_in_flight and open_claims > max_in_flight:
                problems.append(f"event {event['event_id']}: {open_claims} claims open > {max_in_flight}")
        elif kind in ENDS_CLAIM:
            if holder[batch] != token:
                problems.append(
                    f"event {event['event_id']}: {kind} of {batch} by {token}, holder {holder[batch]}"
                )
            if holder[batch] is not None:
                open_claims -= 1
            holder[batch] = None
        elif kind == "STEP" and holder[batch] != token:
            problems.append(f"event {event['event_id']}: STEP of {batch} by {token}, holder {holder[batch]}")
        elif kind == "REQUEUED" and holder[batch] is not None:
            open_claims -= 1
            holder[batch] = None
    return problems


# -- process targets (run in spawned children) ------------------------------------------------


def churn(
    url: str, table: str, worker_id: str, seed: int, fail_rate: float, settings: dict[str, Any]
) -> dict[str, int]:
    """Claim, work a few ms, complete or fail at random, until nothing is left to do.

    Batches whose window starts on the hour 0 always fail (they must end FAILED
    for good). Returns counts of what this worker did.
    """
    rng = random.Random(seed)
    manager = make_manager(url, table, **settings)
    done = {"completed": 0, "failed": 0, "idle": 0}
    max_retries = settings.get("max_retries", 3)
    state = manager.store.tables.state
    c = state.c
    try:
        while True:
            batch = manager.claim(worker_id)
            if batch is None:
                # Stop when nothing can become claimable any more.
                with manager.store.engine.connect() as conn:
                    left = conn.execute(
                        select(func.count()).where(
                            (c.pipeline_status.in_(("PENDING", "IN_PROGRESS")))
                            | ((c.pipeline_status == "FAILED") & (c.retry_count < max_retries))
                        )
                    ).scalar_one()
                if not left:
                    return done
                done["idle"] += 1
                time.sleep(0.05)
                continue
            time.sleep(rng.uniform(0, 0.004))
            if batch.start.hour == 0 or rng.random() < fail_rate:
                manager.fail(batch.batch_id, worker_id, "injected failure", batch.claim_token)
                done["failed"] += 1
            else:
                manager.complete(batch.batch_id, worker_id, batch.claim_token)
                done["completed"] += 1
    finally:
        manager.close()


def claim_and_hold(url: str, table: str, worker_id: str, rounds: int, settings: dict[str, Any]) -> int:
    """Claim in a loop, holding each batch a moment before completing it; returns claims made."""
    manager = make_manager(url, table, **settings)
    got = 0
    try:
        for _ in range(rounds):
            batch = manager.claim(worker_id)
            if batch is None:
                time.sleep(0.005)
                continue
            got += 1
            time.sleep(0.01)
            manager.complete(batch.batch_id, worker_id, batch.claim_token)
        return got
    finally:
        manager.close()


def run_worker(
    url: str, table: str, worker_id: str, signal_dir: str, hold: float, settings: dict[str, Any]
) -> None:
    """Run `pipestate.run.worker.Worker` whose handler announces each batch and holds it `hold` seconds.

    Writes `<signal_dir>/claimed-<n>.json` (batch id, token) when a batch starts
    and `<signal_dir>/summary.json` (the RunSummary) when the loop ends.
    """
    from pipestate.run.worker import Worker

    logging_setup()
    manager = make_manager(url, table, **settings)
    folder = Path(signal_dir)
    seen = 0

    def handler(batch: Any) -> None:
        nonlocal seen
        seen += 1
        info = {"batch_id": batch.batch_id, "token": batch.claim_token, "pid": os.getpid()}
        tmp = folder / f".claimed-{seen}.json"
        tmp.write_text(json.dumps(info))
        tmp.rename(folder / f"claimed-{seen}.json")
        time.sleep(hold)

    worker = Worker(manager, worker_id=worker_id)
    summary = worker.run(handler)
    out = {
        "completed": summary.completed,
        "failed": summary.failed,
        "lost": summary.lost,
        "released": summary.released,
        "heartbeat_interval": worker.heartbeat_interval,
    }
    (folder / ".summary.json").write_text(json.dumps(out))
    (folder / ".summary.json").rename(folder / "summary.json")
    manager.close()


def logging_setup() -> None:
    import logging

    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(levelname)s %(message)s")


def wait_for(path: Path, timeout: float = 30.0) -> dict[str, Any]:
    """Wait for a JSON file a child writes; its content."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)
    return json.loads(path.read_text())


def claim_when_expired(manager: PipelineStateManager, worker_id: str, timeout: float = 30.0) -> Any:
    """Claim as `worker_id` until a batch comes back (the other lease ran out)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        batch = manager.claim(worker_id)
        if batch is not None:
            return batch
        time.sleep(0.1)
    raise TimeoutError("no batch became claimable")


def refused(call: Any) -> bool:
    try:
        call()
    except LeaseLost:
        return True
    return False

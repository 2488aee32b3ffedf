"""The state table on the harness that locks like Snowflake (tests/snowsim.py), over the
local PostgreSQL: a fleet of Worker threads claims and completes every window exactly
once, under both answers to the re-read question; a full lock queue (000625) is a
transient StoreUnavailable that the Worker rides out."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import support
from sqlalchemy import text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import snowsim  # noqa: E402

from pipestate.config import Config  # noqa: E402
from pipestate.errors import StoreUnavailable  # noqa: E402
from pipestate.manager import PipelineStateManager  # noqa: E402
from pipestate.run.worker import Worker  # noqa: E402

pytestmark = pytest.mark.postgres
WINDOWS = 30


def _config(table: str, **concurrency: Any) -> Config:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    return Config.from_dict(
        {
            "pipeline": {
                "name": "fleet",
                "granularity": "5m",
                "start": start.isoformat(),
                "end": (start + timedelta(minutes=5 * WINDOWS)).isoformat(),
            },
            "state": {"url": support.PG_URL, "table": table},
            "concurrency": {"lease": "30m", **concurrency},
        }
    )


@pytest.fixture
def table(table_name: str) -> Iterator[str]:
    problem = support.pg_reachable()
    if problem:
        pytest.skip(problem)
    manager = PipelineStateManager(_config(table_name), engine=snowsim.Harness(0.0).engine(support.PG_URL))
    manager.init_db()
    snowsim.unenforce_keys(manager.store.engine, table_name)
    assert manager.populate_pipeline_batches().summary()["created"] == WINDOWS
    manager.close()
    yield table_name
    support.drop_pg_tables(support.PG_URL, table_name)


@pytest.mark.parametrize("reread", [True, False], ids=["rereads", "keeps-its-snapshot"])
def test_a_fleet_completes_every_window_exactly_once(table: str, reread: bool) -> None:
    stopped: list[BaseException] = []
    harnesses: list[snowsim.Harness] = []

    def run(number: int) -> None:
        harness = snowsim.Harness(0.005, reread=reread)
        harnesses.append(harness)
        manager = PipelineStateManager(_config(table, claim_batch=3), engine=harness.engine(support.PG_URL))
        try:
            Worker(manager, f"w{number}", store_retries=8, store_backoff=0.05).run(lambda batch: None)
        except BaseException as err:  # noqa: BLE001 - a stopped worker is what the test counts
            stopped.append(err)
        finally:
            manager.close()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert stopped == []
    engine = snowsim.Harness(0.0).engine(support.PG_URL)
    with engine.connect() as conn:
        statuses = dict(
            conn.execute(text(f'SELECT pipeline_status, count(*) FROM "{table}" GROUP BY 1')).all()
        )
        completed = conn.execute(
            text(
                f"SELECT batch_id, count(*) FROM \"{table}_events\" WHERE event_type = 'COMPLETED' GROUP BY 1"
            )
        ).all()
    engine.dispose()
    assert statuses == {"COMPLETED": WINDOWS}
    assert len(completed) == WINDOWS and {n for _, n in completed} == {1}


def test_a_full_lock_queue_is_transient(table: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(snowsim, "WAITER_LIMIT", 0)  # a held lock's queue is full at once
    engine = snowsim.Harness(0.0).engine(support.PG_URL)
    manager = PipelineStateManager(_config(table), engine=engine)
    with engine.connect() as holder:  # another session holds the state table's lock
        holder.execute(text("SELECT pg_advisory_xact_lock(:n, :k)"), snowsim.lock_key(table))
        with pytest.raises(StoreUnavailable, match="000625") as caught:
            manager.claim_batches("w1", 2)
        holder.rollback()
    assert caught.value.retryable is True
    assert len(manager.claim_batches("w1", 2)) == 2  # the lock free again: claimed
    manager.close()

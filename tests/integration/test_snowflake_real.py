"""The state table on a real Snowflake account: the claim race and the fencing interleaving.

Skipped unless SNOWFLAKE_ACCOUNT, SNOWFLAKE_USER, SNOWFLAKE_PASSWORD, SNOWFLAKE_DATABASE
and SNOWFLAKE_SCHEMA are set (SNOWFLAKE_WAREHOUSE too, when the user has no default);
needs snowflake-sqlalchemy. Its tables get a random name and are dropped afterwards.
What the rest of the suite says about Snowflake was verified on fakesnow and on the
harness of tests/snowsim.py only.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

NEEDED = (
    "SNOWFLAKE_ACCOUNT",
    "SNOWFLAKE_USER",
    "SNOWFLAKE_PASSWORD",
    "SNOWFLAKE_DATABASE",
    "SNOWFLAKE_SCHEMA",
)
pytestmark = pytest.mark.skipif(
    not all(os.environ.get(name) for name in NEEDED),
    reason="real Snowflake: set " + ", ".join(NEEDED) + " (and SNOWFLAKE_WAREHOUSE)",
)


@pytest.fixture
def make() -> Iterator[Any]:
    pytest.importorskip("snowflake.sqlalchemy", reason="snowflake-sqlalchemy is not installed")
    from pipestate.config import Config
    from pipestate.manager import PipelineStateManager

    env = os.environ
    url = (
        f"snowflake://{env['SNOWFLAKE_USER']}:{env['SNOWFLAKE_PASSWORD']}@{env['SNOWFLAKE_ACCOUNT']}/"
        f"{env['SNOWFLAKE_DATABASE']}/{env['SNOWFLAKE_SCHEMA']}"
    )
    if env.get("SNOWFLAKE_WAREHOUSE"):
        url += f"?warehouse={env['SNOWFLAKE_WAREHOUSE']}"
    table = f"pipestate_real_{uuid.uuid4().hex[:8]}"
    config = Config.from_dict(
        {
            "pipeline": {"name": "real", "start": "2026-01-01", "end": "2026-01-02", "granularity": "1h"},
            "state": {"url": url, "table": table},
            "concurrency": {"lease": "10m", "claim_batch": 2},
        }
    )
    made: list[Any] = []

    def factory() -> Any:
        made.append(PipelineStateManager(config))
        return made[-1]

    yield factory
    with made[0].store.engine.begin() as conn:
        for name in (table, f"{table}_events", f"{table}_meta"):
            conn.exec_driver_sql(f"DROP TABLE IF EXISTS {name}")
    for manager in made:
        manager.close()


def test_eight_threads_claim_every_window_once(make: Any) -> None:
    first = make()
    assert first.populate_pipeline_batches().summary()["created"] == 24
    taken: list[str] = []
    lock = threading.Lock()

    def claim_all(number: int) -> None:
        manager = make()
        while batches := manager.claim_batches(f"w{number}"):
            for batch in batches:
                manager.complete(batch.batch_id, batch.worker_id, batch.claim_token)
                with lock:
                    taken.append(batch.batch_id)

    threads = [threading.Thread(target=claim_all, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    assert sorted(taken) == sorted(set(taken)) and len(taken) == 24
    assert first.counts() == {"COMPLETED": 24}


def test_a_takeover_between_read_and_write_is_lease_lost(make: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    from sqlalchemy import update

    from pipestate.errors import LeaseLost
    from pipestate.ops import claims

    manager = make()
    manager.populate_pipeline_batches()
    batch = manager.claim("A")
    state = manager.store.tables.state
    read_claim = claims.current_claim

    def read_then_taken_over(store: Any, conn: Any, *args: Any) -> Any:
        row = read_claim(store, conn, *args)
        with manager.store.engine.begin() as other:  # B, in its own session, commits first
            other.execute(update(state).where(state.c.batch_id == batch.batch_id).values(worker_id="B"))
        return row

    monkeypatch.setattr(claims, "current_claim", read_then_taken_over)
    with pytest.raises(LeaseLost):
        manager.fail(batch.batch_id, "A", "boom", batch.claim_token)
    with pytest.raises(LeaseLost):  # one guarded UPDATE: refused, B holds it now
        manager.complete(batch.batch_id, "A", batch.claim_token)
    assert [event["event_type"] for event in manager.history(batch.batch_id)] == ["CREATED", "CLAIMED"]

"""No worker waits on another batch's load (issue 20, point 7): a PostgreSQL target's table
and index checks read the catalog, so an open load of any batch does not block them."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
import support

from pipestate.connectors import BatchContext, build_stage, build_target

pytestmark = pytest.mark.postgres


@pytest.fixture
def table() -> Iterator[str]:
    if problem := support.pg_reachable(support.PG_URL):
        pytest.skip(problem)
    name = support.unique_table()
    yield name
    engine = sa.create_engine(support.PG_URL)
    with engine.begin() as conn:
        conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{name}"')
    engine.dispose()


def test_a_new_workers_table_check_does_not_queue_behind_an_open_load(
    table: str, batch: BatchContext, tmp_path
) -> None:
    options = {"type": "sql", "url": support.PG_URL, "table": table, "time_field": "timestamp"}
    first = build_target(options)
    stage = build_stage({"url": str(tmp_path)})
    first.load(batch, stage.write(batch, [{"id": 1, "timestamp": "2026-01-01T10:00:00Z"}]), stage)
    first.close()
    holder = sa.create_engine(support.PG_URL)
    conn = holder.connect()
    try:
        transaction = conn.begin()  # a load that stays open (a slow or frozen worker)
        conn.exec_driver_sql(f"DELETE FROM \"{table}\" WHERE pipestate_batch_id = 'x'")
        second = build_target(options)
        done = threading.Event()
        began = time.monotonic()
        threading.Thread(target=lambda: (second.ensure_table(), done.set()), daemon=True).start()  # type: ignore[func-returns-value]
        assert done.wait(10), "ensure_table queued behind the open load"
        assert time.monotonic() - began < 5
        transaction.rollback()
        second.close()
    finally:
        conn.close()
        holder.dispose()

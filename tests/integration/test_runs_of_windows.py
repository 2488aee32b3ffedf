"""Runs of windows (`[concurrency] claim_batch` > 1): one load per run, and a window that fails
fails alone. The exactly-once tests of test_run.py run for runs as well."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import run_support
import sqlalchemy as sa

from pipestate.config import Config
from pipestate.manager import PipelineStateManager
from pipestate.run.runner import run_pipeline


def _config(tmp_path: Path, **extra: dict[str, object]) -> tuple[Config, int]:
    events = run_support.write_events(tmp_path / "source", datetime(2026, 1, 1, tzinfo=UTC), 24, 20)
    data = run_support.config(
        tmp_path, "2026-01-01", "2026-01-02", target_url=f"sqlite:///{tmp_path / 't.db'}"
    )
    data["concurrency"]["claim_batch"] = 24
    for section, values in extra.items():
        data.setdefault(section, {}).update(values)
    return Config.from_dict(data), events


def _column(manager: PipelineStateManager, name: str) -> list[object]:
    state = manager.context.store.tables.state
    with manager.context.store.engine.connect() as conn:
        return list(conn.execute(sa.select(state.c[name]).order_by(state.c.batch_id)).scalars())


def test_a_window_that_fails_in_a_run_fails_alone(tmp_path: Path) -> None:
    config, events = _config(tmp_path, source={"type": "run_support:NoteFilesSource", "odd_hour": 3})
    odd = "events-20260101T030000Z-20260101T040000Z"
    with PipelineStateManager(config) as manager:
        result = run_pipeline(manager)
        # The odd window is retried (backoff 0s) until its retries are spent, alone each time.
        assert result.summary.completed == 23 and result.summary.failed_ids == {odd}
        counts = manager.counts()
        assert "note" in (manager.history(odd)[-1]["details"] or "")
        other = manager.history("events-20260101T050000Z-20260101T060000Z")[-1]
        details = json.loads(other["details"])
        assert other["event_type"] == "COMPLETED" and details["reloaded_alone"] is True
        assert "note" in details["run_load_error"]
    assert counts == {"COMPLETED": 23, "FAILED": 1}
    rows = run_support.target_rows(config.target["url"], config.state.url)
    assert len(rows) == events - 20 + 23  # every record of the 23 windows (and each one's note), once
    assert len({row[0] for row in rows}) == len(rows)
    assert all(start <= moment < end for _, _, moment, start, end in rows)
    assert odd not in {row[1] for row in rows}


def test_the_run_budget_cuts_a_claim_into_loads(tmp_path: Path) -> None:
    config, events = _config(tmp_path, run={"max_run_records": 50})
    with PipelineStateManager(config) as manager:
        assert run_pipeline(manager).summary.completed == 24
        loads = _column(manager, "target_load_id")
        steps = _column(manager, "target_record_count")
    # 20 records a window: two windows reach 40, a third would pass 50.
    assert len(set(loads)) == 12 and sum(steps) == events  # type: ignore[arg-type]


def test_a_single_big_window_is_a_load_of_its_own(tmp_path: Path) -> None:
    config, _ = _config(tmp_path, run={"max_run_records": 5})
    with PipelineStateManager(config) as manager:
        assert run_pipeline(manager).summary.completed == 24
        assert len(set(_column(manager, "target_load_id"))) == 24


@pytest.mark.parametrize("state", ["sqlite", pytest.param("duckdb", marks=pytest.mark.duckdb)])
def test_a_lost_claim_in_a_run_is_left_alone_and_named(tmp_path: Path, state: str) -> None:
    config, _ = _config(tmp_path)
    if state == "duckdb":
        config = Config.from_dict(
            {**config.model_dump(), "state": {"url": f"duckdb:///{tmp_path / 's.duckdb'}"}}
        )
    with PipelineStateManager(config) as manager:
        manager.populate_pipeline_batches()
        run = manager.claim_batches("w", 3)
        gone = run[1]
        manager.release(gone.batch_id, "w", gone.claim_token)  # no longer w's claim
        items = [(b.batch_id, b.claim_token, {"target_record_count": 1}) for b in run]
        assert manager.record_steps("w", items, "target") == {gone.batch_id}
        done = [(b.batch_id, b.claim_token, None, {"note": 1}) for b in run]
        assert manager.complete_many("w", done, {b.batch_id: b.claimed_at for b in run}) == {gone.batch_id}
        statuses = manager.statuses([b.batch_id for b in run])
        history = manager.history(run[0].batch_id)
    assert statuses == {run[0].batch_id: "COMPLETED", gone.batch_id: "PENDING", run[2].batch_id: "COMPLETED"}
    assert [e["event_type"] for e in history][-2:] == ["STEP", "COMPLETED"]
